//! Assembling an array from its members: read and check every superblock, let the assembly
//! rules (`metadata::plan_assembly`) put each member in its slot, refuse what md would refuse
//! (stale members, degraded without `--run`, dirty and degraded RAID5 without `--force`,
//! features we do not implement), and build the [`Array`].

use std::cell::Cell;
use std::rc::Rc;

use super::Controller;
use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{
    Geometry, LayoutKind, Level, Raid0Layout, Raid10Layout, Raid5Algorithm, Raid6Algorithm,
};
use crate::member::Member;
use crate::metadata::{
    format_uuid, plan_assembly, AssemblyOptions, BitmapSuper, Candidate, Superblock,
    FEATURE_BITMAP_OFFSET, FEATURE_CLUSTERED, FEATURE_JOURNAL, FEATURE_MULTIPLE_PPLS, FEATURE_PPL,
    FEATURE_RAID0_LAYOUT, FEATURE_RECOVERY_OFFSET, FEATURE_RESHAPE_ACTIVE,
};
use crate::raid::meta::{MetaDisk, MetaState, SUPERBLOCK_OFFSET_BYTES};
use crate::raid::slots::{Disk, SlotState};
use crate::raid::Array;

/// What the user allowed.
#[derive(Clone, Debug, Default)]
pub struct AssembleOptions {
    /// Start even with members missing (`--run`).
    pub run: bool,
    /// Use stale members, start dirty and degraded RAID5 (`--force`).
    pub force: bool,
    /// Refuse writes; touch no superblock.
    pub read_only: bool,
    /// Only accept members of this array.
    pub expected_uuid: Option<[u8; 16]>,
    /// Leave a pending resync for later (`raidctl rebuild` starts it), like md's frozen
    /// sync_action: writes past the sync point still use reconstruct-write.
    pub no_resync: bool,
}

/// An assembled array and what the user should be told about it.
pub struct Assembled {
    /// The engine: what to serve.
    pub array: Rc<Array>,
    /// Its control plane: rebuilds, checks, members, settings, events.
    pub control: Rc<Controller>,
    /// One line per member left out, and why.
    pub notes: Vec<String>,
}

const SECTOR: u64 = 512;

/// Reads every member's superblock and assembles the array they agree on.
pub async fn assemble(members: Vec<Rc<dyn Member>>, opts: &AssembleOptions) -> Result<Assembled> {
    let candidates = read_candidates(&members).await?;
    let plan = plan_assembly(
        &candidates,
        &AssemblyOptions {
            force: opts.force,
            expected_uuid: opts.expected_uuid,
        },
    )
    .map_err(|e| Error::new(ErrorKind::Inconsistent, e.to_string()))?;
    let reference = plan.reference.clone();
    let name = reference.array_name();
    check_supported(&reference, &name)?;
    let kind = layout_kind(&reference, &candidates, &plan.slots)?;

    let mut notes = plan.exclusion_messages(&candidates);
    let own_sb = |i: usize| {
        candidates[i]
            .superblock
            .as_ref()
            .expect("planned members decoded")
            .clone()
    };
    let (slots, mut meta_disks) = place_members(&plan.slots, &members, own_sb, &mut notes).await;
    // Before the spares join: only members of the array carry its bits.
    let intent = crate::raid::intent::load_intent(&reference, &meta_disks).await;
    let mut spares = Vec::new();
    for &i in &plan.spares {
        let (disk, meta) = open_disk(members[i].clone(), own_sb(i)).await;
        meta_disks.push(meta);
        spares.push(disk);
    }
    let data_bytes: Vec<Option<u64>> = plan
        .slots
        .iter()
        .map(|e| e.map(|i| own_sb(i).data_size_sectors * SECTOR))
        .collect();
    let geo = geometry_of(kind, &reference, &data_bytes, &slots, &name)?;

    let array = Array::new(
        name,
        geo,
        slots,
        spares,
        MetaState::new(reference, meta_disks),
        intent,
        opts.read_only,
    );
    let control = Rc::new(Controller::new(array.clone()));
    if let Some(ext) = read_extension(&array).await {
        control.set_speed_limits(ext.speed_min_kib, ext.speed_max_kib);
        *control.extension.borrow_mut() = ext;
    }
    check_startable(&control, opts, &notes)?;
    for &i in &plan.forced {
        notes.push(format!(
            "{} was stale and is used anyway (--force)",
            candidates[i].path
        ));
    }
    if !plan.forced.is_empty() && !opts.read_only {
        // Bring the forced members' events up to the array's before anything else happens.
        control.persist_now().await?;
    }
    start(&control, opts, &notes).await?;
    Ok(Assembled {
        array,
        control,
        notes,
    })
}

/// The array's geometry from the reference superblock (RAID0: each member's own data size,
/// `data_bytes` per slot), refusing a RAID0 with a member missing and members too small.
fn geometry_of(
    kind: LayoutKind,
    reference: &Superblock,
    data_bytes: &[Option<u64>],
    slots: &[SlotState],
    name: &str,
) -> Result<Geometry> {
    let level = kind.level();
    let member_bytes: Vec<u64> = if level == Level::Raid0 {
        data_bytes.iter().map(|b| b.unwrap_or(0)).collect()
    } else {
        vec![reference.size_sectors * SECTOR; reference.raid_disks as usize]
    };
    if level == Level::Raid0 && slots.iter().any(|s| !s.is_active()) {
        return Err(Error::new(
            ErrorKind::ArrayFailed,
            format!(
                "cannot start RAID0 array {name}: a member is missing and RAID0 has no redundancy"
            ),
        ));
    }
    let geo = Geometry::new(kind, reference.chunk_sectors as u64 * SECTOR, &member_bytes)
        .map_err(|e| Error::new(ErrorKind::Corrupt, format!("array {name}: {e}")))?;
    check_member_sizes(&geo, slots, name)?;
    Ok(geo)
}

async fn read_candidates(members: &[Rc<dyn Member>]) -> Result<Vec<Candidate>> {
    let mut candidates = Vec::new();
    for m in members {
        candidates.push(Candidate {
            path: m.path().to_string(),
            superblock: read_raw_superblock(m.as_ref()).await?,
        });
    }
    Ok(candidates)
}

/// Every slot of the plan: its member placed, or missing.
async fn place_members(
    planned: &[Option<usize>],
    members: &[Rc<dyn Member>],
    own_sb: impl Fn(usize) -> Superblock,
    notes: &mut Vec<String>,
) -> (Vec<SlotState>, Vec<MetaDisk>) {
    let mut slots = Vec::new();
    let mut meta_disks = Vec::new();
    for (slot, entry) in planned.iter().enumerate() {
        let Some(i) = *entry else {
            slots.push(SlotState::Missing);
            continue;
        };
        let (state, meta) = place_member(slot, members[i].clone(), own_sb(i), notes).await;
        slots.push(state);
        meta_disks.push(meta);
    }
    (slots, meta_disks)
}

/// A planned member in `slot`: active, or part-way through a rebuild (then it resumes from its
/// checkpoint, which `notes` tells the user).
async fn place_member(
    slot: usize,
    member: Rc<dyn Member>,
    sb: Superblock,
    notes: &mut Vec<String>,
) -> (SlotState, MetaDisk) {
    let recovering =
        sb.has_feature(FEATURE_RECOVERY_OFFSET) && sb.recovery_offset_sectors != u64::MAX;
    let cursor = sb.recovery_offset_sectors.saturating_mul(SECTOR);
    let (disk, meta) = open_disk(member, sb).await;
    if !recovering {
        return (SlotState::Active(disk), meta);
    }
    notes.push(format!(
        "{} is part-way through a rebuild of slot {slot} ({cursor} bytes done): it resumes from there",
        disk.member.path()
    ));
    (
        SlotState::Recovering(disk, Rc::new(Cell::new(cursor))),
        meta,
    )
}

/// A member as the engine holds it, with its superblock and bad-block log.
async fn open_disk(member: Rc<dyn Member>, sb: Superblock) -> (Rc<Disk>, MetaDisk) {
    let disk = Rc::new(Disk::new(
        member,
        sb.data_offset_sectors * SECTOR,
        sb.dev_number,
    ));
    let meta = meta_disk(disk.clone(), sb).await;
    (disk, meta)
}

/// Every member holds the data area the geometry needs of its slot.
fn check_member_sizes(geo: &Geometry, slots: &[SlotState], name: &str) -> Result<()> {
    for (slot, s) in slots.iter().enumerate() {
        let Some(d) = s.disk() else { continue };
        let avail = d.member.size_bytes().saturating_sub(d.data_offset);
        let needed = geo.slot_used_bytes(slot);
        if avail < needed {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "{} is smaller than array {name} needs ({avail} data bytes, {needed} needed)",
                    d.member.path()
                ),
            ));
        }
    }
    Ok(())
}

/// What md refuses to start: data missing, degraded without `--run`, and a dirty degraded
/// RAID5 without `--force` (its parity may be stale: the write hole).
fn check_startable(control: &Controller, opts: &AssembleOptions, notes: &[String]) -> Result<()> {
    let array = &control.array;
    let name = &array.name;
    let missing = array.missing_description();
    if !array.has_redundancy_for_all_data() {
        return Err(Error::new(
            ErrorKind::ArrayFailed,
            format!(
                "cannot start array {name}: too many members are missing ({missing}){}",
                first_note(notes)
            ),
        ));
    }
    let absent = control.has_absent_slot();
    let recovering = array
        .slots
        .borrow()
        .iter()
        .any(|s| matches!(s, SlotState::Recovering(..)));
    if absent && !opts.run {
        return Err(Error::new(
            ErrorKind::Inconsistent,
            format!(
                "array {name} is degraded ({missing}){}: start it anyway with --run",
                first_note(notes)
            ),
        ));
    }
    if (absent || recovering)
        && array.geo.parities() > 0
        && array.meta.reference().resync_offset != u64::MAX
        && !opts.force
    {
        return Err(Error::new(
                ErrorKind::Inconsistent,
                format!(
                    "array {name} is degraded and was not stopped cleanly: parity may be stale, so the missing member's data could be rebuilt wrong; use --force to start it anyway"
                ),
            ));
    }
    Ok(())
}

/// Records absent members, tells the user what was decided, and starts the background work
/// (hot spares, unfinished rebuilds, the bitmap daemon, a pending resync).
async fn start(control: &Rc<Controller>, opts: &AssembleOptions, notes: &[String]) -> Result<()> {
    let array = &control.array;
    if control.has_absent_slot() && !opts.read_only {
        control.record_absent_members().await?;
    }
    for n in notes {
        tracing::warn!(array = %array.name, "{n}");
    }
    crate::reactor::spawn(control.clone().deliver_events());
    if opts.read_only {
        return Ok(());
    }
    crate::reactor::spawn(control.clone().run_scheduler());
    crate::reactor::spawn(array.clone().run_intent_daemon());
    array.needs_attention();
    if !opts.no_resync {
        control.start_resync_if_needed();
    }
    Ok(())
}

impl Controller {
    /// A slot with no member in it, or a failed one.
    fn has_absent_slot(&self) -> bool {
        self.array
            .slots
            .borrow()
            .iter()
            .any(|s| matches!(s, SlotState::Missing | SlotState::Faulty(_)))
    }
}

/// Our extension block from the first member that has a valid one (None for md-made arrays).
async fn read_extension(array: &Array) -> Option<crate::metadata::Extension> {
    let reference = array.meta.reference();
    let places: Vec<(Rc<Disk>, u64)> = array
        .meta
        .disks
        .borrow()
        .iter()
        .filter_map(|m| {
            let bitmap = m
                .bitmap_sector
                .as_ref()
                .and_then(|b| BitmapSuper::decode(b.as_slice()).ok());
            let at = crate::metadata::extension_offset_sectors(&m.sb, bitmap.as_ref()).ok()?;
            Some((m.disk.clone(), at * SECTOR))
        })
        .collect();
    for (disk, at) in places {
        let buf = AlignedBuf::zeroed(crate::metadata::EXTENSION_BLOCK_BYTES).into_shared();
        if disk.member.read(at, buf.clone()).await.is_ok() {
            if let Ok(Some(ext)) =
                crate::metadata::Extension::decode(buf.bytes(), &reference.set_uuid)
            {
                return Some(ext);
            }
        }
    }
    None
}

fn first_note(notes: &[String]) -> String {
    notes.first().map(|n| format!("; {n}")).unwrap_or_default()
}

/// Reads the superblock bytes at 4096 and decodes them (errors are the candidate's reason).
async fn read_raw_superblock(
    m: &dyn Member,
) -> Result<std::result::Result<Superblock, crate::metadata::MetadataError>> {
    if m.size_bytes() < SUPERBLOCK_OFFSET_BYTES + 4096 {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no md superblock on {}: the device is too small", m.path()),
        ));
    }
    let buf = AlignedBuf::zeroed(4096).into_shared();
    m.read(SUPERBLOCK_OFFSET_BYTES, buf.clone())
        .await
        .map_err(|e| Error::io(format!("reading the superblock of {}", m.path()), e))?;
    Ok(Superblock::decode(buf.bytes()))
}

async fn meta_disk(disk: Rc<Disk>, sb: Superblock) -> MetaDisk {
    if let Err(e) = crate::raid::badblocks::load(&disk, &sb).await {
        tracing::warn!("{e}: its bad-block log is ignored");
    }
    let mut bitmap_sector = None;
    if sb.has_feature(FEATURE_BITMAP_OFFSET) {
        let at = SUPERBLOCK_OFFSET_BYTES as i64 + sb.bitmap_offset_sectors as i64 * SECTOR as i64;
        if at > 0 {
            let buf = AlignedBuf::zeroed(SECTOR as usize).into_shared();
            if disk.member.read(at as u64, buf.clone()).await.is_ok() {
                match BitmapSuper::decode(buf.bytes()).and_then(|b| b.check_uuid(&sb.set_uuid)) {
                    Ok(()) => bitmap_sector = Some(AlignedBuf::from_slice(buf.bytes())),
                    Err(e) => tracing::warn!(member = disk.member.path(), "bitmap ignored: {e}"),
                }
            }
        }
    }
    MetaDisk {
        disk,
        sb,
        bitmap_sector,
        present: true,
    }
}

fn check_supported(sb: &Superblock, name: &str) -> Result<()> {
    let unsupported = |what: &str| {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("array {name}: {what} is not supported yet"),
        ))
    };
    if sb.has_feature(FEATURE_RESHAPE_ACTIVE) {
        return unsupported("an interrupted reshape (finish it with mdadm --grow --continue)");
    }
    if sb.has_feature(FEATURE_JOURNAL) {
        return unsupported("a raid5-cache journal");
    }
    if sb.feature_map & (FEATURE_PPL | FEATURE_MULTIPLE_PPLS) != 0 {
        return unsupported("a partial parity log (PPL)");
    }
    if sb.has_feature(FEATURE_CLUSTERED) {
        return unsupported("clustered md");
    }
    Ok(())
}

/// The layout the superblock records, refusing what md itself would refuse.
fn layout_kind(
    sb: &Superblock,
    candidates: &[Candidate],
    slots: &[Option<usize>],
) -> Result<LayoutKind> {
    let level =
        Level::from_md(sb.level).map_err(|e| Error::new(ErrorKind::Unsupported, e.to_string()))?;
    let bad = |e: crate::layout::LayoutError| {
        Error::new(
            ErrorKind::Unsupported,
            format!("array {}: {e}", sb.array_name()),
        )
    };
    Ok(match level {
        Level::Raid1 => LayoutKind::Raid1,
        Level::Raid5 => LayoutKind::Raid5(Raid5Algorithm::from_md(sb.layout).map_err(bad)?),
        Level::Raid6 => LayoutKind::Raid6(Raid6Algorithm::from_md(sb.layout).map_err(bad)?),
        Level::Raid10 => LayoutKind::Raid10(Raid10Layout::from_md(sb.layout).map_err(bad)?),
        Level::Ec => LayoutKind::from_md(sb.level, sb.layout).map_err(bad)?,
        Level::Raid0 => {
            if sb.has_feature(FEATURE_RAID0_LAYOUT) {
                match sb.layout {
                    1 => LayoutKind::Raid0(Raid0Layout::Original),
                    2 => LayoutKind::Raid0(Raid0Layout::Alternate),
                    other => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("array {}: unknown RAID0 layout {other}", sb.array_name()),
                        ))
                    }
                }
            } else {
                // Without a recorded layout, only a single-zone RAID0 is unambiguous (Linux 5.4+
                // refuses the others too).
                let chunk = sb.chunk_sectors.max(1) as u64;
                let zones: std::collections::BTreeSet<u64> = slots
                    .iter()
                    .flatten()
                    .filter_map(|&i| candidates[i].superblock.as_ref().ok())
                    .map(|s| s.data_size_sectors / chunk)
                    .collect();
                if zones.len() > 1 {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "array {}: multi-zone RAID0 without a recorded layout; set one with mdadm --update=layout-original (or layout-alternate) first",
                            sb.array_name()
                        ),
                    ));
                }
                LayoutKind::Raid0(Raid0Layout::Original)
            }
        }
    })
}

impl Controller {
    /// Starting degraded: members the superblocks still call active but that are not here
    /// are recorded as faulty (events bumped) before anything is written. Otherwise a crash
    /// later could let the out-of-date member back in as if it were current (md rewrites the
    /// roles the same way when it starts an array degraded).
    async fn record_absent_members(&self) -> Result<()> {
        let present = self.array.dev_numbers();
        let absent: Vec<u32> = {
            let reference = self.array.meta.reference.borrow();
            (0..reference.max_dev())
                .filter(|dev| matches!(reference.role_of(*dev), crate::metadata::Role::Active(_)))
                .filter(|dev| !present.contains(dev))
                .collect()
        };
        if absent.is_empty() {
            return Ok(());
        }
        {
            let mut reference = self.array.meta.reference.borrow_mut();
            for dev in &absent {
                let _ = reference.set_role(*dev, crate::metadata::Role::Faulty);
            }
        }
        self.persist_now().await
    }

    /// Writes the current state to every member's superblock now (events bumped).
    pub(super) async fn persist_now(&self) -> Result<()> {
        let _guard = self.array.meta_lock.lock().await;
        self.array.write_all_superblocks().await
    }

    /// The array UUID as mdadm prints it.
    pub fn uuid_text(&self) -> String {
        format_uuid(&self.array.meta.reference().set_uuid)
    }
}
