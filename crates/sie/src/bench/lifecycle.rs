//! `sie bench lifecycle`: whole VM lifecycles of the tiny `hello` guest
//! (open /dev/kvm, create the VM, map memory, load, run until the guest
//! resets, tear down), wall and CPU time each, for:
//!
//! - **bare**: in this process, sie's VM build and a `KVM_RUN` loop with no
//!   dispatch ([`sie_vmm::bare`]), the floor any VMM process sits on. Its
//!   wall time stops at the guest's reset: closing a VM waits in the kernel
//!   for RCU grace periods (~20 ms wall, almost no CPU), which `sie run`
//!   hands to a forked reaper after it exits (`sie_vmm::teardown`), out of
//!   its parent's wait4. Bare's teardown is timed on its own row, and in
//!   the throughput runs it is left to a thread, as sie leaves it to its
//!   reaper;
//! - **sie run**: this executable as a child, `sie run --kernel GUEST`;
//! - **peer** (`--peer PATH`): another VMM as a child, started the
//!   Firecracker way (`--no-api --config-file`) on the same guest.
//!
//! Every lifecycle is checked (exit status 0, the guest's line printed; for
//! bare, its port-0x80 markers and the reset), so a figure always stands for
//! work done. With `--parallel K`, K lifecycles stay in flight and the
//! throughput is printed too.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sie_config::{BootSource, MachineConfig, VmConfig};
use sie_vmm::{BuildOptions, ConsoleOutput};

use super::{BoxError, median, tail};
use crate::cli::BenchLifecycleArgs;

/// What the `hello` guest prints first; every child must show it.
pub const GUEST_LINE: &str = "hello from sie guest";
/// The port-0x80 values the `hello` guest writes with `markers=3`.
const GUEST_MARKERS: [u8; 3] = [1, 2, 3];
/// `boot_timer=0`: no write to sie's boot timer at 3 GiB, which
/// Firecracker's page tables (the first GiB only) leave unmapped.
const GUEST_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 markers=3 boot_timer=0";

/// One lifecycle's cost.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    /// User + system time of the lifecycle (the child's, from wait4; the
    /// thread's, for bare, teardown included).
    cpu: Duration,
    /// Bare only: wall time of closing the VM, after `wall` ends.
    teardown: Duration,
}

/// How one variant starts a lifecycle.
enum Variant {
    Bare,
    /// A child: program and arguments.
    Child {
        program: PathBuf,
        args: Vec<String>,
    },
}

/// A temporary directory removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

fn rusage_cpu(usage: &libc::rusage) -> Duration {
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Result<Duration, BoxError> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into `usage`, which outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(rusage_cpu(&usage))
}

fn bare_config(guest: &Path, memory_mib: u32) -> VmConfig {
    let mut config = VmConfig::new(BootSource {
        kernel_image_path: guest.to_path_buf(),
        boot_args: Some(GUEST_CMDLINE.to_string()),
        initrd_path: None,
    });
    config.machine_config = Some(MachineConfig {
        mem_size_mib: u64::from(memory_mib),
        ..MachineConfig::default()
    });
    config
}

/// Threads closing VMs off the lifecycle's path (joined after the clock stops).
type Reapers = Mutex<Vec<JoinHandle<()>>>;

/// One bare lifecycle in this thread; fails unless the guest wrote its
/// markers and reset. The VM is closed here and timed as `teardown`, or,
/// with `reapers`, on a thread of its own.
fn bare_once(guest: &Path, memory_mib: u32, reapers: Option<&Reapers>) -> Result<Sample, BoxError> {
    let cpu_before = thread_cpu()?;
    let start = Instant::now();
    let kvm = crate::run::open_hypervisor()?;
    let mut vm = sie_vmm::build(
        &bare_config(guest, memory_mib),
        &kvm,
        BuildOptions {
            start,
            console: ConsoleOutput::new(Box::new(std::io::sink())),
            extra_pio: Vec::new(),
            host_decompress: None,
            mmds: None,
        },
        std::sync::Arc::new(sie_vmm::VmControl::new()?),
    )?;
    let vcpu = vm.vcpus.first_mut().ok_or("the bench VM has no vCPU")?;
    let mut markers = Vec::with_capacity(8);
    sie_vmm::bare::run_bare(vcpu.as_mut(), &mut markers)?;
    let wall = start.elapsed();
    match reapers {
        Some(reapers) => {
            let reaper = std::thread::spawn(move || drop((vm, kvm)));
            reapers
                .lock()
                .map_err(|_| "a reaper list lock was poisoned")?
                .push(reaper);
        }
        None => drop((vm, kvm)),
    }
    let teardown = start.elapsed().saturating_sub(wall);
    let cpu = thread_cpu()?.saturating_sub(cpu_before);
    let values: Vec<u8> = markers.iter().map(|m| m.value).collect();
    if values != GUEST_MARKERS {
        return Err(format!(
            "bare lifecycle: the guest wrote port-0x80 markers {values:?}, not {GUEST_MARKERS:?}"
        )
        .into());
    }
    Ok(Sample {
        wall,
        cpu,
        teardown,
    })
}

/// Waits for `pid` and returns its status word and resource usage.
fn wait4(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage), BoxError> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes only into `status` and `usage`, which outlive
        // the call; `pid` is our own child, not yet reaped.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            return Ok((status, usage));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {error}").into());
        }
    }
}

/// One child lifecycle; fails unless it exited 0 and printed the guest's line.
fn child_once(label: &str, program: &Path, args: &[String]) -> Result<Sample, BoxError> {
    // stdout (the guest's console) and stderr on pipes of their own, both
    // read to their end before reaping: Firecracker logs on stderr between
    // the console's bytes, which one shared pipe would interleave.
    let (mut reader, writer) = std::io::pipe()?;
    let (mut err_reader, err_writer) = std::io::pipe()?;
    let stderr = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = err_reader.read_to_end(&mut text);
        text
    });
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(err_writer)
        .spawn()
        .map_err(|e| format!("{label}: cannot start {}: {e}", program.display()))?;
    let mut console = Vec::new();
    let read = reader.read_to_end(&mut console);
    // Reaped by wait4 rather than Child::wait, for the child's rusage.
    let (status, usage) = wait4(child.id() as libc::pid_t)?;
    let wall = start.elapsed();
    read?;
    let console = String::from_utf8_lossy(&console).into_owned();
    let mut output = console.clone();
    output.push_str(&String::from_utf8_lossy(
        &stderr.join().map_err(|_| "a stderr reader panicked")?,
    ));
    let exited_0 = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_0 || !console.contains(GUEST_LINE) {
        let how = if libc::WIFEXITED(status) {
            format!("exit status {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        return Err(format!(
            "{label} lifecycle failed ({how}{}); its output ended with:\n{}",
            if console.contains(GUEST_LINE) {
                ""
            } else {
                ", no guest line"
            },
            tail(&output, 20)
        )
        .into());
    }
    Ok(Sample {
        wall,
        cpu: rusage_cpu(&usage),
        teardown: Duration::ZERO,
    })
}

fn once(
    label: &str,
    variant: &Variant,
    guest: &Path,
    memory_mib: u32,
    reapers: Option<&Reapers>,
) -> Result<Sample, BoxError> {
    match variant {
        Variant::Bare => bare_once(guest, memory_mib, reapers),
        Variant::Child { program, args } => child_once(label, program, args),
    }
}

/// `total` lifecycles with `parallel` in flight; (wall of the whole batch,
/// CPU summed over the lifecycles).
fn batch(
    label: &str,
    variant: &Variant,
    guest: &Path,
    memory_mib: u32,
    parallel: u32,
    total: u32,
) -> Result<(Duration, Duration), BoxError> {
    let next = AtomicU32::new(0);
    let reapers = Reapers::default();
    let start = Instant::now();
    let cpus: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                scope.spawn(|| {
                    let mut cpu = Duration::ZERO;
                    while next.fetch_add(1, Ordering::Relaxed) < total {
                        cpu += once(label, variant, guest, memory_mib, Some(&reapers))
                            .map_err(|e| e.to_string())?
                            .cpu;
                    }
                    Ok(cpu)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a worker panicked".to_string()))
            })
            .collect()
    });
    let wall = start.elapsed();
    for reaper in reapers.into_inner().unwrap_or_default() {
        let _ = reaper.join();
    }
    let mut cpu = Duration::ZERO;
    for worker in cpus {
        cpu += worker?;
    }
    Ok((wall, cpu))
}

/// A batch's throughput: lifecycles per second of wall time and per
/// CPU-second.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    per_s: f64,
    per_cpu_s: f64,
}

impl Rate {
    fn of(total: u32, wall: Duration, cpu: Duration) -> Self {
        Self {
            per_s: f64::from(total) / wall.as_secs_f64().max(1e-9),
            per_cpu_s: f64::from(total) / cpu.as_secs_f64().max(1e-9),
        }
    }
}

fn ms(values: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    median(&mut ms).unwrap_or(0.0)
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(base) if base > 0.0 => format!("x{:.2}", value / base),
        _ => "-".to_string(),
    }
}

/// The Firecracker config file booting `guest`: 1 vCPU, `memory_mib` MiB.
fn peer_config(guest: &Path, memory_mib: u32) -> String {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.display().to_string(),
            "boot_args": GUEST_CMDLINE,
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": memory_mib },
        // Firecracker's config file requires the list, empty or not.
        "drives": [],
    })
    .to_string()
}

/// The peer's command line: Firecracker's way, its log (on stdout by
/// default, between the console's bytes) sent to /dev/null.
fn peer_args(config: &Path) -> Vec<String> {
    let mut args = vec![
        "--no-api".to_string(),
        "--config-file".to_string(),
        config.display().to_string(),
    ];
    args.extend(super::api_vmm::NO_LOG.map(String::from));
    args
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchLifecycleArgs) -> Result<u8, BoxError> {
    if args.runs == 0 || args.parallel == Some(0) || args.memory_mib == 0 {
        return Err("--runs, --parallel and --memory-mib must be at least 1".into());
    }
    // Children cannot open this process's memfd (it is close-on-exec), so
    // the guest goes to a file.
    let dir = ScratchDir(
        std::env::temp_dir().join(format!("sie-bench-lifecycle-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let guest = dir.0.join("hello.elf");
    std::fs::write(&guest, sie_guests::HELLO.bytes)?;

    let mut variants = vec![
        ("bare KVM loop".to_string(), Variant::Bare),
        (
            "sie run".to_string(),
            Variant::Child {
                program: std::env::current_exe()?,
                args: vec![
                    "run".into(),
                    "--kernel".into(),
                    guest.display().to_string(),
                    "--cmdline".into(),
                    GUEST_CMDLINE.into(),
                    "--memory".into(),
                    args.memory_mib.to_string(),
                ],
            },
        ),
    ];
    if let Some(peer) = &args.peer {
        let config = dir.0.join("peer.json");
        std::fs::write(&config, peer_config(&guest, args.memory_mib))?;
        let name = peer
            .file_name()
            .map_or("peer".into(), |n| n.to_string_lossy().into_owned());
        variants.push((
            format!("peer ({name})"),
            Variant::Child {
                program: peer.clone(),
                args: peer_args(&config),
            },
        ));
    }

    // One untimed lifecycle each warms the page cache and the allocator.
    for (label, variant) in &variants {
        once(label, variant, &guest, args.memory_mib, None)?;
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    // Interleaved, so drift on the host hits every variant alike.
    for _ in 0..args.runs {
        for ((label, variant), samples) in variants.iter().zip(&mut samples) {
            samples.push(once(label, variant, &guest, args.memory_mib, None)?);
        }
    }

    println!(
        "sie bench lifecycle: hello guest (prints a line, 3 port-0x80 writes, resets), \
         {} MiB, 1 vCPU; median of {} runs",
        args.memory_mib, args.runs
    );
    println!(
        "  {:<24}{:>10}{:>10}{:>11}{:>11}{:>11}{:>11}",
        "lifecycle", "wall ms", "cpu ms", "wall/bare", "cpu/bare", "wall/peer", "cpu/peer"
    );
    let medians: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| {
            let walls: Vec<Duration> = s.iter().map(|x| x.wall).collect();
            let cpus: Vec<Duration> = s.iter().map(|x| x.cpu).collect();
            (ms(&walls), ms(&cpus))
        })
        .collect();
    let bare = medians.first().copied();
    let peer = if args.peer.is_some() {
        medians.last().copied()
    } else {
        None
    };
    for ((label, _), (wall, cpu)) in variants.iter().zip(&medians) {
        println!(
            "  {label:<24}{wall:>10.2}{cpu:>10.2}{:>11}{:>11}{:>11}{:>11}",
            ratio(*wall, bare.map(|b| b.0)),
            ratio(*cpu, bare.map(|b| b.1)),
            ratio(*wall, peer.map(|p| p.0)),
            ratio(*cpu, peer.map(|p| p.1)),
        );
    }
    if let Some(bare) = samples.first() {
        let teardowns: Vec<Duration> = bare.iter().map(|x| x.teardown).collect();
        println!(
            "  {:<24}{:>10.2}{:>10}   (after the reset; in the bare row's cpu ms, not its wall ms)",
            "bare VM teardown",
            ms(&teardowns),
            "-"
        );
    }
    println!(
        "  checked: all {} lifecycles of each exited 0 and showed the guest's work \
         (children: {GUEST_LINE:?} on the console; bare: markers 1,2,3 and the reset)",
        args.runs + 1
    );

    if let Some(parallel) = args.parallel {
        let total = args.runs.max(parallel) * parallel;
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get() as u32)
            .min(parallel);
        println!(
            "  throughput: {parallel} in flight, {total} lifecycles each, {cores} core(s) usable \
             (bare's teardowns on threads of their own)"
        );
        println!(
            "  {:<24}{:>14}{:>20}{:>20}{:>11}{:>11}",
            "lifecycle",
            "lifecycles/s",
            "lifecycles/s/core",
            "lifecycles/cpu-s",
            "/s /bare",
            "/s /peer"
        );
        let mut rates = Vec::with_capacity(variants.len());
        for (label, variant) in &variants {
            let (wall, cpu) = batch(label, variant, &guest, args.memory_mib, parallel, total)?;
            rates.push(Rate::of(total, wall, cpu));
        }
        let bare = rates.first().map(|r| r.per_s);
        let peer = args.peer.as_ref().and(rates.last()).map(|r| r.per_s);
        for ((label, _), rate) in variants.iter().zip(&rates) {
            println!(
                "  {label:<24}{:>14.1}{:>20.1}{:>20.1}{:>11}{:>11}",
                rate.per_s,
                rate.per_s / f64::from(cores),
                rate.per_cpu_s,
                ratio(rate.per_s, bare),
                ratio(rate.per_s, peer),
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_the_peer_config() {
        assert_eq!(ratio(3.0, Some(2.0)), "x1.50");
        assert_eq!(ratio(3.0, None), "-");
        assert_eq!(ratio(3.0, Some(0.0)), "-");
        // Throughput: more per second is better, so sie over the peer > 1
        // means sie is ahead.
        let rate = Rate::of(40, Duration::from_secs(2), Duration::from_millis(500));
        assert_eq!(
            rate,
            Rate {
                per_s: 20.0,
                per_cpu_s: 80.0
            }
        );
        assert_eq!(ratio(rate.per_s, Some(10.0)), "x2.00");
        let config: serde_json::Value =
            serde_json::from_str(&peer_config(Path::new("/g/hello.elf"), 128)).unwrap();
        assert_eq!(config["boot-source"]["kernel_image_path"], "/g/hello.elf");
        assert_eq!(config["machine-config"]["vcpu_count"], 1);
        assert_eq!(config["machine-config"]["mem_size_mib"], 128);
        // Firecracker refuses a config file without `drives`.
        assert_eq!(config["drives"], serde_json::json!([]));
        assert_eq!(
            peer_args(Path::new("/d/peer.json")),
            [
                "--no-api",
                "--config-file",
                "/d/peer.json",
                "--log-path",
                "/dev/null"
            ]
        );
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 500,
        };
        assert_eq!(timeval(tv), Duration::from_micros(2_000_500));
    }

    #[test]
    fn a_failing_child_is_an_error_that_quotes_its_output() {
        let error = child_once(
            "probe",
            Path::new("/bin/sh"),
            &["-c".into(), "echo something else; exit 3".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("exit status 3"), "{error}");
        assert!(error.contains("something else"), "{error}");
        let error = child_once("probe", Path::new("/bin/sh"), &["-c".into(), "true".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("no guest line"), "{error}");
        let ok = child_once(
            "probe",
            Path::new("/bin/sh"),
            &["-c".into(), format!("echo '{GUEST_LINE}'")],
        )
        .unwrap();
        assert!(ok.wall > Duration::ZERO);
    }

    #[test]
    fn log_lines_on_stderr_do_not_break_the_guest_line() {
        // As Firecracker does: its log on stderr between the console's bytes.
        let (head, rest) = GUEST_LINE.split_at(1);
        let script = format!("printf '{head}'; echo 'a log line' >&2; echo '{rest}'");
        child_once("probe", Path::new("/bin/sh"), &["-c".into(), script]).unwrap();
        // Only the console counts: the line on stderr alone is not the guest's.
        let error = child_once(
            "probe",
            Path::new("/bin/sh"),
            &["-c".into(), format!("echo '{GUEST_LINE}' >&2")],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("no guest line"), "{error}");
        assert!(error.contains(GUEST_LINE), "{error}");
    }
}
