//! The jailer for real (the machine runs tests as root): a statically
//! linked sie, built here with `+crt-static` in its own target dir (or
//! named by `SIE_STATIC_BIN`), is jailed, boots the `spin` guest through
//! its API socket inside the jail, and is inspected from outside while it
//! runs; a jailed sie restores a snapshot lazily (its userfaultfd from the
//! jail's /dev/userfaultfd). Failing steps must leave no jail behind.

mod common;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::Scratch;
use common::api::ApiVm;
use sie_guests::SPIN;

/// The unprivileged ids the jailed VMM runs as.
const UID: u32 = 4242;
const GID: u32 = 4343;

/// What `ldd` says of a binary with no dynamic section (non-PIE), or of a
/// static PIE (what `+crt-static` builds).
fn ldd_says_static(path: &Path) -> bool {
    let out = Command::new("ldd").arg(path).output().expect("run ldd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.contains("not a dynamic executable") || text.contains("statically linked")
}

/// A statically linked sie, built once per test run.
fn static_sie() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let path = match std::env::var_os("SIE_STATIC_BIN") {
            Some(path) => PathBuf::from(path),
            None => {
                let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
                let target_dir = workspace.join("target/static");
                let status = Command::new(env!("CARGO"))
                    .args(["build", "--locked", "-p", "sie"])
                    .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
                    .arg(&target_dir)
                    .current_dir(&workspace)
                    .env_remove("CARGO_ENCODED_RUSTFLAGS")
                    .env_remove("CARGO_BUILD_RUSTFLAGS")
                    .env("RUSTFLAGS", "-C target-feature=+crt-static")
                    .status()
                    .expect("run cargo build");
                assert!(status.success(), "the static build of sie failed");
                target_dir.join("x86_64-unknown-linux-gnu/debug/sie")
            }
        };
        assert!(
            ldd_says_static(&path),
            "{} is not statically linked",
            path.display()
        );
        path
    })
}

/// A `jailer` link to the static sie in `dir` (sie acts as the jailer
/// when started under that name).
fn jailer_link(dir: &Path) -> PathBuf {
    let link = dir.join("jailer");
    if !link.exists() {
        std::os::unix::fs::symlink(static_sie(), &link).expect("link jailer");
    }
    link
}

/// Runs `sie jailer` with `flags` to its end.
fn jailer(flags: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sie"))
        .arg("jailer")
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("run sie jailer")
}

/// A refused run: status 1, one line `jailer: ...` mentioning `needle`.
fn expect_refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].starts_with("jailer: "), "{stderr}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the jail's API socket, copies the guest in (as users do) and
/// boots it through the socket.
fn boot_in_jail(child: Child, base: Scratch, root: &Path) -> ApiVm {
    let sock = root.join("run/firecracker.socket");
    let mut vm = ApiVm {
        child,
        sock: sock.clone(),
        dir: base,
    };
    wait_until("the API socket in the jail", || {
        if let Some(status) = vm.child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = vm.child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("the jailed sie exited ({status}): {stderr}");
        }
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    std::fs::copy(SPIN.path, root.join("spin.elf")).expect("copy the guest into the jail");
    vm.boot("/spin.elf", "console=ttyS0");
    wait_until("the guest to run", || vm.state() == "Running");
    vm
}

/// Cgroup directories the jailer made for a VMM that has run, removed
/// (innermost first) at the end of the test, even a failed one. The kernel
/// may still count an exited VMM for a moment, so removal is retried.
struct RemoveDirs {
    dirs: Vec<PathBuf>,
}

impl Drop for RemoveDirs {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct NetNs(String);

impl NetNs {
    fn add(name: &str) -> Self {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip netns add");
        assert!(status.success(), "ip netns add {name}");
        Self(name.to_string())
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A cgroup v1 hierarchy with the pids controller, if the host mounts one.
fn pids_hierarchy() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let options = right.nth(1)?;
        (fstype == "cgroup" && options.split(',').any(|o| o == "pids"))
            .then(|| PathBuf::from(mount))
    })
}

/// The cgroup2 mount, if the host has one.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

#[test]
fn jailed_sie_boots_a_guest_as_an_unprivileged_user_in_its_own_mount_namespace() {
    let id = format!("boot-{}", std::process::id());
    let base = Scratch::new("jailer-boot");
    let base_path = PathBuf::from(base.path());
    let root = base_path.join("sie").join(&id).join("root");
    let parent_cgroup = format!("sie-jailer-test-{}", std::process::id());
    let pids = pids_hierarchy();
    let _cgroup_cleanup = pids.as_ref().map(|pids| RemoveDirs {
        dirs: vec![
            pids.join(&parent_cgroup).join(&id),
            pids.join(&parent_cgroup),
        ],
    });
    let netns = NetNs::add(&format!("sie-jailer-test-{}", std::process::id()));
    let mut flags: Vec<String> = [
        "--id",
        &id,
        "--exec-file",
        static_sie().to_str().expect("utf-8"),
        "--uid",
        &UID.to_string(),
        "--gid",
        &GID.to_string(),
        "--chroot-base-dir",
        &base.path(),
    ]
    .map(String::from)
    .to_vec();
    if pids.is_some() {
        flags.extend(
            ["--cgroup", "pids.max=64", "--parent-cgroup", &parent_cgroup].map(String::from),
        );
    }
    flags.extend(["--netns".to_string(), netns.path()]);
    flags.extend(["--", "--level", "Info"].map(String::from));
    let child = Command::new(jailer_link(&base_path))
        .args(&flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the jailer");
    let pid = child.id();
    let mut vm = boot_in_jail(child, base, &root);
    let mut guest_output = vm.child.stdout.take().expect("stdout");

    // The jailer became the VMM: same pid, no root, no capabilities.
    assert_eq!(status_field(pid, "Uid"), format!("{UID} {UID} {UID} {UID}"));
    assert_eq!(status_field(pid, "Gid"), format!("{GID} {GID} {GID} {GID}"));
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        groups.lines().any(|l| l.trim_end() == "Groups:"),
        "supplementary groups left"
    );

    // Its own mount namespace, rooted at the jail.
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).expect("ns link");
    assert_ne!(ns(&pid.to_string()), ns("self"));
    let its_root = std::fs::metadata(format!("/proc/{pid}/root")).expect("root");
    let jail = std::fs::metadata(&root).expect("jail root");
    assert_eq!((its_root.dev(), its_root.ino()), (jail.dev(), jail.ino()));
    let mut entries: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("list its root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["dev", "run", "sie", "sie.pid", "spin.elf"]);
    // The host's tree is gone from its namespace: one mount, the jail.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    assert_eq!(mounts.lines().count(), 1, "{mounts}");
    // The network namespace given, and the default open-file limit.
    let its_net = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("net ns");
    let wanted = std::fs::metadata(netns.path()).expect("netns handle");
    assert_eq!(its_net.ino(), wanted.ino());
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("files");
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["2048", "2048"]
    );
    let pid_file = std::fs::read_to_string(root.join("sie.pid")).expect("pid file");
    assert_eq!(pid_file.trim(), pid.to_string());
    let kvm = std::fs::metadata(root.join("dev/kvm")).expect("dev/kvm");
    assert!(kvm.file_type().is_char_device());
    assert_eq!(
        (kvm.rdev(), kvm.mode() & 0o777),
        (libc::makedev(10, 232), 0o600)
    );
    assert_eq!((kvm.uid(), kvm.gid()), (UID, GID));
    assert!(root.join("dev/net/tun").exists());
    assert_eq!(
        root.join("dev/userfaultfd").exists(),
        Path::new("/dev/userfaultfd").exists()
    );
    // Only stdin, stdout and stderr came through from the test.
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds");
    for fd in fds {
        let target = std::fs::read_link(fd.expect("fd").path()).unwrap_or_default();
        let target = target.to_string_lossy();
        assert!(
            !target.contains(".rs") && !target.contains("/target/"),
            "{target}"
        );
    }

    if let Some(pids) = &pids {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let line = cgroup
            .lines()
            .find(|l| l.contains(":pids:"))
            .expect("pids line");
        assert!(line.ends_with(&format!("/{parent_cgroup}/{id}")), "{line}");
        let max = std::fs::read_to_string(pids.join(&parent_cgroup).join(&id).join("pids.max"));
        assert_eq!(max.expect("pids.max").trim(), "64");
    }

    // A second jail with the same id is refused, and the first one kept.
    let second = jailer(&[
        "--id",
        &id,
        "--exec-file",
        static_sie().to_str().expect("utf-8"),
        "--uid",
        "4242",
        "--gid",
        "4343",
        "--chroot-base-dir",
        &vm.dir.path(),
    ]);
    expect_refused(&second, "exists already");
    assert!(root.join("sie").exists());
    assert_eq!(vm.state(), "Running");

    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains(" µs after the jailer ("), "{stderr}");
    let mut output = String::new();
    guest_output
        .read_to_string(&mut output)
        .expect("guest output");
    assert!(output.contains("spinning"), "{output:?}");
}

#[test]
fn with_a_new_pid_namespace_the_vmm_is_its_init_and_the_pid_file_names_it() {
    let id = format!("pidns-{}", std::process::id());
    let base = Scratch::new("jailer-pidns");
    let root = PathBuf::from(base.path())
        .join("sie")
        .join(&id)
        .join("root");
    let v2 = cgroup2_mount();
    let parent_cgroup = format!("sie-jailer-v2-{}", std::process::id());
    let _cgroup_cleanup = v2.as_ref().map(|mount| RemoveDirs {
        dirs: vec![
            mount.join(&parent_cgroup).join(&id),
            mount.join(&parent_cgroup),
        ],
    });
    let mut cgroup_flags = Vec::new();
    if v2.is_some() {
        cgroup_flags = vec![
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            &parent_cgroup,
            "--cgroup",
            "cgroup.max.descendants=5",
        ];
    }
    let jailer = Command::new(jailer_link(Path::new(&base.path())))
        .args(&cgroup_flags)
        .args(["--id", &id, "--exec-file"])
        .arg(static_sie())
        .args([
            "--uid",
            "4242",
            "--gid",
            "4343",
            "--chroot-base-dir",
            &base.path(),
        ])
        .args([
            "--new-pid-ns",
            "--daemonize",
            "--resource-limit",
            "fsize=1048576",
            "--",
            "--api-sock",
            "/api.sock",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the jailer");
    // The jailer's side exits once the VMM's exec succeeded.
    assert_eq!(
        jailer.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&jailer.stderr)
    );
    let pid: i32 = std::fs::read_to_string(root.join("sie.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
    assert_eq!(status_field(pid as u32, "Uid"), "4242 4242 4242 4242");
    assert_eq!(status_field(pid as u32, "CapEff"), "0000000000000000");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let fsize = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .expect("fsize");
    assert_eq!(
        fsize.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1048576", "1048576"]
    );
    if let Some(mount) = &v2 {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let unified = cgroup
            .lines()
            .find(|l| l.starts_with("0::"))
            .expect("0:: line");
        assert!(
            unified.ends_with(&format!("/{parent_cgroup}/{id}")),
            "{unified}"
        );
        let set = mount
            .join(&parent_cgroup)
            .join(&id)
            .join("cgroup.max.descendants");
        assert_eq!(std::fs::read_to_string(set).expect("setting").trim(), "5");
    }
    // --daemonize: a session of its own, standard I/O on /dev/null.
    let stdout = std::fs::read_link(format!("/proc/{pid}/fd/1")).expect("fd 1");
    assert_eq!(stdout, PathBuf::from("/dev/null"));

    let sock = root.join("api.sock");
    wait_until("the API socket", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    // Not our child: drive it through a placeholder process handle-free ApiVm.
    let vm = ApiVm {
        child: Command::new("true").spawn().expect("placeholder"),
        sock,
        dir: base,
    };
    std::fs::copy(SPIN.path, root.join("spin.elf")).expect("copy the guest");
    vm.boot("/spin.elf", "console=ttyS0");
    wait_until("the guest to run", || vm.state() == "Running");
    // SAFETY: kill sends SIGTERM to the VMM this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_until("the VMM to exit", || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| s.contains("State:\tZ"))
            .unwrap_or(true)
    });
}

#[test]
fn a_dynamically_linked_exec_file_is_refused_before_anything_is_built() {
    let dynamic = Path::new(env!("CARGO_BIN_EXE_sie"));
    assert!(!ldd_says_static(dynamic), "the test build of sie is static");
    let base = Scratch::new("jailer-dynamic");
    let out = jailer(&[
        "--id",
        "dyn",
        "--exec-file",
        dynamic.to_str().expect("utf-8"),
        "--uid",
        "4242",
        "--gid",
        "4343",
        "--chroot-base-dir",
        &base.path(),
    ]);
    expect_refused(&out, "dynamically linked");
    assert!(!Path::new(&base.path()).join("sie").exists());
}

#[test]
fn failing_steps_leave_no_jail_behind() {
    let base = Scratch::new("jailer-fail");
    let base_path = PathBuf::from(base.path());
    let exec = static_sie().to_str().expect("utf-8").to_string();
    let run = |id: &str, exec: &str, extra: &[&str]| {
        let mut flags = vec![
            "--id",
            id,
            "--exec-file",
            exec,
            "--uid",
            "4242",
            "--gid",
            "4343",
            "--chroot-base-dir",
        ];
        let base = base.path();
        flags.push(&base);
        flags.extend_from_slice(extra);
        jailer(&flags)
    };

    // Checked before anything is created.
    let missing = base_path.join("no-such-vmm");
    expect_refused(
        &run("a", missing.to_str().expect("utf-8"), &[]),
        "no-such-vmm: No such file or directory",
    );
    expect_refused(
        &run("b", &exec, &["--netns", "/nonexistent/netns"]),
        "/nonexistent/netns",
    );
    expect_refused(&run("bad_id", &exec, &[]), "not allowed");
    assert!(!base_path.join("sie").exists());

    // Fails after the jail is built: joining a "namespace" that is a plain file.
    let not_a_netns = base_path.join("plain-file");
    std::fs::write(&not_a_netns, b"").expect("write");
    let out = run(
        "c",
        &exec,
        &["--netns", not_a_netns.to_str().expect("utf-8")],
    );
    expect_refused(&out, "joining the network namespace");
    assert!(
        base_path.join("sie").exists(),
        "the jailer never got to build the jail"
    );
    assert!(
        !base_path.join("sie/c").exists(),
        "the jail was left behind"
    );

    // Fails after the cgroup is made: a value the kernel refuses.
    if let Some(pids) = pids_hierarchy() {
        let parent = format!("sie-jailer-fail-{}", std::process::id());
        let out = run(
            "d",
            &exec,
            &["--cgroup", "pids.max=lots", "--parent-cgroup", &parent],
        );
        expect_refused(&out, "pids.max");
        assert!(
            !base_path.join("sie/d").exists(),
            "the jail was left behind"
        );
        assert!(
            !pids.join(&parent).join("d").exists(),
            "the cgroup was left behind"
        );
        assert!(
            !pids.join(&parent).exists(),
            "the parent cgroup was left behind"
        );
    }

    // A retry with the same id builds the jail again (nothing "exists
    // already") and fails at the same step.
    let out = run(
        "c",
        &exec,
        &["--netns", not_a_netns.to_str().expect("utf-8")],
    );
    expect_refused(&out, "joining the network namespace");
    assert!(!base_path.join("sie/c").exists());
}

/// The counter guest, booted outside any jail, paused after a few counts
/// and snapshotted into `dir`: (what it printed, snapshot, memory file).
fn counter_snapshot(dir: &Path) -> (String, PathBuf, PathBuf) {
    let mut vm = ApiVm::start("jailer-lazy-source", &[]);
    let mut stdout = vm.child.stdout.take().expect("stdout");
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = printed.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 256];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            sink.lock().expect("output lock").push_str(&text);
        }
    });
    vm.boot(sie_guests::COUNTER.path, "limit=40 delay=20000");
    wait_until("a few counts", || {
        printed.lock().expect("output lock").contains("count 5\n")
    });
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let create = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        snap.display(),
        mem.display()
    );
    vm.ok("PUT", "/snapshot/create", &create);
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    std::thread::sleep(Duration::from_millis(50));
    let before = printed.lock().expect("output lock").clone();
    (before, snap, mem)
}

#[test]
fn a_jailed_sie_restores_lazily_through_its_dev_userfaultfd() {
    if !Path::new("/dev/userfaultfd").exists() {
        // Without the device, an unprivileged user gets no userfaultfd
        // that sees KVM's faults (unless vm.unprivileged_userfaultfd = 1).
        return;
    }
    let outside = Scratch::new("jailer-lazy-files");
    let (before, snap, mem) = counter_snapshot(Path::new(&outside.path()));
    let id = format!("lazy-{}", std::process::id());
    let base = Scratch::new("jailer-lazy");
    let base_path = PathBuf::from(base.path());
    let root = base_path.join("sie").join(&id).join("root");
    let child = Command::new(jailer_link(&base_path))
        .args(["--id", &id, "--exec-file"])
        .arg(static_sie())
        .args(["--uid", &UID.to_string(), "--gid", &GID.to_string()])
        .args(["--chroot-base-dir", &base.path()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the jailer");
    let mut vm = ApiVm {
        child,
        sock: root.join("run/firecracker.socket"),
        dir: base,
    };
    wait_until("the API socket in the jail", || {
        std::os::unix::net::UnixStream::connect(&vm.sock).is_ok()
    });
    // The snapshot goes into a directory of the jailed user's, where the
    // working set can be written beside the memory file.
    let dir = root.join("snap");
    std::fs::create_dir(&dir).expect("snap dir");
    for (from, name) in [(&snap, "vm.snap"), (&mem, "vm.mem")] {
        std::fs::copy(from, dir.join(name)).expect("copy into the jail");
        std::os::unix::fs::chown(dir.join(name), Some(UID), Some(GID)).expect("chown");
    }
    std::os::unix::fs::chown(&dir, Some(UID), Some(GID)).expect("chown");
    vm.ok(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "/snap/vm.snap", "mem_backend": {"backend_type": "Lazy", "backend_path": "/snap/vm.mem"}, "resume_vm": true}"#,
    );
    let mut stdout = vm.child.stdout.take().expect("stdout");
    let (code, stderr) = vm.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let mut after = String::new();
    stdout.read_to_string(&mut after).expect("guest output");
    let full: String = (1..=40).map(|n| format!("count {n}\n")).collect();
    assert_eq!(format!("{before}{after}"), full);
    let ws = std::fs::metadata(dir.join("vm.mem.ws")).expect("the working set");
    assert_eq!(
        (ws.uid(), ws.gid()),
        (UID, GID),
        "written by the jailed user"
    );
}
