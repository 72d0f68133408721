//! The `sie` binary: parses the command line, runs the subcommand, and turns
//! every error into one line on stderr and a non-zero exit status.

mod bench;
mod cli;
mod console_client;
mod ctl;
mod doctor;
mod embedded_guest;
mod firecracker;
mod jailer;
mod logging;
mod metadata;
mod run;
mod snapshot;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// Exit status when sie could not start or run the VM (bad input, host problem).
const EXIT_FAILURE: u8 = 1;

/// Prints an error and its sources on one line: `sie: error: a: b: c`.
fn report_error(error: &dyn std::error::Error) {
    eprintln!("sie: error: {}", sie_vmm::error_chain(error));
}

/// Makes sure descriptors 0, 1 and 2 are open, so that a file sie opens
/// later (such as /dev/kvm) can never land on them when sie is started with
/// a closed stdin or stdout.
fn guard_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: the path is a valid NUL-terminated string.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// One malloc arena for every thread (glibc). A thread's first allocation
/// otherwise opens an arena of its own, each keeping its own partly used
/// pages once the VM idles (28 KiB for sie's API, migration and vCPU
/// threads, README "Memory per VM"); sie's threads allocate little while
/// the VM runs, and each keeps its lock-free per-thread cache of small
/// blocks.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a malloc parameter; it runs before any
    // other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    let start = Instant::now();
    limit_malloc_arenas();
    guard_standard_fds();
    // Release builds abort on a panic (Cargo.toml): this hook is the last
    // thing that runs, so it restores the terminal and names the panic.
    std::panic::set_hook(Box::new(|info| {
        sie_vmm::restore_terminal();
        eprintln!("sie: internal error (a bug in sie): {info}");
    }));
    if jailer::started_as_jailer() {
        return jailer::main(<jailer::JailerCli as clap::Parser>::parse().args);
    }
    if std::env::args_os().len() == 1 && !firecracker::started_as_firecracker() {
        // A bare `sie` is someone asking what sie does, not a Firecracker
        // client (those always pass flags).
        let _ = <cli::Cli as clap::CommandFactory>::command().print_help();
        return ExitCode::from(2);
    }
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Command::Run(args)) => run::run(*args, start),
        Some(cli::Command::Doctor) => doctor::doctor(),
        Some(cli::Command::Bench(cli::BenchCommand::Exits(args))) => bench::exits::run(&args),
        Some(cli::Command::Bench(cli::BenchCommand::Boot(args))) => bench::boot::run(&args),
        Some(cli::Command::Bench(cli::BenchCommand::Blk(args))) => bench::blk::run(&args),
        Some(cli::Command::Bench(cli::BenchCommand::Net(args))) => bench::net::run(&args),
        Some(cli::Command::Bench(cli::BenchCommand::Snapshot(args))) => bench::snapshot::run(&args),
        Some(cli::Command::Bench(cli::BenchCommand::Migrate(args))) => bench::migrate::run(&args),
        Some(cli::Command::Bench(cli::BenchCommand::Memory(args))) => {
            bench::idle_memory::run(&args)
        }
        Some(cli::Command::Bench(cli::BenchCommand::Lifecycle(args))) => {
            bench::lifecycle::run(&args)
        }
        Some(cli::Command::Ctl(args)) => {
            // A client's output may go to `head`: die quietly on a closed
            // pipe like any command-line tool.
            // SAFETY: restoring the default disposition of SIGPIPE.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            ctl::run(args)
        }
        Some(cli::Command::Snapshot(cli::SnapshotFilesCommand::Rebase(args))) => {
            snapshot::rebase(&args)
        }
        Some(cli::Command::Jailer(args)) => return jailer::main(args),
        None => firecracker::run(cli.firecracker, start),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            report_error(error.as_ref());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
