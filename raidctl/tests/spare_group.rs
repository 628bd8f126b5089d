//! Spare groups: arrays created with the same `--spare-group` share hot spares. When one loses
//! a member and has no spare, it takes a spare from another running array of its group (the
//! donor gives it up only while complete itself), rebuilds onto it, and md sees the device as
//! a member of its new array.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Fixture {
    dir: PathBuf,
    run: PathBuf,
    names: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("spare-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("run");
        Fixture {
            dir,
            run,
            names: Vec::new(),
        }
    }
    fn raidctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_raidctl"))
            .args(args)
            .env("RAIDCTL_RUN_DIR", &self.run)
            .current_dir(&self.dir)
            .output()
            .expect("run raidctl")
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.raidctl(args);
        assert!(
            out.status.success(),
            "raidctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
    fn status(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", name, "--json"])).expect("status json")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.raidctl(&["stop", n]);
            if let Ok(pid) = std::fs::read_to_string(self.run.join(format!("{n}.pid"))) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn member_paths(status: &serde_json::Value, state: &str) -> Vec<String> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == state)
        .map(|m| m["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_degraded_array_takes_a_spare_from_its_group() {
    let mut fx = Fixture::new();
    fx.ok(&[
        "create",
        "ga",
        "--level",
        "1",
        "--size",
        "64M",
        "a0",
        "a1",
        "--spare",
        "as",
        "--spare-group",
        "g",
    ]);
    fx.ok(&[
        "create",
        "gb",
        "--level",
        "1",
        "--size",
        "64M",
        "b0",
        "b1",
        "--spare-group",
        "g",
    ]);
    fx.ok(&[
        "create", "gc", "--level", "1", "--size", "64M", "c0", "c1", "--spare", "cs",
    ]);
    for (name, members) in [
        ("ga", ["a0", "a1", "as"]),
        ("gb", ["b0", "b1", ""]),
        ("gc", ["c0", "c1", "cs"]),
    ] {
        let mut args = vec!["assemble", name];
        args.extend(members.iter().filter(|m| !m.is_empty()));
        fx.ok(&args);
        fx.names.push(name.to_string());
    }
    fx.ok(&["fail", "gb", "b1"]);
    // The scheduler finds no spare of its own, asks the group, rebuilds onto the moved spare.
    for _ in 0..200 {
        if member_paths(&fx.status("gb"), "in_sync").len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gb = fx.status("gb");
    assert_eq!(
        member_paths(&gb, "in_sync"),
        vec![fx.path("b0"), fx.path("as")],
        "{gb:#}"
    );
    assert!(
        gb["state"] == "clean" || gb["state"] == "active",
        "complete again: {gb:#}"
    );
    // The donor gave up its only spare and stays complete; the array outside the group kept its.
    let ga = fx.status("ga");
    assert!(member_paths(&ga, "spare").is_empty(), "{ga:#}");
    assert_eq!(member_paths(&ga, "in_sync").len(), 2);
    assert_eq!(member_paths(&fx.status("gc"), "spare"), vec![fx.path("cs")]);
    // md agrees: the moved device carries gb's UUID now.
    let uuid = gb["uuid"].as_str().unwrap().to_string();
    let examine = Command::new("mdadm")
        .args(["--examine", &fx.path("as")])
        .output()
        .expect("mdadm");
    let text = String::from_utf8_lossy(&examine.stdout);
    assert!(
        text.contains(&uuid),
        "mdadm --examine of the moved spare:\n{text}"
    );
    assert!(text.contains("Active device 1"), "{text}");
    assert!(Path::new(&fx.path("as")).exists());
}
