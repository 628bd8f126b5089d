//! The examine report: its text against real `mdadm --examine` output, and its JSON names.

use super::fixtures;
use crate::metadata::*;
use std::path::PathBuf;
use std::process::Command;

fn report_for(name: &str) -> ExamineReport {
    let member = fixtures::member(name);
    let (sb, checksum) = Superblock::decode_unchecked(member.superblock_block()).unwrap();
    let bitmap = sb
        .has_feature(FEATURE_BITMAP_OFFSET)
        .then(|| BitmapSuper::decode(member.sectors(16, 256)).unwrap());
    let extension = extension_offset_sectors(&sb, bitmap.as_ref())
        .ok()
        .and_then(|offset| {
            Extension::decode(member.sectors(offset, EXTENSION_BLOCK_BYTES), &sb.set_uuid).unwrap()
        });
    ExamineReport::new(
        &format!("/dev/{name}"),
        member.device_bytes,
        &sb,
        checksum,
        bitmap.as_ref(),
        extension.as_ref(),
    )
}

/// Goal: the text has mdadm's lines for a fixture, as mdadm 4.2 printed them.
#[test]
fn text_matches_recorded_mdadm_output() {
    let text = report_for("raid5-4.m0").to_string();
    for expected in [
        "          Magic : a92b4efc",
        "        Version : 1.2",
        "    Feature Map : 0x1",
        "     Array UUID : b6b00909:70b93171:0e95e948:0c1097b5",
        "           Name : (none):0",
        "  Creation Time : Sat Nov 21 22:51:54 2026",
        "     Raid Level : raid5",
        "   Raid Devices : 4",
        " Avail Dev Size : 47104 sectors (23.00 MiB 24.12 MB)",
        "     Array Size : 70656 KiB (69.00 MiB 72.35 MB)",
        "    Data Offset : 2048 sectors",
        "   Super Offset : 8 sectors",
        "   Unused Space : before=1968 sectors, after=0 sectors",
        "          State : clean",
        "    Device UUID : 4434cbe6:395d0be3:51d1e2d1:6e3d851d",
        "Internal Bitmap : 8 sectors from superblock",
        "    Update Time : Sat Nov 21 22:52:02 2026",
        "  Bad Block Log : 512 entries available at offset 16 sectors",
        "       Checksum : 4fe15057 - correct",
        "         Events : 1",
        "         Layout : left-symmetric",
        "     Chunk Size : 64K",
        "   Device Role : Active device 0",
        "   Array State : AAAA ('A' == active, '.' == missing, 'R' == replacing)",
        "raidctl extension : none (not created by raidctl)",
    ] {
        assert!(
            text.lines().any(|line| line == expected),
            "missing {expected:?} in\n{text}"
        );
    }
    let raid0 = report_for("raid0-3-unequal.m2").to_string();
    assert!(raid0.contains("         Layout : original\n"), "{raid0}");
    assert!(!raid0.contains("Array Size"), "{raid0}");
    assert!(!raid0.contains("Used Dev Size"), "{raid0}");
    assert!(raid0.contains("Bad Block Log : 512 entries available at offset 8 sectors"));
    let degraded = report_for("raid5-4-degraded.m0").to_string();
    assert!(
        degraded.contains("   Array State : AA.A ('A' == active"),
        "{degraded}"
    );
    let stale = report_for("raid5-4-degraded.m2").to_string();
    assert!(stale.contains("          State : active\n"), "{stale}");
}

/// Goal: a damaged superblock is still shown, with md's "expected" wording, and the JSON
/// field names are the documented snake_case ones.
#[test]
fn bad_checksum_and_json() {
    let member = fixtures::member("raid10n2-4.m1");
    let mut block = member.superblock_block().to_vec();
    block[200] ^= 1; // events
    let (sb, checksum) = Superblock::decode_unchecked(&block).unwrap();
    let extension = Extension {
        cache_mode: Some("write-through".to_string()),
        created_by: "raidctl 0.1.0".to_string(),
        ..Extension::default()
    };
    let report = ExamineReport::new(
        "/dev/x",
        member.device_bytes,
        &sb,
        checksum,
        None,
        Some(&extension),
    );
    let text = report.to_string();
    let expected_sum = format!("expected {:x}", checksum.computed);
    assert!(
        text.contains(&format!("Checksum : 1a02ebf4 - {expected_sum}")),
        "{text}"
    );
    assert!(text.contains("         Layout : near=2\n"), "{text}");
    assert!(text.contains("     Array Size : 47104 KiB"), "{text}");
    assert!(text.contains("raidctl extension :\n"), "{text}");
    assert!(text.contains("     Cache Mode : write-through\n"), "{text}");
    assert!(
        text.contains("  Rebuild Speed : min default, max default\n"),
        "{text}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["array_uuid"], report.array_uuid.as_str());
    assert_eq!(json["data_offset_sectors"], 2048);
    assert_eq!(json["checksum_ok"], false);
    assert_eq!(json["array_size_kib"], 47104);
    assert_eq!(json["used_dev_size_sectors"], serde_json::Value::Null);
    assert_eq!(json["extension"]["cache_mode"], "write-through");
    assert_eq!(json["bad_block_log"]["offset_sectors"], 16);
    assert_eq!(json["device_role"], "Active device 1");
    let damaged = report.with_extension_error(&MetadataError::ExtensionBadVersion(9));
    assert!(damaged
        .to_string()
        .contains("raidctl extension : damaged: raidctl extension block version 9"));
}

/// A scratch file that removes itself.
struct TempImage(PathBuf);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `regions` (byte offset, bytes) into a sparse file of `size` bytes.
fn write_image(tag: &str, size: u64, regions: &[(u64, &[u8])]) -> TempImage {
    use std::io::{Seek, SeekFrom, Write};
    let path = std::env::temp_dir().join(format!("raidcore-meta-{}-{tag}.img", std::process::id()));
    let image = TempImage(path);
    let mut file = std::fs::File::create(&image.0).unwrap();
    file.set_len(size).unwrap();
    for (offset, bytes) in regions {
        file.seek(SeekFrom::Start(*offset)).unwrap();
        file.write_all(bytes).unwrap();
    }
    image
}

/// `mdadm --examine` output for an image, or None when mdadm is not installed.
fn mdadm_examine(image: &TempImage) -> Option<String> {
    let output = Command::new("mdadm")
        .arg("--examine")
        .arg(&image.0)
        .env("TZ", "UTC")
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "mdadm --examine failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

/// Every line mdadm printed (but the path line) must be in our text, byte for byte.
fn assert_same_lines(mdadm: &str, ours: &str, what: &str) {
    for line in mdadm.lines().skip(1).filter(|line| !line.trim().is_empty()) {
        assert!(
            ours.lines().any(|our| our == line),
            "{what}: mdadm line {line:?} missing in\n{ours}"
        );
    }
}

/// Goal: against the real mdadm (when installed), our report has every line mdadm prints for
/// every fixture member.
#[test]
fn text_matches_real_mdadm_for_every_fixture() {
    for member in fixtures::all().values() {
        let image = write_image(&member.name, member.device_bytes, &[(0, &member.head)]);
        let Some(mdadm) = mdadm_examine(&image) else {
            eprintln!("mdadm not installed: skipping the comparison with mdadm --examine");
            return;
        };
        assert_same_lines(&mdadm, &report_for(&member.name).to_string(), &member.name);
    }
}

/// Goal: mdadm reads what our builder writes (checksum correct, bitmap, bad-block log,
/// layout), including an odd max_dev, and our extension block does not disturb it.
#[test]
fn mdadm_reads_what_we_create() {
    let dev_bytes: u64 = 24 << 20;
    let dev_sectors = dev_bytes / 512;
    let params = CreateParams {
        name: "testhost:ours".to_string(),
        uuid: *b"0123456789abcdef",
        level: 5,
        layout: 2,
        chunk_sectors: 128,
        raid_disks: 3,
        roles: vec![
            Role::Active(0),
            Role::Active(1),
            Role::Active(2),
            Role::Spare,
        ],
        size_sectors: (dev_sectors - 2048) / 128 * 128,
        data_offset_sectors: default_data_offset_sectors(dev_sectors, 128),
        bitmap: true,
        bitmap_chunk_bytes: None,
        resync_offset: u64::MAX,
        ctime_secs: 1_750_000_000,
        extra_features: 0,
    };
    for (dev, odd_roles) in [(1u32, false), (3, false), (0, true)] {
        let mut sb = new_member_superblock(&params, dev, dev_sectors, [0x5a; 16]).unwrap();
        if odd_roles {
            sb.dev_roles.truncate(5);
        }
        let bitmap = create_bitmap_superblock(&sb, None).unwrap();
        let extension = Extension {
            created_by: "raidctl test".to_string(),
            ..Extension::default()
        };
        let offset = extension_offset_sectors(&sb, Some(&bitmap)).unwrap();
        let sb_bytes = sb.encode();
        let bitmap_bytes = bitmap.encode_initial_area();
        let extension_bytes = extension.encode(&sb.set_uuid).unwrap();
        let image = write_image(
            &format!("create{dev}"),
            dev_bytes,
            &[
                (4096, &sb_bytes),
                (16 * 512, &bitmap_bytes),
                (offset * 512, &extension_bytes),
            ],
        );
        let (decoded, checksum) = Superblock::decode_unchecked(&sb_bytes).unwrap();
        let report = ExamineReport::new(
            "x",
            dev_bytes,
            &decoded,
            checksum,
            Some(&bitmap),
            Some(&extension),
        );
        let ours = report.to_string();
        assert!(ours.contains("     Created By : raidctl test\n"), "{ours}");
        let Some(mdadm) = mdadm_examine(&image) else {
            eprintln!("mdadm not installed: skipping the comparison with mdadm --examine");
            return;
        };
        assert!(
            mdadm.contains(&format!("Checksum : {:x} - correct", checksum.stored)),
            "{mdadm}"
        );
        assert!(
            mdadm.contains("Internal Bitmap : 8 sectors from superblock"),
            "{mdadm}"
        );
        assert!(mdadm.contains("Name : testhost:ours"), "{mdadm}");
        assert_same_lines(&mdadm, &ours, &format!("created member {dev}"));
    }
}
