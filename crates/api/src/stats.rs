//! API metrics: requests, faults and latency per route.
//!
//! Lock-free atomics in a fixed table, so the server thread records without
//! ever waiting on whoever reads a snapshot (the VMM answering `GET /stats`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::route::{ROUTE_INVALID, ROUTE_UNSUPPORTED, ROUTE_VERSION};

/// Counted under when a name is not in [`ROUTES`] (a route added to
/// `sie_config::Request` before this table learnt it).
const ROUTE_OTHER: &str = "other";

/// Every route name counted: `Request::route()` names and the server's own.
pub const ROUTES: [&str; 51] = [
    "get_instance_info",
    "get_machine_config",
    "get_vm_config",
    "put_boot_source",
    "put_machine_config",
    "patch_machine_config",
    "put_cpu_config",
    "put_drive",
    "patch_drive",
    "delete_drive",
    "put_network_interface",
    "patch_network_interface",
    "delete_network_interface",
    "put_vsock",
    "put_entropy",
    "put_logger",
    "put_metrics",
    "put_actions",
    "patch_vm",
    "get_metrics",
    "get_stats",
    "put_snapshot_create",
    "put_snapshot_load",
    "get_mmds",
    "put_mmds",
    "patch_mmds",
    "put_mmds_config",
    "put_serial",
    "put_vm_dump",
    "put_balloon",
    "patch_balloon",
    "get_balloon",
    "get_balloon_statistics",
    "patch_balloon_statistics",
    "patch_balloon_hinting_start",
    "get_balloon_hinting_status",
    "patch_balloon_hinting_stop",
    "put_vfio",
    "put_migration_receive",
    "put_migration_send",
    "get_migration",
    "put_migration_cancel",
    "put_pmem",
    "patch_pmem",
    "put_hotplug_memory",
    "patch_hotplug_memory",
    "get_hotplug_memory",
    ROUTE_VERSION,
    ROUTE_UNSUPPORTED,
    ROUTE_INVALID,
    ROUTE_OTHER,
];

#[derive(Default)]
struct RouteStats {
    count: AtomicU64,
    faults: AtomicU64,
    latency_us_sum: AtomicU64,
    latency_us_max: AtomicU64,
}

/// Per-route counters, shared as `Arc<ApiStats>`.
pub struct ApiStats {
    routes: [RouteStats; ROUTES.len()],
    /// Connections closed to make room for a new client.
    evicted: AtomicU64,
    /// Connections closed after sitting idle too long.
    timed_out: AtomicU64,
}

// By hand: std derives `Default` for arrays of at most 32.
impl Default for ApiStats {
    fn default() -> Self {
        Self {
            routes: std::array::from_fn(|_| RouteStats::default()),
            evicted: AtomicU64::default(),
            timed_out: AtomicU64::default(),
        }
    }
}

impl std::fmt::Debug for ApiStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiStats({})", self.snapshot())
    }
}

impl ApiStats {
    /// Counts one answered request; `fault` when the answer was a 400.
    pub fn record(&self, route: &str, fault: bool, latency: Duration) {
        let index = ROUTES
            .iter()
            .position(|name| *name == route)
            .unwrap_or(ROUTES.len() - 1);
        let slot = &self.routes[index];
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slot.count.fetch_add(1, Ordering::Relaxed);
        if fault {
            slot.faults.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency_us_sum.fetch_add(micros, Ordering::Relaxed);
        slot.latency_us_max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Counts a connection closed to make room for a new client.
    pub fn record_eviction(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for idling too long.
    pub fn record_idle_timeout(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed so far: (to make room, for idling).
    pub fn closed_connections(&self) -> (u64, u64) {
        (
            self.evicted.load(Ordering::Relaxed),
            self.timed_out.load(Ordering::Relaxed),
        )
    }

    /// Requests counted under `route` so far (0 for an unknown name).
    pub fn count(&self, route: &str) -> u64 {
        ROUTES
            .iter()
            .position(|name| *name == route)
            .map_or(0, |i| self.routes[i].count.load(Ordering::Relaxed))
    }

    /// Faults counted under `route` so far (0 for an unknown name).
    pub fn faults(&self, route: &str) -> u64 {
        ROUTES
            .iter()
            .position(|name| *name == route)
            .map_or(0, |i| self.routes[i].faults.load(Ordering::Relaxed))
    }

    /// Every route seen at least once:
    /// `{route: {count, faults, latency_us_sum, latency_us_max}}`, and
    /// `connections: {evicted, idle_timeouts}` once any was closed.
    pub fn snapshot(&self) -> Value {
        let mut out = Map::new();
        let (evicted, timed_out) = self.closed_connections();
        if evicted + timed_out > 0 {
            out.insert(
                "connections".to_string(),
                json!({"evicted": evicted, "idle_timeouts": timed_out}),
            );
        }
        for (name, slot) in ROUTES.iter().zip(&self.routes) {
            let count = slot.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            out.insert(
                (*name).to_string(),
                json!({
                    "count": count,
                    "faults": slot.faults.load(Ordering::Relaxed),
                    "latency_us_sum": slot.latency_us_sum.load(Ordering::Relaxed),
                    "latency_us_max": slot.latency_us_max.load(Ordering::Relaxed),
                }),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_faults_and_latency() {
        let stats = ApiStats::default();
        stats.record("put_drive", false, Duration::from_micros(10));
        stats.record("put_drive", true, Duration::from_micros(30));
        stats.record("no_such_route", false, Duration::ZERO);
        let snapshot = stats.snapshot();
        assert_eq!(
            snapshot["put_drive"],
            json!({"count": 2, "faults": 1, "latency_us_sum": 40, "latency_us_max": 30})
        );
        assert_eq!(snapshot["other"]["count"], 1);
        assert!(snapshot.get("get_stats").is_none());
        assert_eq!(
            (stats.count("put_drive"), stats.faults("put_drive")),
            (2, 1)
        );
    }
}
