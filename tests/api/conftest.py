"""Fixtures for the API tests: a live sie on a Unix socket, and a tiny client.

Environment (scripts/api-tests sets it):
  SIE_BIN           the sie binary (default target/debug/sie)
  SIE_GUEST_KERNEL  a tiny guest kernel that InstanceStart boots; the guest
                    must keep running until the VMM is killed
  CI                when set, a missing SIE_GUEST_KERNEL fails instead of skips
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIE_BIN = Path(os.environ.get("SIE_BIN") or REPO / "target/debug/sie")


def _firecracker_api_version():
    """The one constant sie reports as Firecracker's version (crates/config)."""
    source = (REPO / "crates/config/src/request.rs").read_text()
    return re.search(r'FIRECRACKER_API_VERSION: &str = "([0-9.]+)"', source).group(1)


FIRECRACKER_API_VERSION = _firecracker_api_version()
KERNEL = os.environ.get("SIE_GUEST_KERNEL", "")

# Like firecracker-go-sdk: GET /machine-config every 10 ms, for up to 3 s.
START_POLL_S, START_TIMEOUT_S = 0.01, 3.0
# Exit statuses that mean the VMM crashed: a fatal signal, or a Rust panic.
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}
RUST_PANIC_EXIT = 101


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path, timeout=5.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Reply:
    def __init__(self, resp):
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()

    def json(self):
        return json.loads(self.body)

    @property
    def fault(self):
        """The fault message of a 400, checked to be there and be a string."""
        assert self.status == 400, f"expected 400, got {self.status}: {self.body!r}"
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        msg = self.json().get("fault_message")
        assert isinstance(msg, str) and msg, f"no fault_message in {self.body!r}"
        return msg

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:200]!r}>"


class Api:
    """A minimal client: one request per connection unless given one."""

    def __init__(self, sock_path):
        self.sock_path = str(sock_path)

    def connection(self, timeout=5.0):
        return UnixHTTPConnection(self.sock_path, timeout)

    def request(self, method, path, body=None, *, raw=None, headers=None, conn=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        hdrs = {"Accept": "application/json"}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs.update(headers or {})
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request(method, path, body=data, headers=hdrs)
            return Reply(conn.getresponse())
        finally:
            if own:
                conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.request("PATCH", path, body, **kw)

    def ok(self, method, path, body=None):
        """A PUT/PATCH that must succeed: exactly 204, no body."""
        r = self.request(method, path, body)
        assert r.status == 204, f"{method} {path} {body}: {r}"
        assert r.body == b"", r
        return r

    def state(self):
        r = self.get("/")
        assert r.status == 200, r
        return r.json()["state"]


class Vmm:
    """One sie process serving the API on <dir>/api.sock."""

    def __init__(self, workdir, *extra_args):
        self.dir = Path(workdir)
        self.sock = self.dir / "api.sock"
        self.stderr_path = self.dir / "sie.stderr"
        self.api = Api(self.sock)
        argv = [str(SIE_BIN), "--api-sock", str(self.sock), "--id", "test", *extra_args]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        self._wait_ready()

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sie exited with {self.proc.returncode} at start:\n{self.stderr()}")
            if self.sock.exists():
                try:
                    if self.api.get("/machine-config").status == 200:
                        return
                except OSError:
                    pass
            time.sleep(START_POLL_S)
        self.kill()
        pytest.fail(f"sie did not answer GET /machine-config within {START_TIMEOUT_S} s:\n{self.stderr()}")

    def alive(self):
        return self.proc.poll() is None

    def assert_alive(self):
        assert self.alive(), f"sie exited with {self.proc.returncode}:\n{self.stderr()}"

    def kill(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def stop(self):
        """Teardown: fail if sie crashed during the test, then kill it."""
        code = self.proc.poll()
        if code is None:
            code = self.kill()
            assert code == -signal.SIGKILL, f"sie ended with {code} on SIGKILL:\n{self.stderr()}"
            return
        crashed = (code < 0 and signal.Signals(-code) in CRASH_SIGNALS) or code == RUST_PANIC_EXIT
        assert not crashed, f"sie crashed (exit status {code}):\n{self.stderr()}"


@pytest.fixture
def start_vmm(tmp_path):
    """Starts sie (with extra arguments if given); stops every one at teardown."""
    if not (SIE_BIN.is_file() and os.access(SIE_BIN, os.X_OK)):
        pytest.fail(f"no sie binary at {SIE_BIN}: build it or set SIE_BIN")
    started = []

    def start(*extra_args):
        workdir = tmp_path / f"vmm{len(started)}"
        workdir.mkdir()
        started.append(Vmm(workdir, *extra_args))
        return started[-1]

    yield start
    for vmm in started:
        vmm.stop()


@pytest.fixture
def vmm(start_vmm):
    return start_vmm()


@pytest.fixture
def api(vmm):
    return vmm.api


@pytest.fixture
def kernel():
    """The tiny guest kernel; skipped without it (a failure when CI is set)."""
    if not KERNEL:
        message = "SIE_GUEST_KERNEL is not set: no guest kernel to boot"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert Path(KERNEL).is_file(), f"SIE_GUEST_KERNEL={KERNEL} is not a file"
    return KERNEL


def boot(api, kernel_path):
    """The go-sdk order, minimal: machine, boot source, start."""
    api.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    api.ok("PUT", "/boot-source", {"kernel_image_path": kernel_path, "boot_args": "console=ttyS0 reboot=k panic=-1"})
    api.ok("PUT", "/actions", {"action_type": "InstanceStart"})


@pytest.fixture
def booted(vmm, kernel):
    """A sie whose guest has started (state Running)."""
    boot(vmm.api, kernel)
    assert vmm.api.state() == "Running"
    return vmm
