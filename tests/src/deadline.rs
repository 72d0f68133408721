//! Running a command with a deadline: its whole process group is killed
//! when it overruns, so a hung VM never hangs the test run.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a command left behind.
pub struct Finished {
    /// stdout, then stderr.
    pub output: String,
    /// The exit status (`None` when killed by a signal or the deadline).
    pub status: Option<i32>,
    /// The deadline passed and the process group was killed.
    pub timed_out: bool,
}

/// Waits for `command` until `limit`; kills its whole process group when it
/// overruns.
pub fn run_with_deadline(mut command: Command, limit: Duration) -> Result<Finished, String> {
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
    let mut output = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
    output.push_str(&String::from_utf8_lossy(
        &err_reader.join().unwrap_or_default(),
    ));
    Ok(Finished {
        output,
        status,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_the_deadline() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let done = run_with_deadline(command, Duration::from_secs(10)).unwrap();
        assert_eq!((done.status, done.timed_out), (Some(3), false));
        assert_eq!(done.output, "out\nerr\n");
        let mut command = Command::new("sh");
        // The grandchild holds the pipe: killing the group must end it too.
        command.args(["-c", "sleep 30 & sleep 30"]);
        let begin = Instant::now();
        let done = run_with_deadline(command, Duration::from_millis(200)).unwrap();
        assert!(done.timed_out && done.status.is_none());
        assert!(begin.elapsed() < Duration::from_secs(10));
    }
}
