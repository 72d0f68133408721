use super::*;

fn ok(method: &str, target: &str, body: &str) -> Request {
    match route(method, target, body.as_bytes()) {
        Ok(Routed::Vmm(request)) => request,
        other => panic!("{method} {target} {body}: {other:?}"),
    }
}

fn fault(method: &str, target: &str, body: &str) -> Fault {
    match route(method, target, body.as_bytes()) {
        Err(fault) => fault,
        other => panic!("{method} {target} {body}: expected a fault, got {other:?}"),
    }
}

#[test]
fn gets_without_bodies() {
    assert_eq!(ok("GET", "/", ""), Request::GetInstanceInfo);
    assert_eq!(ok("GET", "/machine-config", ""), Request::GetMachineConfig);
    assert_eq!(ok("GET", "/vm/config", ""), Request::GetVmConfig);
    assert_eq!(ok("GET", "/metrics", ""), Request::GetPrometheusMetrics);
    assert_eq!(ok("GET", "/stats", ""), Request::GetStats);
    assert_eq!(route("GET", "/version", b""), Ok(Routed::Version));
}

#[test]
fn trailing_slash_and_query_are_ignored() {
    assert_eq!(ok("GET", "/machine-config/", ""), Request::GetMachineConfig);
    assert_eq!(
        ok("GET", "/machine-config?x=1", ""),
        Request::GetMachineConfig
    );
    assert_eq!(ok("GET", "/?pretty", ""), Request::GetInstanceInfo);
    assert_eq!(normalize_path("/"), "/");
    assert_eq!(normalize_path("/vm/config/?a=b"), "/vm/config");
    // Only one slash is stripped.
    assert_eq!(fault("GET", "/machine-config//", "").route, ROUTE_INVALID);
}

#[test]
fn actions() {
    for (name, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let body = format!(r#"{{"action_type": "{name}"}}"#);
        assert_eq!(ok("PUT", "/actions", &body), Request::Action(action));
    }
    let bad = fault("PUT", "/actions", r#"{"action_type": "Reboot"}"#);
    assert_eq!(bad.route, "put_actions");
    assert!(bad.message.contains("Reboot"), "{}", bad.message);
    let extra = fault(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart", "x": 1}"#,
    );
    assert!(
        extra.message.contains("unknown field `x`"),
        "{}",
        extra.message
    );
}

#[test]
fn boot_source_with_nulls() {
    let request = ok(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "vmlinux", "boot_args": null, "initrd_path": null}"#,
    );
    assert_eq!(request, Request::PutBootSource(BootSource::new("vmlinux")));
    let missing = fault("PUT", "/boot-source", r#"{"boot_args": "x"}"#);
    assert_eq!(missing.route, "put_boot_source");
    assert!(
        missing
            .message
            .contains("missing field `kernel_image_path`"),
        "{}",
        missing.message
    );
}

#[test]
fn machine_config_put_and_patch() {
    let Request::PutMachineConfig(config) = ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "cpu_template": null,
            "track_dirty_pages": null, "huge_pages": "None"}"#,
    ) else {
        panic!("not a PutMachineConfig");
    };
    assert_eq!((config.vcpu_count, config.mem_size_mib), (2, 256));
    let Request::PatchMachineConfig(patch) = ok(
        "PATCH",
        "/machine-config",
        r#"{"mem_size_mib": 512, "smt": null}"#,
    ) else {
        panic!("not a PatchMachineConfig");
    };
    assert_eq!(patch.mem_size_mib, Some(512));
    let wrong_type = fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "two", "mem_size_mib": 1}"#,
    );
    assert!(
        wrong_type.message.contains("invalid type"),
        "{}",
        wrong_type.message
    );
    // A required field sent as null is refused, as Firecracker does.
    let null = fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": null, "mem_size_mib": 1}"#,
    );
    assert!(null.message.contains("null"), "{}", null.message);
}

fn patch_json() -> &'static str {
    r#"{"drive_id": "rootfs", "path_on_host": "/new", "rate_limiter": null}"#
}

#[test]
fn drives_match_the_path_id() {
    let body = r#"{"drive_id": "rootfs", "path_on_host": "/img", "is_root_device": true,
        "is_read_only": null, "partuuid": null, "cache_type": "Unsafe", "io_engine": null,
        "rate_limiter": {}}"#;
    let Request::PutDrive(drive) = ok("PUT", "/drives/rootfs", body) else {
        panic!("not a PutDrive");
    };
    assert_eq!(drive.drive_id, "rootfs");
    assert_eq!(drive.rate_limiter, Some(Box::default()));
    let mismatch = fault("PUT", "/drives/other", body);
    assert_eq!(mismatch.route, "put_drive");
    assert!(
        mismatch
            .message
            .starts_with("The id from the path does not match the id from the body!")
    );
    assert!(mismatch.message.contains("drive_id"));
    assert!(mismatch.message.contains("\"other\"") && mismatch.message.contains("\"rootfs\""));

    let Request::PatchDrive(patch) = ok("PATCH", "/drives/rootfs", patch_json()) else {
        panic!("not a PatchDrive");
    };
    assert_eq!(
        patch.path_on_host.as_deref(),
        Some(std::path::Path::new("/new"))
    );
    assert_eq!(
        fault("PATCH", "/drives/x", r#"{"drive_id": "y"}"#).route,
        "patch_drive"
    );
    for target in ["/drives", "/drives/"] {
        let missing = fault("PUT", target, body);
        assert_eq!(missing.route, "put_drive");
        assert_eq!(missing.message, "The ID cannot be empty.");
    }
    let bad_id = fault("PUT", "/drives/a-b", body);
    assert!(
        bad_id
            .message
            .contains("alphanumeric characters and underscores")
    );
    assert_eq!(fault("PATCH", "/drives", patch_json()).route, "patch_drive");
}

#[test]
fn network_interfaces_match_the_path_id() {
    let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": null,
        "rx_rate_limiter": {}, "tx_rate_limiter": null}"#;
    assert!(matches!(
        ok("PUT", "/network-interfaces/eth0", body),
        Request::PutNetworkInterface(_)
    ));
    let mismatch = fault("PUT", "/network-interfaces/eth1", body);
    assert_eq!(mismatch.route, "put_network_interface");
    assert!(mismatch.message.contains("iface_id"));
    let patch = r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": null}}"#;
    assert!(matches!(
        ok("PATCH", "/network-interfaces/eth0", patch),
        Request::PatchNetworkInterface(_)
    ));
    assert_eq!(
        fault("PATCH", "/network-interfaces/eth1", patch).route,
        "patch_network_interface"
    );
    assert_eq!(
        fault("PATCH", "/network-interfaces/", patch).message,
        "The ID cannot be empty."
    );
    assert_eq!(
        fault("PUT", "/network-interfaces", body).route,
        "put_network_interface"
    );
}

#[test]
fn vsock_entropy_logger_metrics() {
    let Request::PutVsock(vsock) = ok(
        "PUT",
        "/vsock",
        r#"{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/v.sock"}"#,
    ) else {
        panic!("not a PutVsock");
    };
    assert_eq!(vsock.vsock_id.as_deref(), Some("vsock0"));
    assert_eq!(
        ok("PUT", "/entropy", r#"{"rate_limiter": null}"#),
        Request::PutEntropy(Entropy::default())
    );
    assert_eq!(
        ok("PUT", "/entropy", "{}"),
        Request::PutEntropy(Entropy::default())
    );
    assert!(matches!(
        ok(
            "PUT",
            "/logger",
            r#"{"log_path": "/l", "level": "Info", "show_level": null}"#
        ),
        Request::PutLogger(_)
    ));
    // Same path, two methods, two requests.
    assert!(matches!(
        ok("PUT", "/metrics", r#"{"metrics_path": "/m"}"#),
        Request::PutMetrics(_)
    ));
    assert_eq!(ok("GET", "/metrics", ""), Request::GetPrometheusMetrics);
    assert_eq!(fault("PUT", "/metrics", "").route, "put_metrics");
}

#[test]
fn limiting_rate_limiters_reach_the_vmm() {
    let limiting = r#"{"bandwidth": {"size": 1000, "refill_time": 100}}"#;
    for (method, target, body) in [
        (
            "PATCH",
            "/drives/rootfs",
            format!(r#"{{"drive_id": "rootfs", "rate_limiter": {limiting}}}"#),
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            format!(r#"{{"iface_id": "eth0", "tx_rate_limiter": {limiting}}}"#),
        ),
        (
            "PUT",
            "/entropy",
            format!(r#"{{"rate_limiter": {limiting}}}"#),
        ),
    ] {
        let served = format!("{:?}", ok(method, target, &body));
        assert!(served.contains("size: 1000"), "{served}");
    }
}

#[test]
fn metrics_take_firecracker_emit_id_and_properties() {
    let Request::PutMetrics(metrics) = ok(
        "PUT",
        "/metrics",
        r#"{"metrics_path": "/m", "emit_id": true, "properties": {"customer_id": "1234"}}"#,
    ) else {
        panic!("not a PutMetrics");
    };
    assert_eq!(metrics.emit_id, Some(true));
    assert_eq!(
        metrics.line_fields("vm")["properties"]["customer_id"],
        "1234"
    );
}

#[test]
fn vm_state() {
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
        Request::SetVmState(VmState::Paused)
    );
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        Request::SetVmState(VmState::Resumed)
    );
    assert_eq!(
        fault("PATCH", "/vm", r#"{"state": "Stopped"}"#).route,
        "patch_vm"
    );
    assert_eq!(
        fault("PUT", "/vm", r#"{"state": "Paused"}"#).route,
        ROUTE_INVALID
    );
}

#[test]
fn body_faults() {
    let empty = fault("PUT", "/boot-source", "");
    assert!(
        empty.message.starts_with("Empty PUT request"),
        "{}",
        empty.message
    );
    assert!(
        fault("PATCH", "/vm", " \r\n")
            .message
            .starts_with("Empty PATCH request")
    );
    let empty_patch = fault("PATCH", "/machine-config", "{}");
    assert_eq!(
        (empty_patch.route, empty_patch.message.as_str()),
        ("patch_machine_config", "Empty PATCH request.")
    );
    let get_body = fault("GET", "/machine-config", "{}");
    assert_eq!(
        (get_body.route, get_body.message.as_str()),
        ("get_machine_config", "GET request cannot have a body.")
    );
    let not_json = fault("PUT", "/boot-source", r#"{"kernel_image_path": }"#);
    assert!(
        not_json.message.contains("deserializing"),
        "{}",
        not_json.message
    );
    assert!(
        fault("PUT", "/boot-source", "kernel=x")
            .message
            .contains("JSON object")
    );
    for not_object in ["[]", "[\"/m\"]", "null", "\"x\"", "1"] {
        let refused = fault("PUT", "/metrics", not_object);
        assert!(
            refused.message.contains("JSON object"),
            "{}",
            refused.message
        );
    }
    let trailing = fault("PUT", "/metrics", r#"{"metrics_path": "/m"} x"#);
    assert!(
        trailing.message.contains("trailing"),
        "{}",
        trailing.message
    );
}

#[test]
fn unsupported_endpoints_are_400_not_404() {
    // Every Firecracker 1.17 endpoint is served; GET on /entropy (which
    // Firecracker does not have either) is what remains unsupported.
    let refused = fault("GET", "/entropy", "");
    assert_eq!(refused.route, ROUTE_UNSUPPORTED);
    assert!(
        refused.message.contains("not available in sie yet"),
        "{}",
        refused.message
    );
}

#[test]
fn unknown_paths_and_methods_use_firecracker_wording() {
    // Firecracker names only the first segment: "PUT vm." for PUT /vm.
    for (method, path, named) in [
        ("GET", "/nope", "nope"),
        ("DELETE", "/vsock", "vsock"),
        ("POST", "/actions", "actions"),
        ("GET", "/actions", "actions"),
        ("GET", "/drives/rootfs", "drives"),
        ("PUT", "/", ""),
        ("GET", "/vm", "vm"),
        ("GET", "/vm/config/extra", "vm"),
    ] {
        let refused = fault(method, path, "");
        assert_eq!(refused.route, ROUTE_INVALID);
        assert_eq!(
            refused.message,
            format!("Invalid request method and/or path: {method} {named}.")
        );
    }
    assert_eq!(
        fault("PUT", "/vm", r#"{"state": "Paused"}"#).message,
        "Invalid request method and/or path: PUT vm."
    );
}

#[test]
fn every_route_name_has_a_stats_slot() {
    let requests = [
        ok("GET", "/", ""),
        ok("GET", "/machine-config", ""),
        ok("GET", "/vm/config", ""),
        ok("PUT", "/boot-source", r#"{"kernel_image_path": "k"}"#),
        ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 1}"#,
        ),
        ok("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#),
        ok("PUT", "/cpu-config", "{}"),
        ok(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "a", "path_on_host": "p", "is_root_device": false}"#,
        ),
        ok("PATCH", "/drives/a", r#"{"drive_id": "a"}"#),
        ok(
            "PUT",
            "/network-interfaces/a",
            r#"{"iface_id": "a", "host_dev_name": "t"}"#,
        ),
        ok("PATCH", "/network-interfaces/a", r#"{"iface_id": "a"}"#),
        ok("PUT", "/vsock", r#"{"guest_cid": 3, "uds_path": "u"}"#),
        ok("PUT", "/entropy", "{}"),
        ok("PUT", "/logger", "{}"),
        ok("PUT", "/metrics", r#"{"metrics_path": "m"}"#),
        ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
        ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ok("GET", "/metrics", ""),
        ok("GET", "/stats", ""),
        ok(
            "PUT",
            "/balloon",
            r#"{"amount_mib": 1, "deflate_on_oom": false}"#,
        ),
        ok("PATCH", "/balloon", r#"{"amount_mib": 1}"#),
        ok("GET", "/balloon", ""),
        ok("GET", "/balloon/statistics", ""),
        ok(
            "PATCH",
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 1}"#,
        ),
        ok("PATCH", "/balloon/hinting/start", ""),
        ok("GET", "/balloon/hinting/status", ""),
        ok("PATCH", "/balloon/hinting/stop", ""),
    ];
    for request in &requests {
        assert!(
            crate::stats::ROUTES.contains(&request.route()),
            "{}",
            request.route()
        );
    }
}

/// docs/api/firecracker-surface.md stays true to the router: its 38 rows,
/// each refused one answered "not available in sie yet", each other one
/// routed to the VMM (or refused for its body, never as unknown).
#[test]
fn the_firecracker_surface_table_matches_the_router() {
    let table = include_str!("../../../docs/api/firecracker-surface.md");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|line| line.starts_with("| ") && line.as_bytes()[2].is_ascii_digit())
        .map(|line| line.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(
        rows.len(),
        38,
        "Firecracker 1.17 has 38 endpoint+method pairs"
    );
    for row in rows {
        let (method, status) = (row[2], row[4]);
        let path = row[3]
            .trim_matches('`')
            .replace("{drive_id}", "d")
            .replace("{iface_id}", "eth0")
            .replace("{id}", "pm0");
        let route_name = match route(method, &path, b"") {
            Ok(Routed::Vmm(request)) => request.route(),
            Ok(Routed::Version) => ROUTE_VERSION,
            Err(fault) => fault.route,
        };
        match status {
            "refused" => assert_eq!(route_name, ROUTE_UNSUPPORTED, "{method} {path}"),
            "served" | "partly" => assert!(
                ![ROUTE_UNSUPPORTED, ROUTE_INVALID].contains(&route_name),
                "{method} {path} is {status} in the table but routed as {route_name}"
            ),
            other => panic!("{method} {path}: unknown status {other:?}"),
        }
    }
}

#[test]
fn snapshot_requests_route_with_firecracker_shapes_and_refuse_what_sie_lacks() {
    let create = br#"{"snapshot_type": "Full", "snapshot_path": "s", "mem_file_path": "m"}"#;
    assert!(matches!(
        route("PUT", "/snapshot/create", create),
        Ok(Routed::Vmm(Request::CreateSnapshot(_)))
    ));
    let load = br#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}, "resume_vm": true}"#;
    assert!(matches!(
        route("PUT", "/snapshot/load", load),
        Ok(Routed::Vmm(Request::LoadSnapshot(_)))
    ));
    // A Diff reaches the VMM, which knows whether the VM tracks dirty pages.
    let diff = br#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#;
    assert!(matches!(
        route("PUT", "/snapshot/create", diff),
        Ok(Routed::Vmm(Request::CreateSnapshot(_)))
    ));
    for backend in ["Uffd", "Lazy"] {
        let load = format!(
            r#"{{"snapshot_path": "s", "mem_backend": {{"backend_type": "{backend}", "backend_path": "u"}}}}"#
        );
        assert!(
            matches!(
                route("PUT", "/snapshot/load", load.as_bytes()),
                Ok(Routed::Vmm(Request::LoadSnapshot(_)))
            ),
            "{backend}"
        );
    }
    let no_path =
        br#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": ""}}"#;
    assert!(
        route("PUT", "/snapshot/load", no_path)
            .unwrap_err()
            .message
            .contains("backend_path is empty")
    );
    let unknown = br#"{"snapshot_path": "s", "mem_file_path": "m", "surprise": 1}"#;
    assert!(route("PUT", "/snapshot/load", unknown).is_err());
}

#[test]
fn mmds_routes_take_any_json_and_a_checked_config() {
    assert_eq!(ok("GET", "/mmds", ""), Request::GetMmds);
    let data = r#"{"latest": {"meta-data": {"id": "i-1"}}}"#;
    assert_eq!(
        ok("PUT", "/mmds", data),
        Request::PutMmds(serde_json::from_str(data).unwrap())
    );
    assert_eq!(
        ok("PATCH", "/mmds", r#"{"a": null}"#),
        Request::PatchMmds(serde_json::json!({"a": null}))
    );
    let Request::PutMmdsConfig(config) = ok(
        "PUT",
        "/mmds/config",
        r#"{"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": true}"#,
    ) else {
        panic!("not a PutMmdsConfig");
    };
    assert_eq!(config.version, sie_config::MmdsVersion::V2);
    assert_eq!(config.ipv4(), std::net::Ipv4Addr::new(169, 254, 170, 2));
    assert!(config.imds_compat);
    assert!(
        fault("PUT", "/mmds", "")
            .message
            .contains("Empty PUT request")
    );
    assert!(
        fault("PUT", "/mmds", "{nope")
            .message
            .contains("deserializing")
    );
    let unknown = fault(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces": [], "x": 1}"#,
    );
    assert_eq!(unknown.route, "put_mmds_config");
    assert!(
        unknown.message.contains("unknown field"),
        "{}",
        unknown.message
    );
    assert_eq!(fault("DELETE", "/mmds", "").route, ROUTE_INVALID);
    assert_eq!(fault("PUT", "/mmds/other", "{}").route, ROUTE_INVALID);
}

#[test]
fn serial_and_vm_dump() {
    assert_eq!(
        ok(
            "PUT",
            "/serial",
            r#"{"serial_out_path": "/tmp/serial.log"}"#
        ),
        Request::PutSerial(SerialConfig {
            serial_out_path: Some("/tmp/serial.log".into()),
            ..SerialConfig::default()
        })
    );
    let limited = fault(
        "PUT",
        "/serial",
        r#"{"serial_out_path": "/tmp/s", "rate_limiter": {"size": 1, "refill_time": 1}}"#,
    );
    assert_eq!(limited.route, "put_serial");
    assert!(
        limited.message.contains("rate_limiter"),
        "{}",
        limited.message
    );
    assert_eq!(
        ok("PUT", "/vm/dump", r#"{"path": "/tmp/vm.core"}"#),
        Request::DumpCore(VmDump {
            path: "/tmp/vm.core".into()
        })
    );
    assert_eq!(
        fault("PUT", "/vm/dump", r#"{"path": ""}"#).route,
        "put_vm_dump"
    );
    assert_eq!(fault("PUT", "/vm/dump", r#"{}"#).route, "put_vm_dump");
}

#[path = "route_device_tests.rs"]
mod devices;
