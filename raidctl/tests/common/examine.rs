//! `mdadm --examine` (and `raidctl examine`) output: "label : value" lines, labels
//! right-aligned with leading spaces. The first line with a label wins.

use std::path::Path;

use super::process::{cmd, run};
use super::tools::require;

/// One device's examine output.
pub struct Examined {
    /// The command that printed it, for failure messages.
    pub what: String,
    pub text: String,
}

impl Examined {
    pub fn field(&self, label: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            let (l, v) = line.split_once(" : ")?;
            (l.trim() == label).then(|| v.trim())
        })
    }

    pub fn has(&self, label: &str) -> bool {
        self.field(label).is_some()
    }

    pub fn get(&self, label: &str) -> &str {
        self.field(label).unwrap_or_else(|| {
            panic!(
                "{}: no {label:?} line in the output:\n{}",
                self.what, self.text
            )
        })
    }

    pub fn events(&self) -> u64 {
        self.get("Events")
            .parse()
            .unwrap_or_else(|_| panic!("{}: odd Events line:\n{}", self.what, self.text))
    }

    /// The "Array State" slots, without mdadm's legend.
    pub fn array_state(&self) -> &str {
        self.get("Array State")
            .split_whitespace()
            .next()
            .unwrap_or_default()
    }

    /// The whole line carrying `label`, leading spaces included.
    pub fn line(&self, label: &str) -> &str {
        self.text
            .lines()
            .find(|l| {
                l.split_once(" : ")
                    .is_some_and(|(left, _)| left.trim() == label)
            })
            .unwrap_or_else(|| panic!("{}: no {label:?} line:\n{}", self.what, self.text))
    }

    /// Asserts "Checksum : <hex> - correct".
    pub fn assert_checksum_correct(&self) {
        let value = self.get("Checksum");
        let (hex, verdict) = value
            .split_once(" - ")
            .unwrap_or_else(|| panic!("{}: odd Checksum value {value:?}", self.what));
        assert!(
            !hex.is_empty() && u32::from_str_radix(hex, 16).is_ok(),
            "{}: checksum {hex:?} is not hex",
            self.what
        );
        assert_eq!(
            verdict, "correct",
            "{}: checksum not correct:\n{}",
            self.what, self.text
        );
    }
}

/// `mdadm --examine DEV`, which must succeed.
pub fn mdadm_examine(dev: impl AsRef<Path>) -> Examined {
    let dev = dev.as_ref().display().to_string();
    let ran = run(cmd(require("mdadm", "mdadm"), &["--examine", &dev]));
    assert!(ran.success(), "mdadm --examine failed:\n{}", ran.describe());
    Examined {
        what: format!("mdadm --examine {dev}"),
        text: ran.stdout,
    }
}
