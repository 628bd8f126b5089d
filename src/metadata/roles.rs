//! dev_roles: which slot (role) each device has, and mdadm's "Array State" string.
//!
//! `dev_roles[dev_number]` is a le16 per device ever added to the array: a slot number
//! (0..=0xfeff), or spare / faulty / journal. A device's dev_number is permanent; its slot can
//! change (a spare becomes active). Every member carries the whole table, and when members
//! disagree the freshest superblock's table wins (see `assembly`).

use super::{MetadataError, Superblock, MAX_DEV_LIMIT};

/// Role value of a spare, and of every unused entry.
pub const ROLE_SPARE: u16 = 0xffff;
/// Role value of a failed device.
pub const ROLE_FAULTY: u16 = 0xfffe;
/// Role value of a raid5-cache journal device.
pub const ROLE_JOURNAL: u16 = 0xfffd;
/// Largest active slot md can store (`MD_DISK_ROLE_MAX` is 0xff00, exclusive).
pub const ROLE_MAX_ACTIVE: u16 = 0xfeff;

/// What a device is in its array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds data for this slot (0-based).
    Active(u16),
    /// A hot spare (or an unused entry).
    Spare,
    /// Failed; kept in the table so it is never used again by accident.
    Faulty,
    /// A raid5-cache journal device.
    Journal,
}

impl Role {
    /// Decodes one dev_roles value. Values between 0xff00 and 0xfffc have no defined meaning;
    /// they are kept as `Active` so that callers checking `slot < raid_disks` refuse them.
    pub fn from_raw(raw: u16) -> Role {
        match raw {
            ROLE_SPARE => Role::Spare,
            ROLE_FAULTY => Role::Faulty,
            ROLE_JOURNAL => Role::Journal,
            slot => Role::Active(slot),
        }
    }

    /// The dev_roles value for this role.
    pub fn to_raw(self) -> u16 {
        match self {
            Role::Active(slot) => slot,
            Role::Spare => ROLE_SPARE,
            Role::Faulty => ROLE_FAULTY,
            Role::Journal => ROLE_JOURNAL,
        }
    }
}

impl std::fmt::Display for Role {
    /// The words mdadm uses for "Device Role".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Active(slot) => write!(f, "Active device {slot}"),
            Role::Spare => f.write_str("spare"),
            Role::Faulty => f.write_str("faulty"),
            Role::Journal => f.write_str("Journal"),
        }
    }
}

/// Longest "Array State" string we build. raid_disks comes from disk and may be garbage; md
/// cannot have more slots than role entries, so nothing real is cut.
const ARRAY_STATE_SLOTS_MAX: u32 = MAX_DEV_LIMIT;

impl Superblock {
    /// The role this superblock's table gives `dev_number`. A dev_number at or past max_dev
    /// has no entry and counts as a spare (the kernel's rule).
    pub fn role_of(&self, dev_number: u32) -> Role {
        match self.dev_roles.get(dev_number as usize) {
            Some(raw) => Role::from_raw(*raw),
            None => Role::Spare,
        }
    }

    /// This device's own role according to its own table.
    pub fn own_role(&self) -> Role {
        self.role_of(self.dev_number)
    }

    /// Sets the role of `dev_number`, growing the table (with spare entries) when needed,
    /// like the kernel does when `desc_nr + 1` exceeds max_dev.
    pub fn set_role(&mut self, dev_number: u32, role: Role) -> Result<(), MetadataError> {
        if dev_number >= MAX_DEV_LIMIT {
            return Err(MetadataError::DevNumberOutOfRange(dev_number));
        }
        if let Role::Active(slot) = role {
            if slot > ROLE_MAX_ACTIVE {
                return Err(MetadataError::SlotOutOfRange(u32::from(slot)));
            }
        }
        let index = dev_number as usize;
        if self.dev_roles.len() <= index {
            self.dev_roles.resize(index + 1, ROLE_SPARE);
        }
        self.dev_roles[index] = role.to_raw();
        Ok(())
    }

    /// How many table entries claim `slot`.
    pub fn slot_claims(&self, slot: u32) -> usize {
        self.dev_roles
            .iter()
            .filter(|raw| u32::from(**raw) == slot && **raw <= ROLE_MAX_ACTIVE)
            .count()
    }

    /// mdadm's "Array State": for each slot below raid_disks, 'A' when exactly one entry claims
    /// it, '.' when none, 'R' when two (a replacement is being built), '?' otherwise.
    pub fn array_state_string(&self) -> String {
        let mut counts = vec![0usize; self.raid_disks.min(ARRAY_STATE_SLOTS_MAX) as usize];
        for raw in &self.dev_roles {
            if let Some(count) = counts.get_mut(*raw as usize) {
                *count += 1;
            }
        }
        counts
            .iter()
            .map(|count| match count {
                0 => '.',
                1 => 'A',
                2 => 'R',
                _ => '?',
            })
            .collect()
    }
}
