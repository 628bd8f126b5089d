//! The checks a geometry must pass before anything maps through it (member count, chunk,
//! RAID10 copies), with md's limits.

use super::*;

pub(super) fn invalid<T>(why: String) -> Result<T, LayoutError> {
    Err(LayoutError::Invalid(why))
}

pub(super) fn overflow(level: Level) -> LayoutError {
    LayoutError::Invalid(format!("{level} array size overflows 64 bits"))
}

pub(super) fn check_members(
    level: Level,
    members: usize,
    member_bytes: &[u64],
) -> Result<(), LayoutError> {
    if members < level.min_members() {
        return invalid(format!(
            "{level} needs at least {} members, got {members}",
            level.min_members()
        ));
    }
    if members > MAX_MEMBERS {
        return invalid(format!(
            "{members} members; md supports at most {MAX_MEMBERS}"
        ));
    }
    if let Some(slot) = member_bytes.iter().position(|b| b % SECTOR_BYTES != 0) {
        return invalid(format!(
            "member {slot} size {} is not a multiple of 512 bytes",
            member_bytes[slot]
        ));
    }
    let first = member_bytes[0];
    if level != Level::Raid0 {
        if let Some(slot) = member_bytes.iter().position(|&b| b != first) {
            return invalid(format!(
                "{level} member sizes must all equal sb.size: slot 0 has {first}, slot {slot} \
                 has {}",
                member_bytes[slot]
            ));
        }
    }
    Ok(())
}

pub(super) fn check_chunk(level: Level, chunk_bytes: u64) -> Result<(), LayoutError> {
    match level {
        Level::Raid1 => Ok(()),
        Level::Raid0 if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(SECTOR_BYTES) => invalid(
            format!("RAID0 chunk {chunk_bytes} must be a non-zero multiple of 512 bytes"),
        ),
        Level::Raid5 | Level::Raid6 | Level::Raid10 | Level::Ec
            if !chunk_bytes.is_power_of_two() || chunk_bytes < PAGE_BYTES =>
        {
            invalid(format!(
                "{level} chunk {chunk_bytes} must be a power of two of at least 4096 bytes"
            ))
        }
        _ => Ok(()),
    }
}

/// Checks a RAID10 layout against the member count; returns the number of copies.
pub(super) fn check_raid10(layout: Raid10Layout, members: usize) -> Result<usize, LayoutError> {
    layout.check()?;
    let copies = layout.copies();
    if copies > members {
        return invalid(format!(
            "RAID10 {} keeps {copies} copies but has only {members} members",
            layout.name()
        ));
    }
    if copies > MAX_COPIES {
        return Err(LayoutError::Unsupported(format!(
            "RAID10 {} keeps {copies} copies; at most {MAX_COPIES} are supported",
            layout.name()
        )));
    }
    Ok(copies)
}

/// Checks a k+m parity count against the member count: at least two data chunks per row
/// (one would be a mirror in disguise) and at most 256 chunks, the code's field size.
pub(super) fn check_ec(parity: usize, members: usize) -> Result<(), LayoutError> {
    let max = crate::parity::ec::MAX_PARITY;
    if !(1..=max).contains(&parity) {
        return invalid(format!(
            "k+m with {parity} parity chunks per row; use 1 to {max}"
        ));
    }
    if members < parity + 2 {
        return invalid(format!(
            "k+m with {parity} parity chunks needs at least {} members, got {members}",
            parity + 2
        ));
    }
    if members > 256 {
        return invalid(format!(
            "k+m with {members} members; the code allows at most 256"
        ));
    }
    Ok(())
}
