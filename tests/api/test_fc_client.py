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
    assert fc.version.get().json()["firecracker_version"] == "1.10.1"
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
