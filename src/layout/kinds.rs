//! The md level and layout encodings, and their mdadm names.
//!
//! Everything here is a plain value type that converts to and from the numbers stored in the
//! v1.2 superblock (`level`, `layout`) and the names `mdadm` prints and accepts. Geometry
//! checks that need the member count (copies versus members, chunk rules) live in
//! [`super::Geometry::new`], not here.

use std::fmt;

/// Why a level, layout or geometry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// A valid md configuration that this engine does not implement.
    Unsupported(String),
    /// A value md itself would reject, or one that cannot describe an array.
    Invalid(String),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Unsupported(why) => write!(f, "unsupported layout: {why}"),
            LayoutError::Invalid(why) => write!(f, "invalid layout: {why}"),
        }
    }
}

impl std::error::Error for LayoutError {}

fn unsupported<T>(why: impl Into<String>) -> Result<T, LayoutError> {
    Err(LayoutError::Unsupported(why.into()))
}

fn invalid<T>(why: impl Into<String>) -> Result<T, LayoutError> {
    Err(LayoutError::Invalid(why.into()))
}

/// RAID level, as far as this engine implements one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// Striping without redundancy (md level 0).
    Raid0,
    /// Mirroring (md level 1).
    Raid1,
    /// Striping with rotating XOR parity (md level 5).
    Raid5,
    /// Striping with two rotating parities, P (XOR) and Q (Reed-Solomon) (md level 6).
    Raid6,
    /// Striped mirrors: near, far and offset copies (md level 10).
    Raid10,
    /// k data and m parity chunks per row, any m of them recoverable (ours: md has no such
    /// level, and refuses to run it; see [`EC_MD_LEVEL`]).
    Ec,
}

/// The superblock `level` of a k+m array: a number no md personality answers to, so
/// `mdadm --examine` shows "-unknown-" and md will not start the array, while everything else
/// in the superblock stays md's. The `layout` field holds m.
pub const EC_MD_LEVEL: i32 = 0xEC;

impl Level {
    /// Decodes the signed `level` field of the superblock.
    pub fn from_md(level: i32) -> Result<Level, LayoutError> {
        match level {
            0 => Ok(Level::Raid0),
            1 => Ok(Level::Raid1),
            5 => Ok(Level::Raid5),
            6 => Ok(Level::Raid6),
            10 => Ok(Level::Raid10),
            EC_MD_LEVEL => Ok(Level::Ec),
            4 => unsupported("RAID4 (md level 4) is not supported"),
            -1 => unsupported("linear arrays (md level -1) are not supported"),
            -4 => unsupported("multipath arrays (md level -4) are not supported"),
            -5 => unsupported("faulty test arrays (md level -5) are not supported"),
            other => unsupported(format!("unknown md level {other}")),
        }
    }

    /// The value of the superblock `level` field.
    pub fn to_md(self) -> i32 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Raid10 => 10,
            Level::Ec => EC_MD_LEVEL,
        }
    }

    /// Fewest `raid_disks` an existing array of this level may have (md allows a one-disk
    /// RAID0; it allows a two-disk RAID5 too, but that is a mirror in disguise and we refuse it).
    pub fn min_members(self) -> usize {
        match self {
            Level::Raid0 => 1,
            Level::Raid1 | Level::Raid10 => 2,
            Level::Raid5 | Level::Ec => 3,
            Level::Raid6 => 4,
        }
    }

    /// Fewest members we offer when creating a new array: a one-disk RAID0 is pointless.
    pub fn min_create_members(self) -> usize {
        match self {
            Level::Raid0 => 2,
            other => other.min_members(),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Ec => f.write_str("ec"),
            md => write!(f, "raid{}", md.to_md()),
        }
    }
}

/// Where RAID5 puts the parity chunk of each stripe and in which order the data chunks follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raid5Algorithm {
    /// md 0: parity rotates down from the last disk, data fills the other disks in order.
    LeftAsymmetric,
    /// md 1: parity rotates up from disk 0, data fills the other disks in order.
    RightAsymmetric,
    /// md 2 (the md default): parity rotates down, data starts on the disk after parity.
    LeftSymmetric,
    /// md 3: parity rotates up, data starts on the disk after parity.
    RightSymmetric,
    /// md 4: parity always on disk 0.
    ParityFirst,
    /// md 5: parity always on the last disk (the RAID4 layout).
    ParityLast,
}

const RAID5_ALGORITHMS: [Raid5Algorithm; 6] = [
    Raid5Algorithm::LeftAsymmetric,
    Raid5Algorithm::RightAsymmetric,
    Raid5Algorithm::LeftSymmetric,
    Raid5Algorithm::RightSymmetric,
    Raid5Algorithm::ParityFirst,
    Raid5Algorithm::ParityLast,
];

impl Raid5Algorithm {
    /// Every algorithm, in md code order.
    pub const ALL: [Raid5Algorithm; 6] = RAID5_ALGORITHMS;

    /// Decodes the superblock `layout` field of a RAID5 array.
    pub fn from_md(layout: u32) -> Result<Raid5Algorithm, LayoutError> {
        match layout {
            0..=5 => Ok(RAID5_ALGORITHMS[layout as usize]),
            8..=10 | 16..=20 => unsupported(format!(
                "RAID5 layout {layout} is a DDF or RAID6-only algorithm"
            )),
            other => invalid(format!("unknown RAID5 layout {other}")),
        }
    }

    /// The superblock `layout` value.
    pub fn to_md(self) -> u32 {
        self as u32
    }

    /// The name mdadm prints and accepts.
    pub fn name(self) -> &'static str {
        match self {
            Raid5Algorithm::LeftAsymmetric => "left-asymmetric",
            Raid5Algorithm::RightAsymmetric => "right-asymmetric",
            Raid5Algorithm::LeftSymmetric => "left-symmetric",
            Raid5Algorithm::RightSymmetric => "right-symmetric",
            Raid5Algorithm::ParityFirst => "parity-first",
            Raid5Algorithm::ParityLast => "parity-last",
        }
    }

    /// Parses an mdadm name or one of the short forms `la`, `ra`, `ls`, `rs`.
    pub fn parse(text: &str) -> Result<Raid5Algorithm, LayoutError> {
        let text = text.trim();
        let short = match text {
            "la" => Some(Raid5Algorithm::LeftAsymmetric),
            "ra" => Some(Raid5Algorithm::RightAsymmetric),
            "ls" | "default" => Some(Raid5Algorithm::LeftSymmetric),
            "rs" => Some(Raid5Algorithm::RightSymmetric),
            _ => None,
        };
        short
            .or_else(|| RAID5_ALGORITHMS.into_iter().find(|a| a.name() == text))
            .ok_or_else(|| LayoutError::Invalid(format!("unknown RAID5 layout name {text:?}")))
    }
}

/// Where RAID6 puts P and Q of each stripe and in which order the data chunks follow (md's
/// algorithms except the DDF ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raid6Algorithm {
    /// md 0: P rotates down from the last disk, Q after it (wrapping to disk 0).
    LeftAsymmetric,
    /// md 1: P rotates up from disk 0, Q after it.
    RightAsymmetric,
    /// md 2 (the md default): P rotates down, Q after it, data starts after Q.
    LeftSymmetric,
    /// md 3: P rotates up, Q after it, data starts after Q.
    RightSymmetric,
    /// md 4: P on disk 0, Q on disk 1.
    ParityFirst,
    /// md 5: P and Q on the last two disks.
    ParityLast,
    /// md 16: RAID5 left-asymmetric over the first N-1 disks, Q on the last.
    LeftAsymmetric6,
    /// md 17: RAID5 right-asymmetric over the first N-1 disks, Q on the last.
    RightAsymmetric6,
    /// md 18: RAID5 left-symmetric over the first N-1 disks, Q on the last.
    LeftSymmetric6,
    /// md 19: RAID5 right-symmetric over the first N-1 disks, Q on the last.
    RightSymmetric6,
    /// md 20: P on disk 0, Q on the last.
    ParityFirst6,
}

impl Raid6Algorithm {
    /// Every algorithm, in md code order.
    pub const ALL: [Raid6Algorithm; 11] = [
        Raid6Algorithm::LeftAsymmetric,
        Raid6Algorithm::RightAsymmetric,
        Raid6Algorithm::LeftSymmetric,
        Raid6Algorithm::RightSymmetric,
        Raid6Algorithm::ParityFirst,
        Raid6Algorithm::ParityLast,
        Raid6Algorithm::LeftAsymmetric6,
        Raid6Algorithm::RightAsymmetric6,
        Raid6Algorithm::LeftSymmetric6,
        Raid6Algorithm::RightSymmetric6,
        Raid6Algorithm::ParityFirst6,
    ];

    /// Decodes the superblock `layout` field of a RAID6 array.
    pub fn from_md(layout: u32) -> Result<Raid6Algorithm, LayoutError> {
        match layout {
            0..=5 => Ok(Self::ALL[layout as usize]),
            16..=20 => Ok(Self::ALL[layout as usize - 10]),
            8..=10 => unsupported(format!(
                "RAID6 layout {layout} is a DDF rotating layout (made for DDF containers)"
            )),
            other => invalid(format!("unknown RAID6 layout {other}")),
        }
    }

    /// The superblock `layout` value.
    pub fn to_md(self) -> u32 {
        let i = Self::ALL.iter().position(|a| *a == self).expect("listed") as u32;
        if i < 6 {
            i
        } else {
            i + 10
        }
    }

    /// The name mdadm prints and accepts.
    pub fn name(self) -> &'static str {
        match self {
            Raid6Algorithm::LeftAsymmetric => "left-asymmetric",
            Raid6Algorithm::RightAsymmetric => "right-asymmetric",
            Raid6Algorithm::LeftSymmetric => "left-symmetric",
            Raid6Algorithm::RightSymmetric => "right-symmetric",
            Raid6Algorithm::ParityFirst => "parity-first",
            Raid6Algorithm::ParityLast => "parity-last",
            Raid6Algorithm::LeftAsymmetric6 => "left-asymmetric-6",
            Raid6Algorithm::RightAsymmetric6 => "right-asymmetric-6",
            Raid6Algorithm::LeftSymmetric6 => "left-symmetric-6",
            Raid6Algorithm::RightSymmetric6 => "right-symmetric-6",
            Raid6Algorithm::ParityFirst6 => "parity-first-6",
        }
    }

    /// Parses an mdadm name or one of the short forms `la`, `ra`, `ls`, `rs` (with `-6`).
    pub fn parse(text: &str) -> Result<Raid6Algorithm, LayoutError> {
        let text = text.trim();
        let long = match text {
            "la" => "left-asymmetric",
            "ra" => "right-asymmetric",
            "ls" | "default" => "left-symmetric",
            "rs" => "right-symmetric",
            "la-6" => "left-asymmetric-6",
            "ra-6" => "right-asymmetric-6",
            "ls-6" => "left-symmetric-6",
            "rs-6" => "right-symmetric-6",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|a| a.name() == long)
            .ok_or_else(|| LayoutError::Invalid(format!("unknown RAID6 layout name {text:?}")))
    }
}

/// RAID10 copy placement: `near` copies on neighbouring disks, each repeated `far` times
/// further down the disks (or, with `offset`, in the next rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raid10Layout {
    /// Copies on consecutive disks of the same row (layout bits 0-7).
    pub near: u32,
    /// Copies one "stride" further down (layout bits 8-15).
    pub far: u32,
    /// Far copies sit in the following rows instead of the far part of the disk (bit 16).
    pub offset: bool,
}

impl Raid10Layout {
    /// md's default RAID10 layout, "n2".
    pub const NEAR2: Raid10Layout = Raid10Layout {
        near: 2,
        far: 1,
        offset: false,
    };

    /// Decodes the superblock `layout` field of a RAID10 array.
    pub fn from_md(layout: u32) -> Result<Raid10Layout, LayoutError> {
        if layout >> 19 != 0 {
            return invalid(format!(
                "RAID10 layout {layout:#x} has unknown bits above bit 18"
            ));
        }
        if (layout >> 17) & 3 != 0 {
            return unsupported(format!(
                "RAID10 layout {layout:#x} uses a far-set variant (bits 17-18); only the original \
                 far layout is supported"
            ));
        }
        let parsed = Raid10Layout {
            near: layout & 0xff,
            far: (layout >> 8) & 0xff,
            offset: layout & (1 << 16) != 0,
        };
        parsed.check()?;
        Ok(parsed)
    }

    /// The superblock `layout` value.
    pub fn to_md(self) -> u32 {
        (self.near & 0xff) | ((self.far & 0xff) << 8) | (u32::from(self.offset) << 16)
    }

    /// Number of copies of every chunk.
    pub fn copies(self) -> usize {
        self.near as usize * self.far as usize
    }

    /// The layout as mdadm describes it: `near=2`, `far=2`, `offset=2`, or `near=2,far=2`.
    pub fn name(self) -> String {
        let far_word = if self.offset { "offset" } else { "far" };
        match (self.near > 1, self.far > 1) {
            (true, true) => format!("near={},{far_word}={}", self.near, self.far),
            (false, true) => format!("{far_word}={}", self.far),
            _ => format!("near={}", self.near),
        }
    }

    /// Parses `n2`, `f2`, `o2`, `near=2`, `far=3`, `offset=2`, or a comma-separated mix
    /// such as `near=2,far=2` (far and offset exclude each other).
    pub fn parse(text: &str) -> Result<Raid10Layout, LayoutError> {
        let bad = || LayoutError::Invalid(format!("unknown RAID10 layout {text:?}"));
        let mut layout = Raid10Layout {
            near: 1,
            far: 1,
            offset: false,
        };
        let (mut seen_near, mut seen_far) = (false, false);
        for term in text.trim().split(',') {
            let term = term.trim();
            let (word, number) = match term.split_once('=') {
                Some((word, number)) => (word.trim(), number.trim()),
                None if term.len() > 1 && term.is_char_boundary(1) => term.split_at(1),
                None => return Err(bad()),
            };
            let count: u32 = number.parse().map_err(|_| bad())?;
            match word {
                "n" | "near" if !seen_near => {
                    seen_near = true;
                    layout.near = count;
                }
                "f" | "far" | "o" | "offset" if !seen_far => {
                    seen_far = true;
                    layout.far = count;
                    layout.offset = matches!(word, "o" | "offset");
                }
                _ => return Err(bad()),
            }
        }
        layout.check()?;
        Ok(layout)
    }

    /// Checks what can be checked without knowing the member count.
    pub(crate) fn check(self) -> Result<(), LayoutError> {
        if !(1..=255).contains(&self.near) || !(1..=255).contains(&self.far) {
            return invalid(format!(
                "RAID10 near={} far={}: both must be between 1 and 255",
                self.near, self.far
            ));
        }
        if self.copies() < 2 {
            return invalid("RAID10 needs at least 2 copies (near * far)");
        }
        Ok(())
    }
}

impl fmt::Display for Raid10Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How a multi-zone RAID0 (unequal members) orders chunks beyond the first zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raid0Layout {
    /// md layout 1: device chosen from the absolute chunk number (kernels before 3.14).
    Original,
    /// md layout 2: device chosen from the zone-relative chunk number (3.14 and later).
    Alternate,
}

impl Raid0Layout {
    /// Decodes the RAID0 `layout` field (meaningful only with feature bit 0x1000).
    pub fn from_md(layout: u32) -> Result<Raid0Layout, LayoutError> {
        match layout {
            1 => Ok(Raid0Layout::Original),
            2 => Ok(Raid0Layout::Alternate),
            0 => unsupported(
                "RAID0 layout 0 is unspecified; choose original (1) or alternate (2) explicitly",
            ),
            other => invalid(format!("unknown RAID0 layout {other}")),
        }
    }

    /// The superblock `layout` value.
    pub fn to_md(self) -> u32 {
        match self {
            Raid0Layout::Original => 1,
            Raid0Layout::Alternate => 2,
        }
    }

    /// The name mdadm prints (`--examine` "Layout :").
    pub fn name(self) -> &'static str {
        match self {
            Raid0Layout::Original => "original",
            Raid0Layout::Alternate => "alternate",
        }
    }

    /// Parses `original` / `alternate` (also mdadm's `layout-original` spelling).
    pub fn parse(text: &str) -> Result<Raid0Layout, LayoutError> {
        match text.trim().trim_start_matches("layout-") {
            "original" | "orig" => Ok(Raid0Layout::Original),
            "alternate" | "alt" => Ok(Raid0Layout::Alternate),
            _ => invalid(format!("unknown RAID0 layout name {text:?}")),
        }
    }
}

/// A level together with its layout parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// Striping; the layout matters only when members differ in size.
    Raid0(Raid0Layout),
    /// Mirroring.
    Raid1,
    /// Striping with parity.
    Raid5(Raid5Algorithm),
    /// Striping with two parities.
    Raid6(Raid6Algorithm),
    /// Striped mirrors.
    Raid10(Raid10Layout),
    /// k+m erasure code with `parity` (m, 1 to [`crate::parity::ec::MAX_PARITY`]) parity
    /// chunks per row.
    Ec {
        /// Parity chunks per row.
        parity: usize,
    },
}

impl LayoutKind {
    /// Decodes the superblock `level` and `layout` pair. For RAID0 pass the layout only when
    /// feature 0x1000 is set; otherwise decide between original and alternate yourself.
    pub fn from_md(level: i32, layout: u32) -> Result<LayoutKind, LayoutError> {
        Ok(match Level::from_md(level)? {
            Level::Raid0 => LayoutKind::Raid0(Raid0Layout::from_md(layout)?),
            Level::Raid1 => LayoutKind::Raid1,
            Level::Raid5 => LayoutKind::Raid5(Raid5Algorithm::from_md(layout)?),
            Level::Raid6 => LayoutKind::Raid6(Raid6Algorithm::from_md(layout)?),
            Level::Raid10 => LayoutKind::Raid10(Raid10Layout::from_md(layout)?),
            Level::Ec => match layout as usize {
                parity @ 1..=crate::parity::ec::MAX_PARITY => LayoutKind::Ec { parity },
                _ => {
                    return invalid(format!(
                        "k+m layout {layout}: the parity count must be 1 to 4"
                    ))
                }
            },
        })
    }

    /// The level of this kind.
    pub fn level(&self) -> Level {
        match self {
            LayoutKind::Raid0(_) => Level::Raid0,
            LayoutKind::Raid1 => Level::Raid1,
            LayoutKind::Raid5(_) => Level::Raid5,
            LayoutKind::Raid6(_) => Level::Raid6,
            LayoutKind::Raid10(_) => Level::Raid10,
            LayoutKind::Ec { .. } => Level::Ec,
        }
    }

    /// The superblock `layout` value (0 for RAID1).
    pub fn md_layout(&self) -> u32 {
        match self {
            LayoutKind::Raid0(layout) => layout.to_md(),
            LayoutKind::Raid1 => 0,
            LayoutKind::Raid5(algorithm) => algorithm.to_md(),
            LayoutKind::Raid6(algorithm) => algorithm.to_md(),
            LayoutKind::Raid10(layout) => layout.to_md(),
            LayoutKind::Ec { parity } => *parity as u32,
        }
    }

    /// The level as `create` and `status` name it with `members` members: "raid6", or
    /// "ec 4+2" for a k+m array of 6.
    pub fn level_label(&self, members: usize) -> String {
        match self {
            LayoutKind::Ec { parity } => {
                format!("ec {}+{parity}", members.saturating_sub(*parity))
            }
            other => other.level().to_string(),
        }
    }

    /// Parity chunks per stripe row: RAID5 1, RAID6 2, k+m m, the others none.
    pub fn parities(&self) -> usize {
        match self {
            LayoutKind::Raid5(_) => 1,
            LayoutKind::Raid6(_) => 2,
            LayoutKind::Ec { parity } => *parity,
            _ => 0,
        }
    }
}
