//! A hidden hook for sie's end-to-end tests, honoured only in debug builds:
//! with `SIE_TEST_FORBIDDEN_SYSCALL=vcpu` (or `api`, `vmm`, `uffd`, `blk`, `build`), the thread of
//! that kind makes a system call outside its filter right after installing
//! it, so a test can see the trap, the report and the exit status.

use crate::ThreadKind;

/// The environment variable naming the thread kind that misbehaves.
pub const VARIABLE: &str = "SIE_TEST_FORBIDDEN_SYSCALL";

/// Makes a forbidden system call if the environment asks it of `kind`.
pub(crate) fn forbidden_syscall_if_asked(kind: ThreadKind) {
    if !cfg!(debug_assertions) {
        return;
    }
    if std::env::var_os(VARIABLE).is_none_or(|v| v != kind.name()) {
        return;
    }
    if kind == ThreadKind::Build {
        // SAFETY: personality(0xffffffff) only reads the persona; the build
        // filter, which allows most calls, refuses it.
        unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
    } else {
        // SAFETY: getppid has no preconditions; no other filter sie ships
        // allows it.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
}
