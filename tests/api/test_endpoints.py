"""Every endpoint of the sie API: success, failure, and the before/after-boot rules.

Fault messages are checked loosely: status 400, a fault_message, and a key word
(usually the name of the field that was wrong).
"""

import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import FIRECRACKER_API_VERSION, boot

MACHINE = {"vcpu_count": 2, "mem_size_mib": 256}
DEFAULT_PAYLOAD_LIMIT = 51200


@pytest.fixture
def files(vmm):
    """A few host files in the VMM's directory: a kernel stand-in and an empty disk."""
    kernel = vmm.dir / "vmlinux"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    disk = vmm.dir / "empty.ext4"
    disk.write_bytes(b"")
    return {"kernel": str(kernel), "disk": str(disk), "dir": vmm.dir}


def fault_names(reply, *words):
    msg = reply.fault
    assert any(w in msg for w in words), f"fault_message {msg!r} names none of {words}"


# -- instance --------------------------------------------------------------

def test_instance_info(api):
    r = api.get("/")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    info = r.json()
    assert info["id"] == "test"
    assert info["state"] == "Not started"
    assert info["app_name"] == "Firecracker"
    # Clients read it as Firecracker's version, as they do /version.
    assert info["vmm_version"] == FIRECRACKER_API_VERSION


def test_version(api):
    r = api.get("/version")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"firecracker_version": FIRECRACKER_API_VERSION}


def test_no_host_header_needed(vmm):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(str(vmm.sock))
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


# -- machine-config --------------------------------------------------------

def test_machine_config_defaults(api):
    cfg = api.get("/machine-config").json()
    assert isinstance(cfg["vcpu_count"], int) and cfg["vcpu_count"] >= 1
    assert isinstance(cfg["mem_size_mib"], int) and cfg["mem_size_mib"] >= 1


def test_machine_config_put_then_patch(api):
    api.ok("PUT", "/machine-config", MACHINE)
    assert api.get("/machine-config").json()["vcpu_count"] == 2
    api.ok("PATCH", "/machine-config", {"mem_size_mib": 512})
    cfg = api.get("/machine-config").json()
    assert (cfg["vcpu_count"], cfg["mem_size_mib"]) == (2, 512)
    # Firecracker refuses an empty PATCH ("Empty PATCH request.").
    fault_names(api.request("PATCH", "/machine-config", {}), "Empty PATCH")


def test_machine_config_optional_fields(api):
    api.ok("PUT", "/machine-config", {**MACHINE, "smt": False, "track_dirty_pages": False, "huge_pages": "None"})
    api.ok("PUT", "/machine-config", {**MACHINE, "smt": None, "track_dirty_pages": None, "huge_pages": None})
    api.ok("PUT", "/machine-config", {**MACHINE, "track_dirty_pages": True})
    assert api.get("/machine-config").json()["track_dirty_pages"] is True


@pytest.mark.parametrize("vcpus", [0, 255, 256, -1])
def test_machine_config_vcpu_range(api, vcpus):
    fault_names(api.put("/machine-config", {"vcpu_count": vcpus, "mem_size_mib": 128}), "vcpu_count")


def test_machine_config_vcpu_limits_accepted(api):
    api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    api.ok("PUT", "/machine-config", {"vcpu_count": 254, "mem_size_mib": 128})


@pytest.mark.parametrize(
    "body, field",
    [
        ({"vcpu_count": 1}, "mem_size_mib"),
        ({"mem_size_mib": 128}, "vcpu_count"),
        ({**MACHINE, "bogus_field": 1}, "bogus_field"),
        ({"vcpu_count": "two", "mem_size_mib": 128}, "vcpu_count"),
        ({"vcpu_count": 1, "mem_size_mib": 128.5}, "mem_size_mib"),
        ({**MACHINE, "smt": "yes"}, "smt"),
        ({**MACHINE, "huge_pages": "1G"}, "huge_pages"),
        ({**MACHINE, "mem_size_mib": 129, "huge_pages": "2M"}, "huge_pages"),
    ],
)
def test_machine_config_put_bad(api, body, field):
    fault_names(api.put("/machine-config", body), field)
    assert api.get("/machine-config").json()["vcpu_count"] != 2  # nothing applied


@pytest.mark.parametrize(
    "body, field",
    [({"bogus_field": 1}, "bogus_field"), ({"vcpu_count": 0}, "vcpu_count"), ({"mem_size_mib": "lots"}, "mem_size_mib")],
)
def test_machine_config_patch_bad(api, body, field):
    fault_names(api.patch("/machine-config", body), field)


# -- CPU templates and nesting ---------------------------------------------

def ext1_ecx(bitmap):
    """A cpu-config with one modifier: leaf 0x80000001 ECX."""
    return {"cpuid_modifiers": [{"leaf": "0x80000001", "subleaf": "0x0", "flags": 0,
                                 "modifiers": [{"register": "ecx", "bitmap": bitmap}]}]}


def host_vendor():
    cpuinfo = open("/proc/cpuinfo").read()
    return "Intel" if "GenuineIntel" in cpuinfo else "Amd" if "AuthenticAMD" in cpuinfo else None


def test_cpu_config_custom_template(api):
    # Hiding a feature (PREFETCHW) is possible on any host.
    api.ok("PUT", "/cpu-config", {**ext1_ecx("0b0_xxxx_xxxx"), "kvm_capabilities": ["!56"], "msr_modifiers": []})
    cfg = api.get("/vm/config").json()
    leaf = cfg["cpu-config"]["cpuid_modifiers"][0]
    assert (leaf["leaf"], leaf["subleaf"]) == ("0x80000001", "0x0")
    assert leaf["modifiers"][0] == {"register": "ecx", "bitmap": "0b" + "x" * 23 + "0" + "x" * 8}
    assert cfg["cpu-config"]["kvm_capabilities"] == ["!56"]
    # A static template configured later replaces it (and the other way round).
    vendor = host_vendor()
    if vendor:
        template = "T2" if vendor == "Intel" else "T2A"
        r = api.put("/machine-config", {**MACHINE, "cpu_template": template})
        if r.status == 204:
            cfg = api.get("/vm/config").json()
            assert cfg["cpu-config"] is None
            assert cfg["machine-config"]["cpu_template"] == template
            api.ok("PUT", "/cpu-config", ext1_ecx("0b0_xxxx_xxxx"))
            assert "cpu_template" not in api.get("/machine-config").json()
        else:
            # A host lacking a feature the template states: named by bit.
            fault_names(r, "forced to 1", "still shows")


@pytest.mark.parametrize(
    "body, words",
    [
        ({"reg_modifiers": [{"addr": "0x603000000013c020", "bitmap": "0b1"}]}, ("aarch64",)),
        ({"vcpu_features": [{"index": 0, "bitmap": "0b1100000"}]}, ("aarch64",)),
        (ext1_ecx("0b012"), ("bitmap",)),
        (ext1_ecx("0b" + "0" * 33), ("more than 32 bits",)),
        ({"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b" + "x" * 65}]}, ("more than 64 bits",)),
        ({"msr_modifiers": [{"addr": "10a", "bitmap": "0b1"}]}, ("10a",)),
        ({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                               "modifiers": [{"register": "ekx", "bitmap": "0b1"}]}]}, ("ekx",)),
        ({"cpu_modifiers": []}, ("cpu_modifiers",)),
        # Bit 31 of 0x80000001 ECX is reserved: no host has it.
        (ext1_ecx("0b1" + "x" * 31), ("0x80000001", "ECX bit 31", "forced to 1")),
        ({"cpuid_modifiers": [{"leaf": "0x8fffffff", "subleaf": "0x0", "flags": 0,
                               "modifiers": [{"register": "eax", "bitmap": "0b0"}]}]}, ("0x8fffffff",)),
        ({"kvm_capabilities": ["999999"]}, ("999999",)),
    ],
)
def test_cpu_config_bad(api, body, words):
    fault_names(api.put("/cpu-config", body), *words)
    assert api.get("/vm/config").json()["cpu-config"] is None  # nothing applied


def test_static_cpu_templates(api):
    fault_names(api.put("/machine-config", {**MACHINE, "cpu_template": "T3"}), "cpu_template")
    fault_names(api.put("/machine-config", {**MACHINE, "cpu_template": "V1N1"}), "aarch64")
    fault_names(api.put("/machine-config", {**MACHINE, "cpu_template": "T2CL"}), "T2CL")
    api.ok("PUT", "/machine-config", {**MACHINE, "cpu_template": "None"})
    vendor = host_vendor()
    if vendor:
        other, other_vendor = ("T2A", "Amd") if vendor == "Intel" else ("T2", "Intel")
        r = api.put("/machine-config", {**MACHINE, "cpu_template": other})
        fault_names(r, f"is for {other_vendor} CPUs; this host's CPU is {vendor}")


def test_nested(api):
    assert api.get("/vm/config").json()["machine-config"]["nested"] is False
    r = api.put("/machine-config", {**MACHINE, "nested": True})
    if r.status == 204:
        assert api.get("/vm/config").json()["machine-config"]["nested"] is True
        assert api.get("/machine-config").json()["nested"] is True
    else:
        fault_names(r, "nested needs a host KVM")
        assert api.get("/vm/config").json()["machine-config"]["nested"] is False
    fault_names(api.put("/machine-config", {**MACHINE, "nested": "yes"}), "nested")
    api.ok("PATCH", "/machine-config", {"nested": False})


def test_cpu_config_after_boot(booted):
    assert booted.api.put("/cpu-config", {}).fault


# -- boot-source -----------------------------------------------------------

def test_boot_source(api, files):
    api.ok("PUT", "/boot-source", {"kernel_image_path": files["kernel"]})
    api.ok("PUT", "/boot-source", {"kernel_image_path": files["kernel"], "boot_args": "console=ttyS0", "initrd_path": None})


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "kernel_image_path"),
        ({"kernel_image_path": 7}, "kernel_image_path"),
        ({"kernel_image_path": "vmlinux", "boot_args": ["a"]}, "boot_args"),
        ({"kernel_image_path": "vmlinux", "kernel_args": "x"}, "kernel_args"),
    ],
)
def test_boot_source_bad(api, body, field):
    fault_names(api.put("/boot-source", body), field)


def test_missing_kernel_is_refused(api):
    """A kernel that does not exist is refused at PUT or at InstanceStart."""
    r = api.put("/boot-source", {"kernel_image_path": "/nonexistent/vmlinux"})
    if r.status == 204:
        r = api.put("/actions", {"action_type": "InstanceStart"})
    assert r.fault
    assert api.state() == "Not started"


# -- actions ---------------------------------------------------------------

def test_start_without_boot_source(api):
    assert api.put("/actions", {"action_type": "InstanceStart"}).fault
    assert api.state() == "Not started"


@pytest.mark.parametrize(
    "body, words",
    [
        ({"action_type": "Reboot"}, ("Reboot", "action_type")),
        ({}, ("action_type",)),
        ({"action_type": "FlushMetrics", "extra": 1}, ("extra",)),
    ],
)
def test_action_bad(api, body, words):
    fault_names(api.put("/actions", body), *words)


def test_ctrl_alt_del_before_boot(api):
    assert api.put("/actions", {"action_type": "SendCtrlAltDel"}).fault
    assert api.state() == "Not started"


def test_metrics_and_flush(api, files):
    path = files["dir"] / "metrics.json"
    api.ok("PUT", "/metrics", {"metrics_path": str(path)})
    api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    assert path.exists()


def test_metrics_id_and_properties(api, files):
    """Firecracker's emit_id and properties appear on every metrics line."""
    path = files["dir"] / "metrics.json"
    api.ok("PUT", "/metrics", {"metrics_path": str(path), "emit_id": True, "properties": {"customer_id": "1234"}})
    api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    line = json.loads(path.read_text().splitlines()[-1])
    assert line["id"] == "test"
    assert line["properties"] == {"customer_id": "1234"}


def test_metrics_without_id_or_properties(api, files):
    path = files["dir"] / "metrics.json"
    api.ok("PUT", "/metrics", {"metrics_path": str(path), "emit_id": False})
    api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    line = json.loads(path.read_text().splitlines()[-1])
    assert "id" not in line and "properties" not in line


def test_metrics_bad(api):
    fault_names(api.put("/metrics", {}), "metrics_path")
    fault_names(api.put("/metrics", {"metrics_path": "m", "format": "json"}), "format")
    fault_names(api.put("/metrics", {"metrics_path": "m", "properties": {"n": 1}}), "properties")


# -- devices ---------------------------------------------------------------

def test_drive(api, files):
    api.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": files["disk"], "is_root_device": True})
    api.ok(
        "PUT",
        "/drives/data_1",
        {
            "drive_id": "data_1",
            "path_on_host": files["disk"],
            "is_root_device": False,
            "is_read_only": True,
            "partuuid": None,
            "cache_type": "Writeback",
            "io_engine": "Sync",
            "rate_limiter": {},
        },
    )
    # Empty limiters, as clients send them when they want no limit.
    for limiter in [None, {"bandwidth": None, "ops": None}, {"ops": {"size": 0, "refill_time": 0}}]:
        api.ok("PUT", "/drives/data_2", {"drive_id": "data_2", "path_on_host": files["disk"], "is_root_device": False, "rate_limiter": limiter})


LIMITER = {"bandwidth": {"size": 1048576, "refill_time": 1000}, "ops": None}


@pytest.mark.parametrize(
    "sent, shown",
    [
        ({}, ("Unsafe", "Sync")),
        ({"cache_type": None, "io_engine": None}, ("Unsafe", "Sync")),
        ({"cache_type": "Unsafe", "io_engine": "Async"}, ("Unsafe", "Async")),
        ({"cache_type": "Writeback", "io_engine": "Sync"}, ("Writeback", "Sync")),
    ],
)
def test_drive_cache_type_and_io_engine(api, files, sent, shown):
    """Every cache_type and io_engine Firecracker takes is honoured; GET /vm/config shows
    the ones in effect (Firecracker's defaults when absent)."""
    api.ok("PUT", "/drives/d", {"drive_id": "d", "path_on_host": files["disk"], "is_root_device": False, **sent})
    drive = api.get("/vm/config").json()["drives"][0]
    assert (drive["cache_type"], drive["io_engine"]) == shown


def test_drive_rate_limiter(api, files):
    """Rate limiters are enforced, so any Firecracker accepts is accepted and kept."""
    api.ok("PUT", "/drives/d", {"drive_id": "d", "path_on_host": files["disk"], "is_root_device": False, "rate_limiter": LIMITER})
    assert api.get("/vm/config").json()["drives"][0]["rate_limiter"]["bandwidth"] == LIMITER["bandwidth"]


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/drives/d", {"drive_id": "d", "path_on_host": "x"}, ("is_root_device",)),
        ("/drives/d", {"drive_id": "d", "is_root_device": False}, ("path_on_host",)),
        ("/drives/d", {"drive_id": "d", "path_on_host": "x", "is_root_device": "no"}, ("is_root_device",)),
        ("/drives/d", {"drive_id": "d", "path_on_host": "x", "is_root_device": False, "size": 1}, ("size",)),
        ("/drives/d", {"drive_id": "other", "path_on_host": "x", "is_root_device": False}, ("drive_id", "other")),
        ("/drives/bad-id", {"drive_id": "bad-id", "path_on_host": "x", "is_root_device": False}, ("bad-id", "drive_id")),
        ("/drives/d", {"drive_id": "d", "path_on_host": "x", "is_root_device": False, "cache_type": "Fast"}, ("cache_type", "Fast")),
    ],
)
def test_drive_bad(api, path, body, words):
    fault_names(api.put(path, body), *words)


def test_pmem(api, files):
    """Firecracker's pmem bodies are taken before boot and shown in GET /vm/config."""
    api.ok("PUT", "/pmem/pm0", {"id": "pm0", "path_on_host": files["disk"]})
    api.ok(
        "PUT",
        "/pmem/pm1",
        {"id": "pm1", "path_on_host": files["disk"], "root_device": True, "read_only": None, "rate_limiter": {}},
    )
    pmem = api.get("/vm/config").json()["pmem"]
    assert [(p["id"], p["root_device"], p["read_only"]) for p in pmem] == [("pm0", False, False), ("pm1", True, False)]
    # A second root, among drives and pmem, is refused in one line.
    fault_names(api.put("/pmem/pm2", {"id": "pm2", "path_on_host": files["disk"], "root_device": True}), "root device")
    api.ok("PUT", "/drives/d", {"drive_id": "d", "path_on_host": files["disk"], "is_root_device": False})
    # PATCH is after boot only.
    fault_names(api.patch("/pmem/pm0", {"id": "pm0"}), "start")


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/pmem/pm0", {"id": "pm0"}, ("path_on_host",)),
        ("/pmem/pm0", {"id": "other", "path_on_host": "x"}, ("id", "other")),
        ("/pmem/pm0", {"id": "pm0", "path_on_host": ""}, ("path_on_host",)),
        ("/pmem/pm0", {"id": "pm0", "path_on_host": "x", "size": 1}, ("size",)),
        ("/pmem/pm0", {"id": "pm0", "path_on_host": "x", "rate_limiter": LIMITER}, ("rate_limiter",)),
    ],
)
def test_pmem_bad(api, path, body, words):
    fault_names(api.put(path, body), *words)


def test_memory_hotplug(api):
    """Firecracker's hotplug bodies before boot; GET shows the configuration, nothing plugged."""
    fault_names(api.get("/hotplug/memory"), "hotplug")
    api.ok("PUT", "/hotplug/memory", {"total_size_mib": 1024})
    assert api.get("/hotplug/memory").json() == {
        "total_size_mib": 1024, "slot_size_mib": 128, "block_size_mib": 2,
        "plugged_size_mib": 0, "requested_size_mib": 0,
    }
    api.ok("PUT", "/hotplug/memory", {"total_size_mib": 256, "slot_size_mib": None, "block_size_mib": 4})
    assert api.get("/vm/config").json()["memory-hotplug"]["block_size_mib"] == 4
    # PATCH is after boot only.
    fault_names(api.patch("/hotplug/memory", {"requested_size_mib": 128}), "start")


@pytest.mark.parametrize(
    "body, words",
    [
        ({"total_size_mib": 1000}, ("total_size_mib",)),
        ({"total_size_mib": 1024, "block_size_mib": 3}, ("block_size_mib",)),
        ({"total_size_mib": 1024, "slot_size_mib": 64}, ("slot_size_mib",)),
        ({"total_size_mib": 1024, "extra": 1}, ("extra",)),
    ],
)
def test_memory_hotplug_bad(api, body, words):
    fault_names(api.put("/hotplug/memory", body), *words)


def test_network_interface(api):
    # Assumes the TAP device is opened at InstanceStart, not at PUT.
    api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"})
    api.ok(
        "PUT",
        "/network-interfaces/eth1",
        {"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:ac:10:00:02", "rx_rate_limiter": {}, "tx_rate_limiter": None},
    )
    api.ok("PUT", "/network-interfaces/eth2", {"iface_id": "eth2", "host_dev_name": "tap2", "mtu": 9000})
    assert api.get("/vm/config").json()["network-interfaces"][2]["mtu"] == 9000


@pytest.mark.parametrize("field", ["rx_rate_limiter", "tx_rate_limiter"])
def test_network_interface_rate_limiter(api, field):
    api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0", field: LIMITER})
    assert api.get("/vm/config").json()["network-interfaces"][0][field]["bandwidth"] == LIMITER["bandwidth"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"iface_id": "eth0"}, "host_dev_name"),
        ({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "not-a-mac"}, "guest_mac"),
        ({"iface_id": "eth0", "host_dev_name": "t" * 16}, "host_dev_name"),
        ({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67}, "mtu"),
        ({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 65536}, "mtu"),
        ({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": "big"}, "mtu"),
    ],
)
def test_network_interface_bad(api, body, field):
    fault_names(api.put("/network-interfaces/eth0", body), field)


def test_vsock(api, files):
    api.ok("PUT", "/vsock", {"guest_cid": 3, "uds_path": str(files["dir"] / "v.sock")})
    api.ok("PUT", "/vsock", {"guest_cid": 4, "uds_path": str(files["dir"] / "v.sock"), "vsock_id": "vsock0"})


@pytest.mark.parametrize(
    "body, field",
    [({"guest_cid": 2, "uds_path": "v.sock"}, "guest_cid"), ({"guest_cid": 3}, "uds_path"), ({"guest_cid": "3", "uds_path": "v.sock"}, "guest_cid")],
)
def test_vsock_bad(api, body, field):
    fault_names(api.put("/vsock", body), field)


def test_entropy(api):
    api.ok("PUT", "/entropy", {})
    api.ok("PUT", "/entropy", {"rate_limiter": {}})
    api.ok("PUT", "/entropy", {"rate_limiter": None})
    api.ok("PUT", "/entropy", {"rate_limiter": {"bandwidth": None, "ops": None}})
    fault_names(api.put("/entropy", {"rate": 1}), "rate")
    api.ok("PUT", "/entropy", {"rate_limiter": LIMITER})
    assert api.get("/vm/config").json()["entropy"]["rate_limiter"]["bandwidth"] == LIMITER["bandwidth"]


# -- logger ----------------------------------------------------------------

def test_logger(api, files):
    log = files["dir"] / "sie.log"
    api.ok("PUT", "/logger", {"log_path": str(log), "level": "Info", "show_level": True, "show_log_origin": False})
    api.ok("PUT", "/logger", {"level": "Debug", "module": None})


@pytest.mark.parametrize("body, field", [({"level": "Loud"}, "level"), ({"show_level": "yes"}, "show_level"), ({"colour": True}, "colour")])
def test_logger_bad(api, body, field):
    fault_names(api.put("/logger", body), field)


def test_logger_fifo_nobody_reads(vmm):
    """Log and metrics FIFOs that are never read must not block the API."""
    log, metrics = vmm.dir / "log.fifo", vmm.dir / "metrics.fifo"
    os.mkfifo(log)
    os.mkfifo(metrics)
    start = time.monotonic()
    vmm.api.ok("PUT", "/logger", {"log_path": str(log), "level": "Trace"})
    vmm.api.ok("PUT", "/metrics", {"metrics_path": str(metrics)})
    for _ in range(200):  # far more than a 64 KiB pipe holds
        vmm.api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
        assert vmm.api.get("/machine-config").status == 200
    assert time.monotonic() - start < 20
    vmm.assert_alive()


# -- whole config and extensions -------------------------------------------

def test_vm_config(api, files):
    api.ok("PUT", "/machine-config", MACHINE)
    api.ok("PUT", "/boot-source", {"kernel_image_path": files["kernel"], "boot_args": "console=ttyS0"})
    api.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": files["disk"], "is_root_device": True})
    r = api.get("/vm/config")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    cfg = r.json()
    assert cfg["boot-source"]["kernel_image_path"] == files["kernel"]
    assert cfg["boot-source"]["boot_args"] == "console=ttyS0"
    assert (cfg["machine-config"]["vcpu_count"], cfg["machine-config"]["mem_size_mib"]) == (2, 256)
    assert [d["drive_id"] for d in cfg["drives"]] == ["rootfs"]


def test_ext_prometheus_metrics(api):
    r = api.get("/metrics")
    assert r.status == 200
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    samples = [l for l in r.body.decode().splitlines() if l and not l.startswith("#")]
    assert samples, "no samples"
    for line in samples:
        assert re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? \S+( \d+)?$", line), line


def test_serial(api, files):
    out = files["dir"] / "serial.log"
    api.ok("PUT", "/serial", {"serial_out_path": str(out)})
    api.ok("PUT", "/serial", {"serial_out_path": str(out), "rate_limiter": None})
    assert api.get("/vm/config").json()["serial"]["serial_out_path"] == str(out)
    fault_names(api.put("/serial", {"serial_out_path": str(out), "rate_limiter": {"bandwidth": LIMITER["bandwidth"]}}), "rate_limiter")
    fault_names(api.put("/serial", {"serial_out_path": str(out), "colour": True}), "colour")
    fault_names(api.put("/serial", {"console_buffer_bytes": 0}), "console_buffer_bytes")


def test_serial_output_of_a_booted_guest(vmm, kernel):
    out = vmm.dir / "serial.log"
    vmm.api.ok("PUT", "/serial", {"serial_out_path": str(out)})
    boot(vmm.api, kernel)
    deadline = time.monotonic() + 20
    while b"spinning" not in (out.read_bytes() if out.exists() else b""):
        assert time.monotonic() < deadline, "the guest's output never reached serial_out_path"
        time.sleep(0.05)


def test_ext_vm_dump(vmm, kernel):
    """sie only: PUT /vm/dump writes an ELF core and the guest runs on."""
    fault_names(vmm.api.put("/vm/dump", {"path": str(vmm.dir / "early.core")}), "before starting")
    fault_names(vmm.api.put("/vm/dump", {}), "path")
    boot(vmm.api, kernel)
    core = vmm.dir / "vm.core"
    vmm.api.ok("PUT", "/vm/dump", {"path": str(core)})
    head = core.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[16] == 4, "an ELF core file (ET_CORE)"
    assert vmm.api.state() == "Running"
    fault_names(vmm.api.put("/vm/dump", {"path": str(vmm.dir / "no" / "dir" / "vm.core")}), "core file")


def test_ext_stats(api):
    r = api.get("/stats")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    assert isinstance(r.json(), dict)


# -- MMDS: the metadata store and its configuration -------------------------

def test_mmds_store_put_patch_get(api):
    assert api.get("/mmds").json() == {}
    assert "not initialized" in api.request("PATCH", "/mmds", {"a": "1"}).fault
    api.ok("PUT", "/mmds", {"latest": {"meta-data": {"ami-id": "ami-1", "gone": "x"}}})
    api.ok("PATCH", "/mmds", {"latest": {"meta-data": {"ami-id": "ami-2", "gone": None}}, "user-data": "u"})
    assert api.get("/mmds").json() == {"latest": {"meta-data": {"ami-id": "ami-2"}}, "user-data": "u"}
    # Any JSON value, as in Firecracker.
    api.ok("PUT", "/mmds", ["a", 1])
    assert api.get("/mmds").json() == ["a", 1]


def test_mmds_store_size_limit(start_vmm):
    api = start_vmm("--mmds-size-limit", "64").api
    api.ok("PUT", "/mmds", {"k": "v" * 40})
    # 413, as Firecracker answers an update over the limit.
    for r in [api.put("/mmds", {"k": "v" * 80}), api.request("PATCH", "/mmds", {"more": "v" * 40})]:
        assert r.status == 413, r
        assert "doesn't fit" in r.json()["fault_message"]
    assert api.get("/mmds").json() == {"k": "v" * 40}


def test_metadata_file_fills_the_store(start_vmm, tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text('{"latest": {"meta-data": {"instance-id": "i-1"}}}')
    api = start_vmm("--metadata", str(path)).api
    assert api.get("/mmds").json() == {"latest": {"meta-data": {"instance-id": "i-1"}}}


def test_mmds_config(api):
    assert "existing network interface" in api.put("/mmds/config", {"network_interfaces": ["eth0"]}).fault
    api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"})
    assert "empty" in api.put("/mmds/config", {"network_interfaces": []}).fault
    assert "link local" in api.put("/mmds/config", {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}).fault
    assert "unknown field" in api.put("/mmds/config", {"network_interfaces": ["eth0"], "x": 1}).fault
    assert "V3" in api.put("/mmds/config", {"network_interfaces": ["eth0"], "version": "V3"}).fault
    api.ok("PUT", "/mmds/config", {"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": True})
    config = api.get("/vm/config").json()["mmds-config"]
    assert config == {"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": True}


def test_mmds_after_boot(booted):
    api = booted.api
    api.ok("PUT", "/mmds", {"latest": {"id": "i-1"}})
    api.ok("PATCH", "/mmds", {"latest": {"id": "i-2"}})
    assert api.get("/mmds").json() == {"latest": {"id": "i-2"}}
    assert "after starting" in api.put("/mmds/config", {"network_interfaces": ["eth0"]}).fault


# -- balloon -----------------------------------------------------------------

BALLOON = {"amount_mib": 16, "deflate_on_oom": True, "stats_polling_interval_s": 1,
           "free_page_reporting": True, "free_page_hinting": True}


def test_balloon_before_boot(api):
    assert "not configured" in api.get("/balloon").fault
    assert "not configured" in api.request("PATCH", "/balloon", {"amount_mib": 1}).fault
    api.ok("PUT", "/machine-config", MACHINE)
    assert "too large" in api.put("/balloon", dict(BALLOON, amount_mib=257)).fault
    assert "unknown field" in api.put("/balloon", dict(BALLOON, amount=1)).fault
    fault_names(api.put("/balloon", {"amount_mib": 1}), "deflate_on_oom")
    fault_names(api.put("/balloon", dict(BALLOON, amount_mib=-1)), "amount_mib")
    api.ok("PUT", "/balloon", BALLOON)
    assert api.get("/balloon").json() == BALLOON
    api.ok("PATCH", "/balloon", {"amount_mib": 32})
    api.ok("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 2})
    want = dict(BALLOON, amount_mib=32, stats_polling_interval_s=2)
    assert api.get("/balloon").json() == want
    assert api.get("/vm/config").json()["balloon"] == want
    # The device's state needs a running VM.
    for method, path in [("GET", "/balloon/statistics"), ("PATCH", "/balloon/hinting/start"),
                         ("GET", "/balloon/hinting/status"), ("PATCH", "/balloon/hinting/stop")]:
        assert "before starting" in api.request(method, path, None).fault, path


def test_balloon_after_boot(vmm, kernel):
    api = vmm.api
    api.ok("PUT", "/balloon", BALLOON)
    boot(api, kernel)
    assert "after starting" in api.put("/balloon", BALLOON).fault
    api.ok("PATCH", "/balloon", {"amount_mib": 64})
    assert "too large" in api.request("PATCH", "/balloon", {"amount_mib": 129}).fault
    stats = api.get("/balloon/statistics").json()
    # The tiny guest has no balloon driver: the target, and nothing inflated.
    assert stats == {"target_pages": 64 * 256, "actual_pages": 0, "target_mib": 64, "actual_mib": 0}
    api.ok("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 3})
    assert "after boot" in api.request("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 0}).fault
    assert api.get("/balloon").json()["amount_mib"] == 64
    # Hinting needs the guest's driver.
    assert "not activated" in api.request("PATCH", "/balloon/hinting/start", {}).fault
    assert api.get("/balloon/hinting/status").json() == {"host_cmd": 0}


def test_balloon_without_stats_or_hinting(vmm, kernel):
    api = vmm.api
    api.ok("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False})
    boot(api, kernel)
    assert "not enabled" in api.get("/balloon/statistics").fault
    assert "after boot" in api.request("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1}).fault
    assert "not enabled" in api.get("/balloon/hinting/status").fault
    assert "not enabled" in api.request("PATCH", "/balloon/hinting/stop", None).fault


# -- errors: unsupported features, unknown paths, bad bodies ---------------

UNSUPPORTED = [
    # Firecracker 1.17 has no GET on /entropy; every other endpoint is served.
    ("GET", "/entropy", None),
]


@pytest.mark.parametrize("method, path, body", UNSUPPORTED)
def test_unsupported_feature_is_400(api, method, path, body):
    r = api.request(method, path, body)
    assert r.status == 400, f"{method} {path}: {r} (must be 400, never 404)"
    assert r.fault


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/nope"), ("PUT", "/nope"), ("GET", "/drives"), ("PUT", "/drives"), ("PUT", "/drives/"), ("DELETE", "/"),
     ("POST", "/actions"), ("GET", "/actions"), ("GET", "/boot-source/extra"), ("PUT", "/machine-config/x")],
)
def test_unknown_path_or_method_is_400(api, method, path):
    assert api.request(method, path, {} if method in ("PUT", "POST") else None).fault


@pytest.mark.parametrize("raw", ["{not json", "", "[]", "null", '{"vcpu_count": 1, "mem_size_mib": 128', "\xff"])
def test_body_not_a_json_object(api, raw):
    assert api.put("/machine-config", raw=raw.encode("latin-1")).fault


def padded(size):
    """A valid machine-config body padded with JSON whitespace to exactly size bytes."""
    body = b'{"vcpu_count": 1, "mem_size_mib": 128}'
    return body + b" " * (size - len(body))


def exchange(vmm, data):
    """Sends raw bytes on a new connection and returns all the server answered.

    The server may answer and close before it has read everything (an
    oversize body), so a broken pipe while sending is not an error.
    """
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(vmm.sock))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def oversize_fault(vmm, path, body):
    head = f"PUT {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    reply = exchange(vmm, head.encode() + body)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    msg = json.loads(reply.split(b"\r\n\r\n", 1)[1])["fault_message"].lower()
    assert "payload" in msg or "limit" in msg or "size" in msg, msg


def test_payload_limit_default(vmm):
    assert vmm.api.put("/machine-config", raw=padded(DEFAULT_PAYLOAD_LIMIT)).status == 204
    oversize_fault(vmm, "/machine-config", padded(DEFAULT_PAYLOAD_LIMIT + 1))
    oversize_fault(vmm, "/boot-source", json.dumps({"kernel_image_path": "x" * 100_000}).encode())
    vmm.assert_alive()
    assert vmm.api.get("/").status == 200


def test_payload_limit_flag(start_vmm):
    vmm = start_vmm("--http-api-max-payload-size", "1000")
    assert vmm.api.put("/machine-config", raw=padded(1000)).status == 204
    oversize_fault(vmm, "/machine-config", padded(1001))


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /\r\n\r\n",
    b"PUT /machine-config HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
    b"PUT /machine-config HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"PUT /machine-config HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{",
    b"PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nNoColonHeader\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
    b"\x00\xff\xfe" * 300,
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_http(vmm, raw):
    """Answered with 400 or the connection closed; never a crash or a hang."""
    reply = exchange(vmm, raw)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400"), reply[:200]
    vmm.assert_alive()
    assert vmm.api.get("/").status == 200


# -- connections -----------------------------------------------------------

def test_keep_alive(api):
    conn = api.connection()
    try:
        first = api.get("/", conn=conn)
        sock = conn.sock
        assert first.status == 200
        steps = [
            ("PUT", "/machine-config", MACHINE, 204),
            ("GET", "/machine-config", None, 200),
            ("PUT", "/machine-config", {**MACHINE, "bogus_field": 1}, 400),
            ("PUT", "/logger", {"level": "Info"}, 204),
            ("GET", "/version", None, 200),
            ("PATCH", "/machine-config", {"vcpu_count": 1}, 204),
            ("GET", "/", None, 200),
        ]
        for method, path, body, status in steps:
            r = api.request(method, path, body, conn=conn)
            assert r.status == status, (method, path, r)
            assert conn.sock is sock, f"the server closed the connection after {method} {path}"
    finally:
        conn.close()


def test_fifty_concurrent_connections(vmm):
    count = 50
    barrier = threading.Barrier(count)

    def one(i):
        conn = vmm.api.connection(timeout=10)
        try:
            conn.connect()
            barrier.wait(timeout=10)
            return vmm.api.get("/machine-config" if i % 2 else "/", conn=conn).status
        finally:
            conn.close()

    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(one, range(count)))
    assert statuses == [200] * count
    vmm.assert_alive()


# -- phases ----------------------------------------------------------------

def test_patch_vm_before_start(api):
    assert api.patch("/vm", {"state": "Paused"}).fault
    assert api.patch("/vm", {"state": "Resumed"}).fault
    assert api.state() == "Not started"


@pytest.mark.parametrize("body, words", [({"state": "Frozen"}, ("Frozen", "state")), ({}, ("state",))])
def test_patch_vm_bad(api, body, words):
    fault_names(api.patch("/vm", body), *words)


def test_pause_resume(booted):
    api = booted.api
    api.ok("PATCH", "/vm", {"state": "Paused"})
    assert api.state() == "Paused"
    api.ok("PATCH", "/vm", {"state": "Resumed"})
    assert api.state() == "Running"
    booted.assert_alive()


def test_start_twice(booted):
    assert booted.api.put("/actions", {"action_type": "InstanceStart"}).fault
    assert booted.api.state() == "Running"


def test_actions_after_boot(booted):
    booted.api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    booted.api.ok("PATCH", "/vm", {"state": "Paused"})
    booted.api.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    booted.api.ok("PATCH", "/vm", {"state": "Resumed"})
    booted.assert_alive()


def pre_boot_only(kernel, disk):
    """Requests that would succeed before boot (the files exist) and must fail after."""
    return [
        ("PUT", "/boot-source", {"kernel_image_path": kernel}),
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("PATCH", "/machine-config", {"vcpu_count": 1}),
        ("PUT", "/drives/late", {"drive_id": "late", "path_on_host": disk, "is_root_device": False}),
        ("PUT", "/network-interfaces/late", {"iface_id": "late", "host_dev_name": "tap9"}),
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "v.sock"}),
        ("PUT", "/entropy", {}),
        ("PUT", "/logger", {"level": "Info"}),
        ("PUT", "/metrics", {"metrics_path": "m.json"}),
        ("PUT", "/serial", {"serial_out_path": "serial.log"}),
    ]


def test_pre_boot_only_after_start(booted, kernel):
    api = booted.api
    disk = booted.dir / "late.img"
    disk.write_bytes(b"")
    for method, path, body in pre_boot_only(kernel, str(disk)):
        r = api.request(method, path, body)
        assert r.status == 400, f"{method} {path} after boot: {r}"
        assert r.fault
    for path in ["/", "/version", "/machine-config", "/vm/config", "/metrics", "/stats"]:
        assert api.get(path).status == 200, path
    assert api.state() == "Running"


def test_pre_boot_requests_succeed_before_start(vmm, kernel):
    """The control for test_pre_boot_only_after_start: the same requests work before boot."""
    disk = vmm.dir / "late.img"
    disk.write_bytes(b"")
    for method, path, body in pre_boot_only(kernel, str(disk)):
        vmm.api.ok(method, path, body)


def test_devices_boot_and_patch(vmm, kernel):
    api = vmm.api
    disk = vmm.dir / "disk.img"
    disk.write_bytes(b"\0" * 1024 * 1024)
    swapped = vmm.dir / "swapped.img"
    swapped.write_bytes(b"")
    api.ok("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(disk), "is_root_device": True})
    api.ok("PUT", "/vsock", {"guest_cid": 3, "uds_path": str(vmm.dir / "v.sock")})
    api.ok("PUT", "/entropy", {})
    boot(api, kernel)
    assert api.state() == "Running"
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(swapped)})
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {}})
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"bandwidth": None, "ops": None}})
    # Limits change at run time; buckets a PATCH does not name stay.
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": LIMITER})
    ops = {"size": 100, "refill_time": 1000}
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"ops": ops}})
    limiter = api.get("/vm/config").json()["drives"][0]["rate_limiter"]
    assert limiter == {"bandwidth": LIMITER["bandwidth"], "ops": ops}
    # A zero-size bucket removes that limit.
    api.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}})
    assert api.get("/vm/config").json()["drives"][0]["rate_limiter"] == {"ops": ops}
    # Each device counts how often its limiter held a queue back.
    assert api.get("/stats").json()["virtio"]["virtio-blk:rootfs"]["throttled"] == 0
    assert 'sie_virtio_throttled_total{device="virtio-blk:rootfs"} 0' in api.get("/metrics").body.decode()
    fault_names(api.patch("/drives/nope", {"drive_id": "nope", "path_on_host": str(swapped)}), "nope")


def test_memory_devices_boot_patch_and_refuse_snapshots(vmm, kernel):
    """A guest with a pmem file and hotpluggable memory boots; PATCH /pmem takes a limiter
    that limits nothing, PATCH /hotplug/memory sets the requested size that GET reports,
    and a snapshot is refused in one line."""
    api = vmm.api
    pmem = vmm.dir / "pmem.img"
    pmem.write_bytes(b"\0" * 4096)
    api.ok("PUT", "/pmem/pm0", {"id": "pm0", "path_on_host": str(pmem), "read_only": True})
    api.ok("PUT", "/hotplug/memory", {"total_size_mib": 256})
    boot(api, kernel)
    assert api.state() == "Running"
    api.ok("PATCH", "/pmem/pm0", {"id": "pm0", "rate_limiter": {}})
    fault_names(api.patch("/pmem/nope", {"id": "nope"}), "nope")
    api.ok("PATCH", "/hotplug/memory", {"requested_size_mib": 128})
    status = api.get("/hotplug/memory").json()
    assert (status["requested_size_mib"], status["plugged_size_mib"], status["total_size_mib"]) == (128, 0, 256)
    fault_names(api.patch("/hotplug/memory", {"requested_size_mib": 512}), "requested_size_mib")
    api.ok("PATCH", "/vm", {"state": "Paused"})
    reply = api.put("/snapshot/create", {"snapshot_path": str(vmm.dir / "s"), "mem_file_path": str(vmm.dir / "m")})
    fault_names(reply, "pmem")


def test_network_boot_and_patch(vmm, kernel):
    # sie creates the tap (the tests run as root); a per-process name keeps
    # parallel runs apart.
    api = vmm.api
    tap = f"siet{os.getpid() % 100000}"
    api.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap})
    boot(api, kernel)
    api.ok("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": {}, "tx_rate_limiter": None})
    api.ok("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": LIMITER})
    nic = api.get("/vm/config").json()["network-interfaces"][0]
    assert nic["rx_rate_limiter"]["bandwidth"] == LIMITER["bandwidth"]
    assert "tx_rate_limiter" not in nic
    fault_names(api.patch("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap1"}), "host_dev_name")
