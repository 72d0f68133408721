//! Metrics: one JSON object per flush, written as a line to the metrics
//! sink (Firecracker's habit), and the same figures in Prometheus text for
//! `GET /metrics`.

use std::fmt::Write;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::sink::LineSink;
use super::stats_json::{
    escape_label, report_json, report_prometheus, virtio_json, virtio_prometheus,
};
use crate::migration::progress::{self, SharedProgress};
use crate::vm::VmFigures;

/// Figures that come from outside the VMM crate (the API server's request
/// counters, the logger's drop counter), as JSON objects keyed by section.
pub type ExternalMetrics = Box<dyn Fn() -> serde_json::Map<String, Value> + Send>;

/// /proc/self/statm, opened once: under seccomp the VMM thread may not
/// open files once the VM runs, so [`Metrics::new`] opens it before boot and
/// every reading is a `pread` of the same descriptor.
fn statm() -> Option<&'static std::fs::File> {
    static STATM: OnceLock<Option<std::fs::File>> = OnceLock::new();
    STATM
        .get_or_init(|| std::fs::File::open("/proc/self/statm").ok())
        .as_ref()
}

/// The VMM process's resident set size in bytes, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let mut buf = [0u8; 128];
    let len = statm()?.read_at(&mut buf, 0).ok()?;
    let statm = std::str::from_utf8(buf.get(..len)?).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Where metrics come from and go.
pub struct Metrics {
    start: Instant,
    sink: Option<LineSink>,
    external: ExternalMetrics,
    /// Top-level fields asked for by `PUT /metrics` (`id`, `properties`).
    line_fields: serde_json::Map<String, Value>,
    flushes: u64,
    /// The sink's last write failed (said once in the log, not per line).
    failing: bool,
    /// The latest migration's figures (idle until one is asked).
    migration: SharedProgress,
}

impl Metrics {
    /// Metrics with no sink yet.
    pub fn new(start: Instant, external: ExternalMetrics) -> Self {
        let _ = statm();
        Self {
            start,
            sink: None,
            external,
            line_fields: serde_json::Map::new(),
            flushes: 0,
            failing: false,
            migration: SharedProgress::default(),
        }
    }

    /// True once a sink is set.
    pub fn has_sink(&self) -> bool {
        self.sink.is_some()
    }

    /// Sets the sink (once).
    pub fn set_sink(&mut self, sink: LineSink) {
        self.sink = Some(sink);
    }

    /// Fields every line carries from now on, from
    /// [`sie_config::Metrics::line_fields`].
    pub fn set_line_fields(&mut self, fields: serde_json::Map<String, Value>) {
        self.line_fields = fields;
    }

    /// Reports `progress` (a migration just asked) from now on.
    pub fn watch_migration(&mut self, progress: SharedProgress) {
        self.migration = progress;
    }

    fn dropped(&self) -> u64 {
        self.sink.as_ref().map_or(0, LineSink::dropped)
    }

    fn failed(&self) -> u64 {
        self.sink.as_ref().map_or(0, LineSink::failed)
    }

    /// Everything, as one JSON object.
    pub fn snapshot(&self, vm: Option<VmFigures<'_>>) -> Value {
        let utc_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut object = (self.external)();
        object.extend(self.line_fields.clone());
        object.insert("utc_timestamp_ms".into(), json!(utc_ms));
        object.insert(
            "vmm".into(),
            json!({
                "uptime_ms": u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
                "rss_bytes": rss_bytes(),
                "metrics_flushes": self.flushes,
                "metrics_lines_dropped": self.dropped(),
                "metrics_write_errors": self.failed(),
            }),
        );
        object.insert(
            "migration".into(),
            progress::read(&self.migration).metrics_json(),
        );
        if let Some(vm) = vm {
            object.insert("vm".into(), report_json(&vm.observatory.report()));
            object.insert("virtio".into(), virtio_json(vm.virtio));
        }
        Value::Object(object)
    }

    /// Writes one line to the sink. Returns false when there is no sink;
    /// a full sink drops the line and counts it, never blocks.
    pub fn flush(&mut self, vm: Option<VmFigures<'_>>) -> bool {
        if self.sink.is_none() {
            return false;
        }
        self.flushes += 1;
        let line = self.snapshot(vm).to_string();
        let Some(sink) = &self.sink else {
            return true;
        };
        let written = sink.write_line(&line);
        // A disk that fills up or fails costs metrics lines, never the VM:
        // said once when it starts and once when it ends, counted always.
        match (written, sink.pending_loss(), self.failing) {
            (false, Some(loss), false) if loss.errno.is_some() => {
                self.failing = true;
                tracing::warn!(
                    path = %sink.path().display(),
                    "metrics: cannot write the metrics file ({loss}); lines are dropped and counted until it works again"
                );
            }
            (true, _, true) => {
                self.failing = false;
                tracing::warn!(path = %sink.path().display(), "metrics: writing the metrics file again");
            }
            _ => {}
        }
        true
    }

    /// Everything in Prometheus text format.
    pub fn prometheus(&self, vm: Option<VmFigures<'_>>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sie_uptime_seconds Time since sie started.\n# TYPE sie_uptime_seconds gauge\nsie_uptime_seconds {}",
            self.start.elapsed().as_secs_f64()
        );
        if let Some(rss) = rss_bytes() {
            let _ = writeln!(
                out,
                "# HELP sie_rss_bytes Resident memory of the sie process.\n# TYPE sie_rss_bytes gauge\nsie_rss_bytes {rss}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sie_metrics_lines_dropped_total Metrics lines dropped because the sink was full or failing.\n# TYPE sie_metrics_lines_dropped_total counter\nsie_metrics_lines_dropped_total {}",
            self.dropped()
        );
        let _ = writeln!(
            out,
            "# HELP sie_metrics_write_errors_total Metrics lines whose write failed (disk full, I/O error).\n# TYPE sie_metrics_write_errors_total counter\nsie_metrics_write_errors_total {}",
            self.failed()
        );
        external_prometheus(&(self.external)(), &mut out);
        progress::read(&self.migration).prometheus(&mut out);
        if let Some(vm) = vm {
            report_prometheus(&vm.observatory.report(), &mut out);
            virtio_prometheus(vm.virtio, &mut out);
        }
        out
    }
}

/// External sections follow one shape: `{section: {name: {field: number}}}`
/// (the API's per-route counters) or `{section: {field: number}}`. Each
/// number becomes `sie_<section>_<field>{name="..."}`.
fn external_prometheus(sections: &serde_json::Map<String, Value>, out: &mut String) {
    for (section, value) in sections {
        let Some(entries) = value.as_object() else {
            continue;
        };
        for (key, entry) in entries {
            match entry {
                Value::Number(number) => {
                    let _ = writeln!(out, "sie_{section}_{key} {number}");
                }
                Value::Object(fields) => {
                    let name = escape_label(key);
                    for (field, number) in fields.iter().filter(|(_, v)| v.is_number()) {
                        let _ = writeln!(out, "sie_{section}_{field}{{name=\"{name}\"}} {number}");
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn external() -> ExternalMetrics {
        Box::new(|| {
            let mut map = serde_json::Map::new();
            map.insert(
                "api".into(),
                json!({"put_actions": {"count": 2, "faults": 1}}),
            );
            map.insert("logger".into(), json!({"lines_dropped": 3}));
            map
        })
    }

    #[test]
    fn snapshot_has_every_section() {
        let metrics = Metrics::new(Instant::now(), external());
        let value = metrics.snapshot(None);
        assert_eq!(value["api"]["put_actions"]["count"], 2);
        assert!(value["vmm"]["rss_bytes"].as_u64().unwrap() > 0);
        assert!(value["utc_timestamp_ms"].as_u64().unwrap() > 0);
        assert!(value.get("vm").is_none(), "no VM section before boot");
        assert_eq!(value["migration"]["state"], "idle");
    }

    #[test]
    fn lines_carry_the_migration_being_watched() {
        let mut metrics = Metrics::new(Instant::now(), external());
        let migration = SharedProgress::default();
        metrics.watch_migration(migration.clone());
        progress::update(&migration, |p| {
            p.state = progress::MigrationState::Sending;
            p.round = 2;
            p.bytes = 8192;
            p.throttle_percent = 20;
        });
        let value = metrics.snapshot(None);
        assert_eq!(value["migration"]["state"], "sending");
        assert_eq!(value["migration"]["round"], 2);
        assert_eq!(value["migration"]["bytes"], 8192);
        assert_eq!(value["migration"]["throttle_percent"], 20);
        let text = metrics.prometheus(None);
        assert!(text.contains("\nsie_migration_round 2\n"), "{text}");
        assert!(
            text.contains("sie_migration_state{state=\"sending\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn lines_carry_the_id_and_properties_asked_for() {
        let mut metrics = Metrics::new(Instant::now(), external());
        assert!(metrics.snapshot(None).get("id").is_none());
        let config: sie_config::Metrics = serde_json::from_str(
            r#"{"metrics_path": "m", "emit_id": true, "properties": {"team": "a"}}"#,
        )
        .unwrap();
        metrics.set_line_fields(config.line_fields("vm7"));
        let value = metrics.snapshot(None);
        assert_eq!(value["id"], "vm7");
        assert_eq!(value["properties"], json!({"team": "a"}));
    }

    #[test]
    fn flush_without_sink_reports_it() {
        let mut metrics = Metrics::new(Instant::now(), external());
        assert!(!metrics.flush(None));
    }

    #[test]
    fn flush_writes_one_json_line() {
        let dir = std::env::temp_dir().join(format!("sie-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.json");
        let _ = std::fs::remove_file(&path);
        let mut metrics = Metrics::new(Instant::now(), external());
        metrics.set_sink(LineSink::open(&path).unwrap());
        assert!(metrics.flush(None));
        assert!(metrics.flush(None));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["vmm"]["metrics_flushes"], 2);
    }

    #[test]
    fn a_failing_metrics_file_is_counted_and_flushing_goes_on() {
        let mut metrics = Metrics::new(Instant::now(), external());
        // /dev/full fails every write with ENOSPC, as a full disk does.
        metrics.set_sink(LineSink::open(std::path::Path::new("/dev/full")).unwrap());
        assert!(metrics.flush(None));
        assert!(metrics.flush(None));
        assert!(metrics.failing);
        let value = metrics.snapshot(None);
        assert_eq!(value["vmm"]["metrics_flushes"], 2);
        assert_eq!(value["vmm"]["metrics_lines_dropped"], 2);
        assert_eq!(value["vmm"]["metrics_write_errors"], 2);
        assert!(
            metrics
                .prometheus(None)
                .contains("\nsie_metrics_write_errors_total 2\n")
        );
    }

    #[test]
    fn prometheus_includes_external_sections() {
        let metrics = Metrics::new(Instant::now(), external());
        let text = metrics.prometheus(None);
        assert!(text.contains("sie_api_count{name=\"put_actions\"} 2"));
        assert!(text.contains("sie_logger_lines_dropped 3"));
        assert!(text.contains("sie_rss_bytes "));
    }
}
