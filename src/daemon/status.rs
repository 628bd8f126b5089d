//! What `raidctl status` shows, as a stable serialisable report (`--json` prints it as is).

use serde::{Deserialize, Serialize};

use crate::control::Controller;
use crate::layout::Geometry;
use crate::nbd::Server;
use crate::raid::{Array, IoCounters, SlotState};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberReport {
    /// Slot (raid role) for active members; None for spares.
    pub slot: Option<usize>,
    /// Device path; None when the slot has no device.
    pub path: Option<String>,
    /// "active" or "spare".
    pub role: String,
    /// "in_sync", "recovering", "faulty", "missing" or "spare".
    pub state: String,
    /// For a recovering member: bytes rebuilt so far, and of how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_total_bytes: Option<u64>,
    /// Ranges of the member's data area in its bad-block log (md's): their data could not be
    /// had, so they are never read as data; reads that need them fail with EIO until written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_blocks: Vec<BadRange>,
}

/// One recorded bad range: bytes from the start of the member's data area.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BadRange {
    pub offset: u64,
    pub bytes: u64,
}

/// The engine's request counters, as status reports them (the same fields, stable JSON).
pub type IoReport = IoCounters;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub name: String,
    pub uuid: String,
    /// "clean", "active", "degraded" or "failed".
    pub state: String,
    /// "raid0", "raid1", "raid5", "raid6" or "raid10".
    pub level: String,
    /// md's layout name ("left-symmetric", "near=2", "original"); empty for RAID1.
    pub layout: String,
    /// RAID5/6: what each slot holds in the first rows of the rotation ("Q D0 D1 D2 P").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
    pub size_bytes: u64,
    pub chunk_bytes: u64,
    pub raid_devices: usize,
    pub events: u64,
    pub read_only: bool,
    /// Whether redundancy is known consistent everywhere (no resync pending).
    pub in_sync: bool,
    pub members: Vec<MemberReport>,
    /// Human description of what is missing, "none" when complete.
    pub missing: String,
    pub pid: u32,
    pub connections: usize,
    pub total_connections: u64,
    /// NBD URIs clients can use (`nbd+unix:///NAME?socket=...`, `nbd://HOST:PORT/NAME`).
    pub export_uris: Vec<String>,
    pub io: IoReport,
    /// The running or last `check` / `repair` (md's sync_action and mismatch_cnt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::control::ScrubState>,
    /// Rebuild throttle, KiB/s.
    pub speed_min_kib: u64,
    pub speed_max_kib: u64,
    /// Block devices attached to the array (`raidctl attach`).
    #[serde(default)]
    pub attachments: Vec<super::attach::AttachReport>,
    /// The write-back cache: policy, effective mode and why, battery, dirty bytes, hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CacheReport>,
    /// The write-intent bitmap, when the array has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<crate::raid::BitmapReport>,
}

impl StatusReport {
    pub fn build(
        control: &Controller,
        server: Option<&Server<crate::cache::Cache>>,
        export_uris: Vec<String>,
    ) -> StatusReport {
        let array = control.array();
        let geo = array.geometry();
        let members = member_reports(control);
        let sb = array.superblock();
        StatusReport {
            name: array.name().to_string(),
            uuid: control.uuid_text(),
            state: format!("{:?}", array.state()).to_lowercase(),
            level: geo.kind().level_label(geo.members()),
            placement: geo.placement(),
            layout: crate::metadata::superblock_layout_name(&sb).unwrap_or_default(),
            size_bytes: array.size_bytes(),
            chunk_bytes: geo.chunk_bytes(),
            raid_devices: geo.members(),
            events: array.events(),
            read_only: array.is_read_only(),
            in_sync: array.sync_offset() == u64::MAX,
            members,
            missing: array.missing_description(),
            pid: std::process::id(),
            connections: server.map_or(0, |s| s.stats.connections.get()),
            total_connections: server.map_or(0, |s| s.stats.total_connections.get()),
            export_uris,
            io: array.counters(),
            check: control.scrub_state(),
            bitmap: array.bitmap_report(),
            cache: None,
            speed_min_kib: control.speed_limits().0,
            speed_max_kib: control.speed_limits().1,
            attachments: Vec::new(),
        }
    }
}

/// Every device the array knows of, in display order: the raid slots, a replacement being
/// copied, members replaced out as faulty, then spares; each with its bad ranges.
fn member_reports(control: &Controller) -> Vec<MemberReport> {
    let array = control.array();
    let geo = array.geometry();
    let mut members: Vec<MemberReport> = array
        .slots()
        .iter()
        .enumerate()
        .map(|(slot, s)| slot_report(geo, slot, s))
        .collect();
    if let Some((slot, path, done, total)) = control.replacement_state() {
        members.push(MemberReport {
            slot: Some(slot),
            path: Some(path),
            role: "replacement".into(),
            state: "recovering".into(),
            recovered_bytes: Some(done),
            recovery_total_bytes: Some(total),
            ..Default::default()
        });
    }
    for d in control.replaced_faulty() {
        members.push(unslotted_report(d.member.path(), "faulty"));
    }
    for d in array.spares() {
        members.push(unslotted_report(d.member.path(), "spare"));
    }
    attach_bad_blocks(array, &mut members);
    members
}

/// One raid slot: its device (if any) and state, and how far a rebuild of it has got.
fn slot_report(geo: &Geometry, slot: usize, s: &SlotState) -> MemberReport {
    let (path, state) = match s {
        SlotState::Active(d) => (Some(d.member.path().to_string()), "in_sync"),
        SlotState::Faulty(d) => (Some(d.member.path().to_string()), "faulty"),
        SlotState::Missing => (None, "missing"),
        SlotState::Recovering(d, _) => (Some(d.member.path().to_string()), "recovering"),
    };
    MemberReport {
        slot: Some(slot),
        path,
        role: "active".into(),
        state: state.into(),
        recovered_bytes: s.recovered_bytes(),
        recovery_total_bytes: s.recovered_bytes().map(|_| geo.slot_used_bytes(slot)),
        ..Default::default()
    }
}

/// A device outside the raid slots, whose role and state are the same word.
fn unslotted_report(path: &str, role: &str) -> MemberReport {
    MemberReport {
        slot: None,
        path: Some(path.to_string()),
        role: role.into(),
        state: role.into(),
        ..Default::default()
    }
}

/// Fills in each listed member's bad-block log.
fn attach_bad_blocks(array: &Array, members: &mut [MemberReport]) {
    for (path, ranges) in array.bad_blocks() {
        if let Some(m) = members
            .iter_mut()
            .find(|m| m.path.as_deref() == Some(path.as_str()))
        {
            m.bad_blocks = ranges
                .into_iter()
                .map(|(offset, bytes)| BadRange { offset, bytes })
                .collect();
        }
    }
}
