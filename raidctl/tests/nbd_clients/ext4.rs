//! ext4 on top: nbdfuse -> loop device -> mkfs.ext4 -> files -> e2fsck -> remount, verify.

#[allow(unused_imports)]
use crate::*;

pub(crate) fn ext4_roundtrip(name: &str, level: &str, members: usize) {
    require("mkfs.ext4", "e2fsprogs");
    require("e2fsck", "e2fsprogs");
    require("sha256sum", "coreutils");
    let mut fx = assembled(name, level, members);
    let fsdir = fx.mnt.clone();

    // Phase 1: make the filesystem and a tree of files.
    let (mnt, file) = fx.nbdfuse("1");
    let dev = fx.losetup(&file);
    fx.mkfs(&dev);
    fx.mount(&dev);
    let mut rng = Rng::new(0xe47 ^ members as u64);
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let dirs = ["a", "b/c", "d", "e/f/g"];
    for d in dirs {
        fs::create_dir_all(fsdir.join(d)).expect("mkdir in the filesystem");
    }
    let mut total = 0u64;
    for i in 0..50 {
        // Mostly small files, some up to 2 MiB (about 20 MiB in all: RAID1 is only ~63 MiB).
        let len = if i == 0 {
            2 * MIB
        } else if rng.chance(1, 4) {
            rng.range(256 * KIB, 2 * MIB)
        } else {
            rng.range(KIB, 256 * KIB)
        };
        let data = rng.bytes(len as usize);
        let rel = format!("{}/file{i:02}.bin", rng.pick(&dirs));
        fs::write(fsdir.join(&rel), &data).expect("write a file in the filesystem");
        sums.insert(rel, sha256_of(&data));
        total += len;
    }
    assert!(total > 10 * MIB, "the tree is too small to mean much");
    run(cmd("sync", &[])).ok();
    fx.umount();
    fx.fsck(&dev, "after writing the tree");
    fx.losetup_detach(&dev);
    fx.nbdfuse_stop(&mnt);

    // Phase 2: stop and reassemble the array (data must be on the members), reattach through
    // a new nbdfuse and loop device (no page cache survives), check and verify every file.
    fx.stop();
    fx.assemble();
    let (mnt, file) = fx.nbdfuse("2");
    let dev = fx.losetup(&file);
    fx.fsck(&dev, "after reassembly");
    fx.mount(&dev);
    let list: String = sums
        .iter()
        .map(|(path, sum)| format!("{sum}  {path}\n"))
        .collect();
    let listfile = fx.path("sha256sums");
    fs::write(&listfile, list).expect("write the checksum list");
    let mut c = cmd("sha256sum", &["--strict", "-c", &s(&listfile)]);
    c.current_dir(&fsdir);
    let ran = run(c);
    assert!(
        ran.success(),
        "files changed on the array:\n{}",
        ran.describe()
    );
    fx.umount();
    fx.losetup_detach(&dev);
    fx.nbdfuse_stop(&mnt);
    assert!(
        process_alive(fx.pid()),
        "the daemon died:\n{}",
        fx.log_tail()
    );
    wait_for_no_connections(&fx);
}

#[test]
fn ext4_on_raid5_through_nbdfuse_and_loop() {
    ext4_roundtrip("ext5", "5", 4);
}

#[test]
fn ext4_on_raid1_through_nbdfuse_and_loop() {
    ext4_roundtrip("ext1", "1", 2);
}
