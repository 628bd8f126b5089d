//! `raidctl create`: validate everything, then write superblocks. Bad input touches nothing.

use raidcore::control::{create, CreateOptions};
use raidcore::layout::{
    LayoutKind, Level, Raid0Layout, Raid10Layout, Raid5Algorithm, Raid6Algorithm,
};
use raidcore::reactor::block_on;
use raidcore::size::{format_size, parse_size};
use raidcore::{Error, Result};

use crate::cli::{BitmapChoice, CreateArgs};
use crate::devices::{open_members, prepare_files, undo};

pub fn run(args: CreateArgs) -> Result<i32> {
    let opts = validate(&args)?;
    let label = opts.kind.level_label(args.devices.len());
    let size = args
        .size
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(Error::invalid)?;
    let mut all: Vec<String> = args.devices.clone();
    all.extend(args.spares.iter().cloned());
    let prepared = prepare_files(&all, size)?;
    let fresh = prepared.iter().all(|p| p.fresh);
    let result = open_members(&all).and_then(|members| {
        let (data, spares) = members.split_at(args.devices.len());
        let (data, spares) = (data.to_vec(), spares.to_vec());
        let opts = CreateOptions { fresh, ..opts };
        block_on(async move { create(&data, &spares, &opts).await })
            .map_err(|e| Error::io("reactor", e))?
    });
    let created = match result {
        Ok(c) => c,
        Err(e) => {
            undo(&prepared);
            return Err(e);
        }
    };
    println!(
        "created {} array {}: {} members{}, {}size {} ({} bytes), UUID {}",
        label,
        args.name,
        args.devices.len(),
        if args.spares.is_empty() {
            String::new()
        } else {
            format!(" + {} spare(s)", args.spares.len())
        },
        if opts_level(&args)? == Level::Raid1 {
            String::new()
        } else {
            format!("chunk {}, ", format_size(created.chunk_bytes))
        },
        format_size(created.size_bytes),
        created.size_bytes,
        created.uuid_text,
    );
    if created.needs_sync {
        println!("initial sync pending: the members held data before; parity/copies are made consistent by the first rebuild (raidctl rebuild)");
    }
    Ok(0)
}

fn opts_level(args: &CreateArgs) -> Result<Level> {
    parse_level(&args.level)
}

pub fn parse_level(text: &str) -> Result<Level> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_prefix("raid").unwrap_or(&t);
    match t {
        "0" => Ok(Level::Raid0),
        "1" => Ok(Level::Raid1),
        "5" => Ok(Level::Raid5),
        "6" => Ok(Level::Raid6),
        "10" => Ok(Level::Raid10),
        "ec" => Ok(Level::Ec),
        _ => Err(Error::invalid(format!(
            "unknown RAID level {text:?}: use --level 0, 1, 5, 6, 10 or ec"
        ))),
    }
}

/// Checks the arguments (no I/O) and builds the library's options.
fn validate(args: &CreateArgs) -> Result<CreateOptions> {
    validate_name(&args.name)?;
    let level = parse_level(&args.level)?;
    let chunk_bytes = parse_chunk(&args.chunk)?;
    let kind = parse_layout(level, args.layout.as_deref(), args.parity)?;
    check_device_counts(level, &kind, args)?;
    let (bitmap, bitmap_chunk_bytes) = parse_bitmap(level, args)?;
    if level == Level::Raid0 && !args.spares.is_empty() {
        return Err(Error::invalid(
            "RAID0 cannot use hot spares: it has no redundancy to rebuild",
        ));
    }
    Ok(CreateOptions {
        name: args.name.clone(),
        kind,
        chunk_bytes,
        bitmap,
        bitmap_chunk_bytes,
        assume_clean: args.assume_clean,
        force: args.force,
        fresh: false,
        spare_group: args.spare_group.clone(),
    })
}

/// `--chunk`: a power of two from 4K to 1G.
fn parse_chunk(text: &str) -> Result<u64> {
    let chunk_bytes = parse_size(text).map_err(Error::invalid)?;
    if !chunk_bytes.is_power_of_two() || chunk_bytes < 4096 {
        return Err(Error::invalid(format!(
            "invalid chunk size {}: it must be a power of two of at least 4K (e.g. 64K, 512K)",
            text
        )));
    }
    if chunk_bytes > (1 << 30) {
        return Err(Error::invalid(format!(
            "chunk size {} is too large: at most 1G",
            text
        )));
    }
    Ok(chunk_bytes)
}

/// `--layout` for the level, or md's default layout when it is not given; `--parity` for ec.
fn parse_layout(level: Level, layout: Option<&str>, parity: Option<usize>) -> Result<LayoutKind> {
    let max = raidcore::parity::ec::MAX_PARITY;
    match (level, parity) {
        (Level::Ec, Some(m)) if !(1..=max).contains(&m) => {
            return Err(Error::invalid(format!(
                "--parity {m}: a k+m array has 1 to {max} parity chunks per row"
            )));
        }
        (Level::Ec, _) => {}
        (_, Some(_)) => {
            return Err(Error::invalid(
                "--parity applies to --level ec only (RAID5 has 1 parity chunk, RAID6 2)",
            ));
        }
        (_, None) => {}
    }
    let kind = match (level, layout) {
        (Level::Ec, None) => LayoutKind::Ec { parity: parity.unwrap_or(2) },
        (Level::Raid0, None) => LayoutKind::Raid0(Raid0Layout::Original),
        (Level::Raid1, None) => LayoutKind::Raid1,
        (Level::Raid5, None) => LayoutKind::Raid5(Raid5Algorithm::LeftSymmetric),
        (Level::Raid6, None) => LayoutKind::Raid6(Raid6Algorithm::LeftSymmetric),
        (Level::Raid10, None) => LayoutKind::Raid10(Raid10Layout { near: 2, far: 1, offset: false }),
        (Level::Raid5, Some(l)) => LayoutKind::Raid5(Raid5Algorithm::parse(l).map_err(|_| {
            Error::invalid(format!(
                "unknown RAID5 layout {l:?}: use left-symmetric, right-symmetric, left-asymmetric, right-asymmetric, parity-first or parity-last"
            ))
        })?),
        (Level::Raid6, Some(l)) => LayoutKind::Raid6(Raid6Algorithm::parse(l).map_err(|_| {
            Error::invalid(format!(
                "unknown RAID6 layout {l:?}: use left-symmetric, right-symmetric, left-asymmetric, right-asymmetric, parity-first, parity-last, or one of them with -6"
            ))
        })?),
        (Level::Raid10, Some(l)) => LayoutKind::Raid10(Raid10Layout::parse(l).map_err(|_| {
            Error::invalid(format!("unknown RAID10 layout {l:?}: use n2, f2, o2 (or n3, f3, ...)"))
        })?),
        (_, Some(l)) => {
            return Err(Error::invalid(format!("--layout {l:?} applies to RAID5, RAID6 and RAID10 only (ec arrays rotate their parity one way)")));
        }
    };
    Ok(kind)
}

/// Enough members for the level (and for every RAID10 copy), and not more devices in all
/// than the superblock has roles for.
fn check_device_counts(level: Level, kind: &LayoutKind, args: &CreateArgs) -> Result<()> {
    let (min, what) = match level {
        Level::Raid0 => (2, "RAID0 needs at least 2 members".to_string()),
        Level::Raid1 => (2, "RAID1 needs at least 2 members".to_string()),
        Level::Raid5 => (3, "RAID5 needs at least 3 members".to_string()),
        Level::Raid6 => (4, "RAID6 needs at least 4 members".to_string()),
        Level::Raid10 => (2, "RAID10 needs at least 2 members".to_string()),
        Level::Ec => {
            let m = kind.parities();
            let what = format!(
                "an ec array with --parity {m} needs at least {} members (2 for data)",
                m + 2
            );
            (m + 2, what)
        }
    };
    if args.devices.len() < min {
        return Err(Error::invalid(format!(
            "{what}, {} given",
            args.devices.len()
        )));
    }
    if let LayoutKind::Raid10(l) = kind {
        if (l.near * l.far) as usize > args.devices.len() {
            return Err(Error::invalid(format!(
                "RAID10 layout {} keeps {} copies but only {} members were given",
                l.name(),
                l.near * l.far,
                args.devices.len()
            )));
        }
    }
    if args.devices.len() + args.spares.len() > 384 {
        return Err(Error::invalid(
            "too many devices: at most 384 members and spares",
        ));
    }
    Ok(())
}

/// `--bitmap` and `--bitmap-chunk`: whether the array gets a write-intent bitmap (every
/// redundant level does by default) and its chunk size, if given.
fn parse_bitmap(level: Level, args: &CreateArgs) -> Result<(bool, Option<u32>)> {
    let bitmap = match (level, args.bitmap) {
        (Level::Raid0, Some(BitmapChoice::Internal)) => {
            return Err(Error::invalid(
                "RAID0 has no redundancy to resync: --bitmap internal is not allowed",
            ));
        }
        (Level::Raid0, _) => false,
        (_, Some(BitmapChoice::None)) => false,
        _ => true,
    };
    let bitmap_chunk_bytes = match &args.bitmap_chunk {
        None => None,
        Some(_) if !bitmap => {
            return Err(Error::invalid(
                "--bitmap-chunk needs a bitmap: leave out --bitmap none (RAID0 has none)",
            ))
        }
        Some(text) => {
            let bytes = raidcore::size::parse_size(text)
                .map_err(|e| Error::invalid(format!("invalid --bitmap-chunk {text}: {e}")))?;
            if !bytes.is_power_of_two() || !(4096..=(1 << 31)).contains(&bytes) {
                return Err(Error::invalid(format!(
                    "invalid --bitmap-chunk {text}: use a power of two from 4K to 2G"
                )));
            }
            Some(bytes as u32)
        }
    };
    Ok((bitmap, bitmap_chunk_bytes))
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('-')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid array name {name:?}: use 1-32 letters, digits, '.', '_' or '-'"
        )))
    }
}
