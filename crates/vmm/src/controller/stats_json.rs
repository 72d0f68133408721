//! The exit observatory as JSON (`GET /stats`, and part of every metrics
//! line), and as Prometheus samples.

use serde_json::{Map, Value, json};
use sie_obs::{AddressSpace, HistogramSnapshot, MarkerSource, Report};

fn quantiles(histogram: &HistogramSnapshot) -> Value {
    json!({
        "p50": histogram.quantile_ns(0.50),
        "p90": histogram.quantile_ns(0.90),
        "p99": histogram.quantile_ns(0.99),
    })
}

/// The report as one JSON object: exits per kind (with handling-latency
/// percentiles in ns), per vCPU, per device, boot markers and accesses to
/// unclaimed addresses. Kinds without exits are left out.
pub fn report_json(report: &Report) -> Value {
    let mut exits = Map::new();
    for row in report.exits.iter().filter(|row| row.stats.count > 0) {
        exits.insert(
            row.kind.name().to_string(),
            json!({
                "count": row.stats.count,
                "guest_ns_total": row.stats.guest_ns_total,
                "handling_ns_total": row.stats.handling_ns_total,
                "handling_ns": quantiles(&row.stats.handling),
            }),
        );
    }
    let per_vcpu: Vec<Value> = report
        .per_vcpu
        .iter()
        .map(|counts| {
            let total: u64 = counts.iter().sum();
            json!({ "exits": total })
        })
        .collect();
    let mut devices = Map::new();
    for row in &report.devices {
        devices.insert(
            row.name.clone(),
            json!({
                "reads": row.stats.reads,
                "writes": row.stats.writes,
                "handling_ns": quantiles(&row.stats.handling),
            }),
        );
    }
    let markers: Vec<Value> = report
        .markers
        .iter()
        .map(|marker| {
            json!({
                "at_us": u64::try_from(marker.at.as_micros()).unwrap_or(u64::MAX),
                "source": match marker.source {
                    MarkerSource::DebugPort => "debug_port",
                    MarkerSource::BootTimer => "boot_timer",
                },
                "value": marker.value,
            })
        })
        .collect();
    let unknown: Vec<Value> = report
        .unknown
        .iter()
        .map(|(space, addr, counts)| {
            json!({
                "space": address_space(*space),
                "address": format!("{addr:#x}"),
                "reads": counts.reads,
                "writes": counts.writes,
            })
        })
        .collect();
    json!({
        "total_exits": report.total_exits(),
        "exits": exits,
        "vcpus": per_vcpu,
        "devices": devices,
        "boot_markers": markers,
        "boot_markers_dropped": report.markers_dropped,
        "unclaimed_accesses": unknown,
        "unclaimed_overflow": report.unknown_overflow,
    })
}

/// Each virtio device's counters: `{name: {requests, bytes_read, ...}}`.
pub fn virtio_json(devices: &[crate::virtio::VirtioStats]) -> Value {
    let mut map = Map::new();
    for device in devices {
        let fields: Map<String, Value> = device
            .fields()
            .iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect();
        map.insert(device.name.clone(), Value::Object(fields));
    }
    Value::Object(map)
}

/// Appends the virtio counters in Prometheus text format.
pub fn virtio_prometheus(devices: &[crate::virtio::VirtioStats], out: &mut String) {
    use std::fmt::Write;
    if devices.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP sie_virtio Paravirtual device counters (requests, bytes, errors, notifications, interrupts, rate-limiter throttling; virtio-net frames and drops per direction).\n# TYPE sie_virtio counter"
    );
    for device in devices {
        let name = escape_label(&device.name);
        for (field, value) in device.fields() {
            let _ = writeln!(out, "sie_virtio_{field}_total{{device=\"{name}\"}} {value}");
        }
    }
}

fn address_space(space: AddressSpace) -> &'static str {
    match space {
        AddressSpace::Pio => "pio",
        AddressSpace::Mmio => "mmio",
    }
}

/// Appends the report's samples to `out` in Prometheus text format.
pub fn report_prometheus(report: &Report, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP sie_vm_exits_total VM exits by kind.\n# TYPE sie_vm_exits_total counter"
    );
    for row in &report.exits {
        let _ = writeln!(
            out,
            "sie_vm_exits_total{{kind=\"{}\"}} {}",
            row.kind.name(),
            row.stats.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP sie_vm_exit_handling_seconds Time the VMM spent handling exits, by kind.\n# TYPE sie_vm_exit_handling_seconds summary"
    );
    for row in report.exits.iter().filter(|row| row.stats.count > 0) {
        let kind = row.kind.name();
        for (q, label) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99")] {
            if let Some(ns) = row.stats.handling.quantile_ns(q) {
                let _ = writeln!(
                    out,
                    "sie_vm_exit_handling_seconds{{kind=\"{kind}\",quantile=\"{label}\"}} {}",
                    ns as f64 / 1e9
                );
            }
        }
        let _ = writeln!(
            out,
            "sie_vm_exit_handling_seconds_sum{{kind=\"{kind}\"}} {}\nsie_vm_exit_handling_seconds_count{{kind=\"{kind}\"}} {}",
            row.stats.handling_ns_total as f64 / 1e9,
            row.stats.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP sie_device_accesses_total Guest accesses to emulated devices.\n# TYPE sie_device_accesses_total counter"
    );
    for row in &report.devices {
        let name = escape_label(&row.name);
        let _ = writeln!(
            out,
            "sie_device_accesses_total{{device=\"{name}\",op=\"read\"}} {}\nsie_device_accesses_total{{device=\"{name}\",op=\"write\"}} {}",
            row.stats.reads, row.stats.writes
        );
    }
    let _ = writeln!(
        out,
        "# HELP sie_boot_marker_seconds When the guest wrote each boot marker, since sie started.\n# TYPE sie_boot_marker_seconds gauge"
    );
    for marker in &report.markers {
        let source = match marker.source {
            MarkerSource::DebugPort => "debug_port",
            MarkerSource::BootTimer => "boot_timer",
        };
        let _ = writeln!(
            out,
            "sie_boot_marker_seconds{{source=\"{source}\",value=\"{}\"}} {}",
            marker.value,
            marker.at.as_secs_f64()
        );
    }
}

/// Escapes a Prometheus label value.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use sie_obs::{ExitKind, Observatory};

    use super::*;

    fn sample_report() -> Report {
        let obs = Observatory::new(Instant::now(), 2);
        let com1 = obs.register_device("com1");
        obs.vcpu(0).unwrap().record(ExitKind::PioOut, 2_000, 150);
        obs.vcpu(1).unwrap().record(ExitKind::PioOut, 2_000, 250);
        com1.record(true, 100);
        obs.report()
    }

    #[test]
    fn json_has_exits_devices_and_vcpus() {
        let json = report_json(&sample_report());
        assert_eq!(json["total_exits"], 2);
        assert_eq!(json["exits"]["pio_out"]["count"], 2);
        assert!(json["exits"]["pio_out"]["handling_ns"]["p50"].is_u64());
        assert!(json["exits"].get("hlt").is_none(), "empty kinds left out");
        assert_eq!(json["vcpus"].as_array().unwrap().len(), 2);
        assert_eq!(json["devices"]["com1"]["writes"], 1);
    }

    #[test]
    fn prometheus_text_has_typed_families() {
        let mut text = String::new();
        report_prometheus(&sample_report(), &mut text);
        assert!(text.contains("# TYPE sie_vm_exits_total counter"));
        assert!(text.contains("sie_vm_exits_total{kind=\"pio_out\"} 2"));
        assert!(text.contains("sie_device_accesses_total{device=\"com1\",op=\"write\"} 1"));
        assert!(text.contains("sie_vm_exit_handling_seconds_count{kind=\"pio_out\"} 2"));
    }

    #[test]
    fn a_devices_own_counters_follow_the_generic_ones() {
        let devices = [crate::virtio::VirtioStats {
            name: "virtio-net:eth0".into(),
            read: Box::new(sie_virtio::CountersSnapshot::default),
            extra: Box::new(|| vec![("tx_dropped", 7)]),
        }];
        let json = virtio_json(&devices);
        assert_eq!(json["virtio-net:eth0"]["errors"], 0);
        assert_eq!(json["virtio-net:eth0"]["tx_dropped"], 7);
        let mut text = String::new();
        virtio_prometheus(&devices, &mut text);
        assert!(text.contains("\nsie_virtio_tx_dropped_total{device=\"virtio-net:eth0\"} 7\n"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
