//! md's RAID6 parity, checked on an array md itself wrote (`shared/fixtures/md/raid6-5`, five
//! members, left-symmetric, 64 KiB chunks): for every stripe row, P and Q computed by
//! `parity::raid6` over the data chunks in md's syndrome order (placed by `layout::Geometry`)
//! equal what md put on the parity members, and two data chunks wiped from a row come back
//! byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use raidcore::layout::{Geometry, LayoutKind};
use raidcore::metadata::Superblock;
use raidcore::parity::raid6::{gen_syndrome, recover, Lost};

fn fixture_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("../shared/fixtures/md")
}

/// The members of raid6-5, decompressed (they are 24 MiB each).
fn members() -> Vec<Vec<u8>> {
    let src = fixture_dir();
    assert!(
        src.join("raid6-5.m0.img.xz").exists(),
        "no fixture raid6-5 in {}: put shared/ beside the repository",
        src.display()
    );
    (0..5)
        .map(|k| {
            let xz = src.join(format!("raid6-5.m{k}.img.xz"));
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .expect("xz runs (apt-get install xz-utils)");
            assert!(out.status.success(), "xz -dc {}", xz.display());
            out.stdout
        })
        .collect()
}

#[test]
fn md_raid6_p_and_q_are_ours_and_two_lost_chunks_come_back() {
    let members = members();
    let sb = Superblock::decode(&members[0][4096..8192]).expect("md superblock");
    assert_eq!(
        (sb.level, sb.layout, sb.raid_disks),
        (6, 2, 5),
        "raid6 left-symmetric, 5"
    );
    let n = sb.raid_disks as usize;
    let chunk = sb.chunk_sectors as usize * 512;
    let data_offset = sb.data_offset_sectors as usize * 512;
    let kind = LayoutKind::from_md(sb.level, sb.layout).expect("md's RAID6 layout");
    let geo = Geometry::new(kind, chunk as u64, &vec![sb.size_sectors * 512; n]).unwrap();
    let rows = geo.parity_rows() as usize;
    let mut checked = 0;
    for row in 0..rows {
        let stripe = row as u64;
        let p_slot = geo.p_slot(stripe);
        let q_slot = geo.q_slot(stripe).expect("RAID6 has Q");
        let at = data_offset + row * chunk;
        let piece = |slot: usize| members[slot][at..at + chunk].to_vec();
        // The data chunks in md's syndrome order.
        let mut data: Vec<Vec<u8>> = vec![Vec::new(); n - 2];
        for slot in 0..n {
            if let Some(i) = geo.code_index(stripe, slot) {
                data[i] = piece(slot);
            }
        }
        let view: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let (mut p, mut q) = (vec![0u8; chunk], vec![0u8; chunk]);
        gen_syndrome(&view, &mut p, &mut q);
        assert!(p == piece(p_slot), "row {row}: P differs from md's");
        assert!(q == piece(q_slot), "row {row}: Q differs from md's");
        // Wipe two data chunks (rotating which) and rebuild them from the rest.
        let (x, y) = (row % (n - 2), (row + 1) % (n - 2));
        let mut broken = data.clone();
        broken[x].fill(0);
        broken[y].fill(0);
        let mut view: Vec<&mut [u8]> = broken.iter_mut().map(|d| d.as_mut_slice()).collect();
        recover(&mut view, &mut p, &mut q, &[Lost::Data(x), Lost::Data(y)]);
        assert!(
            broken == data,
            "row {row}: chunks {x} and {y} rebuilt wrong"
        );
        checked += 1;
    }
    assert!(checked > 100, "checked {checked} rows");
    eprintln!("raid6-5: P, Q and a two-chunk recovery agree with md on {checked} rows");
}
