//! Layout tests: hand-worked examples from the md format notes (`examples`, `raid6`) and
//! exhaustive sector-by-sector checks over random geometries (`properties`).

mod ec;
mod examples;
mod properties;
mod raid6;

use super::*;

const KIB: u64 = 1024;

/// Every slot's place of data chunk number `chunk` (chunk-aligned array offset).
fn places(geometry: &Geometry, chunk: u64) -> Vec<(usize, u64)> {
    let chunk_bytes = geometry.chunk_bytes();
    geometry
        .map_copies(chunk * chunk_bytes)
        .iter()
        .map(|place| (place.slot, place.member_offset / chunk_bytes))
        .collect()
}
