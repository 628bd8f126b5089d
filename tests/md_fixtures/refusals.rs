//! Members that do not belong are named, and md's bad-block log is honoured.

use crate::fixture::*;
use crate::pattern::*;

// ---------------------------------------------------------------------------------------------
// 5. Members that do not belong are named

#[test]
fn foreign_member_is_named() {
    let r5 = Fixture::load("raid5-4");
    let r1 = Fixture::load("raid1-2");
    let mut paths = r5.members_of(&[0, 1, 2]);
    paths.push(r1.member(0).to_string());
    let err = assembly_error("raid5-4 m0-m2 with raid1-2 m0", &paths, read_only_opts());
    assert!(
        err.contains(r1.member(0)),
        "raid5-4 m0-m2 with raid1-2 m0: the error does not name {}: {err}",
        r1.member(0)
    );
}

#[test]
fn corrupted_superblock_is_named() {
    let fx = Fixture::load("raid1-2");
    let corrupt = fx.dir.path().join("raid1-2.m1.corrupt.img");
    std::fs::copy(fx.member(1), &corrupt).expect("copy raid1-2 m1");
    let corrupt = corrupt.to_str().expect("UTF-8 path").to_string();
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&corrupt)
            .expect("open the copy");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 4096 + 100).expect("read");
        b[0] ^= 0x01;
        f.write_all_at(&b, 4096 + 100).expect("write");
    }
    let paths = vec![fx.member(0).to_string(), corrupt.clone()];
    let err = assembly_error(
        "raid1-2 with a corrupted m1 superblock",
        &paths,
        read_only_opts(),
    );
    assert!(
        err.contains(&corrupt) && err.to_lowercase().contains("checksum"),
        "raid1-2 with a corrupted m1 superblock: the error should name {corrupt} and say \
         checksum: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. md's bad-block log is honoured

/// A range md recorded in a member's bad-block log is never read as data: here the sectors
/// are also overwritten with garbage, and the array still reads back md's exact bytes
/// (redundancy answers for them), read-only, as md itself would.
#[test]
fn md_bad_block_log_is_honoured() {
    use raidcore::metadata::{Superblock, FEATURE_BAD_BLOCKS};
    let fx = Fixture::load("raid5-4");
    let m1 = &fx.members[1];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m1)
        .unwrap();
    let mut sb_bytes = vec![0u8; 4096];
    f.read_exact_at(&mut sb_bytes, 4096).unwrap();
    let mut sb = Superblock::decode(&sb_bytes).expect("md's superblock");
    assert!(
        sb.bblog_offset_sectors != 0,
        "mdadm reserved a bad-block log"
    );
    // Eight sectors 64 KiB into the data area, as md records them: absolute device sectors.
    let start = sb.data_offset_sectors + 128;
    let mut log = vec![0xffu8; sb.bblog_size_sectors as usize * 512];
    log[..8].copy_from_slice(&((start << 10) | 8).to_le_bytes());
    let log_at = (4096 + sb.bblog_offset_sectors as i64 * 512) as u64;
    f.write_all_at(&log, log_at).unwrap();
    sb.feature_map |= FEATURE_BAD_BLOCKS;
    f.write_all_at(&sb.encode(), 4096).unwrap();
    f.write_all_at(&[0x5a; 4096], start * 512).unwrap();
    drop(f);
    let (bad, data) = with_assembled(&fx.members, read_only_opts(), |a| async move {
        Ok((a.array.bad_blocks(), read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("raid5-4 with a bad-block log entry: {e}"));
    assert_eq!(bad.len(), 1, "the log entry is loaded: {bad:?}");
    assert_eq!(
        md5_hex(&data),
        fx.md5,
        "raid5-4: the recorded (and garbage) sectors were read as data"
    );
}
