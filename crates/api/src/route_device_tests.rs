//! Routes of the device and CPU resources Firecracker 1.17 added (custom
//! CPU templates, pmem, memory hotplug, the balloon) and sie's VFIO
//! extension: their bodies and their faults.

use super::*;

#[test]
fn cpu_config_takes_firecracker_custom_templates() {
    let body = r#"{"kvm_capabilities": ["!56"],
        "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
            "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]}],
        "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]}"#;
    match ok("PUT", "/cpu-config", body) {
        Request::PutCpuConfig(cpu) => {
            assert_eq!(cpu.cpuid_modifiers[0].leaf, 1);
            assert_eq!(cpu.msr_modifiers[0].addr, 0x10a);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ok("PUT", "/cpu-config", "{}"),
        Request::PutCpuConfig(sie_config::CpuConfig::default())
    );
    let bad_bitmap = fault(
        "PUT",
        "/cpu-config",
        r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b012"}]}"#,
    );
    assert!(
        bad_bitmap.message.contains("msr_modifiers[0].bitmap"),
        "{}",
        bad_bitmap.message
    );
    let arm = fault(
        "PUT",
        "/cpu-config",
        r#"{"reg_modifiers": [{"addr": "0x603000000013c020", "bitmap": "0b1"}]}"#,
    );
    assert_eq!(arm.route, "put_cpu_config");
    assert!(arm.message.contains("aarch64"), "{}", arm.message);
}

#[test]
fn pmem_routes_take_firecracker_bodies_and_refuse_a_limiter() {
    let put = br#"{"id": "pm0", "path_on_host": "/f", "root_device": false, "read_only": true, "rate_limiter": {}}"#;
    assert!(matches!(
        route("PUT", "/pmem/pm0", put),
        Ok(Routed::Vmm(Request::PutPmem(p))) if p.read_only && p.id == "pm0"
    ));
    let other = fault("PUT", "/pmem/pm1", std::str::from_utf8(put).unwrap());
    assert!(
        other.message.contains("does not match"),
        "{}",
        other.message
    );
    assert!(matches!(
        route("PATCH", "/pmem/pm0", br#"{"id": "pm0"}"#),
        Ok(Routed::Vmm(Request::PatchPmem(_)))
    ));
    let limited = fault(
        "PATCH",
        "/pmem/pm0",
        r#"{"id": "pm0", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#,
    );
    assert_eq!(limited.route, "patch_pmem");
    assert!(
        limited.message.contains("rate_limiter is not supported"),
        "{}",
        limited.message
    );
    let empty = fault("PUT", "/pmem/pm0", r#"{"id": "pm0", "path_on_host": ""}"#);
    assert_eq!(empty.message, "pmem: path_on_host is empty");
}

#[test]
fn hotplug_routes_take_firecracker_bodies() {
    assert!(matches!(
        route("PUT", "/hotplug/memory", br#"{"total_size_mib": 1024, "block_size_mib": 2, "slot_size_mib": 128}"#),
        Ok(Routed::Vmm(Request::PutMemoryHotplug(h))) if h.total_size_mib == 1024
    ));
    let bad = fault("PUT", "/hotplug/memory", r#"{"total_size_mib": 100}"#);
    assert!(
        bad.message.contains("total_size_mib 100"),
        "{}",
        bad.message
    );
    assert!(matches!(
        route("PATCH", "/hotplug/memory", br#"{"requested_size_mib": 512}"#),
        Ok(Routed::Vmm(Request::PatchMemoryHotplug(p))) if p.requested_size_mib == 512
    ));
    assert!(matches!(
        route("GET", "/hotplug/memory", b""),
        Ok(Routed::Vmm(Request::GetMemoryHotplug))
    ));
}

#[test]
fn balloon_endpoints_take_firecracker_bodies() {
    let put = ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1,
            "free_page_reporting": true}"#,
    );
    let Request::PutBalloon(balloon) = put else {
        panic!("{put:?}")
    };
    assert_eq!(
        (balloon.amount_mib, balloon.stats_polling_interval_s),
        (64, 1)
    );
    assert!(balloon.free_page_reporting && !balloon.free_page_hinting);
    assert_eq!(
        ok("PATCH", "/balloon", r#"{"amount_mib": 0}"#),
        Request::PatchBalloon(sie_config::BalloonUpdate { amount_mib: 0 })
    );
    assert_eq!(ok("GET", "/balloon", ""), Request::GetBalloon);
    assert_eq!(
        ok("GET", "/balloon/statistics", ""),
        Request::GetBalloonStats
    );
    assert_eq!(
        ok(
            "PATCH",
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 5}"#
        ),
        Request::PatchBalloonStats(sie_config::BalloonStatsUpdate {
            stats_polling_interval_s: 5
        })
    );
    // The start body is optional; acknowledge_on_stop defaults to true.
    for body in ["", "{}"] {
        assert_eq!(
            ok("PATCH", "/balloon/hinting/start", body),
            Request::StartBalloonHinting(BalloonStartCmd {
                acknowledge_on_stop: true
            })
        );
    }
    assert_eq!(
        ok(
            "PATCH",
            "/balloon/hinting/start",
            r#"{"acknowledge_on_stop": false}"#
        ),
        Request::StartBalloonHinting(BalloonStartCmd {
            acknowledge_on_stop: false
        })
    );
    assert_eq!(
        ok("GET", "/balloon/hinting/status", ""),
        Request::GetBalloonHinting
    );
    assert_eq!(
        ok("PATCH", "/balloon/hinting/stop", ""),
        Request::StopBalloonHinting
    );
    // Firecracker's field names only, and the right types.
    assert_eq!(
        fault("PATCH", "/balloon", r#"{"amount": 1}"#).route,
        "patch_balloon"
    );
    assert_eq!(
        fault(
            "PUT",
            "/balloon",
            r#"{"amount_mib": -1, "deflate_on_oom": false}"#
        )
        .route,
        "put_balloon"
    );
    assert_eq!(fault("DELETE", "/balloon", "").route, ROUTE_INVALID);
}

#[test]
fn vfio_devices_are_put_by_id() {
    let path = "/sys/bus/pci/devices/0000:00:03.0";
    assert_eq!(
        ok(
            "PUT",
            "/vfio/edu",
            &format!(r#"{{"id": "edu", "path": "{path}"}}"#)
        ),
        Request::PutVfio(sie_config::VfioDevice {
            id: "edu".into(),
            path: path.into()
        })
    );
    let mismatch = fault(
        "PUT",
        "/vfio/a",
        &format!(r#"{{"id": "b", "path": "{path}"}}"#),
    );
    assert_eq!(mismatch.route, "put_vfio");
    assert!(mismatch.message.contains("does not match"));
    let relative = fault("PUT", "/vfio/a", r#"{"id": "a", "path": "0000:00:03.0"}"#);
    assert!(
        relative.message.contains("absolute sysfs path"),
        "{}",
        relative.message
    );
    assert!(
        fault("PUT", "/vfio/a", r#"{"id": "a"}"#)
            .message
            .contains("path")
    );
    assert_eq!(fault("PUT", "/vfio", "{}").route, "put_vfio");
}
