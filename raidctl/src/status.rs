//! Human-readable status of an array (the `status` command reuses this).

use raidcore::raid::{Array, SlotState};
use raidcore::size::format_size;

pub fn print_status(array: &Array) {
    let geo = array.geometry();
    println!(
        "array {}  state {}  level {}  size {} ({} bytes)",
        array.name(),
        state_name(array.state()),
        geo.level(),
        format_size(array.size_bytes()),
        array.size_bytes()
    );
    println!(
        "  uuid {}  events {}  chunk {}",
        array.uuid_text(),
        array.events(),
        format_size(geo.chunk_bytes())
    );
    for (i, s) in array.slots().iter().enumerate() {
        match s {
            SlotState::Active(d) => println!("  slot {i}: {:<40} active", d.member.path()),
            SlotState::Faulty(d) => println!("  slot {i}: {:<40} faulty", d.member.path()),
            SlotState::Missing => println!("  slot {i}: {:<40} missing", "-"),
        }
    }
    for d in array.spares() {
        println!("  spare:  {:<40} spare", d.member.path());
    }
    let c = array.counters();
    println!(
        "  io: {} reads ({}), {} writes ({}), {} flushes, {} degraded reads, {} errors",
        c.reads,
        format_size(c.read_bytes),
        c.writes,
        format_size(c.write_bytes),
        c.flushes,
        c.degraded_reads,
        c.errors
    );
}

pub fn state_name(state: raidcore::raid::ArrayState) -> &'static str {
    use raidcore::raid::ArrayState::*;
    match state {
        Clean => "clean",
        Active => "active",
        Degraded => "degraded",
        Failed => "failed",
    }
}
