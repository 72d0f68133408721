//! Running the cases: in L1 under QEMU (booted once), or directly on a host
//! with hardware virtualization.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::case::{Case, CaseRun};

/// The outcome of one rig run.
#[derive(Debug, Default)]
pub struct RigRun {
    /// L1 reached userspace with /dev/kvm (always true when run directly).
    pub ready: bool,
    /// kvm-amd's `npt` parameter in L1 ("Y" when nested paging works).
    pub npt: String,
    /// Per case, by name.
    pub cases: BTreeMap<String, CaseRun>,
    /// The whole console, for failure reports.
    pub log: String,
    /// How the run went wrong, if it did (timeout, QEMU failure).
    pub error: Option<String>,
}

/// True when `/dev/kvm` is backed by VT-x/AMD-V (kvm_intel or kvm_amd
/// loaded and the CPU flag present), so Linux can run under sie directly.
pub fn hardware_virtualization() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let intel = flags.contains(&"vmx") && Path::new("/sys/module/kvm_intel").exists();
    let amd = flags.contains(&"svm") && Path::new("/sys/module/kvm_amd").exists();
    (intel || amd) && Path::new("/dev/kvm").exists()
}

fn run_script(repo: &Path, script: &str, args: &[&Path]) -> Result<(), String> {
    let path = repo.join("scripts/rig").join(script);
    let status = Command::new(&path)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed with {status}", path.display()))
    }
}

/// Writes the case scripts, installs packages and builds the images.
fn prepare(repo: &Path, sie: &Path, cases: &[&Case]) -> Result<PathBuf, String> {
    run_script(repo, "install-deps", &[])?;
    let cache = repo.join(".rig-cache");
    let scripts = cache.join("cases");
    let images = cache.join("images");
    let _ = std::fs::remove_dir_all(&scripts);
    std::fs::create_dir_all(&scripts).map_err(|e| format!("{}: {e}", scripts.display()))?;
    for case in cases {
        let write = |ext: &str, text: &str| {
            let path = scripts.join(format!("{}.{ext}", case.name));
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        write("l1", &format!("{}\n", case.l1_command))?;
        if let Some(script) = case.l2_script {
            write("l2", &format!("#!/bin/sh\n{script}\n"))?;
        }
    }
    run_script(repo, "build-images", &[sie, &scripts, &images])?;
    Ok(images)
}

/// Waits for `command` with a deadline; kills its whole process group when
/// it overruns. Returns (output, exit status, timed out).
fn run_with_deadline(
    mut command: Command,
    limit: Duration,
) -> Result<(String, Option<i32>, bool), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status.code();
        }
        if Instant::now() > deadline {
            timed_out = true;
            let pgid = child.id() as i32;
            // SAFETY: kill with a negative pid signals the process group we
            // created for the child; it touches no memory.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(
        &err_reader.join().unwrap_or_default(),
    ));
    Ok((text, status, timed_out))
}

/// Splits L1's console into cases by their markers.
fn parse(log: &str, run: &mut RigRun) {
    let mut current: Option<(String, CaseRun)> = None;
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        let marker = line.find("@@").map(|at| &line[at..]);
        match marker {
            Some(m) if m.starts_with("@@L1 READY") => run.ready = true,
            Some(m) if m.starts_with("@@L1 npt=") => {
                run.npt = m["@@L1 npt=".len()..].trim().to_string()
            }
            Some(m) if m.starts_with("@@CASE ") && m.contains(" BEGIN") => {
                let mut words = m.split_whitespace().skip(1);
                let name = words.next().unwrap_or_default().to_string();
                let started_at = words
                    .find_map(|w| w.strip_prefix("time="))
                    .and_then(|t| t.parse().ok());
                current = Some((
                    name,
                    CaseRun {
                        started_at,
                        ..CaseRun::default()
                    },
                ));
            }
            Some(m) if m.starts_with("@@CASE ") && m.contains(" END ") => {
                if let Some((name, mut case)) = current.take() {
                    case.status = m
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("status="))
                        .and_then(|s| s.parse().ok());
                    run.cases.insert(name, case);
                }
            }
            _ => {
                if let Some((_, case)) = current.as_mut() {
                    case.output.push_str(line);
                    case.output.push('\n');
                }
            }
        }
    }
    if let Some((name, case)) = current {
        run.cases.insert(name, case);
    }
}

/// Runs `cases` (in L1 under QEMU, or directly with hardware virtualization)
/// with the sie binary at `sie`, from the repository at `repo`.
pub fn run_cases(repo: &Path, sie: &Path, cases: &[&Case], limit: Duration) -> RigRun {
    let mut run = RigRun::default();
    let images = match prepare(repo, sie, cases) {
        Ok(images) => images,
        Err(error) => {
            run.error = Some(error);
            return run;
        }
    };
    if hardware_virtualization() {
        run.ready = true;
        run.npt = "host".to_string();
        for case in cases {
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(
                    case.l1_command
                        .replace("sie run", &format!("{} run", sie.display())),
                )
                .env("GUEST", images.join("guest"));
            let started_at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .ok();
            let (output, status, timed_out) = run_with_deadline(command, Duration::from_secs(150))
                .unwrap_or_else(|e| (e, None, false));
            let status = if timed_out { Some(124) } else { status };
            run.cases.insert(
                case.name.to_string(),
                CaseRun {
                    status,
                    output,
                    started_at,
                },
            );
        }
        return run;
    }
    let kernel = match std::fs::read_to_string(images.join("kernel-version")) {
        Ok(version) => format!("/boot/vmlinuz-{}", version.trim()),
        Err(e) => {
            run.error = Some(format!("no kernel version in the images: {e}"));
            return run;
        }
    };
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", "2048", "-smp", "2",
        ])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(images.join("l1.cpio"))
        .args(["-append", "console=ttyS0 quiet panic=-1"]);
    match run_with_deadline(command, limit) {
        Ok((log, _status, timed_out)) => {
            parse(&log, &mut run);
            // Kept for people: the whole L1 console of the last run.
            let _ = std::fs::write(repo.join(".rig-cache/console.log"), &log);
            if timed_out {
                run.error = Some(format!(
                    "the rig did not finish within {} s",
                    limit.as_secs()
                ));
            }
            run.log = log;
        }
        Err(error) => run.error = Some(error),
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_split_per_case() {
        let log = "boot noise\r\n@@L1 npt=Y\r\n@@L1 READY\r\n@@CASE a BEGIN time=100\r\nhello\r\n@@L2 RESULT x=1\r\n@@CASE a END status=0\r\n@@CASE b BEGIN time=200\r\npartial\r\n";
        let mut run = RigRun::default();
        parse(log, &mut run);
        assert!(run.ready);
        assert_eq!(run.npt, "Y");
        let a = &run.cases["a"];
        assert_eq!((a.status, a.started_at), (Some(0), Some(100)));
        assert_eq!(a.result("x").as_deref(), Some("1"));
        assert_eq!(run.cases["b"].status, None);
        assert!(run.cases["b"].output.contains("partial"));
    }
}
