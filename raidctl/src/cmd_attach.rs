//! `raidctl attach` / `detach`: block devices for a running array.

use std::path::Path;
use std::time::Duration;

use raidcore::cache::EngineHandle;
use raidcore::daemon::attach::FuseMounter;
use raidcore::daemon::control::ControlRequest;
use raidcore::daemon::rundir::RunDir;
use raidcore::{Error, ErrorKind, Result};

use crate::cli::{AttachArgs, InjectArgs, StopArgs};
use crate::cmd_manage::simple;
use crate::cmd_status::call;

/// The FUSE frontend, handed to the daemon (raidcore does not link FUSE itself).
pub struct FuseFrontend;

impl FuseMounter for FuseFrontend {
    fn mount(
        &self,
        handle: EngineHandle,
        name: &str,
        dir: &Path,
    ) -> std::io::Result<Box<dyn Send>> {
        Ok(Box::new(fuse_frontend::mount(handle, name, dir)?))
    }
}

pub fn attach(args: AttachArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    let req = ControlRequest::Attach {
        device: args.device.clone(),
    };
    let answer = call(&run_dir, &args.name, &req, Duration::from_secs(60))?;
    let report = answer
        .attach
        .ok_or_else(|| Error::new(ErrorKind::Io, "the daemon did not say which device"))?;
    eprintln!(
        "raidctl: {} attached as {}: {}",
        args.name,
        report.describe(),
        report.reason
    );
    println!("{}", report.device);
    Ok(0)
}

pub fn detach(args: StopArgs, run_dir: Option<&str>) -> Result<i32> {
    let done = format!("array {} detached", args.name);
    simple(run_dir, &args.name, ControlRequest::Detach, done)
}

/// `raidctl inject`: a fault drill, applied by the daemon to one member's fault wrapper.
pub fn inject(args: InjectArgs, run_dir: Option<&str>) -> Result<i32> {
    let run_dir = RunDir::resolve(run_dir);
    let size = |s: &Option<String>| {
        s.as_deref()
            .map(raidcore::size::parse_size)
            .transpose()
            .map_err(Error::invalid)
    };
    let (offset, length) = (size(&args.offset)?, size(&args.length)?);
    let fault = if args.read_error {
        "read-error"
    } else if args.write_error {
        "write-error"
    } else if args.delay.is_some() {
        "delay"
    } else if args.vanish {
        "vanish"
    } else {
        "clear"
    };
    let req = ControlRequest::Inject {
        device: args.device.clone(),
        fault: fault.into(),
        delay_ms: args.delay,
        offset,
        length,
        count: args.count,
    };
    call(&run_dir, &args.name, &req, Duration::from_secs(10))?;
    println!(
        "{fault} armed on {} of array {} (a drill: raidctl inject {} {} --clear removes it)",
        args.device, args.name, args.name, args.device
    );
    Ok(0)
}
