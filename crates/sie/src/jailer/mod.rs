//! `sie jailer` (or sie started through a link named `jailer`): Firecracker's
//! jailer for sie. It builds a jail, enters namespaces, drops root and
//! becomes the VMM, taking Firecracker's jailer flags:
//!
//! ```text
//! jailer --id vm1 --exec-file /usr/bin/sie --uid 123 --gid 100 \
//!        [--chroot-base-dir /srv/jailer] [--netns /var/run/netns/ns1] \
//!        [--daemonize] [--new-pid-ns] [--cgroup-version 1|2] [--cgroup cpu.max=50000]... \
//!        [--parent-cgroup PATH] [--resource-limit no-file=1024]... -- --api-sock /api.sock
//! ```
//!
//! The steps, in order (each failure is one line naming the step; a failure
//! before the exec removes the jail directory and cgroups it created):
//! 1. close inherited descriptors above 2; validate the flags; check that
//!    the exec file is a static ELF (the jail has no loader);
//! 2. build `<chroot base>/<exec name>/<id>/root` ([`jail_fs`]): refused if
//!    `<id>` exists; the executable copied in; `/dev/kvm`, `/dev/net/tun`
//!    and `/dev/userfaultfd` (when the host has it) owned by uid:gid;
//! 3. resource limits, then the cgroup ([`cgroup`]);
//! 4. the network namespace, then a new mount namespace pivoted into the
//!    jail ([`namespaces`]); `--daemonize`: setsid and /dev/null;
//! 5. `--new-pid-ns`: fork; the parent waits for the child's exec, writes
//!    the pid file and exits;
//! 6. write `/<exec name>.pid`, drop to uid:gid with no capabilities
//!    ([`privileges`]), exec `/<exec name> --id ID --start-time-us N
//!    --start-time-cpu-us N [--parent-cpu-time-us N] <VMM FLAGS>` with an
//!    empty environment.

mod args;
mod cgroup;
mod error;
mod exec_file;
mod jail_fs;
mod namespaces;
mod privileges;
mod process;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

pub use args::JailerArgs;
use error::{StepError, StepResult};
use jail_fs::JailDir;
use process::StartTimes;

/// The command line of sie started as `jailer`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "jailer",
    version,
    about = "Runs sie (as Firecracker's jailer runs Firecracker) in a chroot, namespaces and a cgroup, without privileges."
)]
pub struct JailerCli {
    #[command(flatten)]
    pub args: JailerArgs,
}

/// True when this process was started through a name (or link) `jailer`.
pub fn started_as_jailer() -> bool {
    std::env::args_os()
        .next()
        .and_then(|argv0| {
            std::path::Path::new(&argv0)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with("jailer"))
        })
        .unwrap_or(false)
}

/// Runs the jailer; on failure prints `jailer: <step>: <why>` and exits 1.
pub fn main(args: JailerArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jailer: {error}");
            ExitCode::from(1)
        }
    }
}

/// Returns only in the jailer's parent with `--new-pid-ns`, or on failure.
fn run(args: JailerArgs) -> StepResult<()> {
    let start_us = process::clock_us(libc::CLOCK_MONOTONIC);
    let start_cpu_us = process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
    process::close_inherited_fds()?;
    let config = args.validate().map_err(|e| StepError::new("", e.0))?;
    exec_file::check("--exec-file", &config.exec_file)?;
    // Opened while the host's paths are still there.
    let netns = config
        .netns
        .as_deref()
        .map(namespaces::open_netns)
        .transpose()?;
    let dev_null = config.daemonize.then(process::open_dev_null).transpose()?;

    // From here each early return drops `jail` (and `cgroups`), which
    // removes what was created.
    let jail = JailDir::create(&config)?;
    jail.populate(&config)?;
    process::set_resource_limits(&config)?;
    let cgroups = cgroup::place(&config)?;
    if let (Some(fd), Some(path)) = (&netns, &config.netns) {
        namespaces::join_netns(fd, path)?;
    }
    drop(netns);
    namespaces::pivot_into(jail.root())?;
    if let Some(null) = dev_null {
        process::daemonize(null)?;
    }
    let mut times = StartTimes {
        start_us,
        start_cpu_us,
        parent_cpu_us: None,
    };
    if !config.new_pid_ns {
        // SAFETY: getpid has no preconditions.
        jail_fs::write_pid_file(&config.exec_name, unsafe { libc::getpid() })?;
        let argv = process::vmm_argv(&config, times)?;
        privileges::drop_to(config.uid, config.gid)?;
        // Past this point only exec can fail, and without root the jail
        // cannot be removed: the drop below says so if it cannot.
        let error = process::exec_vmm(&config.exec_name, &argv);
        return Err(error);
    }

    times.parent_cpu_us = Some(process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID));
    let argv = process::vmm_argv(&config, times)?;
    let (mut report_read, report_write) = report_pipe()?;
    match namespaces::fork_into_new_pid_ns()? {
        namespaces::PidNsFork::Child => {
            drop(report_read);
            let error = match privileges::drop_to(config.uid, config.gid) {
                Ok(()) => process::exec_vmm(&config.exec_name, &argv),
                Err(error) => error,
            };
            let mut pipe = std::fs::File::from(report_write);
            let _ = std::io::Write::write_all(&mut pipe, error.to_string().as_bytes());
            // The parent reports and cleans up; the child must not run the
            // jail's destructors too.
            // SAFETY: _exit ends this process at once.
            unsafe { libc::_exit(1) }
        }
        namespaces::PidNsFork::Parent(child) => {
            drop(report_write);
            let mut report = String::new();
            let _ = report_read.read_to_string(&mut report);
            if report.is_empty() {
                // The exec closed the pipe: the VMM runs.
                jail_fs::write_pid_file(&config.exec_name, child)?;
                jail.keep();
                if let Some(cgroups) = cgroups {
                    cgroups.keep();
                }
                return Ok(());
            }
            // SAFETY: reaping our own child; a null status pointer is allowed.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            if let Some(cgroups) = cgroups {
                cgroups.undo();
            }
            jail.remove()?;
            Err(StepError::new("in the new PID namespace", report))
        }
    }
}

/// A close-on-exec pipe: the child's exec closes its write end, which the
/// parent reads as success; a failing child writes its error there instead.
fn report_pipe() -> StepResult<(std::fs::File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(StepError::last_os("creating a pipe"));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((std::fs::File::from(read), write))
}
