//! Running the `sie` binary in tests: a hard timeout, captured output.

#![allow(dead_code)]

pub mod api;
pub mod counter;
pub mod fake_peer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a `sie` run produced.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the exit status is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit status\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// A bad-input failure: status 1, one line naming the problem, no panic.
    pub fn expect_one_line_error(&self, needle: &str) {
        self.expect_code(1);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got:\n{}", self.stderr);
        assert!(lines[0].starts_with("sie: error: "), "{}", self.stderr);
        assert!(
            lines[0].contains(needle),
            "{:?} does not mention {needle:?}",
            lines[0]
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

/// Runs `sie` with `args`, stdin from /dev/null, killed after 60 s.
pub fn sie(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sie");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait for sie").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "sie {args:?} hung; killed after 60 s\n--- stdout\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().expect("output");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sie-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// Writes a file and returns its path as a string.
    pub fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write scratch file");
        path_str(&path)
    }

    /// A sparse file of `len` bytes.
    pub fn sparse(&self, name: &str, len: u64) -> String {
        let path = self.0.join(name);
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(len).expect("set_len");
        path_str(&path)
    }

    pub fn path(&self) -> String {
        path_str(&self.0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_string()
}
