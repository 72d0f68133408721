//! Running the cases: in L1 under QEMU (booted once), or directly on a host
//! with hardware virtualization (see `direct`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::case::{Case, CaseRun};
use crate::deadline::run_with_deadline;
use crate::direct::{CASE_LIMIT, Layout, hardware_virtualization, run_direct};

/// What a rig run needs besides its cases.
pub struct Rig<'a> {
    /// The repository (scripts/rig, and .rig-cache for the images).
    pub repo: &'a Path,
    /// The sie binary under test.
    pub sie: &'a Path,
    /// The rig's own test binary, installed as `sie-rig` for cases that run
    /// other cases through the direct runner.
    pub runner: Option<&'a Path>,
    /// How long L1 may run all the cases.
    pub limit: Duration,
}

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
    /// Each time L1's kernel died and a fresh L1 took over: the case it died
    /// under and the console's last lines.
    pub l1_deaths: Vec<String>,
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

/// Writes the scripts of every case in `all` (a case may run another) and
/// the order of those `selected` to run, installs packages and builds the
/// images.
fn prepare(rig: &Rig, all: &[&Case], selected: &[&Case]) -> Result<PathBuf, String> {
    let repo = rig.repo;
    run_script(repo, "install-deps", &[])?;
    let cache = repo.join(".rig-cache");
    let scripts = cache.join("cases");
    let images = cache.join("images");
    let _ = std::fs::remove_dir_all(&scripts);
    std::fs::create_dir_all(&scripts).map_err(|e| format!("{}: {e}", scripts.display()))?;
    for case in all {
        let write = |ext: &str, text: &str| {
            let path = scripts.join(format!("{}.{ext}", case.name));
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        write("l1", &format!("{}\n", case.l1_command))?;
        if let Some(script) = case.l2_script {
            write("l2", &format!("#!/bin/sh\n{script}\n"))?;
        }
    }
    let order: String = selected.iter().map(|c| format!("{}\n", c.name)).collect();
    let order_path = scripts.join("run-order");
    std::fs::write(&order_path, order).map_err(|e| format!("{}: {e}", order_path.display()))?;
    let mut args = vec![rig.sie, scripts.as_path(), images.as_path()];
    args.extend(rig.runner);
    run_script(repo, "build-images", &args)?;
    Ok(images)
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
                    let field = |key: &str| {
                        m.split_whitespace()
                            .find_map(|w| w.strip_prefix(key))
                            .and_then(|s| s.parse().ok())
                    };
                    case.status = field("status=");
                    case.seconds = field("seconds=").and_then(|s| u64::try_from(s).ok());
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

/// Runs the `selected` cases (in L1 under QEMU, or directly with hardware
/// virtualization); `all` are the cases whose scripts are installed.
pub fn run_cases(rig: &Rig, all: &[&Case], selected: &[&Case]) -> RigRun {
    let mut run = RigRun::default();
    let images = match prepare(rig, all, selected) {
        Ok(images) => images,
        Err(error) => {
            run.error = Some(error);
            return run;
        }
    };
    if hardware_virtualization() {
        run.ready = true;
        run.npt = "host".to_string();
        let layout = Layout::images(&images);
        for case in selected {
            let result = run_direct(&layout, case.name, CASE_LIMIT);
            run.cases.insert(case.name.to_string(), result);
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
    let started = Instant::now();
    let mut from: Option<&str> = None;
    let mut deaths_under: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for boot in 0..=L1_RESTARTS {
        let limit = rig.limit.saturating_sub(started.elapsed());
        let done = match run_with_deadline(l1_command(&kernel, &images, from), limit) {
            Ok(done) => done,
            Err(error) => {
                run.error = Some(error);
                break;
            }
        };
        let mut this = RigRun::default();
        parse(&done.output, &mut this);
        if let Some(case) = from.and_then(|name| this.cases.get_mut(name)) {
            case.output.insert_str(
                0,
                "@@NOTE rerun in a fresh L1: the previous L1 died during this case\n",
            );
        }
        if boot == 0 {
            run.ready = this.ready;
            run.npt = this.npt.clone();
        }
        // Kept for people: the whole L1 console of the last run.
        run.log.push_str(&done.output);
        let _ = std::fs::write(rig.repo.join(".rig-cache/console.log"), &run.log);
        if done.timed_out {
            run.cases.extend(this.cases);
            run.error = Some(format!(
                "the rig did not finish within {} s",
                rig.limit.as_secs()
            ));
            break;
        }
        let died = this.ready && !done.output.contains("@@L1 DONE");
        let interrupted = this
            .cases
            .iter()
            .find(|(_, case)| case.status.is_none())
            .map(|(name, _)| name.clone());
        run.cases.extend(this.cases);
        if !died {
            break;
        }
        // L1's kernel died under a case (QEMU's emulation of nested SVM has
        // crashed it: issue #15). That is the rig falling over, not a
        // verdict on the case: boot a fresh L1 and go on from that case,
        // once; a case that L1 dies under twice keeps its failed run.
        let tail: Vec<&str> = done.output.lines().rev().take(12).collect();
        let note = format!(
            "L1 died during {} (boot {}); its console ended with:\n{}",
            interrupted.as_deref().unwrap_or("no case"),
            boot + 1,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        eprintln!("rig: {note}");
        run.l1_deaths.push(note);
        let order: Vec<&str> = selected.iter().map(|c| c.name).collect();
        let deaths = deaths_under.entry(interrupted.clone()).or_insert(0);
        *deaths += 1;
        from = next_start(&order, interrupted.as_deref(), *deaths == 1, &run.cases);
        if from.is_none() {
            break;
        }
    }
    run
}

/// One line per case that ran, slowest first, with its seconds and their
/// share of the total: where the rig's time goes.
pub fn case_times(run: &RigRun) -> String {
    let mut times: Vec<(&str, u64)> = run
        .cases
        .iter()
        .filter_map(|(name, case)| Some((name.as_str(), case.seconds?)))
        .collect();
    times.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let total: u64 = times.iter().map(|(_, s)| s).sum();
    let mut out = format!("rig: {} cases took {total} s in all\n", times.len());
    for (name, seconds) in times {
        let share = (seconds * 100).checked_div(total).unwrap_or(0);
        out.push_str(&format!("rig: {seconds:>5} s {share:>3}%  {name}\n"));
    }
    out
}

/// L1 boots at most this many more times after its kernel dies.
const L1_RESTARTS: usize = 2;

/// Where a fresh L1 starts after one died under `interrupted` (`None`:
/// between cases): that case again the first time (`first_death`), else the
/// first case after it that has not run.
fn next_start<'a>(
    order: &[&'a str],
    interrupted: Option<&str>,
    first_death: bool,
    ran: &BTreeMap<String, CaseRun>,
) -> Option<&'a str> {
    let at = interrupted.and_then(|name| order.iter().position(|n| *n == name));
    match at {
        Some(at) if first_death => Some(order[at]),
        Some(at) => order[at + 1..]
            .iter()
            .copied()
            .find(|name| !ran.contains_key(*name)),
        None => order.iter().copied().find(|name| !ran.contains_key(*name)),
    }
}

/// QEMU booting L1 with the images; `from` makes L1 skip the cases before it.
fn l1_command(kernel: &str, images: &Path, from: Option<&str>) -> Command {
    let mut append =
        "console=ttyS0 quiet panic=-1 intel_iommu=on iommu=pt no_timer_check".to_string();
    if let Some(name) = from {
        append.push_str(&format!(" sie_rig_from={name}"));
    }
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-accel", "tcg", "-cpu", "max", "-M", "q35", "-m", "2048"])
        // SIE_RIG_L1_SMP: L1's CPU count (2 unless set), for rig experiments.
        .args(["-smp", &l1_cpus()])
        .args(["-nographic", "-no-reboot", "-monitor", "none"])
        // An emulated VT-d and QEMU's `edu` PCI device (1234:11e8): L1 binds
        // edu to vfio-pci so sie can pass it to L2 (docs/vfio.md).
        .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
        .args(["-device", "edu"])
        // A modern virtio-rng (1af4:1044), whose interrupts are MSI-X, for
        // the MSI-X passthrough case (`vfio_msix`). Harmless to every other
        // case: L1's initramfs has no virtio driver (virtio_pci and
        // virtio-rng are modules it does not carry) and its /init binds the
        // device to vfio-pci, which nothing else uses unless a case passes
        // it on. `iommu_platform=on` sends its DMA through the VT-d above,
        // so under vfio-pci it reaches L2's memory and never L1's.
        .args([
            "-device",
            "virtio-rng-pci,disable-legacy=on,iommu_platform=on",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(images.join("l1.cpio"))
        // no_timer_check: with interrupt remapping, a slow TCG boot (a
        // loaded host) fails Linux's IO-APIC timer check and panics ("timer
        // doesn't work through Interrupt-remapped IO-APIC"); the timer works.
        .args(["-append", &append]);
    command
}

/// L1's vCPU count: `SIE_RIG_L1_SMP` when it is a number from 1 to 8, else 2.
fn l1_cpus() -> String {
    std::env::var("SIE_RIG_L1_SMP")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|n| (1..=8).contains(n))
        .unwrap_or(2)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_is_split_per_case() {
        let log = "boot noise\r\n@@L1 npt=Y\r\n@@L1 READY\r\n@@CASE a BEGIN time=100\r\nhello\r\n@@L2 RESULT x=1\r\n@@CASE a END status=0 seconds=7\r\n@@CASE b BEGIN time=200\r\npartial\r\n";
        let mut run = RigRun::default();
        parse(log, &mut run);
        assert!(run.ready);
        assert_eq!(run.npt, "Y");
        let a = &run.cases["a"];
        assert_eq!(
            (a.status, a.started_at, a.seconds),
            (Some(0), Some(100), Some(7))
        );
        assert_eq!(a.result("x").as_deref(), Some("1"));
        assert_eq!(run.cases["b"].status, None);
        assert!(run.cases["b"].output.contains("partial"));
    }

    #[test]
    fn case_times_list_the_slowest_case_first() {
        let mut run = RigRun::default();
        for (name, seconds) in [("fast", Some(10)), ("slow", Some(30)), ("cut", None)] {
            let case = CaseRun {
                seconds,
                ..CaseRun::default()
            };
            run.cases.insert(name.to_string(), case);
        }
        assert_eq!(
            case_times(&run),
            "rig: 2 cases took 40 s in all\nrig:    30 s  75%  slow\nrig:    10 s  25%  fast\n"
        );
    }

    #[test]
    fn a_fresh_l1_starts_at_the_case_l1_died_under_once() {
        let order = ["a", "b", "c", "d"];
        let mut ran = BTreeMap::new();
        for name in ["a", "b"] {
            ran.insert(name.to_string(), CaseRun::default());
        }
        // Died under b for the first time: b runs again, then the rest.
        assert_eq!(next_start(&order, Some("b"), true, &ran), Some("b"));
        // Died under b again: b keeps its failed run; c is next.
        assert_eq!(next_start(&order, Some("b"), false, &ran), Some("c"));
        // Died between cases: the first case that has not run.
        assert_eq!(next_start(&order, None, true, &ran), Some("c"));
        // Died again under the last case: nothing is left.
        assert_eq!(next_start(&order[..2], Some("b"), false, &ran), None);
    }
}
