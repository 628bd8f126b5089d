//! Sizes as people type them: `512K`, `64M`, `1.5G`, `4096` (bytes).

/// Parses a size with an optional K/M/G/T suffix (powers of 1024, `B`/`iB` tolerated).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper.trim_end_matches("IB").trim_end_matches('B');
    let (number, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        Some('T') => (&body[..body.len() - 1], 40),
        Some('S') => {
            return Err(format!(
                "invalid size {text:?}: sectors are not accepted; use K, M, G or T"
            ))
        }
        _ => (body, 0),
    };
    let bad =
        || format!("invalid size {text:?}: expected a number with an optional K, M, G or T suffix");
    if number.is_empty() {
        return Err(bad());
    }
    let value = if let Ok(n) = number.parse::<u64>() {
        n.checked_mul(1u64 << shift)
            .ok_or_else(|| format!("size {text:?} is too large"))?
    } else {
        let f: f64 = number.parse().map_err(|_| bad())?;
        if !f.is_finite() || f < 0.0 {
            return Err(bad());
        }
        let v = f * (1u64 << shift) as f64;
        if v >= u64::MAX as f64 {
            return Err(format!("size {text:?} is too large"));
        }
        v as u64
    };
    Ok(value)
}

/// 1536 → "1.5K", 67108864 → "64M": the shortest exact-ish binary rendering for people.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];
    for (unit, shift) in UNITS {
        let base = 1u64 << shift;
        if bytes >= base {
            let whole = bytes / base;
            let tenth = (bytes % base) * 10 / base;
            return if tenth == 0 {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{tenth}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1K").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(512 * 1024), "512K");
        assert_eq!(format_size(3 << 29), "1.5G");
        assert_eq!(format_size(100), "100B");
    }
}
