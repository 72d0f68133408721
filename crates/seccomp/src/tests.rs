use std::path::Path;
use std::sync::mpsc;

use super::*;

const POLICY: &[u8] = include_bytes!("../policy/x86_64.json");

#[test]
fn the_builtin_policy_has_a_filter_per_thread_kind() {
    let filters = Seccomp::builtin();
    let programs = filters.programs.as_ref().unwrap();
    for kind in ThreadKind::ALL {
        assert!(!programs[kind.index()].is_empty(), "{}", kind.name());
    }
    // The build compiled the same file the runtime compiler accepts.
    let runtime = Seccomp::from_json(POLICY, Path::new("x86_64.json")).unwrap();
    assert_eq!(runtime.programs.unwrap().as_ref(), programs.as_ref());
}

#[test]
fn disabled_installs_nothing() {
    assert!(!Seccomp::disabled().is_enabled());
    Seccomp::disabled().install(ThreadKind::Vcpu).unwrap();
}

fn refusal(json: &str) -> String {
    let error = Seccomp::from_json(json.as_bytes(), Path::new("my.json")).unwrap_err();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    assert!(!text.contains('\n'), "{text}");
    text
}

#[test]
fn bad_policies_are_refused_in_one_line() {
    let refused = refusal("{ not json");
    assert!(
        refused.starts_with("my.json is not a seccomp policy: "),
        "{refused}"
    );
    let one = r#"{"default_action": "trap", "filter_action": "allow", "filter": []}"#;
    let refused = refusal(&format!(r#"{{"vmm": {one}, "api": {one}}}"#));
    assert!(refused.contains("no `vcpu` filter"), "{refused}");
    let refused = refusal(&format!(
        r#"{{"vmm": {one}, "api": {one}, "vcpu": {one}, "uffd": {one}, "gpu": {one}}}"#
    ));
    assert!(refused.contains("unknown thread kind `gpu`"), "{refused}");
    let refused = refusal(&format!(
        r#"{{"vmm": {one}, "api": {one}, "vcpu": {{"default_action": "trap", "filter_action": "allow", "filter": [{{"syscall": "no_such_call"}}]}}}}"#
    ));
    assert!(refused.contains("no_such_call"), "{refused}");
}

#[test]
fn a_policy_without_a_blk_filter_gives_drive_workers_the_vmm_filter() {
    let one =
        r#"{"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "read"}]}"#;
    let none = r#"{"default_action": "trap", "filter_action": "allow", "filter": []}"#;
    let policy = format!(r#"{{"vmm": {one}, "api": {none}, "vcpu": {none}}}"#);
    let filters = Seccomp::from_json(policy.as_bytes(), Path::new("fc.json")).unwrap();
    let programs = filters.programs.unwrap();
    assert_eq!(
        programs[ThreadKind::Blk.index()],
        programs[ThreadKind::Vmm.index()]
    );
    assert_ne!(
        programs[ThreadKind::Blk.index()],
        programs[ThreadKind::Api.index()]
    );
}

/// The line `Seccomp:` of a thread's status (0 none, 2 filter).
fn seccomp_mode(tid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn install_filters_only_the_calling_thread() {
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        Seccomp::builtin().install(ThreadKind::Vcpu).unwrap();
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = done_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    assert_eq!(seccomp_mode(tid), "2");
    // SAFETY: gettid has no preconditions.
    assert_eq!(seccomp_mode(unsafe { libc::gettid() }), "0");
    done_tx.send(()).unwrap();
    thread.join().unwrap();
}

#[test]
fn a_forbidden_call_is_reported_and_exits_148() {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let filters = Seccomp::builtin();
    // Installed before the fork, so the child never waits on a one-time
    // initialisation another test thread was in the middle of.
    sigsys::install_handler().unwrap();
    // SAFETY: the child only makes system calls (no allocation, no locks)
    // and ends in _exit, from the SIGSYS handler or below.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::dup2(pipe[1], libc::STDERR_FILENO);
            if filters.install(ThreadKind::Api).is_ok() {
                libc::syscall(libc::SYS_getppid);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), i32::from(EXIT_SECCOMP));
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
    let text = String::from_utf8_lossy(&buf[..usize::try_from(n).unwrap()]).into_owned();
    assert_eq!(
        text,
        format!(
            "sie: seccomp: the api thread made system call {}, which its filter forbids; exiting with status 148\n",
            libc::SYS_getppid
        )
    );
}

#[test]
fn the_build_filter_allows_building_and_refuses_exec() {
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let filters = Seccomp::builtin();
    sigsys::install_handler().unwrap();
    let path = c"/dev/null";
    let program = c"/bin/true";
    // SAFETY: the child only makes system calls (no allocation, no locks)
    // and ends in _exit, from the SIGSYS handler or below.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; every pointer is a live NUL-terminated string
        // or null.
        unsafe {
            libc::dup2(pipe[1], libc::STDERR_FILENO);
            if filters.install(ThreadKind::Build).is_err() {
                libc::_exit(2);
            }
            // What a build does (open files, make sockets) is allowed...
            let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            let socket = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 || socket < 0 {
                libc::_exit(3);
            }
            // ...running another program is not.
            let argv = [program.as_ptr(), std::ptr::null()];
            libc::syscall(
                libc::SYS_execve,
                program.as_ptr(),
                argv.as_ptr(),
                std::ptr::null::<*const libc::c_char>(),
            );
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(pipe[1]) };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), i32::from(EXIT_SECCOMP));
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) };
    let text = String::from_utf8_lossy(&buf[..usize::try_from(n).unwrap()]).into_owned();
    assert!(
        text.starts_with(&format!(
            "sie: seccomp: the build thread made system call {},",
            libc::SYS_execve
        )),
        "{text}"
    );
}

#[test]
fn a_user_policy_may_leave_out_the_build_filter() {
    let one =
        r#"{"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "exit"}]}"#;
    let json = format!(r#"{{"vmm": {one}, "api": {one}, "vcpu": {one}, "uffd": {one}}}"#);
    let filters = Seccomp::from_json(json.as_bytes(), Path::new("mine.json")).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        filters.install(ThreadKind::Build).unwrap();
        // SAFETY: gettid has no preconditions.
        tx.send(seccomp_mode(unsafe { libc::gettid() })).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv().unwrap(), "0", "nothing installed");
}

/// The vCPU thread hands a guest its own `#BP` back while gdb has `int3`
/// bytes in: it reads and writes its vCPU events. Tried on a descriptor
/// that is not open, so the kernel answers EBADF once the filter let the
/// call through (a refusal would end the child with 148).
#[test]
fn the_vcpu_filter_lets_a_vcpu_read_and_write_its_events() {
    /// `_IOR(KVMIO, 0x9f, struct kvm_vcpu_events)` and `_IOW(.., 0xa0, ..)`.
    const KVM_GET_VCPU_EVENTS: libc::c_ulong = 0x8040_ae9f;
    const KVM_SET_VCPU_EVENTS: libc::c_ulong = 0x4040_aea0;
    let filters = Seccomp::builtin();
    sigsys::install_handler().unwrap();
    // SAFETY: the child only makes system calls (no allocation, no locks)
    // and ends in _exit, from the SIGSYS handler or below.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; descriptor -1 makes the kernel refuse the
        // ioctl before it looks at the (null) argument.
        unsafe {
            let mut code = 1;
            if filters.install(ThreadKind::Vcpu).is_ok() {
                let get = libc::ioctl(-1, KVM_GET_VCPU_EVENTS, std::ptr::null_mut::<u8>());
                let get_errno = *libc::__errno_location();
                let set = libc::ioctl(-1, KVM_SET_VCPU_EVENTS, std::ptr::null::<u8>());
                let set_errno = *libc::__errno_location();
                if get == -1 && get_errno == libc::EBADF && set == -1 && set_errno == libc::EBADF {
                    code = 0;
                }
            }
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "148: the filter refused");
}
