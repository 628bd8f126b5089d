//! The command tree: what was typed, validated for shape only (no I/O here).

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "raidctl",
    version,
    about = "Userspace software RAID with hot spares, md v1.2 metadata, served over NBD"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RAIDCTL_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Run directory for sockets, pid and log files (default $RAIDCTL_RUN_DIR or /run/raidctl).
    #[arg(long, global = true, value_name = "DIR")]
    pub run_dir: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create an array: write md v1.2 superblocks on every member.
    Create(CreateArgs),
    /// Show the md superblock (and raidctl extension) of members, like mdadm --examine.
    Examine(ExamineArgs),
    /// Start the daemon for an array and serve it over NBD.
    Assemble(AssembleArgs),
    /// Show the state of running arrays.
    Status(StatusArgs),
    /// Stop an array: finish requests, flush, mark it clean, release the members.
    Stop(StopArgs),
    /// Attach a running array as a block device (/dev/nbdN, or FUSE + a loop device).
    Attach(AttachArgs),
    /// Detach the block device of an array (refused while it is mounted).
    Detach(StopArgs),
    /// Fault drill on a live array: make a member fail reads or writes, slow down, or vanish.
    Inject(InjectArgs),
    /// Show or set the write-back cache policy and battery flag of a running array.
    Cache(CacheArgs),
    /// Mark a member faulty (a hot spare takes over). Refused where the array would fail.
    Fail(FailArgs),
    /// Remove a faulty member or a spare from an array.
    Remove(MemberArgs),
    /// Add a device to a running array as a hot spare (a degraded array starts rebuilding).
    Add(AddArgs),
    /// Start or resume a rebuild now, change its speed limits, and optionally wait for it.
    Rebuild(RebuildArgs),
    /// Replace an active member: NEW is rebuilt while DEV stays in, then DEV is failed.
    Replace(ReplaceArgs),
    /// Scrub every stripe: count mismatches (md's mismatch_cnt); --repair fixes them.
    Check(CheckArgs),
    /// Stream events (failures, spares, rebuilds, checks) of one array or of all of them.
    Monitor(MonitorArgs),
    /// Run a self-contained demonstration on member files in a temporary directory.
    Demo(DemoArgs),
}

#[derive(Args)]
pub struct AssembleArgs {
    /// Array name: the export name and the run-directory file names.
    pub name: String,
    /// Member devices or files (any order; spares too).
    #[arg(value_name = "DEV")]
    pub devices: Vec<String>,
    /// Stay in the foreground (for systemd); logs go to stderr.
    #[arg(long)]
    pub foreground: bool,
    /// Extra NBD listener: unix:PATH, tcp:HOST:PORT, or tcp::PORT (127.0.0.1). Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Start even if members are missing (degraded).
    #[arg(long)]
    pub run: bool,
    /// Use stale members, and start a degraded RAID5 that was not stopped cleanly.
    #[arg(long)]
    pub force: bool,
    /// Serve read-only and never write a superblock.
    #[arg(long)]
    pub read_only: bool,
    /// RAM for the write-back cache (K/M/G; 0 turns it off). Default 256M.
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Array name (default: every array in the run directory).
    pub name: Option<String>,
    /// Machine-readable output (stable fields, see the README).
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args)]
pub struct StopArgs {
    /// Array name.
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BitmapChoice {
    Internal,
    None,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Array name (letters, digits, '.', '_' and '-'; at most 32 characters).
    pub name: String,
    /// RAID level: 0, 1, 5, 6 or 10; or ec, a k+m erasure code md cannot run (see --parity).
    #[arg(long, short = 'l')]
    pub level: String,
    /// With --level ec: parity chunks per row, 1 to 4 (default 2). Any that many members may
    /// be lost; the other members hold data.
    #[arg(long, short = 'p')]
    pub parity: Option<usize>,
    /// Chunk size (power of two, at least 4K).
    #[arg(long, short = 'c', default_value = "512K")]
    pub chunk: String,
    /// Layout: RAID5 and RAID6 left-symmetric (default), right-symmetric, left-asymmetric,
    /// right-asymmetric, parity-first, parity-last (RAID6 also with -6); RAID10 n2
    /// (default), f2, o2, n3, ...
    #[arg(long)]
    pub layout: Option<String>,
    /// Create member files of this size, or extend existing files to it (K/M/G/T).
    #[arg(long)]
    pub size: Option<String>,
    /// A hot spare (repeatable).
    #[arg(long = "spare", value_name = "DEV")]
    pub spares: Vec<String>,
    /// Write-intent bitmap (default: internal for RAID1/5/10, none for RAID0).
    #[arg(long, value_enum)]
    pub bitmap: Option<BitmapChoice>,
    /// Bytes of the array each bitmap bit covers (K/M/G, a power of two of at least 4K):
    /// smaller means less to resync after a crash or to rebuild on a re-add, more bitmap
    /// writes. Default: mdadm's, at least 64M.
    #[arg(long, value_name = "SIZE")]
    pub bitmap_chunk: Option<String>,
    /// Skip the initial sync: the members' contents are declared consistent.
    #[arg(long)]
    pub assume_clean: bool,
    /// Overwrite devices that belong to another array.
    #[arg(long)]
    pub force: bool,
    /// Share hot spares with the other running arrays of this group.
    #[arg(long, value_name = "GROUP")]
    pub spare_group: Option<String>,
    /// Member devices or files, in slot order.
    #[arg(required = true, value_name = "DEV")]
    pub devices: Vec<String>,
}

#[derive(Args)]
pub struct ExamineArgs {
    /// Member devices or files.
    #[arg(required = true, value_name = "DEV")]
    pub devices: Vec<String>,
    /// Machine-readable output (an array of reports).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DemoArgs {
    /// 5: four members and a spare, one disk pulled; 6: five members and two spares, two
    /// disks pulled.
    #[arg(long, default_value_t = 5)]
    pub level: u32,
    /// Directory for the member files (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<String>,
    /// Keep the member files afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args)]
pub struct AttachArgs {
    /// Array name.
    pub name: String,
    /// /dev/nbdN or "nbd" (the kernel nbd driver; "nbd" takes the first free device) or
    /// "fuse" (FUSE file + loop device). Default: nbd where the kernel has it, else fuse.
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("fault").required(true).args(["read_error", "write_error", "delay", "vanish", "clear"])))]
pub struct InjectArgs {
    /// Array name.
    pub name: String,
    /// The member device, as given to assemble.
    pub device: String,
    /// Reads of the range fail with EIO.
    #[arg(long)]
    pub read_error: bool,
    /// Writes of the range fail with EIO.
    #[arg(long)]
    pub write_error: bool,
    /// Every operation on the range waits this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub delay: Option<u64>,
    /// The device disappears: every later operation fails (like an unplugged disk). A drill:
    /// unlike `fail`, it is never refused, so it can rehearse a double failure.
    #[arg(long)]
    pub vanish: bool,
    /// Remove every injected fault of the member.
    #[arg(long)]
    pub clear: bool,
    /// Start of the affected range on the device (bytes, K/M/G suffixes).
    #[arg(long, requires = "length")]
    pub offset: Option<String>,
    /// Length of the affected range.
    #[arg(long, requires = "offset")]
    pub length: Option<String>,
    /// Only the next N matching operations.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Args)]
pub struct FailArgs {
    /// Array name.
    pub name: String,
    /// The member device.
    pub device: String,
    /// Fail it even if it holds the last copy of some data (the array then fails).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct MemberArgs {
    /// Array name.
    pub name: String,
    /// The member device.
    pub device: String,
}

#[derive(Args)]
pub struct AddArgs {
    /// Array name.
    pub name: String,
    /// The device to add.
    pub device: String,
    /// Add as a hot spare (the default and, for now, the only way to add).
    #[arg(long)]
    pub spare: bool,
    /// Overwrite a device that belongs to another array.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct RebuildArgs {
    /// Array name.
    pub name: String,
    /// Wait until no rebuild is running, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Minimum rebuild speed while the array is busy (KiB/s, md's default 1000).
    #[arg(long, value_name = "KIB")]
    pub speed_min: Option<u64>,
    /// Maximum rebuild speed (KiB/s, md's default 200000).
    #[arg(long, value_name = "KIB")]
    pub speed_max: Option<u64>,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Array name.
    pub name: String,
    /// Rewrite parity (RAID5) or the other copies (mirrors) where they disagree.
    #[arg(long)]
    pub repair: bool,
    /// Wait for the scrub to finish, showing progress; exit 1 if mismatches were found.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args)]
pub struct MonitorArgs {
    /// Array name (default: every array running in the run directory).
    pub name: Option<String>,
    /// One JSON object per event.
    #[arg(long)]
    pub json: bool,
    /// Run PROGRAM EVENT ARRAY [MEMBER] for every event, in order (like mdadm --monitor --program).
    #[arg(long, value_name = "PATH")]
    pub program: Option<String>,
}

#[derive(Args)]
pub struct ReplaceArgs {
    /// Array name.
    pub name: String,
    /// The active member to replace.
    pub device: String,
    /// The new device.
    #[arg(long = "with", value_name = "NEW")]
    pub with: String,
    /// Overwrite a NEW that belongs to another array.
    #[arg(long)]
    pub force: bool,
    /// Wait until the replacement is complete, showing progress.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args)]
pub struct CacheArgs {
    /// Array name.
    pub name: String,
    /// write-back (only while the battery is present), write-through, or always-write-back
    /// (whatever the battery says: a power loss can lose acknowledged writes).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// The battery-backup flag: present, absent, charging or failed.
    #[arg(long, value_name = "STATE")]
    pub battery: Option<String>,
    /// A file a UPS daemon writes the battery word into; followed live. "none" goes back to
    /// the --battery flag.
    #[arg(long, value_name = "PATH")]
    pub battery_file: Option<String>,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}
