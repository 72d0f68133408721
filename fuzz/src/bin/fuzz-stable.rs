//! The stable-Rust fuzz driver: runs targets on random and mutated inputs
//! (no coverage feedback, no nightly, no libFuzzer), for when libFuzzer is
//! not available and for the test suite's smoke run.
//!
//! ```text
//! fuzz-stable [--seconds N | --runs N] [--seed N] [--corpus DIR]
//!             [--artifacts DIR] [TARGET...]     (default: every target)
//! fuzz-stable --replay TARGET FILE...           (a crash, with its panic)
//! fuzz-stable --list
//! ```
//!
//! Each target first runs its seed corpus (`corpus/<target>/`) unchanged,
//! then inputs made by mutating it, or fresh random bytes. A panic saves the
//! input to `artifacts/<target>/crash-<hash>`; an input running for more
//! than `--timeout` seconds (default 10) to `timeout-<hash>`. Exit status 1
//! if any target failed, 2 on a usage error.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sie_fuzz::{TARGETS, Target};

const MAX_LEN: usize = 64 * 1024;

/// Tokens spliced into inputs: enough JSON and HTTP to get past the first
/// byte of a parser without coverage feedback.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"4294967296",
    b"\\u0000",
    b"\\ud800",
    b"/",
    b"?",
    b"\n",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x00\x01\x00\x00",
    b"CONNECT 1024\n",
];

/// xorshift64*: small, fast, seedable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

struct Options {
    seconds: Option<u64>,
    runs: Option<u64>,
    seed: u64,
    timeout: u64,
    corpus: PathBuf,
    artifacts: PathBuf,
    targets: Vec<(&'static str, Target)>,
}

fn usage(message: &str) -> ExitCode {
    eprintln!("fuzz-stable: {message}");
    eprintln!(
        "usage: fuzz-stable [--seconds N | --runs N] [--seed N] [--timeout N] [--corpus DIR] [--artifacts DIR] [TARGET...]"
    );
    eprintln!("       fuzz-stable --replay TARGET FILE...");
    eprintln!("       fuzz-stable --list");
    ExitCode::from(2)
}

fn lookup(name: &str) -> Option<(&'static str, Target)> {
    TARGETS.iter().find(|(n, _)| *n == name).copied()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut options = Options {
        seconds: None,
        runs: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1,
        timeout: 10,
        corpus: here.join("corpus"),
        artifacts: here.join("artifacts"),
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let number = |v: Result<String, String>| -> Result<u64, String> {
            v?.parse().map_err(|e| format!("{e}"))
        };
        let parsed: Result<(), String> = match arg.as_str() {
            "--list" => {
                for (name, _) in TARGETS {
                    println!("{name}");
                }
                return ExitCode::SUCCESS;
            }
            "--replay" => return replay(&args[1..]),
            "--seconds" => number(value(arg)).map(|n| options.seconds = Some(n)),
            "--runs" => number(value(arg)).map(|n| options.runs = Some(n)),
            "--seed" => number(value(arg)).map(|n| options.seed = n | 1),
            "--timeout" => number(value(arg)).map(|n| options.timeout = n.max(1)),
            "--corpus" => value(arg).map(|v| options.corpus = v.into()),
            "--artifacts" => value(arg).map(|v| options.artifacts = v.into()),
            name => match lookup(name) {
                Some(t) => {
                    options.targets.push(t);
                    Ok(())
                }
                None => Err(format!("unknown target {name} (try --list)")),
            },
        };
        if let Err(message) = parsed {
            return usage(&message);
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.to_vec();
    }
    if options.seconds.is_none() && options.runs.is_none() {
        options.seconds = Some(60);
    }
    let failed = fuzz_all(&options);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs each input of `files` through the target with the default panic
/// hook, so a crash reproduces with its message and (RUST_BACKTRACE=1)
/// its stack.
fn replay(args: &[String]) -> ExitCode {
    let Some((name, files)) = args.split_first() else {
        return usage("--replay needs a target and files");
    };
    let Some((_, target)) = lookup(name) else {
        return usage(&format!("unknown target {name}"));
    };
    for file in files {
        match std::fs::read(file) {
            Ok(data) => {
                target(&data);
                println!("{file}: ok");
            }
            Err(e) => return usage(&format!("{file}: {e}")),
        }
    }
    ExitCode::SUCCESS
}

/// The panic of the input being run, as the hook saw it.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Whether a panic now is the target's (else it is the driver's own).
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn fuzz_all(options: &Options) -> bool {
    panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_string(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "(non-string panic)".to_string()),
        };
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        let mut text = format!("{message}{at}");
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            text.push_str(&format!("\n{backtrace}"));
        }
        if IN_TARGET.get() {
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
        } else {
            eprintln!("fuzz-stable: driver panic: {text}");
        }
    }));
    let watchdog = Watchdog::start(options.timeout, options.artifacts.clone());
    let mut failed = false;
    for (index, &(name, target)) in options.targets.iter().enumerate() {
        let seed = options
            .seed
            .wrapping_add((index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            | 1;
        failed |= !fuzz_one(options, name, target, seed, &watchdog);
    }
    failed
}

/// Fuzzes one target; false if it crashed.
fn fuzz_one(
    options: &Options,
    name: &'static str,
    target: Target,
    seed: u64,
    watchdog: &Watchdog,
) -> bool {
    let corpus = load_corpus(&options.corpus.join(name));
    let mut rng = Rng(seed);
    let start = Instant::now();
    let deadline = options.seconds.map(|s| start + Duration::from_secs(s));
    let mut runs = 0u64;
    loop {
        if options.runs.is_some_and(|n| runs >= n)
            || deadline.is_some_and(|d| runs >= corpus.len() as u64 && Instant::now() >= d)
        {
            break;
        }
        let input = match corpus.get(runs as usize) {
            Some(seed_input) => seed_input.clone(),
            None => generate(&mut rng, &corpus),
        };
        watchdog.arm(name, &input);
        IN_TARGET.set(true);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        IN_TARGET.set(false);
        watchdog.disarm();
        runs += 1;
        if outcome.is_err() {
            let message = LAST_PANIC
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            let path = save(&options.artifacts, name, "crash", &input);
            println!(
                "{name}: CRASH after {runs} runs (seed {seed}): {message}\n{name}: input saved to {}\n{name}: reproduce with: {} --replay {name} {}",
                path.display(),
                std::env::current_exe()
                    .unwrap_or_else(|_| "fuzz-stable".into())
                    .display(),
                path.display()
            );
            return false;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name}: {runs} runs in {secs:.1}s ({:.0}/s, {} seed inputs, seed {seed}): ok",
        runs as f64 / secs.max(1e-9),
        corpus.len()
    );
    true
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// A new input: mostly a mutated corpus entry, sometimes random bytes.
fn generate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if corpus.is_empty() || rng.below(8) == 0 {
        let len = if rng.below(4) == 0 {
            rng.below(4096)
        } else {
            rng.below(256)
        };
        return rng.bytes(len);
    }
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(8) {
        mutate(rng, &mut data, corpus);
    }
    data.truncate(MAX_LEN);
    data
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = data.len();
    let at = rng.below(len + 1);
    match rng.below(10) {
        0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => data[at.min(len - 1)] = rng.next() as u8,
        2 if len > 0 => {
            let v = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            data[at.min(len - 1)] = v;
        }
        3 => {
            let n = rng.below(16) + 1;
            let bytes = rng.bytes(n);
            data.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let end = (at + rng.below(32) + 1).min(len);
            data.drain(at.min(len - 1)..end);
        }
        5 if len > 0 => {
            // Duplicate a range: repeats records (requests, register ops).
            let from = rng.below(len);
            let end = (from + rng.below(64) + 1).min(len);
            let chunk = data[from..end].to_vec();
            data.splice(at..at, chunk);
        }
        6 => {
            let other = &corpus[rng.below(corpus.len())];
            let from = rng.below(other.len() + 1);
            let end = (from + rng.below(128)).min(other.len());
            data.splice(at..at, other[from..end].iter().copied());
        }
        7 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            data.splice(at..at, token.iter().copied());
        }
        8 if len >= 4 => {
            let v: u32 = [
                0,
                1,
                0xff,
                0x100,
                0xffff,
                0x1_0000,
                0x7fff_ffff,
                0x8000_0000,
                u32::MAX,
            ][rng.below(9)];
            let at = at.min(len - 4);
            data[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        _ if len > 0 => {
            let end = (at + rng.below(16) + 1).min(len);
            let start = at.min(len - 1);
            for b in &mut data[start..end] {
                *b = rng.next() as u8;
            }
        }
        _ => {
            let n = rng.below(8) + 1;
            data.extend(rng.bytes(n));
        }
    }
}

/// FNV-1a, for artifact names.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn save(artifacts: &Path, name: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = artifacts.join(name);
    let path = dir.join(format!("{kind}-{:016x}", hash(input)));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("fuzz-stable: saving {}: {e}", path.display());
    }
    path
}

/// Ends the process if one input runs too long (a hang is a bug too).
struct Watchdog {
    /// Milliseconds since `epoch` when the current input started; 0 = idle.
    started: Arc<AtomicU64>,
    current: Arc<Mutex<(&'static str, Vec<u8>)>>,
    epoch: Instant,
}

impl Watchdog {
    fn start(timeout: u64, artifacts: PathBuf) -> Self {
        let started = Arc::new(AtomicU64::new(0));
        let current = Arc::new(Mutex::new(("", Vec::new())));
        let epoch = Instant::now();
        let (s, c) = (Arc::clone(&started), Arc::clone(&current));
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let at = s.load(Ordering::SeqCst);
                let now = epoch.elapsed().as_millis() as u64;
                if at != 0 && now.saturating_sub(at) > timeout * 1000 {
                    let (name, input) = c.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let path = save(&artifacts, name, "timeout", &input);
                    println!(
                        "{name}: TIMEOUT (one input ran over {timeout}s); input saved to {}",
                        path.display()
                    );
                    std::process::exit(1);
                }
            }
        });
        Self {
            started,
            current,
            epoch,
        }
    }

    fn arm(&self, name: &'static str, input: &[u8]) {
        {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            current.0 = name;
            current.1.clear();
            current.1.extend_from_slice(input);
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        self.started.store(now.max(1), Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.started.store(0, Ordering::SeqCst);
    }
}
