//! A copy of the observatory's state, and its text rendering for `--stats`.

use std::fmt;

use crate::exit_kind::ExitKind;
use crate::markers::{BootMarker, MarkerSource};
use crate::unknown::{AddressSpace, UnknownCounts};
use crate::vcpu_stats::KindSnapshot;
use crate::{DeviceSnapshot, Observatory};

/// One exit kind, merged over all vCPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitRow {
    /// The kind.
    pub kind: ExitKind,
    /// Its merged statistics.
    pub stats: KindSnapshot,
}

/// One device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device name as registered on the bus.
    pub name: String,
    /// Its statistics.
    pub stats: DeviceSnapshot,
}

/// Everything the observatory knows, copied out.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per exit kind, in [`ExitKind::ALL`] order (kinds with no exits included).
    pub exits: Vec<ExitRow>,
    /// Per exit kind and vCPU: `per_vcpu[v][k]` is vCPU `v`'s count of kind `k`.
    pub per_vcpu: Vec<Vec<u64>>,
    /// Per device, in registration order.
    pub devices: Vec<DeviceRow>,
    /// Boot markers in arrival order.
    pub markers: Vec<BootMarker>,
    /// Markers not stored because the timeline was full.
    pub markers_dropped: u64,
    /// Unclaimed accesses per address.
    pub unknown: Vec<(AddressSpace, u64, UnknownCounts)>,
    /// Unclaimed accesses not tracked per address.
    pub unknown_overflow: u64,
}

impl Report {
    pub(crate) fn collect(obs: &Observatory) -> Report {
        let mut exits: Vec<ExitRow> = ExitKind::ALL
            .iter()
            .map(|&kind| ExitRow {
                kind,
                stats: KindSnapshot::default(),
            })
            .collect();
        let mut per_vcpu = Vec::with_capacity(obs.vcpus.len());
        for vcpu in obs.vcpus.iter() {
            let mut counts = Vec::with_capacity(ExitKind::COUNT);
            for row in exits.iter_mut() {
                let snapshot = vcpu.snapshot(row.kind);
                counts.push(snapshot.count);
                row.stats.merge(&snapshot);
            }
            per_vcpu.push(counts);
        }
        let devices = obs
            .registered_devices()
            .iter()
            .map(|(name, stats)| DeviceRow {
                name: name.clone(),
                stats: stats.snapshot(),
            })
            .collect();
        let (markers, markers_dropped) = obs.markers.snapshot();
        let (unknown, unknown_overflow) = obs.unknown.snapshot();
        Report {
            exits,
            per_vcpu,
            devices,
            markers,
            markers_dropped,
            unknown,
            unknown_overflow,
        }
    }

    /// The merged statistics of one kind.
    pub fn exit(&self, kind: ExitKind) -> &KindSnapshot {
        &self.exits[kind.index()].stats
    }

    /// Exits of every kind, all vCPUs.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(|row| row.stats.count).sum()
    }

    /// Time spent inside the guest over all vCPUs, ns.
    pub fn guest_ns_total(&self) -> u64 {
        self.exits.iter().map(|row| row.stats.guest_ns_total).sum()
    }
}

fn micros(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => format!("{:.2}", ns as f64 / 1000.0),
        None => "-".to_string(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sie exit statistics")?;
        writeln!(
            f,
            "  {:<16} {:>10} {:>12} {:>12} {:>14}",
            "exit kind", "count", "median µs", "p99 µs", "in guest ms"
        )?;
        for row in self.exits.iter().filter(|row| row.stats.count > 0) {
            writeln!(
                f,
                "  {:<16} {:>10} {:>12} {:>12} {:>14.3}",
                row.kind.name(),
                row.stats.count,
                micros(row.stats.handling.quantile_ns(0.5)),
                micros(row.stats.handling.quantile_ns(0.99)),
                row.stats.guest_ns_total as f64 / 1e6
            )?;
        }
        writeln!(
            f,
            "  {:<16} {:>10} {:>12} {:>12} {:>14.3}",
            "total",
            self.total_exits(),
            "",
            "",
            self.guest_ns_total() as f64 / 1e6
        )?;
        if self.per_vcpu.len() > 1 {
            for (index, counts) in self.per_vcpu.iter().enumerate() {
                writeln!(f, "  vcpu {index}: {} exits", counts.iter().sum::<u64>())?;
            }
        }
        writeln!(f, "devices")?;
        writeln!(
            f,
            "  {:<16} {:>10} {:>10} {:>12} {:>12}",
            "device", "reads", "writes", "median µs", "p99 µs"
        )?;
        for row in self
            .devices
            .iter()
            .filter(|row| row.stats.reads + row.stats.writes > 0)
        {
            writeln!(
                f,
                "  {:<16} {:>10} {:>10} {:>12} {:>12}",
                row.name,
                row.stats.reads,
                row.stats.writes,
                micros(row.stats.handling.quantile_ns(0.5)),
                micros(row.stats.handling.quantile_ns(0.99))
            )?;
        }
        if !self.unknown.is_empty() || self.unknown_overflow > 0 {
            writeln!(
                f,
                "unclaimed addresses (reads return all ones, writes dropped)"
            )?;
            for (space, addr, counts) in &self.unknown {
                let space = match space {
                    AddressSpace::Pio => "port",
                    AddressSpace::Mmio => "mmio",
                };
                writeln!(
                    f,
                    "  {space} {addr:#x}: {} reads, {} writes",
                    counts.reads, counts.writes
                )?;
            }
            if self.unknown_overflow > 0 {
                writeln!(f, "  other addresses: {} accesses", self.unknown_overflow)?;
            }
        }
        writeln!(f, "boot markers")?;
        if self.markers.is_empty() {
            writeln!(f, "  none")?;
        }
        for marker in &self.markers {
            let source = match marker.source {
                MarkerSource::DebugPort => "port 0x80",
                MarkerSource::BootTimer => "boot timer",
            };
            writeln!(
                f,
                "  {:>10.3} ms  {source:<10} {:#04x}",
                marker.at.as_secs_f64() * 1000.0,
                marker.value
            )?;
        }
        if self.markers_dropped > 0 {
            writeln!(f, "  {} more not stored", self.markers_dropped)?;
        }
        Ok(())
    }
}
