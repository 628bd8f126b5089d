//! The words mdadm prints for numbers: levels, layouts, UUIDs and human sizes.
//!
//! Kept in one small table-driven file so `examine` and error messages name things the way an
//! md user already knows them (mdadm `maps.c`, `util.c`).

/// md UUID text as mdadm prints it: the 16 raw bytes in stored order, four groups of four.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut text = String::with_capacity(35);
    for (index, byte) in uuid.iter().enumerate() {
        if index > 0 && index % 4 == 0 {
            text.push(':');
        }
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// The name of a RAID level ("raid5"), or "-unknown-" as mdadm says.
pub fn level_name(level: i32) -> String {
    match level {
        -5 => "faulty".to_string(),
        -4 => "multipath".to_string(),
        -1 => "linear".to_string(),
        0 | 1 | 4 | 5 | 6 | 10 => format!("raid{level}"),
        crate::layout::EC_MD_LEVEL => "k+m erasure code (raidctl's; md cannot run it)".to_string(),
        _ => "-unknown-".to_string(),
    }
}

/// RAID4/5/6 algorithm names by layout code (mdadm `r5layout`, `r6layout`).
fn raid56_layout_name(layout: u32) -> Option<&'static str> {
    Some(match layout {
        0 => "left-asymmetric",
        1 => "right-asymmetric",
        2 => "left-symmetric",
        3 => "right-symmetric",
        4 => "parity-first",
        5 => "parity-last",
        8 => "ddf-zero-restart",
        9 => "ddf-N-restart",
        10 => "ddf-N-continue",
        16 => "left-asymmetric-6",
        17 => "right-asymmetric-6",
        18 => "left-symmetric-6",
        19 => "right-symmetric-6",
        20 => "parity-first-6",
        _ => return None,
    })
}

/// RAID10 layout text: "near=2", "far=2", "offset=2", or combinations like mdadm prints.
fn raid10_layout_name(layout: u32) -> String {
    let near = layout & 0xff;
    let far = (layout >> 8) & 0xff;
    let offset = layout & 0x1_0000 != 0;
    let mut parts = Vec::new();
    if near != 1 {
        parts.push(format!("near={near}"));
    }
    if far != 1 {
        if offset {
            parts.push(format!("offset={far}"));
        } else {
            parts.push(format!("far={far}"));
        }
    }
    if parts.is_empty() {
        // near=1, far=1 is a single copy; md refuses it, but say what is stored.
        parts.push("near=1".to_string());
    }
    parts.join(" ")
}

/// The layout text mdadm's --examine prints for this level, or None when it prints no
/// "Layout" line. RAID0's layout only means something with feature 0x1000.
pub fn layout_name(level: i32, layout: u32, raid0_layout_feature: bool) -> Option<String> {
    match level {
        0 if raid0_layout_feature => Some(
            match layout {
                0 => "-unknown-",
                1 => "original",
                2 => "alternate",
                _ => "-unknown-",
            }
            .to_string(),
        ),
        4..=6 => Some(
            raid56_layout_name(layout)
                .unwrap_or("-unknown-")
                .to_string(),
        ),
        10 => Some(raid10_layout_name(layout)),
        _ => None,
    }
}

/// The layout text of an array's superblock: mdadm's for md levels (`layout_name`); for a
/// k+m array what md has no words for: k, m and how the parity rotates.
pub fn superblock_layout_name(sb: &super::Superblock) -> Option<String> {
    if sb.level == crate::layout::EC_MD_LEVEL {
        let k = sb.raid_disks.saturating_sub(sb.layout);
        return Some(format!(
            "k={k} data + m={} parity chunks per row; the row turns one slot left per stripe \
             with its parity chunks side by side before the data (left-symmetric)",
            sb.layout
        ));
    }
    layout_name(
        sb.level,
        sb.layout,
        sb.has_feature(super::FEATURE_RAID0_LAYOUT),
    )
}

/// A size in bytes as mdadm's `human_size`: " (23.00 MiB 24.12 MB)", empty below ~5 MB.
///
/// Binary and decimal units side by side, two decimals, rounded half up.
pub(crate) fn human_size(bytes: u64) -> String {
    const KIB: u128 = 1024;
    let bytes_wide = u128::from(bytes);
    if bytes_wide < 5000 * KIB {
        return String::new();
    }
    let (binary_unit, binary_name, decimal_unit, decimal_name) = if bytes_wide < 2 * KIB.pow(3) {
        (KIB.pow(2), "MiB", 1_000_000u128, "MB")
    } else if bytes_wide < 2 * KIB.pow(4) {
        (KIB.pow(3), "GiB", 1_000_000_000, "GB")
    } else {
        (KIB.pow(4), "TiB", 1_000_000_000_000, "TB")
    };
    // Half-up rounding to hundredths of a unit.
    let hundredths = |unit: u128| (bytes_wide * 200 / unit).div_ceil(2);
    let binary = hundredths(binary_unit);
    let decimal = hundredths(decimal_unit);
    format!(
        " ({}.{:02} {binary_name} {}.{:02} {decimal_name})",
        binary / 100,
        binary % 100,
        decimal / 100,
        decimal % 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the texts match what mdadm 4.2 printed for the fixtures.
    #[test]
    fn names_match_mdadm() {
        assert_eq!(layout_name(5, 2, false).as_deref(), Some("left-symmetric"));
        assert_eq!(layout_name(10, 0x102, false).as_deref(), Some("near=2"));
        assert_eq!(layout_name(10, 0x201, false).as_deref(), Some("far=2"));
        assert_eq!(layout_name(10, 0x10201, false).as_deref(), Some("offset=2"));
        assert_eq!(layout_name(0, 1, true).as_deref(), Some("original"));
        assert_eq!(layout_name(0, 1, false), None);
        assert_eq!(layout_name(1, 0, false), None);
        assert_eq!(level_name(10), "raid10");
        assert_eq!(level_name(7), "-unknown-");
        assert_eq!(human_size(47104 * 512), " (23.00 MiB 24.12 MB)");
        assert_eq!(human_size(70656 * 1024), " (69.00 MiB 72.35 MB)");
        assert_eq!(human_size(1024), "");
        assert!(human_size(u64::MAX).ends_with("TB)"));
        let uuid = [
            0xb6, 0xb0, 0x09, 0x09, 0x70, 0xb9, 0x31, 0x71, 0x0e, 0x95, 0xe9, 0x48, 0x0c, 0x10,
            0x97, 0xb5,
        ];
        assert_eq!(format_uuid(&uuid), "b6b00909:70b93171:0e95e948:0c1097b5");
    }
}
