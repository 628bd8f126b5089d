//! `raidctl`: the one command. Parsing lives in `cli`, behaviour in raidcore; this file maps
//! results to exit codes: 0 success, 1 any failure (one line on stderr), 2 bad usage (clap).

mod cli;
mod cmd_assemble;
mod cmd_attach;
mod cmd_cache;
mod cmd_create;
mod cmd_examine;
mod cmd_manage;
mod cmd_monitor;
mod cmd_status;
mod demo;
mod devices;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    init_logging(args.verbose);
    let result = match args.command {
        cli::Command::Create(a) => cmd_create::run(a),
        cli::Command::Examine(a) => cmd_examine::run(a),
        cli::Command::Assemble(a) => cmd_assemble::run(a, args.run_dir.as_deref()),
        cli::Command::Status(a) => cmd_status::run(a, args.run_dir.as_deref()),
        cli::Command::Stop(a) => cmd_status::stop(a, args.run_dir.as_deref()),
        cli::Command::Attach(a) => cmd_attach::attach(a, args.run_dir.as_deref()),
        cli::Command::Detach(a) => cmd_attach::detach(a, args.run_dir.as_deref()),
        cli::Command::Inject(a) => cmd_attach::inject(a, args.run_dir.as_deref()),
        cli::Command::Cache(a) => cmd_cache::run(a, args.run_dir.as_deref()),
        cli::Command::Fail(a) => cmd_manage::fail(a, args.run_dir.as_deref()),
        cli::Command::Remove(a) => cmd_manage::remove(a, args.run_dir.as_deref()),
        cli::Command::Add(a) => cmd_manage::add(a, args.run_dir.as_deref()),
        cli::Command::Rebuild(a) => cmd_manage::rebuild(a, args.run_dir.as_deref()),
        cli::Command::Check(a) => cmd_manage::check(a, args.run_dir.as_deref()),
        cli::Command::Replace(a) => cmd_manage::replace(a, args.run_dir.as_deref()),
        cli::Command::Monitor(a) => cmd_monitor::run(a, args.run_dir.as_deref()),
        cli::Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if cmd_assemble::notify_mode() {
                cmd_assemble::notify_error(&e.to_string());
            }
            eprintln!("raidctl: {e}");
            std::process::exit(1);
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAIDCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
