"""A Firecracker client from PyPI drives sie in place of Firecracker.

The client is firecracker-python (module `firecracker`; see scripts/api-tests
for why). Its API layer, firecracker.api.Api(socket_path), is used unchanged.
The package's __init__ is skipped: it imports the MicroVM class (docker,
pyroute2, paramiko) and creates /var/lib/firecracker on import, none of which
an API client needs.
"""

import importlib
import importlib.util
import sys
import types

import pytest


def client_module(name):
    """firecracker.<name>, imported without running firecracker/__init__.py."""
    if "firecracker" not in sys.modules:
        spec = importlib.util.find_spec("firecracker")
        if spec is None:
            pytest.fail("firecracker-python is not installed (scripts/api-tests installs it)")
        package = types.ModuleType("firecracker")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["firecracker"] = package
    return importlib.import_module(f"firecracker.{name}")


@pytest.fixture
def fc(vmm):
    client = client_module("api").Api(str(vmm.sock))
    yield client
    client.close()


def test_client_configures(fc, vmm):
    info = fc.describe.get().json()
    assert (info["id"], info["state"]) == ("test", "Not started")
    from conftest import FIRECRACKER_API_VERSION

    assert fc.version.get().json()["firecracker_version"] == FIRECRACKER_API_VERSION
    kernel, disk = vmm.dir / "vmlinux", vmm.dir / "rootfs.ext4"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    disk.write_bytes(b"")
    fc.logger.put(log_path=str(vmm.dir / "fc.log"), level="Debug", show_level=True, show_log_origin=True)
    fc.machine_config.put(vcpu_count=2, mem_size_mib=256)
    assert fc.machine_config.get().json()["vcpu_count"] == 2
    fc.boot.put(kernel_image_path=str(kernel), boot_args="console=ttyS0 reboot=k panic=1")
    fc.drive.put(drive_id="rootfs", path_on_host=str(disk), is_root_device=True, is_read_only=False)
    config = fc.vm_config.get().json()
    assert config["machine-config"]["mem_size_mib"] == 256
    assert config["drives"][0]["drive_id"] == "rootfs"


def test_client_sees_faults(fc):
    api_error = client_module("exceptions").APIError
    # "API fault: ..." means the client found a fault_message in the JSON body.
    with pytest.raises(api_error, match="API fault"):
        fc.machine_config.put(vcpu_count=0, mem_size_mib=128)
    with pytest.raises(api_error, match="API fault"):
        fc.vm.patch(state="Paused")
    with pytest.raises(api_error, match="API fault"):
        fc.mmds_config.put(network_interfaces=["eth0"])
    with pytest.raises(api_error, match="API fault"):
        fc.create_snapshot.put(snapshot_path="snap", mem_file_path="mem")
    assert fc.describe.get().json()["state"] == "Not started"


def test_client_boots_pauses_resumes(fc, vmm, kernel):
    fc.machine_config.put(vcpu_count=1, mem_size_mib=128)
    fc.boot.put(kernel_image_path=kernel, boot_args="console=ttyS0 reboot=k panic=-1")
    fc.actions.put(action_type="InstanceStart")
    assert fc.describe.get().json()["state"] == "Running"
    fc.vm.patch(state="Paused")
    assert fc.describe.get().json()["state"] == "Paused"
    fc.vm.patch(state="Resumed")
    assert fc.describe.get().json()["state"] == "Running"
    fc.actions.put(action_type="FlushMetrics")
    vmm.assert_alive()


def test_client_starts_sie_as_firecracker(tmp_path, kernel):
    """firecracker-python's ProcessManager starts the binary it believes is
    Firecracker (a link named `firecracker` to sie) with its own flags, and
    its Api boots a guest; a SIGTERM then stops sie cleanly."""
    import os
    import signal
    import time

    from conftest import SIE_BIN

    binary = tmp_path / "firecracker"
    binary.symlink_to(SIE_BIN)
    manager = client_module("process").ProcessManager()
    manager._config.binary_path = str(binary)
    manager._config.data_path = str(tmp_path)
    vm_id = "fcpy1"
    (tmp_path / vm_id).mkdir()
    sock = tmp_path / vm_id / "firecracker.socket"
    pid = manager.start(vm_id, ["--api-sock", str(sock), "--id", vm_id,
                                "--log-path", str(tmp_path / vm_id / "sie.log")])
    try:
        assert manager.is_running(vm_id)
        fc = client_module("api").Api(str(sock))
        assert fc.describe.get().json()["id"] == vm_id
        fc.machine_config.put(vcpu_count=1, mem_size_mib=64)
        fc.boot.put(kernel_image_path=kernel, boot_args="console=ttyS0")
        fc.actions.put(action_type="InstanceStart")
        assert fc.describe.get().json()["state"] == "Running"
        console = tmp_path / vm_id / "firecracker.log"
        deadline = time.time() + 10
        while b"spinning" not in console.read_bytes():
            assert time.time() < deadline, "the guest's console never reached the client's log"
            time.sleep(0.05)
        fc.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM
    assert not sock.exists(), "sie removes its API socket when it stops"
