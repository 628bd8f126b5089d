//! Which member goes in which slot: md's assembly rules as a pure function.
//!
//! Input: every device the user named, each with its decoded superblock (or the reason it did
//! not decode). Output: a plan (slot -> device, spares, excluded devices with a reason each)
//! or one error line naming the device and what is wrong. No policy: whether a degraded array
//! may start is the caller's decision (`--run`).
//!
//! Rules (kernel `super_1_validate`, mdadm `Assemble.c`, reference §1.5):
//! 1. A device without a valid superblock is an error, never silently skipped: the user named
//!    it, so they expect it to be used.
//! 2. All devices must belong to one array (set_uuid: `expected_uuid`, or else the freshest
//!    device's) and agree on level, layout, chunk and raid_disks.
//! 3. The freshest device (highest events) is the reference; its dev_roles decide each fresh
//!    device's role (by that device's dev_number), except that a device sits in a slot only
//!    if its own superblock agrees (else it never learned it was made active: a spare).
//! 4. A device whose events + 1 < the reference's missed updates: it is stale. Its data may be
//!    out of date, so it is left out. With `force`, stale devices are used only while the
//!    fresh ones are not enough to run the array at all, the freshest first, as mdadm's
//!    `--assemble --force` does (then the caller rewrites their events): a stale member is
//!    never used where the array can run without it. A stale device's own superblock still
//!    says which slot it had.
//! 5. A device the reference marks faulty is left out; spares need no matching events (md does
//!    not write to spares on every clean/dirty change).
//! 6. Two devices claiming one slot: the fresher wins.

use super::{format_uuid, MetadataError, Role, Superblock, MAX_DEV_LIMIT};

/// One device offered for assembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Path as the user named it; used in every message.
    pub path: String,
    /// Its superblock, or why it could not be decoded.
    pub superblock: Result<Superblock, MetadataError>,
}

/// Choices the user made on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssemblyOptions {
    /// Use stale members anyway (`--force`).
    pub force: bool,
    /// Only accept members of this array.
    pub expected_uuid: Option<[u8; 16]>,
}

/// Why a device takes no part in the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExclusionReason {
    /// Missed updates; its data may be out of date.
    Stale {
        /// The device's events.
        events: u64,
        /// The array's (freshest) events.
        array_events: u64,
    },
    /// The other members recorded it as failed.
    MarkedFaulty,
    /// Another device holds the same slot with newer (or equal, and it came first) events.
    Duplicate {
        /// The contested slot.
        slot: u16,
        /// Path of the device that holds it.
        winner_path: String,
    },
    /// Its role is a slot the array does not have.
    InvalidSlot {
        /// The slot it claims.
        slot: u16,
        /// Slots the array has.
        raid_disks: u32,
    },
    /// A raid5-cache journal device; not supported.
    Journal,
}

impl ExclusionReason {
    /// One line for the user, naming the device.
    pub fn message(&self, path: &str) -> String {
        match self {
            ExclusionReason::Stale {
                events,
                array_events,
            } => format!(
                "{path} is stale (events {events}, array at {array_events}): re-add it to \
                 recover it, or --force to use it"
            ),
            ExclusionReason::MarkedFaulty => {
                format!("{path} is marked faulty by the other members")
            }
            ExclusionReason::Duplicate { slot, winner_path } => {
                format!("{path} claims slot {slot}, which {winner_path} holds with newer metadata")
            }
            ExclusionReason::InvalidSlot { slot, raid_disks } => {
                format!("{path} claims slot {slot}, but the array has only {raid_disks} slots")
            }
            ExclusionReason::Journal => {
                format!("{path} is a raid5-cache journal device, which is not supported")
            }
        }
    }
}

/// The result: who goes where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssemblyPlan {
    /// The array UUID.
    pub uuid: [u8; 16],
    /// Index of the freshest candidate, whose superblock is `reference`.
    pub reference_index: usize,
    /// The freshest superblock: the array's state.
    pub reference: Superblock,
    /// For each slot 0..raid_disks, the candidate that fills it.
    pub slots: Vec<Option<usize>>,
    /// Candidates that join as spares.
    pub spares: Vec<usize>,
    /// Candidates left out, with the reason.
    pub excluded: Vec<(usize, ExclusionReason)>,
    /// Stale candidates used anyway because of `force`; the caller must bring their events
    /// up to the array's before starting.
    pub forced: Vec<usize>,
    /// Some slot has no member.
    pub degraded: bool,
}

impl AssemblyPlan {
    /// Slots with no member.
    pub fn missing_slots(&self) -> Vec<u32> {
        (0u32..)
            .zip(&self.slots)
            .filter(|(_, member)| member.is_none())
            .map(|(slot, _)| slot)
            .collect()
    }

    /// One line per excluded candidate, naming it.
    pub fn exclusion_messages(&self, candidates: &[Candidate]) -> Vec<String> {
        self.excluded
            .iter()
            .map(|(index, reason)| {
                let path = candidates.get(*index).map_or("?", |c| c.path.as_str());
                reason.message(path)
            })
            .collect()
    }
}

/// Why there is no plan. Each message is one line naming the device and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// Nothing to assemble.
    #[error("no devices given")]
    NoCandidates,
    /// A device whose superblock did not decode.
    #[error("{path}: {source}")]
    Unreadable {
        /// The device.
        path: String,
        /// Why its superblock was refused.
        source: MetadataError,
    },
    /// A device of another array.
    #[error("{path} belongs to array UUID {member_uuid}, not {array_uuid}")]
    ForeignMember {
        /// The device.
        path: String,
        /// Its array UUID.
        member_uuid: String,
        /// The array being assembled.
        array_uuid: String,
    },
    /// A device that disagrees with the reference on the array's shape.
    #[error("{path} has {field} {member_value}, but {reference_path} has {reference_value}")]
    Mismatch {
        /// The device.
        path: String,
        /// The field that differs.
        field: &'static str,
        /// Its value on the device.
        member_value: String,
        /// The freshest device.
        reference_path: String,
        /// The value there.
        reference_value: String,
    },
    /// The reference superblock's raid_disks is unusable.
    #[error("{path}: raid_disks {raid_disks} is out of range (1..=1920)")]
    BadGeometry {
        /// The reference device.
        path: String,
        /// Its raid_disks.
        raid_disks: u32,
    },
}

/// Index of the candidate with the highest events (the first one on a tie).
fn freshest<'a>(members: impl Iterator<Item = (usize, &'a Superblock)>) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for (index, sb) in members {
        let fresher = match best {
            None => true,
            Some((_, events)) => sb.events > events,
        };
        if fresher {
            best = Some((index, sb.events));
        }
    }
    best.map(|(index, _)| index)
}

/// Refuses a device whose array shape differs from the reference's.
fn check_shape(
    path: &str,
    sb: &Superblock,
    reference_path: &str,
    reference: &Superblock,
) -> Result<(), AssemblyError> {
    let fields: [(&'static str, String, String); 4] = [
        (
            "raid level",
            sb.level.to_string(),
            reference.level.to_string(),
        ),
        (
            "layout",
            format!("0x{:x}", sb.layout),
            format!("0x{:x}", reference.layout),
        ),
        (
            "chunk",
            format!("{} sectors", sb.chunk_sectors),
            format!("{} sectors", reference.chunk_sectors),
        ),
        (
            "raid_disks",
            sb.raid_disks.to_string(),
            reference.raid_disks.to_string(),
        ),
    ];
    for (field, member_value, reference_value) in fields {
        if member_value != reference_value {
            return Err(AssemblyError::Mismatch {
                path: path.to_string(),
                field,
                member_value,
                reference_path: reference_path.to_string(),
                reference_value,
            });
        }
    }
    Ok(())
}

/// Decodes the candidate list into superblocks, or the first decode failure as an error.
fn superblocks(candidates: &[Candidate]) -> Result<Vec<&Superblock>, AssemblyError> {
    candidates
        .iter()
        .map(|candidate| {
            candidate
                .superblock
                .as_ref()
                .map_err(|source| AssemblyError::Unreadable {
                    path: candidate.path.clone(),
                    source: source.clone(),
                })
        })
        .collect()
}

/// Decides the assembly. See the module doc for the rules.
pub fn plan_assembly(
    candidates: &[Candidate],
    options: &AssemblyOptions,
) -> Result<AssemblyPlan, AssemblyError> {
    let sbs = superblocks(candidates)?;
    let overall = freshest(sbs.iter().copied().enumerate()).ok_or(AssemblyError::NoCandidates)?;
    let uuid = options.expected_uuid.unwrap_or(sbs[overall].set_uuid);
    for (candidate, sb) in candidates.iter().zip(&sbs) {
        if sb.set_uuid != uuid {
            return Err(AssemblyError::ForeignMember {
                path: candidate.path.clone(),
                member_uuid: format_uuid(&sb.set_uuid),
                array_uuid: format_uuid(&uuid),
            });
        }
    }
    // Every candidate now has the array's uuid, so the overall freshest is the reference.
    let reference_index = overall;
    let reference = sbs[reference_index];
    let reference_path = &candidates[reference_index].path;
    if reference.raid_disks == 0 || reference.raid_disks > MAX_DEV_LIMIT {
        return Err(AssemblyError::BadGeometry {
            path: reference_path.clone(),
            raid_disks: reference.raid_disks,
        });
    }
    for (candidate, sb) in candidates.iter().zip(&sbs) {
        check_shape(&candidate.path, sb, reference_path, reference)?;
    }
    let mut plan = AssemblyPlan {
        uuid,
        reference_index,
        reference: reference.clone(),
        slots: vec![None; reference.raid_disks as usize],
        spares: Vec::new(),
        excluded: Vec::new(),
        forced: Vec::new(),
        degraded: false,
    };
    let mut stale = Vec::new();
    for (index, sb) in sbs.iter().enumerate() {
        if !place_candidate(&mut plan, candidates, &sbs, index, sb) {
            stale.push(index);
        }
    }
    // Freshest first; each joins only while the array cannot run without it.
    stale.sort_by_key(|&i| std::cmp::Reverse(sbs[i].events));
    for index in stale {
        let sb = sbs[index];
        if options.force && !enough(&plan.reference, &plan.slots) {
            place_in_slot(&mut plan, candidates, &sbs, index, sb.own_role());
            continue;
        }
        let reason = ExclusionReason::Stale {
            events: sb.events,
            array_events: plan.reference.events,
        };
        plan.excluded.push((index, reason));
    }
    plan.degraded = plan.slots.iter().any(Option::is_none);
    debug_assert!(plan
        .slots
        .iter()
        .flatten()
        .all(|i| !plan.spares.contains(i)));
    Ok(plan)
}

/// Puts one fresh candidate in a slot, among the spares, or among the excluded. Returns
/// false for a stale candidate whose own record says it had a slot: the caller decides
/// (with `force`, only if the array cannot run without it).
fn place_candidate(
    plan: &mut AssemblyPlan,
    candidates: &[Candidate],
    sbs: &[&Superblock],
    index: usize,
    sb: &Superblock,
) -> bool {
    let fresh = sb.events.saturating_add(1) >= plan.reference.events;
    // A fresh member's role is what the array says; a stale member's table is out of date
    // about the others but still tells which slot it had when it dropped out.
    let role = if fresh {
        agreed_role(&plan.reference, sb)
    } else {
        sb.own_role()
    };
    if !fresh && matches!(role, Role::Active(slot) if u32::from(slot) < plan.reference.raid_disks) {
        return false;
    }
    place_in_slot(plan, candidates, sbs, index, role);
    true
}

/// The role of a fresh member. It holds a slot only if its own superblock says so too: when
/// the array's record is ahead of the member's own (an update that made a spare active was
/// cut short before its own superblock, which carries its recovery offset, was written), the
/// member never learned it was being rebuilt, and using it as in sync would serve bytes it
/// never got. Then it is a spare and the slot is rebuilt. (md takes each member's role from
/// its own superblock for the same reason.)
fn agreed_role(reference: &Superblock, sb: &Superblock) -> Role {
    match (reference.role_of(sb.dev_number), sb.own_role()) {
        (Role::Active(slot), Role::Active(own)) if slot == own => Role::Active(slot),
        // An impossible slot is reported as such (place_in_slot excludes it).
        (Role::Active(slot), _) if u32::from(slot) >= reference.raid_disks => Role::Active(slot),
        (Role::Active(_), _) => Role::Spare,
        (other, _) => other,
    }
}

/// Places candidate `index` by `role`; a stale one that wins its slot is recorded as forced.
fn place_in_slot(
    plan: &mut AssemblyPlan,
    candidates: &[Candidate],
    sbs: &[&Superblock],
    index: usize,
    role: Role,
) {
    let slot = match role {
        Role::Spare => return plan.spares.push(index),
        Role::Faulty => return plan.excluded.push((index, ExclusionReason::MarkedFaulty)),
        Role::Journal => return plan.excluded.push((index, ExclusionReason::Journal)),
        Role::Active(slot) => slot,
    };
    let raid_disks = plan.reference.raid_disks;
    if u32::from(slot) >= raid_disks {
        let reason = ExclusionReason::InvalidSlot { slot, raid_disks };
        return plan.excluded.push((index, reason));
    }
    let fresh = sbs[index].events.saturating_add(1) >= plan.reference.events;
    let holder = plan.slots[usize::from(slot)];
    let (winner, loser) = match holder {
        None => (index, None),
        // Strictly fresher wins; on a tie the device named first keeps the slot.
        Some(held) if sbs[index].events > sbs[held].events => (index, Some(held)),
        Some(held) => (held, Some(index)),
    };
    plan.slots[usize::from(slot)] = Some(winner);
    if !fresh && winner == index {
        plan.forced.push(index);
    }
    if let Some(loser) = loser {
        plan.forced.retain(|forced| *forced != loser);
        let reason = ExclusionReason::Duplicate {
            slot,
            winner_path: candidates[winner].path.clone(),
        };
        plan.excluded.push((loser, reason));
    }
}

/// Whether the members in `slots` can run the array (md's `enough()`): RAID0 needs all,
/// RAID1 one, RAID4/5 all but one, RAID6 all but two, RAID10 one in every set of copies;
/// a k+m array all but m (its `layout`).
pub fn enough(reference: &Superblock, slots: &[Option<usize>]) -> bool {
    let present = slots.iter().filter(|s| s.is_some()).count();
    let disks = slots.len();
    match reference.level {
        1 => present >= 1,
        4 | 5 => present + 1 >= disks,
        6 => present + 2 >= disks,
        crate::layout::EC_MD_LEVEL => present + reference.layout as usize >= disks,
        10 => {
            let near = (reference.layout & 0xff).max(1) as usize;
            let far = ((reference.layout >> 8) & 0xff).max(1) as usize;
            let copies = near * far;
            let mut first = 0;
            loop {
                if (0..copies).all(|k| slots[(first + k) % disks].is_none()) {
                    return false;
                }
                first = (first + near) % disks;
                if first == 0 {
                    return true;
                }
            }
        }
        _ => present == disks,
    }
}
