"""The CLI as real subprocesses against a real, isolated libvirtd: its test driver and its QEMU driver."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import libvirt
import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, ROOT, run_cli
from tests.integration.daemon import IsolatedLibvirtd, libvirtd_available

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"


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


def test_stop_several_at_once_and_the_bounds_of_waiting(libvirtd, held, tmp_path):
    uri = libvirtd.test_uri
    db = tmp_path / "db-01.toml"
    db.write_text(WEB.read_text().replace('name = "web-01"', 'name = "db-01"'))
    assert run_cli("apply", WEB, db, "-c", uri).code == 0
    for bad in ("-5", "nan"):
        result = run_cli("stop", "web-01", "--timeout", bad, "-c", uri)
        assert result.code == ExitCode.BAD_INPUT and "--timeout" in result.stderr, result.stderr
    assert all(held.lookupByName(n).isActive() for n in ("web-01", "db-01")), "a bad --timeout changes nothing"
    result, doc = cli_json("stop", "web-01", "db-01", "--timeout", "0", "-c", uri)
    assert result.code == 0, result.stderr  # the test driver's guests stop at once: no timeout
    assert [(r["name"], r["changed"], r["state"]) for r in doc["results"]] == [("web-01", True, "shutoff"),
                                                                               ("db-01", True, "shutoff")]
    assert "waiting for" not in result.stderr, "nothing for people on stderr with --json"


def test_undefine_of_a_running_domain_is_a_conflict(libvirtd, held):
    uri = libvirtd.test_uri
    assert run_cli("apply", WEB, "-c", uri).code == 0
    result = run_cli("undefine", "web-01", "-c", uri)
    assert result.code == ExitCode.CONFLICT and "hint: stop it first: snpvirt stop web-01" in result.stderr
    result, doc = cli_json("undefine", "web-01", "-c", uri)
    assert result.code == ExitCode.CONFLICT and doc["error"]["kind"] == "conflict"
    assert held.lookupByName("web-01").isActive()


def test_apply_converges_the_run_state_and_restarts_only_when_asked(libvirtd, held, tmp_path):
    uri = libvirtd.test_uri
    off = tmp_path / "web-01.toml"
    off.write_text('state = "shutoff"\nautostart = true\n' + WEB.read_text())
    assert run_cli("apply", WEB, "-c", uri).code == 0
    plan = run_cli("apply", off, "--check", "-c", uri)
    assert plan.code == 0 and "would set autostart and shut down" in plan.stdout, plan.stdout
    result, doc = cli_json("apply", off, "-c", uri)
    assert result.code == 0 and doc["changed"] and doc["results"][0]["state"] == "shutoff"
    dom = held.lookupByName("web-01")
    assert (dom.isActive(), dom.autostart()) == (0, 1)
    _, doc = cli_json("apply", off, "-c", uri)
    assert doc["changed"] is False

    bigger = tmp_path / "bigger.toml"
    bigger.write_text(WEB.read_text().replace("vcpus = 4", "vcpus = 2"))
    assert run_cli("apply", WEB, "-c", uri).code == 0
    assert run_cli("apply", bigger, "-c", uri).stdout.count("snpvirt apply SPEC --restart") == 1
    restarted = run_cli("apply", bigger, "--restart", "-c", uri)
    assert restarted.code == 0 and "restarted on its new definition" in restarted.stdout, restarted.stdout
    _, doc = cli_json("status", "web-01", "-c", uri)
    assert doc["results"][0]["restart_required"] is False


def test_apply_on_the_real_qemu_driver_stops_at_the_gate(libvirtd):
    result = run_cli("apply", WEB, "-c", libvirtd.qemu_uri)
    assert result.code == ExitCode.NOT_READY and "Traceback" not in result.stderr
    assert "host not ready for SEV-SNP, nothing was changed" in result.stderr and "domcaps.sev_snp" in result.stderr
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        assert conn.listAllDomains() == []
    finally:
        conn.close()


PROBE = "watch-probe"
PROBE_XML = (f"<domain type='test'><name>{PROBE}</name><uuid>00000000-0000-0000-0000-0000000a7c11</uuid>"
             "<memory>131072</memory><os><type>hvm</type></os></domain>")


class Lines:
    """A pipe read line by line with a deadline: a line that never comes fails the test, it does not hang it."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.buffer = b""
        self.ended = False

    def next(self, timeout: float) -> str | None:
        """The next complete line, or None when none came within `timeout` seconds (or the pipe ended)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer and not self.ended:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            self.ended = not chunk
            self.buffer += chunk
        if b"\n" not in self.buffer:
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def event(self, timeout: float = 20) -> dict:
        """The next watch event that is not the probe's."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.0, deadline - time.monotonic()))
            assert line is not None, f"no watch event within {timeout} s"
            event = json.loads(line)
            if event["domain"] != PROBE:
                return event


def wait_until_watching(lines: Lines, conn, timeout: float = 30, skipped: list | None = None) -> None:
    """Define the probe domain until the watcher reports it: from then on it is subscribed. Events, not
    sleeps: a watcher that never subscribes fails here after `timeout` seconds. `skipped` collects the
    other events read meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.defineXML(PROBE_XML)  # each definition is an event ("defined", "added" then "updated")
        line = lines.next(0.25)
        while line is not None:
            event = json.loads(line)
            if event["domain"] == PROBE:
                return
            if skipped is not None:
                skipped.append(event)
            line = lines.next(0)
    pytest.fail(f"the watcher reported none of the probe's events within {timeout} s")


def start_watch(uri, *options):
    return subprocess.Popen([sys.executable, "-m", "snpvirt", "watch", "--json", *options, "-c", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def test_watch_prints_ndjson_and_ends_cleanly_on_ctrl_c(libvirtd, held):
    watcher = start_watch(libvirtd.test_uri)
    try:
        lines = Lines(watcher.stdout)
        wait_until_watching(lines, held)
        assert run_cli("apply", WEB, "-c", libvirtd.test_uri).code == 0
        events = [lines.event() for _ in range(2)]
        assert [(e["domain"], e["event"], e["detail"]) for e in events] == [("web-01", "defined", "added"),
                                                                           ("web-01", "started", "booted")]
        assert set(events[0]) == {"time", "uri", "domain", "uuid", "event", "detail"}
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=10)
        assert watcher.returncode == 0 and b"Traceback" not in err
    finally:
        watcher.kill()
        watcher.wait()


def test_watch_count_ends_the_watch_by_itself(libvirtd, held):
    watcher = start_watch(libvirtd.test_uri, "--count", "1")
    try:
        lines = Lines(watcher.stdout)
        wait_until_watching(lines, held)
        assert watcher.wait(10) == 0
        rest = [line for line in iter(lambda: lines.next(1), None)]
        assert rest == [], "one event, then the watch ends"
    finally:
        watcher.kill()
        watcher.wait()


def test_watch_reconnects_after_the_daemon_restarts(tmp_path, qemu_caps_cache):
    reason = libvirtd_available()
    if reason:
        pytest.skip(reason)
    with IsolatedLibvirtd(tmp_path / "h", qemu_caps_cache) as first:
        uri = first.test_uri
        watcher = start_watch(uri, "--timeout", "90")  # bounded even if the test's own deadlines fail
        lines = Lines(watcher.stdout)
        conn = libvirt.open(uri)
        try:
            wait_until_watching(lines, conn)
        finally:
            conn.close()
    try:
        with IsolatedLibvirtd(tmp_path / "h", qemu_caps_cache) as second:  # same socket path: the host came back
            conn = libvirt.open(second.test_uri)
            try:
                meanwhile = []
                wait_until_watching(lines, conn, skipped=meanwhile)  # seen from the second daemon: reconnected
                link = [(e["event"], e["uri"], e["domain"]) for e in meanwhile if e["domain"] is None]
                assert link == [("disconnected", uri, None), ("reconnected", uri, None)], meanwhile
                conn.defineXML(PROBE_XML.replace(PROBE, "after").replace("0a7c11", "0af7e2"))
                event = lines.event()
                assert (event["domain"], event["event"]) == ("after", "defined")
            finally:
                conn.close()
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=10)
        assert watcher.returncode == 0, err
        assert b"lost; reconnecting" in err and b"reconnected to" in err
    finally:
        watcher.kill()
        watcher.wait()


def test_watch_that_ends_disconnected_says_so_and_exits_6(tmp_path, qemu_caps_cache):
    reason = libvirtd_available()
    if reason:
        pytest.skip(reason)
    with IsolatedLibvirtd(tmp_path / "h", qemu_caps_cache) as daemon:
        uri = daemon.test_uri
        watcher = start_watch(uri, "--timeout", "10")  # ends by itself, after the daemon is gone
        lines = Lines(watcher.stdout)
        conn = libvirt.open(uri)
        try:
            wait_until_watching(lines, conn)
        finally:
            conn.close()
    try:
        deadline = time.monotonic() + 30
        line = lines.next(30)
        while line is not None and json.loads(line)["domain"] is not None and time.monotonic() < deadline:
            line = lines.next(max(0.0, deadline - time.monotonic()))  # the probe's last events
        assert line is not None, "no disconnected event"
        event = json.loads(line)
        assert (event["event"], event["uri"], event["domain"]) == ("disconnected", uri, None)
        _, err = watcher.communicate(timeout=30)
        assert watcher.returncode == ExitCode.CONNECTION, err
        assert b"snpvirt: error: the watch ended while disconnected" in err and b"Traceback" not in err
    finally:
        watcher.kill()
        watcher.wait()


def test_watch_keeps_up_with_an_event_flood(libvirtd, held, monkeypatch):
    """The event loop pauses between iterations (events.LOOP_PAUSE_S) but not while events flow: a remote
    connection's event takes an iteration or two, so pausing after each would leave watch one pause per
    event behind, ever further under a flood. Counted in pauses, not seconds: while the flood's events are
    delivered the loop pauses only in a lull (before: one pause per event, 800 here)."""
    import threading

    from snpvirt.libvirt import events

    pauses = [0]
    pause = events._pause
    monkeypatch.setattr(events, "_pause", lambda: (pauses.__setitem__(0, pauses[0] + 1), pause()))
    seen: list = []
    stop = threading.Event()
    subscribed = threading.Event()
    flood = 400

    def on_event(event):
        if event.domain == PROBE:
            subscribed.set()
        elif not seen:
            pauses[0] = 0  # count from the flood's first event on
        if event.domain != PROBE:
            seen.append(event)

    watcher = threading.Thread(target=events.watch, args=(libvirtd.test_uri, set(), on_event, lambda _s: None, stop),
                               daemon=True)
    watcher.start()
    xml = "<domain type='test'><name>{}</name><memory>1024</memory><os><type>hvm</type></os></domain>"
    try:
        while not subscribed.is_set():  # events, not sleeps: define the probe until the watcher hears it
            held.defineXML(xml.format(PROBE)).undefine()
            subscribed.wait(0.2)
        for i in range(flood):
            held.defineXML(xml.format(f"flood-{i}")).undefine()
        for _ in range(300):  # a guard against a hang, not a speed target
            if len(seen) >= 2 * flood:
                break
            time.sleep(0.1)
        delivered_with = pauses[0]
    finally:
        stop.set()
        watcher.join(10)
    assert len(seen) == 2 * flood and {e.event for e in seen} == {"defined", "undefined"}
    assert delivered_with < flood // 4, f"{delivered_with} pauses while delivering {2 * flood} events"


def test_an_event_after_a_quiet_spell_waits_at_most_one_pause(libvirtd, held, monkeypatch):
    """A remote event takes more than one iteration (one reads it, the next delivers it). Pausing after each
    quiet iteration put a second pause between the two: an event that came as a pause began waited two
    pauses (200 ms), not the one events.py promises. Counted in pauses: the define is made during a pause,
    and no other pause may start before its event is delivered."""
    import threading

    from snpvirt.libvirt import events

    pauses = [0]
    pausing = threading.Event()
    pause = events._pause
    monkeypatch.setattr(events, "_pause", lambda: (pauses.__setitem__(0, pauses[0] + 1), pausing.set(), pause()))
    delivered: list = []
    got = threading.Event()
    stop = threading.Event()

    def on_event(event):
        delivered.append(pauses[0])
        got.set()

    watcher = threading.Thread(target=events.watch, args=(libvirtd.test_uri, set(), on_event, lambda _s: None, stop),
                               daemon=True)
    watcher.start()
    xml = "<domain type='test'><name>{}</name><memory>1024</memory><os><type>hvm</type></os></domain>"
    waited = []
    try:
        for i in range(6):
            quiet = pauses[0] + 3
            while pauses[0] < quiet:  # a quiet spell, seen as pauses (the loop pauses only when quiet)
                stop.wait(0.01)
            pausing.clear()
            assert pausing.wait(30), "the loop did not pause"
            got.clear()
            before = pauses[0]
            dom = held.defineXML(xml.format(f"quiet-{i}"))  # during the pause that just began
            assert got.wait(30), "no event"
            waited.append(delivered[-1] - before)
            got.clear()
            dom.undefine()
            assert got.wait(30), "no event"
    finally:
        stop.set()
        watcher.join(10)
    assert max(waited) == 0, f"pauses begun before each event was delivered: {waited}"
