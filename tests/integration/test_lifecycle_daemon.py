"""The CLI as real subprocesses against a real, isolated libvirtd: its test driver and its QEMU driver."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import libvirt
import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, ROOT, run_cli
from tests.integration.daemon import IsolatedLibvirtd

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"


@pytest.fixture
def held(libvirtd):
    """The daemon's test driver keeps state only while a client is connected: hold one for the test."""
    conn = libvirt.open(libvirtd.test_uri)
    yield conn
    for dom in conn.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


def cli_json(*args):
    result = run_cli(*args, "--json")
    return result, json.loads(result.stdout)


def test_define_start_list_stop_undefine_across_processes(libvirtd, held):
    uri = libvirtd.test_uri
    result, doc = cli_json("define", WEB, "-c", uri)
    assert result.code == 0 and doc["results"][0]["action"] == "create" and doc["results"][0]["state"] == "shutoff"
    assert doc["warnings"][0]["id"] == "gate.simulated"
    assert "simulated hypervisor" in result.stderr
    result, doc = cli_json("start", "web-01", "-c", uri)
    assert doc["results"][0]["changed"] is True and doc["results"][0]["state"] == "running"
    _, doc = cli_json("start", "web-01", "-c", uri)
    assert doc["ok"] is True and doc["changed"] is False
    _, doc = cli_json("list", "-c", uri)
    assert [r["name"] for r in doc["results"]] == ["web-01"] and doc["results"][0]["policy_flags"] == ["smt"]
    human = run_cli("list", "-c", uri)
    assert human.stdout.splitlines()[0].split()[:3] == ["NAME", "STATE", "VCPUS"] and "web-01" in human.stdout
    status = run_cli("status", "web-01", "-c", uri)
    assert "launch inputs:" in status.stdout and "policy:" in status.stdout
    _, doc = cli_json("stop", "web-01", "-c", uri)
    assert doc["results"][0]["state"] == "shutoff"
    _, doc = cli_json("undefine", "web-01", "-c", uri)
    assert doc["results"][0]["changed"] is True
    _, doc = cli_json("undefine", "web-01", "-c", uri)
    assert doc["results"][0]["changed"] is False
    assert [d.name() for d in held.listAllDomains()] == ["test"]


def test_apply_idempotency_triple_through_the_cli(libvirtd, held):
    uri = libvirtd.test_uri
    _, plan = cli_json("apply", WEB, "--check", "-c", uri)
    assert plan["results"][0]["action"] == "create" and plan["results"][0]["planned"] is True
    assert held.listAllDomains()[0].name() == "test" and len(held.listAllDomains()) == 1
    result, done = cli_json("apply", WEB, "-c", uri)
    assert result.code == 0 and done["changed"] is True and done["results"][0]["state"] == "running"
    _, plan = cli_json("apply", WEB, "--check", "-c", uri)
    assert plan["results"][0]["action"] == "unchanged" and plan["changed"] is False
    _, again = cli_json("apply", WEB, "-c", uri)
    assert again["changed"] is False
    human = run_cli("apply", WEB, "--set", "x", "-c", uri)  # a bad option: usage error, nothing changed
    assert human.code == ExitCode.BAD_INPUT


def test_partial_failure_exits_9(libvirtd, held, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    result, doc = cli_json("apply", WEB, bad, "-c", libvirtd.test_uri)
    assert result.code == ExitCode.PARTIAL and [r["ok"] for r in doc["results"]] == [True, False]
    assert "malformed TOML" in doc["results"][1]["error"]["message"]


def test_cli_errors_have_their_exit_codes(libvirtd, held):
    missing = run_cli("start", "nope", "-c", libvirtd.test_uri)
    assert missing.code == ExitCode.NOT_FOUND and "snpvirt: error: nope: no domain named nope" in missing.stderr
    conflict = run_cli("start", "test", "-c", libvirtd.test_uri)
    assert conflict.code == ExitCode.CONFLICT and "snpvirt import test" in conflict.stderr
    assert run_cli("apply", WEB, "-c", libvirtd.test_uri).code == 0
    several = run_cli("destroy", "web-01", "nope", "-c", libvirtd.test_uri, "--json")
    doc = json.loads(several.stdout)
    assert several.code == ExitCode.PARTIAL and [r["ok"] for r in doc["results"]] == [True, False]


def test_apply_on_the_real_qemu_driver_stops_at_the_gate(libvirtd):
    result = run_cli("apply", WEB, "-c", libvirtd.qemu_uri)
    assert result.code == ExitCode.NOT_READY and "Traceback" not in result.stderr
    assert "host not ready for SEV-SNP, nothing was changed" in result.stderr and "domcaps.sev_snp" in result.stderr
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        assert conn.listAllDomains() == []
    finally:
        conn.close()


def test_watch_prints_ndjson_and_ends_cleanly_on_ctrl_c(libvirtd, held):
    watcher = subprocess.Popen([sys.executable, "-m", "snpvirt", "watch", "--json", "-c", libvirtd.test_uri],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(1.5)  # let it subscribe
        assert run_cli("apply", WEB, "-c", libvirtd.test_uri).code == 0
        lines = [json.loads(watcher.stdout.readline()) for _ in range(2)]
        assert [(e["domain"], e["event"], e["detail"]) for e in lines] == [("web-01", "defined", "added"),
                                                                          ("web-01", "started", "booted")]
        assert set(lines[0]) == {"time", "uri", "domain", "uuid", "event", "detail"}
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 0
        assert "Traceback" not in watcher.stderr.read()
    finally:
        watcher.kill()


def test_watch_reconnects_after_the_daemon_restarts(tmp_path, qemu_caps_cache):
    with IsolatedLibvirtd(tmp_path / "h", qemu_caps_cache) as first:
        uri = first.test_uri
        watcher = subprocess.Popen([sys.executable, "-m", "snpvirt", "watch", "--json", "--count", "1", "--timeout", "40",
                                    "-c", uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(1.5)
    try:
        with IsolatedLibvirtd(tmp_path / "h", qemu_caps_cache) as second:  # same socket path: the host came back
            conn = libvirt.open(second.test_uri)
            try:
                deadline = time.monotonic() + 20
                while watcher.poll() is None and time.monotonic() < deadline:
                    if "reconnected" in _peek(watcher):
                        break
                    time.sleep(0.5)
                time.sleep(0.5)
                conn.defineXML(conn.lookupByName("test").XMLDesc().replace("<name>test</name>", "<name>after</name>")
                               .replace(conn.lookupByName("test").UUIDString(), "00000000-0000-0000-0000-00000000a0a0"))
                out, err = watcher.communicate(timeout=20)
            finally:
                conn.close()
        err = _stderr_seen.get(watcher.pid, "") + err
        assert watcher.returncode == 0, err
        assert "lost; reconnecting" in err and "reconnected to" in err
        assert json.loads(out.splitlines()[0])["domain"] == "after"
    finally:
        watcher.kill()


_stderr_seen: dict[int, str] = {}


def _peek(process) -> str:
    """Read what stderr has so far without blocking (the watcher reports reconnection there)."""
    import os
    import select

    buffered = _stderr_seen.get(process.pid, "")
    while select.select([process.stderr], [], [], 0)[0]:
        chunk = os.read(process.stderr.fileno(), 4096).decode()
        if not chunk:
            break
        buffered += chunk
    _stderr_seen[process.pid] = buffered
    return buffered
