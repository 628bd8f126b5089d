//! Checks of what an array and its simulated members hold.

use std::rc::Rc;

use raidcore::layout::Level;
use raidcore::member::{MemMember, Member};
use raidcore::raid::Array;

use super::read_array;

/// Redundancy read straight from the simulated members' data areas: every RAID5 row XORs to
/// zero, every RAID6 row's P and Q are those of its data, every RAID1/RAID10 copy is equal. `sims` are found by path, so a member may have
/// moved slots (spares, replacements). Panics with `context` and the first bad offset.
pub fn assert_redundancy_consistent(array: &Array, sims: &[Rc<MemMember>], context: &str) {
    let geo = array.geometry();
    let slots = array.slots();
    let member = |slot: usize| {
        let d = slots[slot]
            .disk()
            .unwrap_or_else(|| panic!("{context}: slot {slot} has no member"))
            .clone();
        let sim = sims
            .iter()
            .find(|s| s.path() == d.member.path())
            .unwrap_or_else(|| panic!("{context}: no simulated member {}", d.member.path()));
        (sim.store().lock().unwrap().clone(), d.data_offset as usize)
    };
    match geo.level() {
        Level::Raid5 => {
            let used = geo.member_used_bytes() as usize;
            let mut acc = vec![0u8; used];
            for slot in 0..geo.members() {
                let (bytes, off) = member(slot);
                for (a, b) in acc.iter_mut().zip(&bytes[off..off + used]) {
                    *a ^= b;
                }
            }
            if let Some(i) = acc.iter().position(|&x| x != 0) {
                panic!(
                    "{context}: parity inconsistent at member offset {i} (row {})",
                    i as u64 / geo.chunk_bytes()
                );
            }
        }
        Level::Raid6 | Level::Ec => {
            let chunk = geo.chunk_bytes() as usize;
            let parities = geo.parities();
            let k = geo.members() - parities;
            let code = match geo.level() {
                Level::Raid6 => raidcore::parity::code::RowCode::Raid6,
                _ => raidcore::parity::code::RowCode::ec(k, parities).expect("a valid code"),
            };
            let held: Vec<(Vec<u8>, usize)> = (0..geo.members()).map(member).collect();
            for stripe in 0..geo.parity_rows() {
                let at = stripe as usize * chunk;
                let piece = |slot: usize| &held[slot].0[held[slot].1 + at..][..chunk];
                let data: Vec<&[u8]> = geo.code_slots(stripe).map(piece).collect();
                let mut parity = vec![vec![0u8; chunk]; parities];
                let mut outs: Vec<&mut [u8]> = parity.iter_mut().map(Vec::as_mut_slice).collect();
                code.encode(&data, &mut outs);
                for (j, &slot) in geo.parity_slots(stripe).as_slice().iter().enumerate() {
                    assert!(
                        parity[j] == piece(slot),
                        "{context}: parity chunk {j} (slot {slot}) wrong in row {stripe}"
                    );
                }
            }
        }
        Level::Raid1 | Level::Raid10 => {
            let unit = if geo.level() == Level::Raid1 {
                65536
            } else {
                geo.chunk_bytes()
            };
            let mut at = 0;
            while at < geo.array_bytes() {
                let len = unit.min(geo.array_bytes() - at) as usize;
                let copies = geo.map_copies(at);
                let first = copies.as_slice()[0];
                let (m0, o0) = member(first.slot);
                let want = &m0[o0 + first.member_offset as usize..][..len];
                for p in copies.iter().skip(1) {
                    let (m, o) = member(p.slot);
                    assert!(
                        &m[o + p.member_offset as usize..][..len] == want,
                        "{context}: copies differ at array offset {at}"
                    );
                }
                at += unit;
            }
        }
        Level::Raid0 => {}
    }
}

/// A copy of every simulated member's bytes (to prove that nothing changed).
pub fn snapshot(sims: &[Rc<MemMember>]) -> Vec<Vec<u8>> {
    sims.iter()
        .map(|s| s.store().lock().unwrap().clone())
        .collect()
}

/// Reads the whole array and panics with `context` and the first byte that is not `model`'s.
pub async fn assert_reads_model(array: &Array, model: &[u8], context: &str) {
    let got = read_array(array, 0, model.len()).await.expect(context);
    if let Some(i) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{context}: array byte {i} differs from what was written");
    }
}

/// The md superblock that `sim` holds now (v1.2: 4 KiB into the member).
pub fn superblock_of(sim: &MemMember) -> raidcore::metadata::Superblock {
    raidcore::metadata::Superblock::decode(&sim.store().lock().unwrap()[4096..8192]).unwrap()
}
