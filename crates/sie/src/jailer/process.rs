//! The jailer process's own state before it becomes the VMM: inherited
//! descriptors, resource limits, the session and standard I/O, the clocks
//! passed on to the VMM, and the final exec.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use super::args::JailConfig;
use super::error::{Step, StepError, StepResult};

/// Closes every descriptor above 2 the jailer inherited, so none reaches
/// the VMM (Firecracker's jailer does the same).
pub fn close_inherited_fds() -> StepResult<()> {
    // SAFETY: close_range only closes descriptors; none above 2 is in use
    // by this process yet (the jailer runs this first).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .step(|| "listing /proc/self/fd".to_string())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number; the one read_dir used is
        // already closed, so at worst this fails with EBADF.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Sets `RLIMIT_NOFILE` (always: 2048 unless given) and `RLIMIT_FSIZE`
/// (when given), soft and hard alike.
pub fn set_resource_limits(config: &JailConfig) -> StepResult<()> {
    let mut limits = vec![(libc::RLIMIT_NOFILE, "no-file", config.no_file)];
    if let Some(fsize) = config.fsize {
        limits.push((libc::RLIMIT_FSIZE, "fsize", fsize));
    }
    for (resource, name, value) in limits {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: a valid resource and a pointer to an rlimit we own.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(StepError::last_os(format!(
                "setting resource limit {name}={value}"
            )));
        }
    }
    Ok(())
}

/// Opens /dev/null for `--daemonize` (before the host's /dev disappears).
pub fn open_dev_null() -> StepResult<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .step(|| "opening /dev/null".to_string())?
        .into())
}

/// `--daemonize`: a new session without a terminal, standard I/O to /dev/null.
pub fn daemonize(dev_null: OwnedFd) -> StepResult<()> {
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } == -1 {
        return Err(StepError::last_os(
            "setsid for --daemonize (the jailer must not be a process group leader)",
        ));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto a standard descriptor from one we own.
        if unsafe { libc::dup2(dev_null.as_raw_fd(), target) } == -1 {
            return Err(StepError::last_os("redirecting standard I/O to /dev/null"));
        }
    }
    Ok(())
}

/// A clock's reading in microseconds.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds * 1_000_000 + nanos / 1_000
}

/// The timing data passed to the VMM, as Firecracker's jailer passes it.
#[derive(Clone, Copy, Debug)]
pub struct StartTimes {
    /// CLOCK_MONOTONIC when the jailer started, µs.
    pub start_us: u64,
    /// The jailer's CPU time when it started, µs.
    pub start_cpu_us: u64,
    /// With `--new-pid-ns`: the CPU time the jailer (the parent) had used
    /// when it forked, µs (the child's own CPU clock starts again at 0).
    pub parent_cpu_us: Option<u64>,
}

/// The VMM's argv: its name, `--id`, the timing flags, then the user's flags.
pub fn vmm_argv(config: &JailConfig, times: StartTimes) -> StepResult<Vec<CString>> {
    let mut argv: Vec<OsString> = vec![
        config.exec_name.clone().into(),
        "--id".into(),
        config.id.clone().into(),
        "--start-time-us".into(),
        times.start_us.to_string().into(),
        "--start-time-cpu-us".into(),
        times.start_cpu_us.to_string().into(),
    ];
    if let Some(parent) = times.parent_cpu_us {
        argv.push("--parent-cpu-time-us".into());
        argv.push(parent.to_string().into());
    }
    argv.extend(config.vmm_args.iter().cloned());
    argv.into_iter()
        .map(|a| {
            CString::new(a.into_vec())
                .map_err(|_| StepError::new("the VMM's flags", "a flag contains a NUL byte"))
        })
        .collect()
}

/// Replaces the jailer with `/<exec name>` from inside the jail, with an
/// empty environment (nothing of the host's leaks in). Returns only on failure.
pub fn exec_vmm(exec_name: &str, argv: &[CString]) -> StepError {
    let path = format!("/{exec_name}");
    let Ok(c_path) = CString::new(path.clone()) else {
        return StepError::new(format!("executing {path}"), "the name contains a NUL byte");
    };
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(c_path.as_ptr(), pointers.as_ptr(), env.as_ptr()) };
    StepError::last_os(format!("executing {path} in the jail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::super::args::JailerArgs,
    }

    #[test]
    fn the_vmm_gets_id_and_times_before_the_users_flags() {
        let config = Cli::parse_from([
            "jailer",
            "--id",
            "vm7",
            "--exec-file",
            "/bin/sie",
            "--uid",
            "1",
            "--gid",
            "2",
            "--",
            "--api-sock",
            "/api.sock",
        ])
        .args
        .validate()
        .unwrap();
        let times = StartTimes {
            start_us: 10,
            start_cpu_us: 3,
            parent_cpu_us: None,
        };
        let argv: Vec<String> = vmm_argv(&config, times)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            argv,
            [
                "sie",
                "--id",
                "vm7",
                "--start-time-us",
                "10",
                "--start-time-cpu-us",
                "3",
                "--api-sock",
                "/api.sock"
            ]
        );
        let with_parent = vmm_argv(
            &config,
            StartTimes {
                parent_cpu_us: Some(5),
                ..times
            },
        )
        .unwrap();
        assert_eq!(with_parent[7].to_str().unwrap(), "--parent-cpu-time-us");
        assert_eq!(with_parent[8].to_str().unwrap(), "5");
    }

    #[test]
    fn clocks_move_forward() {
        let a = clock_us(libc::CLOCK_MONOTONIC);
        let b = clock_us(libc::CLOCK_MONOTONIC);
        assert!(a > 0 && b >= a);
    }
}
