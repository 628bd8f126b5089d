//! `raidctl demo`: the product in one minute, on member files in a temporary directory.
//!
//! Creates four members and a spare and builds a RAID5 (`--level 6`: five members, two spares,
//! RAID6), writes a checkable pattern over the whole array with many requests in flight, pulls
//! one member out with the fault wrapper (RAID6: two), as if the disks vanished, reads
//! everything back from the degraded array and verifies it, lets the spares rebuild, then
//! stops the array cleanly and serves it through the daemon.

use std::rc::Rc;
use std::time::Instant;

use raidcore::buf::BufSlice;
use raidcore::control::{assemble, create, AssembleOptions, Controller, CreateOptions};
use raidcore::layout::{LayoutKind, Raid5Algorithm, Raid6Algorithm};
use raidcore::member::{FaultHandle, FaultMember, FileMember, Member, OpenOptions};
use raidcore::raid::Array;
use raidcore::reactor::{block_on, spawn};
use raidcore::size::format_size;
use raidcore::{Error, Result};

use crate::cli::DemoArgs;
use crate::cmd_status::print_report;
use raidcore::daemon::status::StatusReport;

const MEMBER_BYTES: u64 = 64 << 20;
const IO_BYTES: usize = 1 << 20;
const LANES: u64 = 16;

/// What the demo builds and breaks.
#[derive(Clone)]
struct Plan {
    kind: LayoutKind,
    members: usize,
    spares: usize,
    /// The slots whose members vanish.
    vanish: Vec<usize>,
}

impl Plan {
    fn for_level(level: u32) -> Result<Plan> {
        match level {
            5 => Ok(Plan {
                kind: LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
                members: 4,
                spares: 1,
                vanish: vec![2],
            }),
            6 => Ok(Plan {
                kind: LayoutKind::Raid6(Raid6Algorithm::LeftSymmetric),
                members: 5,
                spares: 2,
                vanish: vec![1, 3],
            }),
            other => Err(Error::invalid(format!(
                "demo --level {other}: the demo runs RAID5 (5) or RAID6 (6)"
            ))),
        }
    }

    fn level_name(&self) -> String {
        self.kind.level().to_string().to_uppercase()
    }

    /// "slot 2" or "slots 1 and 3".
    fn vanishing(&self) -> String {
        let list: Vec<String> = self.vanish.iter().map(|s| s.to_string()).collect();
        match list.len() {
            1 => format!("slot {}", list[0]),
            _ => format!("slots {}", list.join(" and ")),
        }
    }
}

pub fn run(args: DemoArgs) -> Result<i32> {
    let plan = Plan::for_level(args.level)?;
    let (dir, temporary) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io(format!("cannot create {d}"), e))?;
            (d.clone(), false)
        }
        None => {
            let d = std::env::temp_dir().join(format!("raidctl-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
            (d.display().to_string(), true)
        }
    };
    let spare_name = |i: usize| match plan.spares {
        1 => "spare".to_string(),
        _ => format!("spare{i}"),
    };
    let paths: Vec<String> = (0..plan.members + plan.spares)
        .map(|i| match i.checked_sub(plan.members) {
            None => format!("{dir}/m{i}.img"),
            Some(k) => format!("{dir}/{}.img", spare_name(k)),
        })
        .collect();
    let result = run_in(&plan, &paths).and_then(|()| serve(&dir, &paths, args.keep));
    if temporary && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else if result.is_ok() {
        println!("member files kept in {dir}");
    }
    result.map(|()| 0)
}

fn run_in(plan: &Plan, paths: &[String]) -> Result<()> {
    println!(
        "== creating {} members and {} spare(s) of {} in {}",
        plan.members,
        plan.spares,
        format_size(MEMBER_BYTES),
        parent(&paths[0])
    );
    for p in paths {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(p)
            .map_err(|e| Error::io(p, e))?;
        f.set_len(MEMBER_BYTES).map_err(|e| Error::io(p, e))?;
    }
    let (plan, paths) = (plan.clone(), paths.to_vec());
    block_on(async move { demo(plan, paths).await }).map_err(|e| Error::io("reactor", e))?
}

async fn demo(plan: Plan, paths: Vec<String>) -> Result<()> {
    let (members, spares) = create_array(&plan, &paths).await?;
    let (control, faults) = assemble_wrapped(members, spares).await?;
    let array = control.array().clone();
    let size = array.size_bytes();
    write_pattern(&array, size).await?;
    verify_degraded(&plan, &array, &faults, &paths, size).await?;
    wait_for_rebuild(&plan, &control, &paths[plan.members..]).await?;
    run_lanes(&array, size, false).await?;
    println!(
        "== verified all {} again, now with full redundancy",
        format_size(size)
    );
    println!();
    print_report(&StatusReport {
        pid: 0,
        ..StatusReport::build(&control, None, Vec::new())
    });
    array.close().await?;
    println!(
        "== stopped cleanly: superblocks updated (events {})",
        array.events()
    );
    Ok(())
}

/// Creates the array on the first files with the rest as its spares; returns the opened
/// members and spares.
async fn create_array(
    plan: &Plan,
    paths: &[String],
) -> Result<(Vec<Rc<dyn Member>>, Vec<Rc<dyn Member>>)> {
    let open = |p: &String| -> Result<Rc<dyn Member>> {
        Ok(Rc::new(FileMember::open(p, OpenOptions::default())?))
    };
    let opened: Vec<Rc<dyn Member>> = paths.iter().map(open).collect::<Result<_>>()?;
    let (members, spares) = opened.split_at(plan.members);
    let opts = CreateOptions {
        force: true,
        fresh: true,
        ..CreateOptions::new("demo", plan.kind.clone())
    };
    let created = create(members, spares, &opts).await?;
    println!(
        "== created {} 'demo' (left-symmetric, chunk 512K): {} usable, UUID {}",
        plan.level_name(),
        format_size(created.size_bytes),
        created.uuid_text
    );
    Ok((members.to_vec(), spares.to_vec()))
}

/// Assembles the array with every device behind the fault wrapper, as a drill would; the
/// handles are in device order (the spare last).
async fn assemble_wrapped(
    members: Vec<Rc<dyn Member>>,
    spare: Vec<Rc<dyn Member>>,
) -> Result<(Rc<Controller>, Vec<FaultHandle>)> {
    let (wrapped, faults) = FaultMember::wrap_all(members.into_iter().chain(spare));
    let assembled = assemble(wrapped, &AssembleOptions::default()).await?;
    println!(
        "== assembled: {} members active, {} spare(s)",
        assembled.array.geometry().members(),
        assembled.array.spares().len()
    );
    Ok((assembled.control, faults))
}

/// Fills the whole array with the pattern and reports the write speed.
async fn write_pattern(array: &Rc<Array>, size: u64) -> Result<()> {
    let started = Instant::now();
    run_lanes(array, size, true).await?;
    let secs = started.elapsed().as_secs_f64();
    array.flush().await?;
    println!(
        "== wrote {} of pattern with {LANES} requests in flight: {:.0} MiB/s",
        format_size(size),
        size as f64 / secs / 1048576.0
    );
    Ok(())
}

/// Makes the plan's members vanish, then reads everything back from the degraded array and
/// checks it.
async fn verify_degraded(
    plan: &Plan,
    array: &Rc<Array>,
    faults: &[FaultHandle],
    paths: &[String],
    size: u64,
) -> Result<()> {
    let gone: Vec<&str> = plan.vanish.iter().map(|&s| paths[s].as_str()).collect();
    println!(
        "== pulling the members of {} ({}) out: they vanish like unplugged disks",
        plan.vanishing(),
        gone.join(", ")
    );
    for &slot in &plan.vanish {
        faults[slot].vanish();
    }
    let started = Instant::now();
    run_lanes(array, size, false).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "== read back and verified all {} from the degraded array ({:.0} MiB/s, {} degraded reads rebuilt from parity)",
        format_size(size),
        size as f64 / secs / 1048576.0,
        array.counters().degraded_reads
    );
    Ok(())
}

/// Waits (up to 10 minutes) for the hot spares to be rebuilt into the empty slots, and reports
/// the rebuild speed. No command is needed: the scheduler does it online.
async fn wait_for_rebuild(plan: &Plan, control: &Controller, spare_paths: &[String]) -> Result<()> {
    let array = control.array();
    println!(
        "== the hot spare(s) take {} by themselves and are rebuilt from parity...",
        plan.vanishing()
    );
    let started = Instant::now();
    loop {
        raidcore::reactor::sleep(std::time::Duration::from_millis(20)).await;
        if control.rebuild_states().is_empty() && array.slots().iter().all(|s| s.is_active()) {
            break;
        }
        if array.is_failed() || started.elapsed().as_secs() > 600 {
            return Err(Error::new(
                raidcore::ErrorKind::Io,
                "the rebuild did not finish",
            ));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let member = array.geometry().member_used_bytes();
    let rebuilt = member * plan.vanish.len() as u64;
    println!(
        "== rebuilt {} onto {} in {secs:.1} s ({:.0} MiB/s)",
        format_size(rebuilt),
        spare_paths.join(", "),
        rebuilt as f64 / secs / 1048576.0
    );
    Ok(())
}

/// Writes (or reads and verifies) the whole array in 1 MiB requests on LANES concurrent tasks.
async fn run_lanes(array: &Rc<Array>, size: u64, write: bool) -> Result<()> {
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let array = array.clone();
        lanes.push(spawn(async move {
            let mut offset = lane * IO_BYTES as u64;
            while offset < size {
                let len = (size - offset).min(IO_BYTES as u64) as usize;
                if write {
                    let buf = BufSlice::filled(len, |b| fill_pattern(b, offset));
                    array.write(offset, buf, false).await?;
                } else {
                    let buf = BufSlice::zeroed(len);
                    array.read(offset, buf.clone()).await?;
                    let mut expected = vec![0u8; len];
                    fill_pattern(&mut expected, offset);
                    if buf.bytes() != expected.as_slice() {
                        return Err(Error::new(
                            raidcore::ErrorKind::Corrupt,
                            format!("data mismatch at offset {offset}"),
                        ));
                    }
                }
                offset += LANES * IO_BYTES as u64;
            }
            Ok::<(), Error>(())
        }));
    }
    for l in lanes {
        l.await?;
    }
    Ok(())
}

/// Every 8 bytes hold a value derived from their array offset: any misplaced byte shows.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let at = offset + i as u64 * 8;
        let v = at.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5241_4944_4354_4c21;
        word.copy_from_slice(&v.to_le_bytes());
    }
}

fn parent(p: &str) -> String {
    std::path::Path::new(p)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

/// Serves the (degraded) array through the daemon, as `raidctl assemble` would, and shows how
/// clients reach it.
fn serve(dir: &str, paths: &[String], keep: bool) -> Result<()> {
    let run_dir = format!("{dir}/run");
    println!(
        "\n== serving it over NBD: raidctl --run-dir {run_dir} assemble demo {}",
        paths.join(" ")
    );
    let args = crate::cli::AssembleArgs {
        name: "demo".into(),
        devices: paths.to_vec(),
        foreground: false,
        listen: Vec::new(),
        run: false,
        force: false,
        read_only: false,
        cache_size: None,
    };
    crate::cmd_assemble::run(args, Some(&run_dir))?;
    let uri = format!("nbd+unix:///demo?socket={run_dir}/demo.sock");
    println!("\nReach it with any NBD client:");
    println!("  nbdinfo '{uri}'");
    println!("  qemu-img convert -n -f raw -O raw disk.img '{uri}'");
    println!("  nbdfuse {dir}/mnt/ '{uri}' &   # then: losetup -f --show {dir}/mnt/nbd; mkfs.ext4; mount");
    if let Ok(out) = std::process::Command::new("nbdinfo").arg(&uri).output() {
        if out.status.success() {
            println!("\n$ nbdinfo '{uri}'");
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| {
                [
                    "export-size",
                    "can_multi_conn",
                    "can_trim",
                    "block_size_preferred",
                ]
                .iter()
                .any(|k| l.contains(k))
            }) {
                println!("{line}");
            }
        }
    }
    if keep {
        println!("\nstill serving; stop it with: raidctl --run-dir {run_dir} stop demo");
        return Ok(());
    }
    crate::cmd_status::stop(
        crate::cli::StopArgs {
            name: "demo".into(),
        },
        Some(&run_dir),
    )?;
    Ok(())
}
