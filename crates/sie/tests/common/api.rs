//! A sie serving its API in a test: started on a socket in a scratch
//! directory, spoken to with a raw HTTP/1.1 client, stopped at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A 400 whose fault message mentions `needle`.
    pub fn expect_fault(&self, needle: &str) {
        assert_eq!(self.status, 400, "{}", self.body);
        let message = self.json()["fault_message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

/// Reads one answer from `reader`.
pub fn read_answer(reader: &mut impl BufRead) -> Answer {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("content-length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A running `sie --api-sock`.
pub struct ApiVm {
    pub child: Child,
    pub sock: PathBuf,
    pub dir: super::Scratch,
}

impl ApiVm {
    /// Starts sie with `--api-sock` in a fresh scratch dir plus `extra` flags,
    /// and waits for the socket like firecracker-go-sdk does.
    pub fn start(name: &str, extra: &[&str]) -> Self {
        let dir = super::Scratch::new(name);
        let sock = PathBuf::from(dir.path()).join("api.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_sie"))
            .arg("--api-sock")
            .arg(&sock)
            .args(["--id", name])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sie");
        let mut vm = Self { child, sock, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&vm.sock).is_err() {
            if vm.child.try_wait().expect("wait").is_some() {
                let (code, stderr) = vm.wait();
                panic!("sie exited ({code:?}) before serving: {stderr}");
            }
            assert!(Instant::now() < deadline, "the API socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        vm
    }

    /// Sends one request on a new connection.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let stream = UnixStream::connect(&self.sock).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut writer = stream.try_clone().expect("clone");
        let body = body.unwrap_or("");
        write!(
            writer,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        read_answer(&mut BufReader::new(stream))
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    /// A PUT or PATCH that must answer 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let answer = self.call(method, path, Some(body));
        assert_eq!(answer.status, 204, "{method} {path}: {}", answer.body);
        assert!(answer.body.is_empty());
    }

    pub fn state(&self) -> String {
        self.get("/").json()["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Total exits so far (GET /stats).
    pub fn exits(&self) -> u64 {
        self.get("/stats").json()["total_exits"]
            .as_u64()
            .expect("total_exits")
    }

    /// Configures and boots `kernel` with `cmdline`.
    pub fn boot(&self, kernel: &str, cmdline: &str) {
        let boot = serde_json::json!({"kernel_image_path": kernel, "boot_args": cmdline});
        self.ok("PUT", "/boot-source", &boot.to_string());
        self.ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        );
        self.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    }

    /// How many KVM VMs this sie holds open.
    pub fn kvm_vms(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("fd dir")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.as_os_str() == "anon_inode:kvm-vm")
            .count()
    }

    /// Sends SIGTERM and returns the exit status and stderr.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }

    /// Waits (at most 30 s) for sie to exit.
    pub fn wait(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sie did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = self.child.wait().expect("status");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        (status.code(), stderr)
    }
}

impl Drop for ApiVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
