//! md timestamps (`ctime`, `utime`) and their text form.
//!
//! md packs a timestamp into 64 bits: the low 40 bits are Unix seconds and the high 24 bits are
//! microseconds (or 0). mdadm prints times with `ctime(3)`; we have no time-zone database in a
//! pure module, so the text form here is UTC in the same shape ("Sat Nov 21 22:51:54 2026").

/// Mask of the seconds part of an md timestamp.
const SECONDS_MASK: u64 = (1 << 40) - 1;
/// Largest microsecond value the 24-bit field holds.
const MICROS_MAX: u32 = (1 << 24) - 1;

/// Packs Unix seconds and microseconds into md's 64-bit timestamp.
///
/// Seconds above 40 bits and microseconds above 24 bits cannot be stored; they are truncated
/// (40 bits of seconds reach the year 36812, so this only matters for nonsense input).
pub fn md_time(unix_secs: u64, micros: u32) -> u64 {
    let micros = u64::from(micros.min(MICROS_MAX));
    (unix_secs & SECONDS_MASK) | (micros << 40)
}

/// The Unix seconds of an md timestamp.
pub fn md_time_secs(raw: u64) -> u64 {
    raw & SECONDS_MASK
}

/// The microseconds of an md timestamp.
pub fn md_time_micros(raw: u64) -> u32 {
    // The shift leaves 24 bits, which always fit in u32.
    u32::try_from(raw >> 40).unwrap_or(MICROS_MAX)
}

/// Formats Unix seconds like `ctime(3)` in UTC: "Sat Nov 21 22:51:54 2026".
pub(crate) fn format_unix_utc(unix_secs: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // Day 0 (1970-01-01) was a Thursday, the first entry of WEEKDAYS.
    let weekday = WEEKDAYS.get((days % 7) as usize).copied().unwrap_or("???");
    let month_name = MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("???");
    format!(
        "{weekday} {month_name} {day:2} {:02}:{:02}:{:02} {year}",
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// Converts days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic
/// Gregorian calendar. Works in 400-year eras so the arithmetic stays exact.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: packing and unpacking keep seconds and microseconds apart.
    #[test]
    fn pack_unpack() {
        let raw = md_time(1_700_000_000, 123_456);
        assert_eq!(md_time_secs(raw), 1_700_000_000);
        assert_eq!(md_time_micros(raw), 123_456);
        assert_eq!(md_time(5, 0), 5);
    }

    /// Goal: the text form matches what mdadm printed for a fixture (host in UTC).
    #[test]
    fn formats_like_ctime() {
        assert_eq!(format_unix_utc(0x6b02208a), "Sat Nov 21 22:51:54 2026");
        assert_eq!(format_unix_utc(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(format_unix_utc(951_782_400), "Tue Feb 29 00:00:00 2000");
        // Must not panic on the largest 40-bit value.
        let _ = format_unix_utc(md_time_secs(u64::MAX));
    }
}
