//! sie's logs: `tracing` events, one line each, to stderr until a log path
//! is given (`--log-path` or `PUT /logger`), then to that file or FIFO.
//!
//! Lines follow Firecracker's layout: a timestamp when they go to a file,
//! then `[ID:THREAD:LEVEL:FILE:LINE]` and the message. The id and thread
//! appear when sie serves as Firecracker (an instance id is set); the level
//! and origin when asked (`show_level`, `show_log_origin`, off by default
//! as in Firecracker; `sie run` shows the level). `module` keeps only the
//! events whose target (the Rust module path, e.g. `sie_vmm::controller`)
//! starts with it.
//!
//! Two things keep logging from hurting the VM: the sink never blocks or
//! fails (a full FIFO, or a disk that fills up or fails, drops lines and
//! counts them, see `sie_vmm::controller::sink`; the first line that gets
//! through again says how many were lost and why),
//! and a token bucket caps the rate, so a guest that makes sie log in a loop
//! cannot flood the disk or steal the VMM thread's time. Dropped lines are
//! counted and reported in the log once room returns, and in the metrics.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use sie_vmm::controller::sink::LineSink;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber, span};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

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
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        // Lines the file lost (disk full or failing, FIFO full) are owned
        // up to as soon as one gets through again: the report goes in the
        // same write as the line, so a failing file costs one drop per line.
        if let Some(loss) = sink.as_ref().and_then(LineSink::pending_loss) {
            text.push_str(&format!("sie: log file: {loss}\n"));
        }
        if dropped > 0 {
            text.push_str(&format!("sie: {dropped} log lines dropped (rate limit)\n"));
        }
        text.push_str(&String::from_utf8_lossy(line));
        match sink.as_ref() {
            Some(sink) => {
                sink.write_line(&text);
            }
            None => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
        }
    }
}

/// What a line shows and which events are kept; changed by `PUT /logger`.
#[derive(Clone, Debug)]
struct LineOptions {
    /// Events more verbose than this are dropped.
    level: LevelFilter,
    /// Set when serving as Firecracker: lines then name the instance and thread.
    instance_id: Option<String>,
    show_level: bool,
    show_log_origin: bool,
    /// Keep only events whose target starts with this.
    module: Option<String>,
}

impl Default for LineOptions {
    fn default() -> Self {
        Self {
            level: LevelFilter::OFF,
            instance_id: None,
            show_level: false,
            show_log_origin: false,
            module: None,
        }
    }
}

impl LineOptions {
    fn keeps(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.level
            && self
                .module
                .as_deref()
                .is_none_or(|module| metadata.target().starts_with(module))
    }
}

/// An event's fields as tracing-subscriber's default format writes them:
/// the message (which tracing's macros record first), then `name=value`
/// for each other field, separated by spaces.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let name = field.name();
        let _ = if name == "message" {
            write!(self.0, "{value:?}")
        } else {
            write!(self.0, "{}={value:?}", name.trim_start_matches("r#"))
        };
    }
}

/// The subscriber: the level and module filters and the line format, all
/// changeable at run time through the options kept in [`Logging`].
///
/// sie records events only, no spans, so it needs no span registry:
/// tracing-subscriber's `Registry` allocates a 32 KiB table (a slot per
/// possible thread) that every idle VM kept resident (README "Memory per
/// VM"). A span, should one appear, is given an id and otherwise ignored.
struct LineSubscriber {
    target: Arc<Target>,
    options: Arc<RwLock<LineOptions>>,
}

impl LineSubscriber {
    fn options(&self) -> std::sync::RwLockReadGuard<'_, LineOptions> {
        self.options.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Formats one event as a line in Firecracker's layout.
    fn line(&self, event: &Event<'_>) -> String {
        let mut line = String::new();
        // Wall-clock time in files; none on a terminal, where it is noise.
        if self.target.has_sink() {
            let _ = SystemTime.format_time(&mut Writer::new(&mut line));
            line.push(' ');
        }
        let options = self.options();
        let metadata = event.metadata();
        let mut parts: Vec<String> = Vec::new();
        if let Some(id) = &options.instance_id {
            parts.push(id.clone());
            parts.push(std::thread::current().name().unwrap_or("-").to_string());
        }
        if options.show_level {
            parts.push(metadata.level().to_string());
        }
        if options.show_log_origin {
            let line = metadata.line().map_or("?".to_string(), |l| l.to_string());
            parts.push(format!("{}:{line}", metadata.file().unwrap_or("?")));
        }
        drop(options);
        if !parts.is_empty() {
            let _ = write!(line, "[{}] ", parts.join(":"));
        }
        let mut fields = String::new();
        event.record(&mut Fields(&mut fields));
        line.push_str(&fields);
        line.push('\n');
        line
    }
}

impl Subscriber for LineSubscriber {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Decided once per callsite, and again whenever the level or the
        // module changes (`rebuild_interest_cache`): a dropped callsite then
        // costs a load and a branch, and an idle VM's VMM loop runs none of
        // this code (each first touch of code keeps 64 KiB of it resident).
        if self.options().keeps(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.options().keeps(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.options().level)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        self.target.emit(self.line(event).as_bytes());
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// The installed logger, for changing its path and level later.
#[derive(Clone)]
pub struct Logging {
    target: Arc<Target>,
    options: Arc<RwLock<LineOptions>>,
}

impl Target {
    fn new() -> Self {
        Self {
            sink: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: BURST_LINES,
                refilled: Instant::now(),
                dropped_since_report: 0,
            }),
            rate_dropped: AtomicU64::new(0),
        }
    }
}

impl Logging {
    /// Installs the global logger at `level`, writing to stderr, lines
    /// showing their level (sie's own default; Firecracker mode turns it
    /// off with [`Logging::serve_as_firecracker`]).
    pub fn init(level: &str) -> Result<Self, LogError> {
        let target = Arc::new(Target::new());
        let options = Arc::new(RwLock::new(LineOptions {
            level: parse_level(level)?,
            show_level: true,
            ..LineOptions::default()
        }));
        let subscriber = LineSubscriber {
            target: target.clone(),
            options: options.clone(),
        };
        // A second init (tests) keeps the first logger; that is harmless.
        let _ = tracing::subscriber::set_global_default(subscriber);
        Ok(Self { target, options })
    }

    /// Firecracker's line layout from now on: lines name `instance_id` and
    /// their thread, and show the level only when asked.
    pub fn serve_as_firecracker(&self, instance_id: &str) {
        let mut options = self.options.write().unwrap_or_else(|e| e.into_inner());
        options.instance_id = Some(instance_id.to_string());
        options.show_level = false;
    }

    /// Applies the layout and filter fields of `logger` that are set.
    fn set_format(&self, logger: &sie_config::Logger) {
        let mut options = self.options.write().unwrap_or_else(|e| e.into_inner());
        if let Some(show) = logger.show_level {
            options.show_level = show;
        }
        if let Some(show) = logger.show_log_origin {
            options.show_log_origin = show;
        }
        if let Some(module) = &logger.module {
            options.module = Some(module.clone());
            drop(options);
            // Which callsites log depends on the module too.
            tracing::callsite::rebuild_interest_cache();
        }
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
        self.options
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .level = filter;
        // tracing caches the most verbose level any subscriber wants.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }

    /// Counters for the metrics.
    pub fn metrics(&self) -> serde_json::Value {
        let sink = self.target.sink.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "lines_written": sink.as_ref().map_or(0, LineSink::written),
            "lines_dropped_sink_full": sink
                .as_ref()
                .map_or(0, |sink| sink.dropped() - sink.failed()),
            "lines_dropped_write_error": sink.as_ref().map_or(0, LineSink::failed),
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
        self.set_format(logger);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        Arc::new(Target::new())
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
    fn lines_go_to_the_sink_and_drops_are_reported() {
        let dir = std::env::temp_dir().join(format!("sie-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sie.log");
        let _ = std::fs::remove_file(&path);
        let target = target();
        *target.sink.lock().unwrap() = Some(LineSink::open(&path).unwrap());
        target.emit(b"half a line\n");
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

    #[test]
    fn a_failing_log_file_is_counted_and_never_stops_logging() {
        let logging = Logging {
            target: target(),
            options: Arc::default(),
        };
        // /dev/full fails every write with ENOSPC, as a full disk does.
        logging.set_path(Path::new("/dev/full")).unwrap();
        for _ in 0..3 {
            logging.target.emit(b"lost\n");
        }
        let metrics = logging.metrics();
        assert_eq!(metrics["lines_written"], 0);
        assert_eq!(metrics["lines_dropped_write_error"], 3);
        assert_eq!(metrics["lines_dropped_sink_full"], 0);
    }

    #[test]
    fn lines_a_full_fifo_lost_are_owned_up_to_once_it_drains() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("sie-log-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.fifo");
        let _ = std::fs::remove_file(&path);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let target = target();
        *target.sink.lock().unwrap() = Some(LineSink::open(&path).unwrap());
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let line = format!("{}\n", "x".repeat(999));
        // Fill the pipe (64 KiB) and lose a few lines.
        for _ in 0..70 {
            target.emit(line.as_bytes());
        }
        let lost = {
            let sink = target.sink.lock().unwrap();
            sink.as_ref().unwrap().dropped()
        };
        assert!(lost > 0, "the pipe never filled");
        let mut buf = vec![0u8; 1 << 20];
        while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
        target.emit(b"back\n");
        let n = reader.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert_eq!(
            text,
            format!("sie: log file: {lost} lines lost (full)\nback\n")
        );
    }
}

#[cfg(test)]
#[path = "logging_tests.rs"]
mod format_tests;
