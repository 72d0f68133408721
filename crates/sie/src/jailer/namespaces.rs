//! The namespaces the VMM runs in: the network namespace given by
//! `--netns`, a new mount namespace whose root is the jail (`pivot_root`,
//! the host's tree unmounted), and with `--new-pid-ns` a new PID namespace.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::{Step, StepError, StepResult};

/// Where the host's root is put during `pivot_root`, inside the jail.
const OLD_ROOT: &str = "old_root";

/// Opens a network namespace handle (before the host's paths disappear).
pub fn open_netns(path: &Path) -> StepResult<OwnedFd> {
    Ok(File::open(path)
        .step(|| format!("opening the network namespace {}", path.display()))?
        .into())
}

/// Moves this process into the network namespace `netns`.
pub fn join_netns(netns: &OwnedFd, path: &Path) -> StepResult<()> {
    // SAFETY: setns on a descriptor we own; CLONE_NEWNET makes the kernel
    // check that it is a network namespace.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(StepError::last_os(format!(
            "joining the network namespace {}",
            path.display()
        )));
    }
    Ok(())
}

fn c_str(text: &[u8]) -> StepResult<CString> {
    CString::new(text).map_err(|_| StepError::new("a jail path", "contains a NUL byte"))
}

fn check(result: libc::c_int, step: impl FnOnce() -> String) -> StepResult<()> {
    if result != 0 {
        return Err(StepError::last_os(step()));
    }
    Ok(())
}

/// Enters a new mount namespace whose `/` is `root`: the host's mounts are
/// made private (so nothing propagates back), `root` is bind-mounted on
/// itself (pivot_root needs a mount point), the host's tree is pivoted
/// into `root/old_root` and detached, and the directory removed.
pub fn pivot_into(root: &Path) -> StepResult<()> {
    let root_c = c_str(root.as_os_str().as_bytes())?;
    // SAFETY: unshare only changes this process's namespaces.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "entering a new mount namespace".to_string()
    })?;
    // SAFETY: valid NUL-terminated strings; null fstype and data are allowed
    // for a propagation change.
    let private = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(private, || {
        "making / private in the new mount namespace".to_string()
    })?;
    // SAFETY: as above; a bind mount of a directory on itself.
    let bound = unsafe {
        libc::mount(
            root_c.as_ptr(),
            root_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    check(bound, || {
        format!("bind-mounting {} on itself", root.display())
    })?;
    std::env::set_current_dir(root).step(|| format!("entering {}", root.display()))?;
    std::fs::create_dir(OLD_ROOT).step(|| format!("creating {}/{OLD_ROOT}", root.display()))?;
    let old = c_str(OLD_ROOT.as_bytes())?;
    // SAFETY: pivot_root takes two valid paths; "." is the new root.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), old.as_ptr()) };
    if pivoted != 0 {
        return Err(StepError::last_os(format!(
            "pivot_root into {}",
            root.display()
        )));
    }
    // From here `/` is the jail.
    // SAFETY: a valid path; MNT_DETACH unmounts the whole host tree lazily.
    let unmounted = unsafe { libc::umount2(c"/old_root".as_ptr(), libc::MNT_DETACH) };
    check(unmounted, || {
        "unmounting the host's root from the jail".to_string()
    })?;
    std::fs::remove_dir("/old_root").step(|| "removing /old_root in the jail".to_string())?;
    // SAFETY: chdir and chroot to "/", which is now the jail.
    check(unsafe { libc::chdir(c"/".as_ptr()) }, || {
        "entering /".to_string()
    })?;
    // SAFETY: as above; chroot(".") pins the root for good measure.
    check(unsafe { libc::chroot(c".".as_ptr()) }, || {
        "chroot into the jail".to_string()
    })
}

/// The two sides of the fork into a new PID namespace.
pub enum PidNsFork {
    /// The jailer, with the child's pid as the host sees it.
    Parent(libc::pid_t),
    /// Pid 1 of the new namespace: it goes on to exec the VMM.
    Child,
}

/// Forks into a new PID namespace: the child is its init.
pub fn fork_into_new_pid_ns() -> StepResult<PidNsFork> {
    // SAFETY: unshare(CLONE_NEWPID) only affects children made after it.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
        "entering a new PID namespace".to_string()
    })?;
    // SAFETY: the jailer is single-threaded here, so the child may run any
    // code (no lock can be held by another thread).
    match unsafe { libc::fork() } {
        -1 => Err(StepError::last_os("forking into the new PID namespace")),
        0 => Ok(PidNsFork::Child),
        pid => Ok(PidNsFork::Parent(pid)),
    }
}
