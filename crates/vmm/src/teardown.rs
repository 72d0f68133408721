//! VM teardown off the exit path.
//!
//! Closing the last reference to a KVM VM destroys its in-kernel PIC, IOAPIC
//! and PIT, which waits for RCU grace periods: about 20 ms on the machines we
//! measured, longer than the rest of a tiny guest's whole life. A process
//! that just exits pays it too, before its parent sees the exit. So when sie
//! is done with a VM it forks a reaper that inherits the VM's descriptors,
//! closes its standard streams at once (so nobody reading sie's output waits
//! for it), waits until sie has exited, and then drops the last reference
//! and exits. sie itself exits as soon as the guest is done.

use std::os::fd::RawFd;

/// Starts the reaper. Call it when the VM has ended and its vCPU threads
/// have been joined (the process must be single-threaded, since the child
/// of a fork only runs async-signal-safe calls). Returns false, and changes
/// nothing, if the reaper could not be started: the VM is then destroyed the
/// ordinary way when it is dropped.
pub fn hand_teardown_to_reaper() -> bool {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: `fds` is valid for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return false;
    }
    let [read_end, write_end] = fds;
    // SAFETY: the caller guarantees a single-threaded process; the child
    // below only calls close, read and _exit.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {
            // SAFETY: closing descriptors and reading a pipe are
            // async-signal-safe; the child never returns into Rust code.
            unsafe {
                for fd in [
                    libc::STDIN_FILENO,
                    libc::STDOUT_FILENO,
                    libc::STDERR_FILENO,
                    write_end,
                ] {
                    libc::close(fd);
                }
                // Returns 0 (EOF) once sie has exited and its write end is gone.
                let mut byte = 0u8;
                while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) > 0 {}
                libc::_exit(0);
            }
        }
        pid if pid > 0 => {
            // SAFETY: the read end belongs to the child now; the write end
            // stays open until sie exits, which is the child's signal.
            unsafe { libc::close(read_end) };
            true
        }
        _ => {
            // SAFETY: both ends are ours and unused.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            false
        }
    }
}
