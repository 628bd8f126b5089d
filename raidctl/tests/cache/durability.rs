//! What survives kill -9: write-through writes, flushed write-back data (unflushed blocks old
//! or new, never torn), and writes acknowledged on another connection once one FLUSHes.

#[allow(unused_imports)]
use crate::*;

#[test]
fn write_through_write_survives_kill_9() {
    let mut h = raid5("wt", &[]);
    let c = set_cache(&h, &[]);
    assert_policy(&c, "write-back write-through absent -", "a new array");
    assert!(str_of(&c, "reason").contains("battery absent"), "{c:#}");
    let text = h.ok(&["cache", "wt"]).stdout;
    assert!(
        text.contains("write-through") && text.contains("absent"),
        "{text}"
    );

    let offset = 5 * MIB + 3 * BLOCK;
    let data = pattern(&h, "a.bin", 1);
    let a = s(&h.path("a.bin"));
    kill_9_under_held_writes(&mut h, &format!("w 0 {offset} {a} 0 {BLOCK}\n"));
    assert!(
        pread(&h, offset, BLOCK) == data,
        "the write-through write is lost after kill -9"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Write-back: flushed data survives kill -9; unflushed blocks are old or new, never torn
// ---------------------------------------------------------------------------------------------

#[test]
fn write_back_flushed_data_survives_kill_9() {
    // Dense (half the blocks of 21 RAID5 rows): rows are destaged with many dirty blocks.
    const REGION: u64 = 4 * MIB;
    const WRITES: usize = 256;
    let mut h = raid5("wb", &[]);
    // Random old contents where the writes go (written through: the battery is absent).
    fs::write(h.path("fill.bin"), Rng::new(2).bytes(REGION as usize)).unwrap();
    h.nbdcopy(&[&s(&h.path("fill.bin")), &h.uri()]);
    h.nbdcopy(&[&h.uri(), &s(&h.path("before.img"))]);

    assert_eq!(
        str_of(&set_cache(&h, &["--battery", "present"]), "effective"),
        "write-back"
    );
    assert_eq!(str_of(&cache(&h), "effective"), "write-back");

    // 2 x 256 distinct random blocks: A (then a flush), then B (no flush).
    let mut rng = Rng::new(3);
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    let mut order = Vec::new();
    while order.len() < 2 * WRITES {
        let b = rng.next_u64() % (REGION / BLOCK);
        if let std::collections::hash_map::Entry::Vacant(e) = index_of.entry(b) {
            e.insert(order.len());
            order.push(b);
        }
    }
    let new_data = Rng::new(4).bytes(2 * WRITES * BLOCK as usize);
    fs::write(h.path("new.bin"), &new_data).unwrap();
    let new_file = s(&h.path("new.bin"));
    let mut plan = String::new();
    for (i, b) in order.iter().enumerate() {
        if i == WRITES {
            plan.push_str("f 0\n");
        }
        let (at, from) = (b * BLOCK, i as u64 * BLOCK);
        plan.push_str(&format!("w 0 {at} {new_file} {from} {BLOCK}\n"));
    }
    kill_9_under_held_writes(&mut h, &plan);
    h.nbdcopy(&[&h.uri(), &s(&h.path("after.img"))]);

    // Block by block: A new, B old or new, everything else as before.
    let before = fs::read(h.path("before.img")).unwrap();
    let after = fs::read(h.path("after.img")).unwrap();
    assert_eq!(before.len(), after.len(), "the export's size changed");
    let (mut problems, mut b_new) = (Vec::new(), 0);
    let blocks = before
        .chunks(BLOCK as usize)
        .zip(after.chunks(BLOCK as usize));
    for (block, (old, now)) in blocks.enumerate() {
        let i = index_of.get(&(block as u64)).copied();
        let new = i.map(|i| &new_data[i * BLOCK as usize..(i + 1) * BLOCK as usize]);
        let problem = match i {
            Some(i) if i < WRITES => (Some(now) != new).then_some("flushed (A) block lost"),
            Some(_) => {
                b_new += usize::from(Some(now) == new);
                (now != old && Some(now) != new)
                    .then_some("unflushed (B) block is neither old nor new")
            }
            None => (now != old).then_some("a block nobody wrote changed"),
        };
        if let Some(p) = problem.filter(|_| problems.len() < 20) {
            problems.push(format!(
                "block {block} (byte {}): {p}",
                block as u64 * BLOCK
            ));
        }
    }
    eprintln!("{b_new} of {WRITES} unflushed blocks reached the members before the kill");
    assert!(
        problems.is_empty(),
        "after kill -9 and assemble:\n{}",
        problems.join("\n")
    );
}

#[test]
fn flush_on_one_connection_covers_writes_on_another() {
    let mut h = raid5("fl", &[]);
    assert_eq!(
        str_of(&set_cache(&h, &["--battery", "present"]), "effective"),
        "write-back"
    );
    let offset = 17 * MIB + 5 * BLOCK;
    let data = pattern(&h, "a.bin", 5);
    let a = s(&h.path("a.bin"));
    kill_9_under_held_writes(
        &mut h,
        &format!("c 1\nc 2\nw 1 {offset} {a} 0 {BLOCK}\nf 2\n"),
    );
    assert!(
        pread(&h, offset, BLOCK) == data,
        "a write flushed on another connection is lost"
    );
}
