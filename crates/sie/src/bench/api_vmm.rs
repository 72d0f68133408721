//! A VMM process driven through Firecracker's API for the benchmarks that
//! compare sie with a peer (`sie bench snapshot`, `sie bench memory`) or move a guest between
//! two sie processes (`sie bench migrate`): started on a socket,
//! waited for, its console read back, killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error>;

/// Firecracker's flags sending its log to /dev/null: by default it logs on
/// stdout, between the console's bytes, splitting the lines the benchmarks
/// read. sie takes them too, so both VMMs run with the same flags.
pub(super) const NO_LOG: [&str; 2] = ["--log-path", "/dev/null"];

/// How long a snapshot may take to write or load: Firecracker writes all of
/// a guest's RAM (about 3 s per GiB on a busy test machine), longer than an
/// API client's usual wait.
pub(super) const SNAPSHOT_CALL: Duration = Duration::from_secs(600);

/// How long a guest, a socket or a count may take to appear.
const WAIT: Duration = Duration::from_secs(60);

/// A VMM process serving its API, killed when dropped.
pub(super) struct Vmm {
    child: Child,
    pub(super) sock: PathBuf,
    pub(super) console: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `measure` in a scratch directory of its own
/// (`sie-bench-NAME-PID` under the temporary directory) holding the
/// counter guest, and removes the directory after, whatever the outcome.
pub(super) fn in_counter_scratch(
    name: &str,
    measure: impl FnOnce(&Path, &Path) -> Result<u8, BoxError>,
) -> Result<u8, BoxError> {
    let dir = std::env::temp_dir().join(format!("sie-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let guest = dir.join("counter.elf");
    let result = std::fs::write(&guest, sie_guests::COUNTER.bytes)
        .map_err(BoxError::from)
        .and_then(|()| measure(&dir, &guest));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

pub(super) fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), BoxError> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        // Short: the benchmarks time what these waits end.
        std::thread::sleep(Duration::from_micros(250));
    }
    Ok(())
}

pub(super) fn spawn(
    program: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Result<Vmm, BoxError> {
    spawn_with_stderr(program, dir, name, extra, Stdio::null())
}

/// [`spawn`], its stderr kept in `DIR/NAME.stderr` (read with
/// [`Vmm::wait_for_exit`]).
pub(super) fn spawn_logged(
    program: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Result<Vmm, BoxError> {
    let log = File::create(dir.join(format!("{name}.stderr")))?;
    spawn_with_stderr(program, dir, name, extra, Stdio::from(log))
}

impl Vmm {
    /// The process's id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; returns its status and its stderr
    /// (empty unless started with [`spawn_logged`]).
    pub(super) fn wait_for_exit(&mut self) -> Result<(i32, String), BoxError> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = self.console.with_extension("stderr");
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                return Ok((status.code().unwrap_or(-1), stderr));
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for the VMM to exit".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn spawn_with_stderr(
    program: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
    stderr: Stdio,
) -> Result<Vmm, BoxError> {
    let sock = dir.join(format!("{name}.sock"));
    let console = dir.join(format!("{name}.console"));
    // Firecracker will not bind over a socket an earlier run left.
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(program)
        .arg("--api-sock")
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(&console)?)
        .stderr(stderr)
        .spawn()?;
    let mut vmm = Vmm {
        child,
        sock,
        console,
    };
    let deadline = Instant::now() + WAIT;
    while std::os::unix::net::UnixStream::connect(&vmm.sock).is_err() {
        if let Some(status) = vmm.child.try_wait()? {
            return Err(format!(
                "{} exited ({status}) before serving its API",
                program.display()
            )
            .into());
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for the API socket".into());
        }
        // Short: process start → running counts this wait.
        std::thread::sleep(Duration::from_micros(250));
    }
    Ok(vmm)
}

/// The counts the guest printed so far.
pub(super) fn counts(console: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    // Finished lines only: a guest paused between "count 4" and its
    // newline (or between "count 1" and "2") has not finished that count,
    // and [`counts_continuing`] reads it on where the guest moved.
    let finished = text.rsplit_once('\n').map_or("", |(head, _)| head);
    finished
        .lines()
        .filter_map(|line| line.strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

/// The counts a guest moved out of `source` (restored or migrated) printed
/// at `next`: its console there, after the line it left unfinished at
/// `source` (paused mid-line, it finishes "count 3" as "ount 3" there).
pub(super) fn counts_continuing(source: &Path, next: &Path) -> Vec<u64> {
    let before = std::fs::read_to_string(source).unwrap_or_default();
    let unfinished = before
        .rsplit_once('\n')
        .map_or(before.as_str(), |(_, tail)| tail);
    let after = std::fs::read_to_string(next).unwrap_or_default();
    format!("{unfinished}{after}")
        .lines()
        .filter_map(|line| line.strip_prefix("count ")?.trim().parse().ok())
        .collect()
}

pub(super) fn median(values: Vec<f64>) -> f64 {
    let mut values = values;
    super::median(&mut values).unwrap_or(f64::NAN)
}

/// Starts `program` on the config file `config` (written to `dir/NAME.json`)
/// booting the `counter` guest, waits for its second count and pauses it.
pub(super) fn paused_counter(
    program: &Path,
    dir: &Path,
    name: &str,
    config: &serde_json::Value,
) -> Result<Vmm, BoxError> {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, config.to_string())?;
    let vmm = spawn(
        program,
        dir,
        name,
        &[
            "--config-file",
            &file.to_string_lossy(),
            NO_LOG[0],
            NO_LOG[1],
        ],
    )?;
    wait_until("the guest's second count", || {
        counts(&vmm.console).len() >= 2
    })?;
    set_state(&vmm, "Paused")?;
    Ok(vmm)
}

/// `PATCH /vm` to `state` ("Paused" or "Resumed").
pub(super) fn set_state(vmm: &Vmm, state: &str) -> Result<(), BoxError> {
    crate::ctl::request(
        &vmm.sock,
        "PATCH",
        "/vm",
        Some(&serde_json::json!({ "state": state })),
    )?;
    Ok(())
}

/// Starts `program` afresh and loads the snapshot `snap`, its memory from
/// `mem` by `backend` ("File", "Lazy"), resumed. Returns the VMM, when its
/// process was started, and how long the load call took, in ms.
pub(super) fn restore_fresh(
    program: &Path,
    dir: &Path,
    name: &str,
    (snap, mem): (&Path, &Path),
    backend: &str,
) -> Result<(Vmm, Instant, f64), BoxError> {
    let process_start = Instant::now();
    let vmm = spawn(program, dir, name, &NO_LOG)?;
    let load_start = Instant::now();
    crate::ctl::request_within(
        &vmm.sock,
        "PUT",
        "/snapshot/load",
        Some(&serde_json::json!({
            "snapshot_path": snap,
            "mem_backend": {"backend_type": backend, "backend_path": mem},
            "resume_vm": true,
        })),
        SNAPSHOT_CALL,
    )?;
    Ok((vmm, process_start, load_start.elapsed().as_secs_f64() * 1e3))
}

/// 1% of `mib` MiB, in 4 KiB pages: what the guest dirties every tick.
pub(super) fn dirty_pages(mib: u32) -> u64 {
    (u64::from(mib) * 256).div_ceil(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_paused_mid_line_finishes_it_where_it_moved() {
        let dir = std::env::temp_dir().join(format!("sie-counts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (source, next) = (dir.join("source"), dir.join("next"));
        std::fs::write(&source, "count 1\ncount 2\nc").unwrap();
        std::fs::write(&next, "ount 3\ncount 4\n").unwrap();
        assert_eq!(counts(&next), [4], "alone, the first line is cut");
        assert_eq!(counts_continuing(&source, &next), [3, 4]);
        std::fs::write(&source, "count 1\ncount 2\n").unwrap();
        std::fs::write(&next, "count 3\n").unwrap();
        assert_eq!(counts_continuing(&source, &next), [3]);
        // Paused before the newline: the count is finished where it moved.
        std::fs::write(&source, "count 1\ncount 2\ncount 3").unwrap();
        std::fs::write(&next, "\ncount 4\n").unwrap();
        assert_eq!(counts(&source), [1, 2], "an unfinished line is no count");
        assert_eq!(counts_continuing(&source, &next), [3, 4]);
        std::fs::write(&source, "count 1\ncount 2\ncount 1").unwrap();
        std::fs::write(&next, "2\ncount 13\n").unwrap();
        assert_eq!(counts_continuing(&source, &next), [12, 13]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
