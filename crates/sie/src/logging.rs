//! sie's logs: `tracing` events, one line each, to stderr until a log path
//! is given (`--log-path` or `PUT /logger`), then to that file or FIFO.
//!
//! Two things keep logging from hurting the VM: the sink never blocks (a
//! full FIFO drops lines and counts them, see `sie_vmm::controller::sink`),
//! and a token bucket caps the rate, so a guest that makes sie log in a loop
//! cannot flood the disk or steal the VMM thread's time. Dropped lines are
//! counted and reported in the log once room returns, and in the metrics.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sie_vmm::controller::sink::LineSink;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Lines allowed in a burst.
const BURST_LINES: f64 = 200.0;
/// Lines per second allowed in the long run.
const LINES_PER_SECOND: f64 = 100.0;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level is not one sie knows.
    #[error("invalid log level {0:?}: expected Error, Warning, Info, Debug, Trace or Off")]
    Level(String),
    /// The log file could not be opened.
    #[error(transparent)]
    Sink(#[from] sie_vmm::controller::sink::SinkError),
}

/// Parses a level in Firecracker's names (any case) or tracing's.
pub fn parse_level(level: &str) -> Result<LevelFilter, LogError> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "error" => LevelFilter::ERROR,
        "warning" | "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        "off" => LevelFilter::OFF,
        _ => return Err(LogError::Level(level.to_string())),
    })
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped_since_report: u64,
}

/// Where log lines go, shared by every writer.
struct Target {
    sink: Mutex<Option<LineSink>>,
    bucket: Mutex<Bucket>,
    rate_dropped: AtomicU64,
}

impl Target {
    fn has_sink(&self) -> bool {
        self.sink.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Takes a token; returns the number of lines dropped before this one
    /// when the bucket had run dry, so the line can be prefixed with it.
    fn admit(&self) -> Option<u64> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * LINES_PER_SECOND).min(BURST_LINES);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            bucket.dropped_since_report += 1;
            self.rate_dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        bucket.tokens -= 1.0;
        Some(std::mem::take(&mut bucket.dropped_since_report))
    }

    fn emit(&self, line: &[u8]) {
        let Some(dropped) = self.admit() else {
            return;
        };
        let text = String::from_utf8_lossy(line);
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let write = |text: &str| match sink.as_ref() {
            Some(sink) => {
                sink.write_line(text);
            }
            None => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
        };
        if dropped > 0 {
            write(&format!("sie: {dropped} log lines dropped (rate limit)\n"));
        }
        write(&text);
    }
}

/// Buffers one formatted event and emits it whole when dropped.
pub struct LineWriter {
    target: Arc<Target>,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.target.emit(&self.line);
        }
    }
}

#[derive(Clone)]
struct MakeLineWriter(Arc<Target>);

impl<'a> MakeWriter<'a> for MakeLineWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            target: self.0.clone(),
            line: Vec::with_capacity(128),
        }
    }
}

/// Wall-clock timestamps in log files; none on a terminal, where they
/// would only be noise.
struct FileTime(Arc<Target>);

impl FormatTime for FileTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        if self.0.has_sink() {
            tracing_subscriber::fmt::time::SystemTime.format_time(w)?;
            w.write_char(' ')?;
        }
        Ok(())
    }
}

/// The installed logger, for changing its path and level later.
#[derive(Clone)]
pub struct Logging {
    target: Arc<Target>,
    level: reload::Handle<LevelFilter, tracing_subscriber::Registry>,
}

impl Logging {
    /// Installs the global logger at `level`, writing to stderr.
    pub fn init(level: &str) -> Result<Self, LogError> {
        let filter = parse_level(level)?;
        let target = Arc::new(Target {
            sink: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: BURST_LINES,
                refilled: Instant::now(),
                dropped_since_report: 0,
            }),
            rate_dropped: AtomicU64::new(0),
        });
        let (filter, level) = reload::Layer::new(filter);
        let format = tracing_subscriber::fmt::layer()
            .with_writer(MakeLineWriter(target.clone()))
            .with_timer(FileTime(target.clone()))
            .with_target(false)
            .with_ansi(false);
        // A second init (tests) keeps the first logger; that is harmless.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(format)
            .try_init();
        Ok(Self { target, level })
    }

    /// Sends the logs to `path` from now on.
    pub fn set_path(&self, path: &Path) -> Result<(), LogError> {
        let sink = LineSink::open(path)?;
        *self.target.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        Ok(())
    }

    /// Changes the level.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let filter = parse_level(level)?;
        // Fails only if the subscriber is gone, and then nothing logs anyway.
        let _ = self.level.reload(filter);
        Ok(())
    }

    /// Counters for the metrics.
    pub fn metrics(&self) -> serde_json::Value {
        let sink = self.target.sink.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "lines_written": sink.as_ref().map_or(0, LineSink::written),
            "lines_dropped_sink_full": sink.as_ref().map_or(0, LineSink::dropped),
            "lines_dropped_rate_limit": self.target.rate_dropped.load(Ordering::Relaxed),
        })
    }
}

impl sie_vmm::controller::LoggerControl for Logging {
    fn configure(&mut self, logger: &sie_config::Logger) -> Result<(), String> {
        if let Some(level) = &logger.level {
            self.set_level(level).map_err(|e| e.to_string())?;
        }
        if let Some(path) = &logger.log_path {
            self.set_path(path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        Arc::new(Target {
            sink: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: BURST_LINES,
                refilled: Instant::now(),
                dropped_since_report: 0,
            }),
            rate_dropped: AtomicU64::new(0),
        })
    }

    #[test]
    fn firecracker_and_tracing_level_names_are_accepted() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::WARN);
        assert_eq!(parse_level("OFF").unwrap(), LevelFilter::OFF);
        assert_eq!(parse_level("trace").unwrap(), LevelFilter::TRACE);
        assert!(
            parse_level("loud")
                .unwrap_err()
                .to_string()
                .contains("loud")
        );
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let target = target();
        let admitted = (0..1000).filter(|_| target.admit().is_some()).count();
        assert!(
            (200..=210).contains(&admitted),
            "{admitted} admitted of a 1000-line burst"
        );
        assert!(target.rate_dropped.load(Ordering::Relaxed) >= 790);
    }

    #[test]
    fn lines_go_to_the_sink_whole_and_drops_are_reported() {
        let dir = std::env::temp_dir().join(format!("sie-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sie.log");
        let _ = std::fs::remove_file(&path);
        let target = target();
        *target.sink.lock().unwrap() = Some(LineSink::open(&path).unwrap());
        let mut writer = MakeLineWriter(target.clone()).make_writer();
        writer.write_all(b"half ").unwrap();
        writer.write_all(b"a line\n").unwrap();
        drop(writer);
        target.bucket.lock().unwrap().tokens = 0.0;
        target.emit(b"lost\n");
        target.bucket.lock().unwrap().tokens = 5.0;
        target.emit(b"back\n");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "half a line\nsie: 1 log lines dropped (rate limit)\nback\n"
        );
    }
}
