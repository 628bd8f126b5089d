//! Writing to md-made arrays keeps them valid for mdadm.

use crate::fixture::*;
use crate::pattern::*;

// ---------------------------------------------------------------------------------------------
// 4. Writing to an md-made array keeps it valid for mdadm

/// What `mdadm --examine` says about one member.
#[derive(Debug)]
struct Examine {
    text: String,
}

impl Examine {
    fn of(mdadm: &Path, member: &str) -> Examine {
        let out = Command::new(mdadm)
            .arg("--examine")
            .arg(member)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} --examine: {e}", mdadm.display()));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mdadm --examine {member} failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        Examine { text }
    }

    fn field(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|line| {
            let (k, v) = line.split_once(" : ")?;
            (k.trim() == key).then_some(v.trim())
        })
    }

    fn must(&self, key: &str) -> &str {
        self.field(key)
            .unwrap_or_else(|| panic!("mdadm --examine shows no {key:?}:\n{}", self.text))
    }

    fn events(&self) -> u64 {
        self.must("Events")
            .parse()
            .unwrap_or_else(|e| panic!("Events is not a number ({e}):\n{}", self.text))
    }

    fn raid_devices(&self) -> usize {
        self.must("Raid Devices")
            .parse()
            .unwrap_or_else(|e| panic!("Raid Devices is not a number ({e}):\n{}", self.text))
    }

    /// "Internal Bitmap : 8 sectors from superblock" -> Some(8).
    fn bitmap_sectors_from_superblock(&self) -> Option<i64> {
        let v = self.field("Internal Bitmap")?;
        v.split_whitespace().next()?.parse().ok()
    }
}

/// The ranges written after the first 8 MiB: 512-aligned, not 4 KiB-aligned, crossing chunk and
/// stripe boundaries, up to the array's last sector. They do not overlap.
fn unaligned_ranges(size: u64) -> Vec<(u64, usize)> {
    let k = 1024u64;
    let ranges = vec![
        (8 * MIB + 512, 1024),
        (9 * MIB + 64 * k - 1536, 3072),
        (10 * MIB + 192 * k - 2560, 192 * 1024 + 5120),
        (size / 2 + 3584, 512),
        (size - 64 * k - 1536, 64 * 1024 + 1024),
        (size - 512, 512),
    ];
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 as u64 <= w[1].0, "ranges overlap: {w:?}");
    }
    ranges
}

fn check_write_keeps_md_valid(name: &'static str) {
    let mdadm = mdadm();
    let fx = Fixture::load(name);
    let before: Vec<Examine> = fx.members.iter().map(|m| Examine::of(&mdadm, m)).collect();

    // What the array must hold afterwards: md's pattern with our writes on top.
    let mut model = pattern_array(fx.size, |_| name);
    assert_eq!(
        md5_hex(&model),
        fx.md5,
        "{name}: the pattern this test computes does not have the md5 in {name}.md5"
    );
    let mut writes: Vec<(u64, Vec<u8>, bool)> = Vec::new();
    let head = pattern_range(WRITE_TAG, 0, (8 * MIB) as usize);
    for (i, (offset, len)) in unaligned_ranges(fx.size).into_iter().enumerate() {
        writes.push((offset, pattern_range(WRITE_TAG, offset, len), i % 2 == 1));
    }
    model[..head.len()].copy_from_slice(&head);
    for (offset, data, _) in &writes {
        model[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }

    let head = Rc::new(head);
    let state_after_writes = with_assembled(&fx.members, AssembleOptions::default(), {
        move |a| async move {
            let array = a.array;
            // The first 8 MiB: 1 MiB requests, all in flight together.
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                let array = array.clone();
                let head = head.clone();
                tasks.push(spawn(async move {
                    let at = (i * MIB) as usize;
                    write_range(&array, i * MIB, &head[at..at + MIB as usize], false).await
                }));
            }
            for t in tasks {
                t.await?;
            }
            for (offset, data, fua) in &writes {
                write_range(&array, *offset, data, *fua).await?;
            }
            let state = array.state();
            array
                .close()
                .await
                .map_err(|e| format!("close failed: {e}"))?;
            Ok(state)
        }
    })
    .unwrap_or_else(|e| panic!("{name}: read-write assembly and writes: {e}"));
    assert_eq!(
        state_after_writes,
        ArrayState::Active,
        "{name}: the array should be active (dirty) while written to"
    );

    // mdadm must find every member clean, checksummed, with newer events and all slots active.
    let mut events_after = Vec::new();
    for (k, (member, old)) in fx.members.iter().zip(&before).enumerate() {
        let now = Examine::of(&mdadm, member);
        let ctx = format!(
            "{name} m{k} ({member}) after raidcore wrote and closed:\n{}",
            now.text
        );
        assert!(
            now.must("Checksum").ends_with("- correct"),
            "mdadm finds a bad superblock checksum on {ctx}"
        );
        assert_eq!(now.must("State"), "clean", "not clean on {ctx}");
        assert!(
            now.events() > old.events(),
            "events did not advance ({} before, {} now) on {ctx}",
            old.events(),
            now.events()
        );
        let array_state = now
            .must("Array State")
            .split_whitespace()
            .next()
            .unwrap_or("");
        assert!(
            array_state.len() == now.raid_devices() && array_state.chars().all(|c| c == 'A'),
            "Array State is {array_state:?}, expected all active on {ctx}"
        );
        assert_eq!(
            now.field("Device Role"),
            old.field("Device Role"),
            "the member's role changed on {ctx}"
        );
        assert_eq!(
            now.field("Array UUID"),
            old.field("Array UUID"),
            "the array UUID changed on {ctx}"
        );
        // md reads an internal bitmap whose events are behind the superblock's as out of date
        // and resyncs everything: a clean stop leaves them equal.
        if let Some(sectors) = now.bitmap_sectors_from_superblock() {
            let at = (4096 + sectors * 512) as u64;
            let mut sb = [0u8; 512];
            File::open(member)
                .and_then(|f| f.read_exact_at(&mut sb, at))
                .unwrap_or_else(|e| panic!("cannot read the bitmap superblock of {member}: {e}"));
            assert_eq!(&sb[..4], b"bitm", "bitmap superblock magic lost on {ctx}");
            let bitmap_events = u64::from_le_bytes(sb[24..32].try_into().unwrap());
            assert_eq!(
                bitmap_events,
                now.events(),
                "bitmap events differ from the superblock's (md would call the bitmap out of \
                 date and resync the whole array) on {ctx}"
            );
        }
        events_after.push(now.events());
    }
    assert!(
        events_after.windows(2).all(|w| w[0] == w[1]),
        "{name}: members disagree on events after close: {events_after:?}"
    );

    // Assembled again, the array holds what we wrote and md's pattern everywhere else.
    let (state, data) = with_assembled(&fx.members, read_only_opts(), |a| async move {
        Ok((a.array.state(), read_all(&a.array).await?))
    })
    .unwrap_or_else(|e| panic!("{name}: assembling again after the writes: {e}"));
    assert_eq!(
        state,
        ArrayState::Clean,
        "{name}: the array is not clean when assembled after close"
    );
    if let Err(e) = compare(name, "content after raidcore's writes", &data, &model) {
        panic!("{e}");
    }
    assert_eq!(
        md5_hex(&data),
        md5_hex(&model),
        "{name}: md5 after raidcore's writes"
    );
    drop(data);

    // The redundancy is consistent too: with any one member left out (md rebuilding from
    // parity, or reading the other mirror), the array still reads back the same.
    let mut failures = Vec::new();
    for k in 0..fx.members.len() {
        let others: Vec<usize> = (0..fx.members.len()).filter(|&j| j != k).collect();
        let opts = AssembleOptions {
            run: true,
            read_only: true,
            ..AssembleOptions::default()
        };
        let data = with_assembled(&fx.members_of(&others), opts, |a| async move {
            read_all(&a.array).await
        })
        .unwrap_or_else(|e| panic!("{name}: assembling without m{k} after the writes: {e}"));
        let what = format!("content after raidcore's writes, read without m{k}");
        if let Err(e) = compare(name, &what, &data, &model) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn raid5_4_write_keeps_md_valid() {
    check_write_keeps_md_valid("raid5-4");
}

#[test]
fn raid1_2_write_keeps_md_valid() {
    check_write_keeps_md_valid("raid1-2");
}
