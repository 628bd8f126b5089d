//! Create-time builders: do we lay out a new member the way mdadm laid out the fixtures?

use super::fixtures;
use crate::metadata::*;

/// CreateParams that describe an existing (md-created) array, from one of its superblocks.
fn params_like(sb: &Superblock, dev_sectors: u64) -> CreateParams {
    let roles = (0..sb.raid_disks).map(|dev| sb.role_of(dev)).collect();
    CreateParams {
        name: sb.name(),
        uuid: sb.set_uuid,
        level: sb.level,
        layout: sb.layout,
        chunk_sectors: sb.chunk_sectors,
        raid_disks: sb.raid_disks,
        roles,
        size_sectors: sb.size_sectors,
        data_offset_sectors: default_data_offset_sectors(dev_sectors, sb.chunk_sectors),
        bitmap: sb.has_feature(FEATURE_BITMAP_OFFSET),
        bitmap_chunk_bytes: None,
        resync_offset: u64::MAX,
        ctime_secs: sb.ctime_secs(),
        extra_features: sb.feature_map & FEATURE_RAID0_LAYOUT,
    }
}

/// Goal: for every fixture member, our builder and mdadm's default data_offset rule give the
/// same placement md wrote: data_offset, bitmap offset, bad-block log, max_dev, features,
/// data_size, roles. Method: rebuild each member from its own array parameters and compare.
#[test]
fn builder_reproduces_md_layout_for_every_fixture() {
    for member in fixtures::all().values() {
        let md = Superblock::decode(member.superblock_block()).unwrap();
        if member.name.starts_with("raid5-4-degraded") {
            continue; // Its roles, events and resync_offset changed after create.
        }
        let dev_sectors = member.device_bytes / 512;
        let params = params_like(&md, dev_sectors);
        assert_eq!(
            params.data_offset_sectors, md.data_offset_sectors,
            "{}: data_offset",
            member.name
        );
        let ours = new_member_superblock(&params, md.dev_number, dev_sectors, md.device_uuid)
            .unwrap_or_else(|error| panic!("{}: {error}", member.name));
        let what = &member.name;
        assert_eq!(ours.feature_map, md.feature_map, "{what}");
        assert_eq!(
            ours.bitmap_offset_sectors, md.bitmap_offset_sectors,
            "{what}"
        );
        assert_eq!(ours.bblog_offset_sectors, md.bblog_offset_sectors, "{what}");
        assert_eq!(ours.bblog_size_sectors, md.bblog_size_sectors, "{what}");
        assert_eq!(ours.bblog_shift, md.bblog_shift, "{what}");
        assert_eq!(ours.max_dev(), md.max_dev(), "{what}");
        assert_eq!(ours.dev_roles, md.dev_roles, "{what}");
        assert_eq!(ours.data_size_sectors, md.data_size_sectors, "{what}");
        assert_eq!(ours.size_sectors, md.size_sectors, "{what}");
        assert_eq!(ours.events, 0, "{what}");
        assert_eq!(ours.ctime, ours.utime, "{what}");
        // The rest of the struct equals md's apart from what the kernel changed since.
        let mut aligned = md.clone();
        aligned.events = 0;
        aligned.utime = aligned.ctime;
        assert_eq!(ours, aligned, "{what}");
        // Our extension block fits between md's metadata and the data.
        assert_eq!(extension_offset_sectors(&ours, None), Ok(2040), "{what}");
    }
}

fn raid5_params(devices: usize) -> CreateParams {
    CreateParams {
        name: "host:vol".to_string(),
        uuid: [0x42; 16],
        level: 5,
        layout: 2,
        chunk_sectors: 1024,
        raid_disks: 3,
        roles: (0..devices)
            .map(|dev| {
                if dev < 3 {
                    Role::Active(dev as u16)
                } else {
                    Role::Spare
                }
            })
            .collect(),
        size_sectors: 0,
        data_offset_sectors: 0,
        bitmap: true,
        bitmap_chunk_bytes: None,
        resync_offset: u64::MAX,
        ctime_secs: 1_700_000_000,
        extra_features: 0,
    }
}

/// Goal: a large member gets mdadm's big-device layout, with a bitmap sized for it.
#[test]
fn large_member_layout() {
    let dev_sectors = 4u64 << 31; // 4 TiB
    let mut params = raid5_params(4);
    params.data_offset_sectors = default_data_offset_sectors(dev_sectors, 1024);
    assert_eq!(params.data_offset_sectors, 264_192);
    params.size_sectors = (dev_sectors - params.data_offset_sectors) / 1024 * 1024;
    let sb = new_member_superblock(&params, 3, dev_sectors, [1; 16]).unwrap();
    assert_eq!(sb.role_of(3), Role::Spare);
    assert_eq!(sb.own_role(), Role::Spare);
    assert_eq!(sb.max_dev(), 128);
    assert_eq!(sb.array_state_string(), "AAA");
    let bitmap = create_bitmap_superblock(&sb, None).unwrap();
    // 4 TiB / 64 MiB = 65536 bits = 8 KiB, fits the 128 KiB reserve.
    assert_eq!(bitmap.chunk_bytes, 64 << 20);
    assert_eq!(bitmap.bytes_on_disk(), 12288);
    assert_eq!(sb.bitmap_offset_sectors, 8);
    assert_eq!(sb.bblog_offset_sectors, 8 + 24);
    assert_eq!(extension_offset_sectors(&sb, Some(&bitmap)), Ok(264_184));
    assert_eq!(sb.data_size_sectors, dev_sectors - 264_192);
    assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
}

/// Goal: mdadm's max_dev formula.
#[test]
fn max_dev_formula() {
    assert_eq!(max_dev_for(0), 128);
    assert_eq!(max_dev_for(1), 128);
    assert_eq!(max_dev_for(128), 128);
    assert_eq!(max_dev_for(129), 384);
    assert_eq!(max_dev_for(1920), 1920);
    assert_eq!(max_dev_for(u32::MAX), 1920);
}

/// Goal: when the log does not fit after the bitmap reserve it goes directly below our
/// extension block, and when nothing fits there is no log, never an overlap.
#[test]
fn bad_block_log_fallback() {
    let mut params = raid5_params(3);
    params.bitmap = false;
    params.size_sectors = 1000;
    // Metadata: superblock 8..16, bitmap reserve 8 sectors, log wanted at 24..32,
    // extension at data_offset - 8.
    params.data_offset_sectors = 40;
    let sb = new_member_superblock(&params, 0, 2048, [1; 16]).unwrap();
    assert_eq!(sb.bblog_offset_sectors, 16);
    params.data_offset_sectors = 36;
    let sb = new_member_superblock(&params, 0, 2048, [1; 16]).unwrap();
    assert_eq!(
        (sb.bblog_offset_sectors, sb.bblog_size_sectors),
        (20 - 8, 8)
    );
    params.data_offset_sectors = 31;
    let sb = new_member_superblock(&params, 0, 2048, [1; 16]).unwrap();
    assert_eq!((sb.bblog_offset_sectors, sb.bblog_size_sectors), (0, 0));
    params.data_offset_sectors = 24;
    let sb = new_member_superblock(&params, 0, 2048, [1; 16]).unwrap();
    assert_eq!((sb.bblog_offset_sectors, sb.bblog_size_sectors), (0, 0));
    assert_eq!(extension_offset_sectors(&sb, None), Ok(16));
}

/// Goal: parameters md would refuse, or that leave no room for us, are errors.
#[test]
fn refuses_bad_parameters() {
    let mut params = raid5_params(3);
    params.size_sectors = 1000;
    params.data_offset_sectors = 2048;
    assert!(new_member_superblock(&params, 0, 4096, [1; 16]).is_ok());
    assert!(matches!(
        new_member_superblock(&params, 0, 2048 + 999, [1; 16]),
        Err(MetadataError::DeviceTooSmall { .. })
    ));
    assert!(new_member_superblock(&params, 3, 4096, [1; 16]).is_err());
    let mut raid0 = params.clone();
    raid0.level = 0;
    raid0.size_sectors = 0;
    assert_eq!(
        new_member_superblock(&raid0, 0, 4096, [1; 16]),
        Err(MetadataError::NoBitmapForLevel(0))
    );
    raid0.bitmap = false;
    raid0.extra_features = FEATURE_RAID0_LAYOUT;
    assert!(new_member_superblock(&raid0, 0, 4096, [1; 16]).is_ok());
    let mut wrong = params.clone();
    wrong.extra_features = FEATURE_RAID0_LAYOUT;
    assert_eq!(
        new_member_superblock(&wrong, 0, 4096, [1; 16]),
        Err(MetadataError::Raid0LayoutOnWrongLevel(5))
    );
    wrong.extra_features = FEATURE_JOURNAL;
    assert!(matches!(
        new_member_superblock(&wrong, 0, 4096, [1; 16]),
        Err(MetadataError::InvalidParams(_))
    ));
    let mut slot = params.clone();
    slot.roles[2] = Role::Active(3);
    assert!(matches!(
        new_member_superblock(&slot, 0, 4096, [1; 16]),
        Err(MetadataError::InvalidParams(_))
    ));
    let mut tight = params.clone();
    tight.data_offset_sectors = 24;
    assert!(matches!(
        new_member_superblock(&tight, 0, 4096, [1; 16]),
        Err(MetadataError::NoRoomForExtension { .. })
    ));
    let mut name = params.clone();
    name.name = "n".repeat(40);
    assert!(matches!(
        new_member_superblock(&name, 0, 4096, [1; 16]),
        Err(MetadataError::BadName(_))
    ));
}
