//! Fixtures and running raidcore on them: where the fixture images are, decompressing them,
//! the tools, and assembling members on a fresh reactor.

pub(crate) use std::cell::RefCell;
pub(crate) use std::fs::File;
pub(crate) use std::future::Future;
pub(crate) use std::os::unix::fs::FileExt;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::process::{Command, Stdio};
pub(crate) use std::rc::Rc;

pub(crate) use md5::{Digest, Md5};
pub(crate) use raidcore::buf::BufSlice;
pub(crate) use raidcore::control::{assemble, AssembleOptions, Assembled};
pub(crate) use raidcore::member::{FileMember, Member, OpenOptions};
pub(crate) use raidcore::raid::{Array, ArrayState};
pub(crate) use raidcore::reactor::{block_on, spawn};

pub(crate) use tempfile::TempDir;

pub const BLOCK: usize = 4096;
pub const MIB: u64 = 1 << 20;
/// Size of one array request when reading or writing a whole region.
pub const IO_BYTES: u64 = MIB;
/// Requests in flight when reading a whole array.
pub const LANES: u64 = 4;
/// TAG of the pattern the write tests put on md-made arrays.
pub const WRITE_TAG: &str = "raidcore-wrote";

// ---------------------------------------------------------------------------------------------
// Fixtures

pub fn fixture_dir() -> PathBuf {
    let dir = match std::env::var_os("RAIDCORE_MD_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/md"
        )),
    };
    assert!(
        dir.is_dir(),
        "md fixture directory {} is missing: set RAIDCORE_MD_FIXTURES to the directory holding \
         the NAME.mK.img.xz, NAME.size and NAME.md5 files, or put shared/ beside the repository \
         (CI provides it)",
        dir.display()
    );
    dir
}

/// One md array's members, decompressed into a private temporary directory (removed on drop).
pub struct Fixture {
    pub dir: TempDir,
    pub members: Vec<String>,
    /// Array size as md reported it (NAME.size).
    pub size: u64,
    /// md5 of the whole array as md read it (NAME.md5), lowercase hex.
    pub md5: String,
}

impl Fixture {
    pub fn load(name: &'static str) -> Fixture {
        let src = fixture_dir();
        let dir = tempfile::Builder::new()
            .prefix(&format!("raidcore-md-{name}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        let mut members = Vec::new();
        for k in 0.. {
            let xz = src.join(format!("{name}.m{k}.img.xz"));
            if !xz.exists() {
                break;
            }
            let out = dir.path().join(format!("{name}.m{k}.img"));
            decompress(&xz, &out);
            members.push(out.to_str().expect("temp path is UTF-8").to_string());
        }
        assert!(
            !members.is_empty(),
            "fixture {name}: no {name}.m0.img.xz in {}",
            src.display()
        );
        let size = read_text(&src.join(format!("{name}.size")))
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("fixture {name}: {name}.size is not a number: {e}"));
        let md5 = read_text(&src.join(format!("{name}.md5")))
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("fixture {name}: {name}.md5 is empty"))
            .to_ascii_lowercase();
        Fixture {
            dir,
            members,
            size,
            md5,
        }
    }

    pub fn member(&self, k: usize) -> &str {
        &self.members[k]
    }

    /// The paths of members `ks`, in that order.
    pub fn members_of(&self, ks: &[usize]) -> Vec<String> {
        ks.iter().map(|&k| self.members[k].clone()).collect()
    }
}

pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .trim()
        .to_string()
}

pub fn decompress(xz: &Path, out: &Path) {
    let file = File::create(out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    let status = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .stdout(file)
        .stderr(Stdio::inherit())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("xz -dc {} failed: {s}", xz.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "xz is not installed: it is needed to decompress the md fixtures \
             (apt-get install xz-utils; CI installs it)"
        ),
        Err(e) => panic!("cannot run xz to decompress {}: {e}", xz.display()),
    }
}

pub fn mdadm() -> PathBuf {
    for p in ["/usr/sbin/mdadm", "/sbin/mdadm"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    let on_path = Command::new("mdadm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        on_path,
        "mdadm is not installed (looked for /usr/sbin/mdadm, /sbin/mdadm and mdadm on PATH): it \
         is needed to check what raidcore writes (apt-get install mdadm; CI installs it)"
    );
    PathBuf::from("mdadm")
}

// ---------------------------------------------------------------------------------------------
// Running raidcore

/// Runs `fut` on a fresh reactor on this thread.
pub fn run<T: 'static>(fut: impl Future<Output = T> + 'static) -> T {
    block_on(fut).unwrap_or_else(|e| panic!("reactor failed: {e}"))
}

pub fn open_members(paths: &[String], read_only: bool) -> Vec<Rc<dyn Member>> {
    paths
        .iter()
        .map(|p| {
            let opts = OpenOptions {
                read_only,
                no_claim: false,
            };
            // The previous assembly's claim can outlive it for a moment: a process that
            // another test forks copies the descriptor until it execs.
            let mut tries = 0;
            let m = loop {
                match FileMember::open(p, opts) {
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    r => break r.unwrap_or_else(|e| panic!("cannot open member {p}: {e}")),
                }
            };
            Rc::new(m) as Rc<dyn Member>
        })
        .collect()
}

pub fn read_only_opts() -> AssembleOptions {
    AssembleOptions {
        read_only: true,
        ..AssembleOptions::default()
    }
}

/// Assembles `paths` (opened read-only when `opts.read_only`) and hands the result to `then`,
/// all on one reactor. Assembly errors come back as their message.
pub fn with_assembled<T: 'static, F, Fut>(
    paths: &[String],
    opts: AssembleOptions,
    then: F,
) -> Result<T, String>
where
    F: FnOnce(Assembled) -> Fut + 'static,
    Fut: Future<Output = Result<T, String>> + 'static,
{
    let members = open_members(paths, opts.read_only);
    run(async move {
        let assembled = assemble(members, &opts).await.map_err(|e| e.to_string())?;
        then(assembled).await
    })
}

/// The assembly error message, or a panic naming `what` if it assembled.
pub fn assembly_error(what: &str, paths: &[String], opts: AssembleOptions) -> String {
    match with_assembled(paths, opts, |_| async { Ok(()) }) {
        Ok(()) => panic!("{what}: assembly of {paths:?} succeeded but should have been refused"),
        Err(e) => e,
    }
}

/// Reads the whole array in 1 MiB requests, LANES of them in flight.
pub async fn read_all(array: &Rc<Array>) -> Result<Vec<u8>, String> {
    let size = array.size_bytes();
    let out = Rc::new(RefCell::new(vec![0u8; size as usize]));
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let array = array.clone();
        let out = out.clone();
        lanes.push(spawn(async move {
            let mut offset = lane * IO_BYTES;
            while offset < size {
                let len = (size - offset).min(IO_BYTES) as usize;
                let buf = BufSlice::zeroed(len);
                array
                    .read(offset, buf.clone())
                    .await
                    .map_err(|e| format!("read at {offset}+{len} failed: {e}"))?;
                out.borrow_mut()[offset as usize..offset as usize + len]
                    .copy_from_slice(buf.bytes());
                offset += LANES * IO_BYTES;
            }
            Ok::<(), String>(())
        }));
    }
    let mut first_error = None;
    for lane in lanes {
        if let Err(e) = lane.await {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let out = Rc::try_unwrap(out).expect("lanes finished");
    Ok(out.into_inner())
}

pub async fn write_range(array: &Array, offset: u64, data: &[u8], fua: bool) -> Result<(), String> {
    let buf = BufSlice::copy_of(data);
    array
        .write(offset, buf, fua)
        .await
        .map_err(|e| format!("write at {offset}+{} failed: {e}", data.len()))
}
