//! Every API route that takes a JSON body, through `sie_api::route`: the
//! first byte picks the route (and, for `/drives/{id}` and
//! `/network-interfaces/{id}`, the id in the path), the rest is the body.
//!
//! Checked: a body is accepted or refused under the route's own stats
//! name (an accepted request reports the route it came in on, a fault is
//! counted against it), and routing is deterministic.

use sie_api::{Routed, route};

/// Method, path and stats name of each route with a body.
const ROUTES: [(&str, &str, &str); 13] = [
    ("PUT", "/actions", "put_actions"),
    ("PUT", "/boot-source", "put_boot_source"),
    ("PUT", "/machine-config", "put_machine_config"),
    ("PATCH", "/machine-config", "patch_machine_config"),
    ("PUT", "/drives/", "put_drive"),
    ("PATCH", "/drives/", "patch_drive"),
    ("PUT", "/network-interfaces/", "put_network_interface"),
    ("PATCH", "/network-interfaces/", "patch_network_interface"),
    ("PUT", "/vsock", "put_vsock"),
    ("PUT", "/entropy", "put_entropy"),
    ("PUT", "/logger", "put_logger"),
    ("PUT", "/metrics", "put_metrics"),
    ("PATCH", "/vm", "patch_vm"),
];

/// Ids for the routes that end in one: those the seeds' bodies use, and
/// two the path check refuses.
const IDS: [&str; 4] = ["rootfs", "eth0", "bad-id", "x_1"];

pub fn run(data: &[u8]) {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let (method, path, name) = ROUTES[usize::from(choice) % ROUTES.len()];
    let target = if path.ends_with('/') {
        format!("{path}{}", IDS[usize::from(choice / 16) % IDS.len()])
    } else {
        path.to_string()
    };
    let routed = route(method, &target, body);
    let counted_as = match &routed {
        Ok(Routed::Vmm(request)) => request.route(),
        Ok(Routed::Version) => "get_version",
        Err(fault) => fault.route,
    };
    assert_eq!(
        counted_as, name,
        "{method} {target} was counted as {counted_as}"
    );
    assert_eq!(
        routed,
        route(method, &target, body),
        "route is not deterministic"
    );
}
