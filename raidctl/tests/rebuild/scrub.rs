//! `check` and `check --repair` of flipped bytes.

#[allow(unused_imports)]
use crate::*;

/// XORs `len` bytes with 0xff at `at` of the data area of `member` (offline).
pub(crate) fn flip_bytes(h: &Array, member: &str, at: u64, len: usize) -> u64 {
    let ex = h.raidctl(&["examine", "--json", member]).ok();
    let ex: Value = serde_json::from_str(&ex.stdout).expect("examine --json");
    let data_offset = ex[0]["data_offset_sectors"]
        .as_u64()
        .unwrap_or_else(|| panic!("examine --json has no data_offset_sectors:\n{ex:#}"))
        * 512;
    let pos = data_offset + at;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(member)
        .expect("open member");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, pos).expect("read member bytes");
    for b in &mut buf {
        *b ^= 0xff;
    }
    f.write_all_at(&buf, pos).expect("write member bytes");
    f.sync_all().expect("sync member");
    pos
}

pub(crate) fn check_and_repair(name: &str, level: &str, members: usize, seed: u64) {
    let mut h = assembled(name, level, members, 0);
    let (size, expected) = fill_export(&h, seed);

    let ran = check(&h, false, 0);
    assert_eq!(
        mismatches(&ran),
        0,
        "a consistent array:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(st["check"]["mismatch_sectors"].as_u64(), Some(0), "{st:#}");
    h.stop();

    // Three bytes inside one 4 KiB block of member 1's data area.
    let victim = h.members[1].clone();
    let pos = flip_bytes(&h, &victim, 5 * MIB + 1000, 3);
    let sane = fs::read(&h.members[0]).expect("read member 0");

    h.assemble();
    // Exit 1: mismatches found.
    let ran = check(&h, false, 1);
    let found = mismatches(&ran);
    assert!(
        found >= 8 && found.is_multiple_of(8),
        "3 flipped bytes in one 4 KiB block: 8 mismatched sectors (a multiple of 8) expected, got {found}:\n{}",
        ran.describe()
    );
    let st = h.status();
    assert_eq!(
        st["check"]["mismatch_sectors"].as_u64(),
        Some(found),
        "{st:#}"
    );

    let ran = check(&h, true, 0);
    assert!(
        mismatches(&ran) >= 8,
        "repair should count what it fixed:\n{}",
        ran.describe()
    );
    let ran = check(&h, false, 0);
    assert_eq!(mismatches(&ran), 0, "after repair:\n{}", ran.describe());
    let log = h.wait_for_log("CheckFinished", 1);
    assert!(log.contains("repair: true"), "{}", tail(&log, 4000));

    if level == "1" {
        // Repair copies the first member over the others: the flipped copy is whole again,
        // and the export reads the written data everywhere.
        h.stop();
        let repaired = fs::read(&victim).expect("read member 1");
        let p = pos as usize;
        assert_eq!(
            &repaired[p - 4096..p + 4096],
            &sane[p - 4096..p + 4096],
            "repair must restore the flipped copy from member 0"
        );
        h.assemble();
        assert_export_holds(&h, &expected, size, "after repair");
    }
    h.stop();
}

#[test]
fn raid5_check_finds_and_repairs_flipped_bytes() {
    check_and_repair("rb-chk5", "5", 4, 51);
}

#[test]
fn raid1_check_finds_and_repairs_flipped_bytes() {
    check_and_repair("rb-chk1", "1", 2, 52);
}
