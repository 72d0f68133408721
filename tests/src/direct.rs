//! The direct runner: case scripts run by `sh` on a host whose /dev/kvm can
//! boot Linux (VT-x/AMD-V), with no QEMU in between. A VT-x/AMD-V machine
//! runs every case this way; the rig's `direct_runner` case runs one case
//! this way inside L1 (which has an emulated AMD-V), so the path is tested
//! where no such machine is at hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::case::CaseRun;
use crate::deadline::run_with_deadline;

/// How long one case may run directly.
pub const CASE_LIMIT: Duration = Duration::from_secs(300);

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

/// Where case scripts find their tools, guest files and each other: L1's
/// `/bin`, `/guest` and `/cases`, or `bin/`, `guest/` and `cases/` of the
/// images `scripts/rig/build-images` made. A script names its tools by name
/// (`sie`, `sietool`, `sie-rig`: `bin` is first on its PATH) and its files
/// through `$GUEST`, so it runs unchanged in both places.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The tools.
    pub bin: PathBuf,
    /// The L2 kernel, initramfs and disk images (`$GUEST`).
    pub guest: PathBuf,
    /// The case scripts, one file per case name.
    pub cases: PathBuf,
}

impl Layout {
    /// The layout of an images directory.
    pub fn images(dir: &Path) -> Self {
        Self {
            bin: dir.join("bin"),
            guest: dir.join("guest"),
            cases: dir.join("cases"),
        }
    }

    /// The layout a case script was started with (`SIE_RIG_BIN`, `GUEST`,
    /// `SIE_RIG_CASES`), L1's by default.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            PathBuf::from(std::env::var_os(name).unwrap_or_else(|| default.into()))
        };
        Self {
            bin: var("SIE_RIG_BIN", "/bin"),
            guest: var("GUEST", "/guest"),
            cases: var("SIE_RIG_CASES", "/cases"),
        }
    }
}

/// The deadline a case script asks for on its first line
/// (`# rig-limit SECONDS`), as L1's /init reads it.
fn script_limit(script: &std::path::Path) -> Option<Duration> {
    let text = std::fs::read_to_string(script).ok()?;
    let seconds = text.lines().next()?.strip_prefix("# rig-limit ")?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}

/// Runs the case script `name` from `layout` with `sh`, as L1's /init
/// would, and a deadline of `limit` (or the one the script asks for).
pub fn run_direct(layout: &Layout, name: &str, limit: Duration) -> CaseRun {
    let limit = script_limit(&layout.cases.join(name)).unwrap_or(limit);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = layout.bin.clone().into_os_string();
    // e2fsck and debugfs live in sbin on a host.
    search.push(":/usr/sbin:/sbin:");
    search.push(path);
    let mut command = Command::new("sh");
    // stderr into stdout, as L1's /init runs a case: one console, in order.
    command
        .args(["-c", "exec sh \"$0\" 2>&1"])
        .arg(layout.cases.join(name))
        .env("PATH", search)
        .env("GUEST", &layout.guest)
        .env("SIE_RIG_BIN", &layout.bin)
        .env("SIE_RIG_CASES", &layout.cases);
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .ok();
    let clock = Instant::now();
    let result = run_with_deadline(command, limit);
    let seconds = Some(clock.elapsed().as_secs());
    match result {
        Ok(done) => {
            let mut output = done.output;
            if done.timed_out {
                output.push_str(&format!(
                    "@@HANG case {name} still running after {} s: stopped\n",
                    limit.as_secs()
                ));
            }
            CaseRun {
                status: if done.timed_out {
                    Some(124)
                } else {
                    done.status
                },
                output,
                started_at,
                seconds,
            }
        }
        Err(error) => CaseRun {
            status: None,
            output: error,
            started_at,
            seconds,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_sees_the_layout_and_finds_its_tools_first_on_path() {
        let dir = std::env::temp_dir().join(format!("sie-e2e-direct-{}", std::process::id()));
        let layout = Layout::images(&dir);
        for sub in [&layout.bin, &layout.guest, &layout.cases] {
            std::fs::create_dir_all(sub).unwrap();
        }
        std::fs::write(layout.bin.join("sie"), "#!/bin/sh\necho \"fake sie $*\"\n").unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(layout.bin.join("sie"))
            .status()
            .unwrap();
        std::fs::write(
            layout.cases.join("probe"),
            "sie run --kernel \"$GUEST/vmlinux\"; echo first >&2; echo \"cases=$SIE_RIG_CASES\"; exit 7\n",
        )
        .unwrap();
        std::fs::write(layout.cases.join("slow"), "sleep 30\n").unwrap();
        let run = run_direct(&layout, "probe", Duration::from_secs(20));
        assert_eq!(run.status, Some(7));
        let guest = layout.guest.display();
        assert!(
            run.output
                .contains(&format!("fake sie run --kernel {guest}/vmlinux")),
            "{}",
            run.output
        );
        // One stream, in order, as in L1.
        let want = format!("first\ncases={}", layout.cases.display());
        assert!(run.output.contains(&want), "{}", run.output);
        let run = run_direct(&layout, "slow", Duration::from_millis(300));
        assert_eq!(run.status, Some(124));
        assert!(run.hang().is_some(), "{}", run.output);
        // A case that asks for more time on its first line gets it.
        std::fs::write(
            layout.cases.join("long"),
            "# rig-limit 20\nsleep 1; echo done\n",
        )
        .unwrap();
        let run = run_direct(&layout, "long", Duration::from_millis(300));
        assert_eq!(run.status, Some(0), "{}", run.output);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_sie_on_path_stops_a_hung_sie_and_says_so() {
        let dir = std::env::temp_dir().join(format!("sie-e2e-deadline-{}", std::process::id()));
        let layout = Layout::images(&dir);
        for sub in [&layout.bin, &layout.guest, &layout.cases] {
            std::fs::create_dir_all(sub).unwrap();
        }
        let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rig/sie-deadline");
        std::fs::copy(&wrapper, layout.bin.join("sie")).unwrap();
        // A sie that prints its guest's line, then hangs (or exits 5 at once
        // when asked for `version`).
        std::fs::write(
            layout.bin.join("sie.real"),
            "#!/bin/sh\n[ \"$1\" = version ] && exit 5\necho guest says hi; exec sleep 60\n",
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(layout.bin.join("sie.real"))
            .status()
            .unwrap();
        std::fs::write(
            layout.cases.join("hang"),
            "SIE_RUN_TIMEOUT=1 sie run x; echo status=$?; sie version; echo status=$?\n",
        )
        .unwrap();
        let run = run_direct(&layout, "hang", Duration::from_secs(30));
        let out = &run.output;
        assert!(out.contains("guest says hi"), "{out}");
        assert!(
            out.contains("@@HANG sie run still running after 1 s: stopped (status 124)"),
            "{out}"
        );
        // A sie that ends by itself is passed through untouched.
        assert!(out.contains("status=124\nstatus=5"), "{out}");
        assert_eq!(out.matches("@@HANG").count(), 1, "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
