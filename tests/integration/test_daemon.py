"""IsolatedLibvirtd: real, side-by-side libvirtd "hosts" that leave the machine alone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import xml.etree.ElementTree as ET

import libvirt
import pytest

from tests.conftest import ROOT
from tests.integration.daemon import REGISTRY, IsolatedLibvirtd, libvirtd_available, reap_stale_daemons

_UNAVAILABLE = libvirtd_available()
pytestmark = [
    pytest.mark.daemon,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]

# Minimal non-SNP guest: TCG, q35, no disks.
_DOMAIN_XML = """
<domain type='qemu'>
  <name>isolation-probe</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
</domain>
"""


@pytest.fixture(scope="module")
def caps_cache(tmp_path_factory):
    """Shared QEMU capability cache: only the first daemons pay for probing."""
    return tmp_path_factory.mktemp("qemu-caps")


def _versions(uri: str) -> tuple[str, int, int]:
    conn = libvirt.open(uri)
    try:
        return conn.getType(), conn.getLibVersion(), conn.getVersion()
    finally:
        conn.close()


def _host_libvirt_state() -> dict[str, list[str] | None]:
    """Listing of the machine's own libvirt dirs (None when absent)."""
    state = {}
    for d in ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
              "/var/log/libvirt", "/etc/libvirt/qemu"):
        state[d] = sorted(os.listdir(d)) if os.path.isdir(d) else None
    return state


def test_two_daemons_side_by_side(tmp_path, caps_cache):
    before = _host_libvirt_state()
    with (IsolatedLibvirtd(tmp_path / "a", caps_cache) as a,
          IsolatedLibvirtd(tmp_path / "b", caps_cache) as b):
        assert a.socket_path != b.socket_path
        assert a.pid != b.pid
        for d in (a, b):
            assert os.path.exists(d.socket_path)
            assert d.qemu_uri == f"qemu+unix:///system?socket={d.socket_path}"
            assert d.test_uri == f"test+unix:///default?socket={d.socket_path}"
        # In parallel: each daemon's first getVersion() probes QEMU for seconds.
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(_versions, [a.qemu_uri, b.qemu_uri]))
    for kind, lib_version, qemu_version in answers:
        assert kind == "QEMU"
        assert lib_version >= 10_005_000
        assert qemu_version > 0  # e.g. 10000002 for QEMU 10.0.2
    assert _host_libvirt_state() == before
    assert list(caps_cache.glob("*.xml"))  # probes saved for later daemons


def test_domain_capabilities_parse(tmp_path, caps_cache):
    # KVM when the device is usable; the TCG probe needs no hardware at all.
    virttype = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    with IsolatedLibvirtd(tmp_path, caps_cache) as d:
        conn = libvirt.open(d.qemu_uri)
        try:
            caps = ET.fromstring(
                conn.getDomainCapabilities(None, "x86_64", "q35", virttype))
        finally:
            conn.close()
    assert caps.tag == "domainCapabilities"
    assert caps.findtext("domain") == virttype
    assert caps.findtext("arch") == "x86_64"
    assert "q35" in caps.findtext("machine")
    assert caps.find("features/sev") is not None  # reported either way


def test_domain_defined_on_a_is_not_on_b(tmp_path, caps_cache):
    with (IsolatedLibvirtd(tmp_path / "a", caps_cache) as a,
          IsolatedLibvirtd(tmp_path / "b", caps_cache) as b):
        ca, cb = libvirt.open(a.qemu_uri), libvirt.open(b.qemu_uri)
        try:
            ca.defineXML(_DOMAIN_XML)
            assert ca.lookupByName("isolation-probe").isActive() == 0
            assert "isolation-probe" in ca.listDefinedDomains()
            assert cb.listDefinedDomains() == []
            with pytest.raises(libvirt.libvirtError) as err:
                cb.lookupByName("isolation-probe")
            assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        finally:
            ca.close()
            cb.close()
        # The definition landed in A's private /etc/libvirt copy only.
        assert (tmp_path / "a/etc/qemu/isolation-probe.xml").exists()
        assert not (tmp_path / "b/etc/qemu/isolation-probe.xml").exists()
    assert not os.path.exists("/etc/libvirt/qemu/isolation-probe.xml")


def test_exit_stops_daemon(tmp_path):
    with IsolatedLibvirtd(tmp_path) as d:
        pid, path, uri = d.pid, d.socket_path, d.qemu_uri
        os.kill(pid, 0)  # alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(path)
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(uri)


# A test run that starts a daemon and then dies: argv[1] folder, argv[2] caps cache, argv[3] how it ends.
_RUN_THAT_ENDS = """
import os, signal, sys
from tests.integration.daemon import IsolatedLibvirtd
daemon = IsolatedLibvirtd(sys.argv[1], sys.argv[2]).__enter__()
print(daemon.pid, flush=True)
if sys.argv[3] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)  # no teardown, no atexit
# else: the interpreter exits without the with block ever ending
"""


def _run_that_ends(how, folder, caps_cache):
    proc = subprocess.run([sys.executable, "-c", _RUN_THAT_ENDS, str(folder), str(caps_cache), how],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    return proc, int(proc.stdout)


def _running(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _gone_within(pid, seconds):
    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


def test_a_daemon_left_by_a_killed_run_is_stopped_by_the_next_daemon(tmp_path, caps_cache):
    proc, orphan = _run_that_ends("killed", tmp_path / "orphan", caps_cache)
    try:
        assert proc.returncode == -signal.SIGKILL
        assert _running(orphan), "a killed run leaves its libvirtd running: it has its own session"
        assert (REGISTRY / f"{orphan}.json").exists()
        with IsolatedLibvirtd(tmp_path / "next", caps_cache) as next_daemon:
            assert _gone_within(orphan, 10), "the next daemon stops the one a killed run left"
            assert not (REGISTRY / f"{orphan}.json").exists()
            assert _running(next_daemon.pid)
    finally:
        if _running(orphan):
            os.killpg(orphan, signal.SIGKILL)


def test_a_run_that_exits_without_teardown_stops_its_daemon(tmp_path, caps_cache):
    proc, pid = _run_that_ends("exits", tmp_path / "d", caps_cache)
    try:
        assert proc.returncode == 0, proc.stderr
        assert _gone_within(pid, 1), "stopped at interpreter exit"
        assert not (REGISTRY / f"{pid}.json").exists()
    finally:
        if _running(pid):
            os.killpg(pid, signal.SIGKILL)


def test_a_live_runs_daemons_are_never_reaped(tmp_path, caps_cache):
    """Several test runs share this machine: a daemon whose run is alive is not stale."""
    with IsolatedLibvirtd(tmp_path, caps_cache) as d:
        assert d.pid not in reap_stale_daemons()
        assert _running(d.pid) and (REGISTRY / f"{d.pid}.json").exists()
        libvirt.open(d.qemu_uri).close()
