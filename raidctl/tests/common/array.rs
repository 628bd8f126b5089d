//! The fixture every daemon test uses: one array, made with `raidctl create` from member
//! files in a temporary directory of its own (under cargo's target tmp dir, a real filesystem,
//! so members get O_DIRECT) with its own run directory (`RAIDCTL_RUN_DIR`), so tests never
//! touch /run/raidctl and run in parallel. Dropping it undoes everything (see `cleanup.rs`),
//! also when the test fails.
//!
//! The daemon is in `daemon.rs`; what a test layers on top in `attach.rs`, `nbdfuse.rs` and
//! `filesystem.rs`.

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::children::Children;
use super::process::{raidctl_command, run, Ran};
use super::s;

/// How to create an array: `raidctl create NAME --level LEVEL --chunk 64K --size SIZE
/// EXTRA... --spare s0... m0...`.
pub struct Spec {
    name: String,
    level: String,
    members: usize,
    spares: usize,
    size: String,
    extra: Vec<String>,
    run_dir: String,
    mount_point: String,
}

impl Spec {
    /// `members` member files of 64M, no spare.
    pub fn new(name: &str, level: &str, members: usize) -> Spec {
        Spec {
            name: name.to_string(),
            level: level.to_string(),
            members,
            spares: 0,
            size: "64M".to_string(),
            extra: Vec::new(),
            run_dir: "run".to_string(),
            mount_point: "mnt".to_string(),
        }
    }

    pub fn spares(mut self, spares: usize) -> Spec {
        self.spares = spares;
        self
    }

    /// The `--size` of every member file.
    pub fn size(mut self, size: &str) -> Spec {
        self.size = size.to_string();
        self
    }

    /// More `create` flags (`--layout n2`, `--bitmap-chunk 1M`, ...).
    pub fn extra(mut self, flags: &[&str]) -> Spec {
        self.extra = flags.iter().map(|f| f.to_string()).collect();
        self
    }

    /// The run directory's name inside the test's directory ("run" unless told).
    pub fn run_dir(mut self, name: &str) -> Spec {
        self.run_dir = name.to_string();
        self
    }

    /// The name of the (empty) mount point made inside the test's directory ("mnt").
    pub fn mount_point(mut self, name: &str) -> Spec {
        self.mount_point = name.to_string();
        self
    }
}

/// One array under test and everything the test set up around it.
pub struct Array {
    /// The test's directory (canonical: the daemon reports canonical member paths).
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub name: String,
    /// Active members in slot order, then spares: absolute paths, as given to create.
    pub members: Vec<String>,
    pub spares: Vec<String>,
    /// Where the test mounts a filesystem.
    pub mnt: PathBuf,
    /// Background children, killed by the cleanup if still running.
    pub children: Children,
    /// Daemon pids seen (for the kill -9 fallback of the cleanup).
    pub(super) pids: Vec<u32>,
    /// Whether the test attached the array: the cleanup then detaches it, and a stop must
    /// leave nothing mounted or attached.
    pub(super) attaching: bool,
    /// Loop devices `raidctl attach` handed out.
    pub(super) attached_devices: Vec<String>,
    /// Loop devices the test set up itself.
    pub(super) loops: Vec<String>,
    /// nbdfuse mount points and their children.
    pub(super) fuse_mounts: Vec<(PathBuf, usize)>,
    // Last: removed after Drop::drop has cleaned up what lives inside it. None for an array
    // made beside another, whose directory it shares.
    _tmp: Option<tempfile::TempDir>,
}

impl Array {
    /// Makes a temporary directory and `raidctl create`s the array of `spec` in it.
    pub fn create(spec: Spec) -> Array {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}-", spec.name))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("cannot create a temporary directory");
        let dir = fs::canonicalize(tmp.path()).expect("canonicalize the temporary directory");
        let run_dir = dir.join(&spec.run_dir);
        Array::create_in(dir, run_dir, "", Some(tmp), spec)
    }

    /// Another array in the directory and run directory of `other` (arrays that must see
    /// each other, as a spare group's do). Its files are named after it: NAME-m0, NAME-s0.
    pub fn create_beside(other: &Array, spec: Spec) -> Array {
        let prefix = format!("{}-", spec.name);
        Array::create_in(
            other.dir.clone(),
            other.run_dir.clone(),
            &prefix,
            None,
            spec,
        )
    }

    fn create_in(
        dir: PathBuf,
        run_dir: PathBuf,
        prefix: &str,
        tmp: Option<tempfile::TempDir>,
        spec: Spec,
    ) -> Array {
        let file = |name: String| s(&dir.join(format!("{prefix}{name}")));
        let mnt = dir.join(format!("{prefix}{}", spec.mount_point));
        fs::create_dir_all(&mnt).expect("mkdir mount point");
        let a = Array {
            name: spec.name.clone(),
            members: (0..spec.members).map(|i| file(format!("m{i}"))).collect(),
            spares: (0..spec.spares).map(|i| file(format!("s{i}"))).collect(),
            mnt,
            children: Children::new(&dir),
            pids: Vec::new(),
            attaching: false,
            attached_devices: Vec::new(),
            loops: Vec::new(),
            fuse_mounts: Vec::new(),
            dir,
            run_dir,
            _tmp: tmp,
        };
        a.ok(&a.create_args(&spec));
        a
    }

    fn create_args<'a>(&'a self, spec: &'a Spec) -> Vec<&'a str> {
        let mut args = vec!["create", &spec.name, "--level", &spec.level];
        args.extend(["--chunk", "64K", "--size", &spec.size]);
        args.extend(spec.extra.iter().map(String::as_str));
        for sp in &self.spares {
            args.extend(["--spare", sp.as_str()]);
        }
        args.extend(self.members.iter().map(String::as_str));
        args
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Every member file, active ones first, then spares.
    pub fn all_members(&self) -> Vec<String> {
        self.members.iter().chain(&self.spares).cloned().collect()
    }

    /// `program` run in the test's directory (fio and friends drop state files in the cwd),
    /// with the test's run directory.
    pub fn command(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .env("RAIDCTL_RUN_DIR", &self.run_dir)
            .env_remove("RAIDCTL_LOG")
            .current_dir(&self.dir);
        c
    }

    pub fn raidctl_command(&self, args: &[&str]) -> Command {
        let mut c = raidctl_command(args);
        c.env("RAIDCTL_RUN_DIR", &self.run_dir)
            .current_dir(&self.dir);
        c
    }

    pub fn raidctl(&self, args: &[&str]) -> Ran {
        run(self.raidctl_command(args))
    }

    /// raidctl with `args`, which must exit 0.
    pub fn ok(&self, args: &[&str]) -> Ran {
        self.check(self.raidctl(args))
    }

    /// Panics unless `ran` succeeded, showing the daemon log.
    pub fn check(&self, ran: Ran) -> Ran {
        assert!(
            ran.success(),
            "expected success:\n{}\n  daemon log: {}",
            ran.describe(),
            self.log_tail()
        );
        ran
    }
}
