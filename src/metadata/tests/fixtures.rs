//! Loads the md-written member images in `shared/fixtures/md` for tests.
//!
//! Each image is xz-compressed; we decompress with the `xz` tool (the stream must be read to
//! its end) and keep the first MiB, which holds all metadata of these 24/32 MiB members
//! (data starts at sector 2048). Images are decompressed once per test process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Bytes kept from the start of each member.
pub const HEAD_BYTES: usize = 1 << 20;

/// One decompressed member.
pub struct Member {
    /// Fixture file stem, e.g. "raid5-4.m0".
    pub name: String,
    /// Whole-device size in bytes (the decompressed length).
    pub device_bytes: u64,
    /// The first `HEAD_BYTES` bytes.
    pub head: Vec<u8>,
}

impl Member {
    /// The 4 KiB superblock block at byte 4096.
    pub fn superblock_block(&self) -> &[u8] {
        &self.head[4096..8192]
    }

    /// `bytes` bytes at device sector `sector`.
    pub fn sectors(&self, sector: u64, bytes: usize) -> &[u8] {
        let start = usize::try_from(sector * 512).expect("sector fits");
        &self.head[start..start + bytes]
    }
}

/// The fixture directory: $RAIDCORE_MD_FIXTURES, else `shared/fixtures/md` next to the crate
/// (the repository layout), else the workplace's shared folder.
fn fixture_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAIDCORE_MD_FIXTURES") {
        return PathBuf::from(dir);
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/md");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared/fixtures/md")
}

fn decompress(path: &PathBuf) -> (u64, Vec<u8>) {
    let output = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .unwrap_or_else(|error| panic!("cannot run xz on {}: {error}", path.display()));
    assert!(output.status.success(), "xz -dc {} failed", path.display());
    let mut bytes = output.stdout;
    let device_bytes = bytes.len() as u64;
    bytes.truncate(HEAD_BYTES);
    (device_bytes, bytes)
}

/// Every member of every fixture array, by name ("raid5-4.m0").
pub fn all() -> &'static BTreeMap<String, Member> {
    static MEMBERS: OnceLock<BTreeMap<String, Member>> = OnceLock::new();
    MEMBERS.get_or_init(|| {
        let dir = fixture_dir();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("md fixtures missing at {}: {error}", dir.display()));
        let mut members = BTreeMap::new();
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Some(name) = file.strip_suffix(".img.xz") else {
                continue;
            };
            let (device_bytes, head) = decompress(&path);
            let name = name.to_string();
            members.insert(
                name.clone(),
                Member {
                    name,
                    device_bytes,
                    head,
                },
            );
        }
        assert!(
            members.len() >= 30,
            "expected the md fixtures, found {}",
            members.len()
        );
        members
    })
}

/// One member by name.
pub fn member(name: &str) -> &'static Member {
    all()
        .get(name)
        .unwrap_or_else(|| panic!("no fixture member {name}"))
}

/// The members of one array, in dev_number order.
pub fn array(array: &str) -> Vec<&'static Member> {
    let prefix = format!("{array}.m");
    let members: Vec<_> = all()
        .values()
        .filter(|member| member.name.starts_with(&prefix))
        .collect();
    assert!(!members.is_empty(), "no fixture array {array}");
    members
}
