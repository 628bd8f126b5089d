//! Write-cache policy: the configured mode plus the battery flag decide whether writes may be
//! acknowledged from the cache.
//!
//! This follows MegaRAID's default "WriteBack, No Write Cache if Bad BBU": write-back is a wish
//! that only holds while the battery (a UPS, for us) is known to be present; with the battery
//! absent, charging or failed the array runs write-through until the flag returns (ARCHITECTURE.md,
//! durability contract). `AlwaysWriteBack` is the "Force/Always Write Back" escape hatch that
//! ignores the battery and says so in its reason. The defaults (write-back wished, battery
//! absent) make a fresh array write-through until someone declares the battery present.
//!
//! Pure: no I/O, no clocks. The daemon reads the battery word from wherever it comes from and
//! passes it through [`Battery::parse`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The configured cache mode (`raidctl cache NAME --mode ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Write-back while the battery is present, write-through otherwise.
    #[default]
    WriteBack,
    /// Always acknowledge writes only after they reached the members.
    WriteThrough,
    /// Write-back regardless of the battery: acknowledged writes can be lost on power loss.
    AlwaysWriteBack,
}

impl CacheMode {
    /// Every mode, in declaration order.
    pub const ALL: [CacheMode; 3] = [
        CacheMode::WriteBack,
        CacheMode::WriteThrough,
        CacheMode::AlwaysWriteBack,
    ];

    /// Parses `write-back`, `write-through` or `always-write-back` (trimmed, any case).
    pub fn parse(text: &str) -> Result<Self, String> {
        let word = text.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == word)
            .ok_or_else(|| {
                format!(
                    "unknown cache mode {text:?}: expected write-back, write-through or \
                     always-write-back"
                )
            })
    }

    /// The kebab-case name used on the command line, in JSON and in the metadata block.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::WriteBack => "write-back",
            CacheMode::WriteThrough => "write-through",
            CacheMode::AlwaysWriteBack => "always-write-back",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// The battery flag (`raidctl cache NAME --battery ...`, or a word a UPS daemon writes to a file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Battery {
    /// Power loss is covered: write-back is allowed.
    Present,
    /// No battery known: the safe default.
    #[default]
    Absent,
    /// Not yet able to cover a power loss (also used for learn cycles).
    Charging,
    /// Broken: treated like absent.
    Failed,
}

impl Battery {
    /// Every battery state, in declaration order.
    pub const ALL: [Battery; 4] = [
        Battery::Present,
        Battery::Absent,
        Battery::Charging,
        Battery::Failed,
    ];

    /// Parses `present`, `absent`, `charging` or `failed`, ignoring surrounding whitespace
    /// (a trailing newline from a file) and case.
    pub fn parse(text: &str) -> Result<Self, String> {
        let word = text.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == word)
            .ok_or_else(|| {
                format!(
                    "unknown battery state {:?}: expected present, absent, charging or failed",
                    text.trim()
                )
            })
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Battery::Present => "present",
            Battery::Absent => "absent",
            Battery::Charging => "charging",
            Battery::Failed => "failed",
        }
    }
}

impl fmt::Display for Battery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Battery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// What the array actually does right now, and a sentence saying why (for `raidctl status`,
/// the log and the `CacheWriteThrough` event; MegaCli's "Current Cache Policy").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effective {
    /// Writes may be acknowledged once they are in the cache.
    pub write_back: bool,
    /// Short human sentence explaining `write_back`.
    pub reason: String,
}

/// Decides the effective policy from the configured mode and the battery flag.
pub fn effective(mode: CacheMode, battery: Battery) -> Effective {
    let (write_back, reason) = match (mode, battery) {
        (CacheMode::WriteThrough, _) => (false, "configured write-through".to_string()),
        (CacheMode::WriteBack, Battery::Present) => (true, "battery present".to_string()),
        (CacheMode::WriteBack, b) => (
            false,
            format!("battery {b}: write-through until it is present"),
        ),
        (CacheMode::AlwaysWriteBack, b) => (
            true,
            format!(
                "always-write-back, battery {b}: acknowledged writes can be lost on power loss"
            ),
        ),
    };
    Effective { write_back, reason }
}

/// The configured mode and the current battery flag together; `Default` is write-back with the
/// battery absent, i.e. effectively write-through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CachePolicy {
    pub mode: CacheMode,
    pub battery: Battery,
}

impl CachePolicy {
    /// [`effective`] for this pair.
    pub fn effective(&self) -> Effective {
        effective(self.mode, self.battery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table_all_twelve_combinations() {
        use Battery::*;
        use CacheMode::*;
        let table = [
            (WriteBack, Present, true),
            (WriteBack, Absent, false),
            (WriteBack, Charging, false),
            (WriteBack, Failed, false),
            (WriteThrough, Present, false),
            (WriteThrough, Absent, false),
            (WriteThrough, Charging, false),
            (WriteThrough, Failed, false),
            (AlwaysWriteBack, Present, true),
            (AlwaysWriteBack, Absent, true),
            (AlwaysWriteBack, Charging, true),
            (AlwaysWriteBack, Failed, true),
        ];
        assert_eq!(table.len(), CacheMode::ALL.len() * Battery::ALL.len());
        for (mode, battery, wb) in table {
            let e = effective(mode, battery);
            assert_eq!(e.write_back, wb, "{mode} / {battery}: {}", e.reason);
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn reasons_are_readable_sentences() {
        use Battery::*;
        use CacheMode::*;
        assert_eq!(effective(WriteBack, Present).reason, "battery present");
        assert_eq!(
            effective(WriteBack, Absent).reason,
            "battery absent: write-through until it is present"
        );
        assert_eq!(
            effective(WriteBack, Charging).reason,
            "battery charging: write-through until it is present"
        );
        assert_eq!(
            effective(WriteBack, Failed).reason,
            "battery failed: write-through until it is present"
        );
        for b in Battery::ALL {
            assert_eq!(
                effective(WriteThrough, b).reason,
                "configured write-through"
            );
            let r = effective(AlwaysWriteBack, b).reason;
            assert!(r.contains("can be lost on power loss"), "{r}");
            assert!(r.contains(b.as_str()), "{r}");
        }
    }

    #[test]
    fn defaults_are_write_back_with_battery_absent_so_write_through() {
        assert_eq!(CacheMode::default(), CacheMode::WriteBack);
        assert_eq!(Battery::default(), Battery::Absent);
        let p = CachePolicy::default();
        assert_eq!(p.mode, CacheMode::WriteBack);
        assert_eq!(p.battery, Battery::Absent);
        assert!(!p.effective().write_back);
        assert_eq!(p.effective(), effective(p.mode, p.battery));
    }

    #[test]
    fn mode_parse_and_as_str_round_trip() {
        use CacheMode::*;
        for m in CacheMode::ALL {
            assert_eq!(CacheMode::parse(m.as_str()), Ok(m));
            assert_eq!(m.as_str().parse::<CacheMode>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        for (text, mode) in [
            ("write-back", WriteBack),
            ("write-through", WriteThrough),
            ("always-write-back", AlwaysWriteBack),
            (" Write-Back\n", WriteBack),
        ] {
            assert_eq!(CacheMode::parse(text), Ok(mode), "{text:?}");
        }
    }

    #[test]
    fn mode_parse_errors_name_the_valid_words() {
        for bad in ["", "writeback", "wb", "write_back", "write-back-always"] {
            let e = CacheMode::parse(bad).unwrap_err();
            assert!(e.contains("write-back"), "{e}");
            assert!(e.contains("write-through"), "{e}");
            assert!(e.contains("always-write-back"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn battery_parse_trims_and_ignores_case() {
        use Battery::*;
        for b in Battery::ALL {
            assert_eq!(Battery::parse(b.as_str()), Ok(b));
            assert_eq!(b.as_str().parse::<Battery>(), Ok(b));
            assert_eq!(b.to_string(), b.as_str());
        }
        for (text, battery) in [
            ("present\n", Present),
            ("  ABSENT \r\n", Absent),
            ("\tCharging", Charging),
            ("Failed\n", Failed),
        ] {
            assert_eq!(Battery::parse(text), Ok(battery), "{text:?}");
        }
    }

    #[test]
    fn battery_parse_errors_name_the_four_words() {
        for bad in ["", "\n", "ok", "optimal", "present!", "pres ent"] {
            let e = Battery::parse(bad).unwrap_err();
            for word in ["present", "absent", "charging", "failed"] {
                assert!(e.contains(word), "{e}");
            }
        }
        assert!(Battery::parse("bogus\n").unwrap_err().contains("\"bogus\""));
    }

    #[test]
    fn serde_uses_the_command_line_names() {
        for m in CacheMode::ALL {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<CacheMode>(&json).unwrap(), m);
        }
        for b in Battery::ALL {
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{}\"", b.as_str()));
            assert_eq!(serde_json::from_str::<Battery>(&json).unwrap(), b);
        }
        assert!(serde_json::from_str::<CacheMode>("\"WriteBack\"").is_err());
        let p = CachePolicy {
            mode: CacheMode::AlwaysWriteBack,
            battery: Battery::Charging,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"mode":"always-write-back","battery":"charging"}"#);
        assert_eq!(serde_json::from_str::<CachePolicy>(&json).unwrap(), p);
        let e = effective(CacheMode::WriteBack, Battery::Present);
        let back: Effective = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
