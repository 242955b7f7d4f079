"""apply's pipeline on libvirt's test driver: specs are rendered on the calling thread while worker threads
check each rendered document (the SNP rules), pass the readiness gate and carry the plan out. What must hold whatever the
threads do: no document reaches libvirt unchecked, the gate is asked once and its refusal changes nothing,
and results come back in the order the specs were given."""

from __future__ import annotations

import threading
import time

import pytest
from lxml import etree

from snpvirt.host import readiness
from snpvirt.domain import render, sevparams
from snpvirt.domain import spec as specs
from snpvirt.libvirt.connection import Connection
from snpvirt.errors import BadInputError, HostNotReadyError
from snpvirt.manager import LOOKAHEAD, Manager, SpecInput
from tests.unit.fakehost import FakeHost, genoa_domcaps

# More specs than the workers and their lookahead hold at once: the main thread waits for them on the way.
BATCH = LOOKAHEAD + 8
BASE = {"memory_mib": 1024, "vcpus": 1, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1}}


def spec_input(name: str, **changes) -> SpecInput:
    return SpecInput(f"{name}.toml", specs.parse_spec({**BASE, "name": name, **changes}))


def batch(prefix: str) -> list[SpecInput]:
    return [spec_input(f"{prefix}-{i:02d}") for i in range(BATCH)]


class CountingGate:
    """The CLI's gate on a captured host (--sysroot, --host-caps), counting how often it is asked."""

    def __init__(self, conn: Connection, host: FakeHost) -> None:
        self.conn, self.host, self.calls = conn, host, 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        return readiness.gate_report(self.conn, sysroot=self.host.root, domcaps_file=genoa_domcaps())


def manager(conn: Connection, gate) -> Manager:
    return Manager(conn, gate=gate, resolve_sev=lambda s: sevparams.resolve(s, []))


def names(conn: Connection) -> set[str]:
    return {record.name for record in conn.domains()}


def test_a_refusing_gate_ends_a_batch_with_nothing_defined_and_is_asked_once(conn, tmp_path):
    host = FakeHost(tmp_path / "unready")
    host.write("sys/module/kvm_amd/parameters/sev_snp", "N\n")
    gate = CountingGate(conn, host)
    before = names(conn)
    with pytest.raises(HostNotReadyError, match="nothing was changed"):
        manager(conn, gate).apply(batch("refused"))
    assert names(conn) == before
    assert gate.calls == 1, "every worker asked the gate again instead of taking its refusal"


def test_a_ready_gate_is_asked_once_for_a_whole_batch(conn, tmp_path):
    gate = CountingGate(conn, FakeHost(tmp_path / "ready"))
    outcomes = manager(conn, gate).apply(batch("ready"))
    assert all(o.ok and o.changed for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert gate.calls == 1


def test_results_come_back_in_the_order_given(conn):
    inputs = batch("order")
    outcomes = manager(conn, lambda: None).apply(inputs)
    assert [o.name for o in outcomes] == [i.spec.name for i in inputs]
    assert all(o.ok and o.state == "running" for o in outcomes)


@pytest.mark.parametrize("workers", [None, 0], ids=["workers", "no-workers"])
def test_each_domain_is_carried_out_on_a_worker_or_without_workers_on_the_calling_thread(conn, monkeypatch, workers):
    """A fleet's host threads each plan and carry out their own share (libvirt_workers = 0): no hand-over
    to a worker per domain. The single-host apply hands plans to its workers, rendering meanwhile."""
    threads: list[threading.Thread] = []
    define = conn.define

    def recording(xml):
        threads.append(threading.current_thread())
        return define(xml)

    monkeypatch.setattr(conn, "define", recording)
    m = manager(conn, lambda: None)
    if workers is not None:
        m.libvirt_workers = workers
    inputs = batch(f"threads-{workers}")
    outcomes = m.apply(inputs)
    assert [o.name for o in outcomes] == [i.spec.name for i in inputs]
    assert all(o.ok and o.state == "running" for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert len(threads) == len(inputs)
    if workers == 0:
        assert set(threads) == {threading.current_thread()}
    else:
        assert threading.current_thread() not in threads and len(set(threads)) > 1


@pytest.mark.parametrize("workers", [None, 0], ids=["workers", "no-workers"])
def test_a_rendered_document_that_breaks_an_snp_rule_is_never_defined(conn, monkeypatch, workers):
    """apply defines what a spec renders only after every SNP rule passed on the parsed document
    (render.check_rendered), on a worker, before the define, in both apply and apply --check. The spec
    checks admit no spec that renders such a document, so here the template loses <launchSecurity> for one
    (told apart by its description, not its name: renamed copies of one spec are rendered once, domain/copies.py)."""
    rendered = render.render_xml

    def losing_launch_security(spec, *args, **kwargs):
        xml = rendered(spec, *args, **kwargs)
        if spec.description != "bad":
            return xml
        root = etree.fromstring(xml.encode())
        root.remove(root.find("launchSecurity"))
        return etree.tostring(root, encoding="unicode")

    monkeypatch.setattr(render, "render_xml", losing_launch_security)
    inputs = batch("rules")
    inputs[3] = spec_input("rules-bad", description="bad")
    for check in (True, False):
        m = manager(conn, lambda: None)
        if workers is not None:
            m.libvirt_workers = workers
        outcomes = m.apply(inputs, check=check)
        bad = outcomes[3]
        assert (bad.name, bad.ok, bad.action) == ("rules-bad", False, "invalid")
        assert bad.error.message.startswith("rules-bad: rendered XML breaks rule snp.launch_security: ")
        assert all(o.ok for i, o in enumerate(outcomes) if i != 3)
    assert "rules-bad" not in names(conn) and "rules-00" in names(conn)


def test_a_multicast_mac_is_refused_by_the_spec_check_and_never_rendered():
    """apply runs no RNG schema on what it renders: the spec checks refuse what the schema refused (here
    uniMacAddr), before anything is rendered or defined."""
    with pytest.raises(BadInputError, match=r"networks\[0\]\.mac: 01:00:5e:00:00:01 is a multicast address"):
        spec_input("mac-bad", networks=[{"network": "default", "mac": "01:00:5e:00:00:01"}])


# --- what apply reports and when it asks the gate (scripts/mutation apply) ---------------------------------


def test_a_spec_that_could_not_be_read_or_names_a_domain_twice_is_invalid_and_named(conn):
    """Each item's result as the JSON envelope carries it: the file that could not be read is named by its
    label, the second spec of one name by that name, with the words and hints the user acts on."""
    unreadable = SpecInput("broken.toml", error=BadInputError("broken.toml: malformed TOML", "fix it"))
    first, broken, twice = manager(conn, lambda: None).apply([spec_input("dup-01"), unreadable, spec_input("dup-01")])
    assert first.ok and names(conn) >= {"dup-01"}
    assert broken.as_dict() == {"name": "broken.toml", "ok": False, "changed": False, "action": "invalid", "state": None,
                                "error": {"kind": "bad_input", "message": "broken.toml: malformed TOML", "hint": "fix it"}}
    assert twice.as_dict() == {"name": "dup-01", "ok": False, "changed": False, "action": "invalid", "state": None,
                               "error": {"kind": "bad_input", "hint": "give each spec its own name",
                                         "message": "dup-01.toml: domain dup-01 is named by two specs in this call"}}


def test_a_plan_shows_each_change_a_run_would_make_and_nothing_else(conn):
    m = manager(conn, lambda: None)
    plan = m.apply([spec_input("plan-01")], check=True)[0]
    assert plan.as_dict() == {"name": "plan-01", "ok": True, "changed": True, "action": "create", "state": "absent",
                              "diff": [], "restart_required": False, "will_start": True, "will_stop": False,
                              "will_restart": False, "volumes": [], "planned": True}
    done = m.apply([spec_input("plan-01")])[0]
    assert done.as_dict() == {"name": "plan-01", "ok": True, "changed": True, "action": "create", "state": "running",
                              "diff": [], "restart_required": False, "will_start": True, "will_stop": False,
                              "will_restart": False, "volumes": [], "started": True}
    # Without start (apply --no-start) the run state is left as it is: no stop in the plan, only the autostart flag.
    plan = m.apply([spec_input("plan-01", state="shutoff", autostart=True)], check=True, start=False)[0]
    assert (plan.changed, plan.details["diff"], plan.details["will_stop"]) == (
        True, [{"key": "autostart", "from": False, "to": True}], False)
    plan = m.apply([spec_input("plan-01", state="shutoff", autostart=True)], check=True)[0]
    assert plan.details["diff"] == [{"key": "autostart", "from": False, "to": True},
                                    {"key": "state", "from": "running", "to": "shutoff"}]


def test_the_gate_is_asked_for_any_change_and_never_when_there_is_none(conn, tmp_path):
    """A run that changes nothing needs no ready host (nor does one that leaves the run state alone); setting
    the autostart flag or shutting a guest down is a change like any other: refused on a host that is not ready."""
    manager(conn, lambda: None).apply([spec_input("gate-01")])
    host = FakeHost(tmp_path / "unready")
    host.write("sys/module/kvm_amd/parameters/sev_snp", "N\n")
    unready = CountingGate(conn, host)
    assert manager(conn, unready).apply([spec_input("gate-01")])[0].ok
    assert manager(conn, unready).apply([spec_input("gate-01", state="shutoff")], start=False)[0].ok
    assert unready.calls == 0
    for change in ({"autostart": True}, {"state": "shutoff"}):
        with pytest.raises(HostNotReadyError):
            manager(conn, unready).apply([spec_input("gate-01", **change)])
    assert unready.calls == 2
    assert (conn.state("gate-01"), conn.autostart("gate-01")) == ("running", False)


def test_apply_uses_as_many_workers_as_set_named_as_apply_s(conn, monkeypatch):
    """libvirt_workers bounds the calls in flight on the connection (a fleet's per_host); a stack dump names them."""
    threads: list[threading.Thread] = []
    define = conn.define

    def slow(xml):  # leaves another worker, if there were one, the time to take the next plan
        threads.append(threading.current_thread())
        time.sleep(0.02)
        return define(xml)

    monkeypatch.setattr(conn, "define", slow)
    for workers in (1, 2):
        threads.clear()
        m = manager(conn, lambda: None)
        m.libvirt_workers = workers
        assert all(o.ok for o in m.apply([spec_input(f"workers-{workers}-{i}") for i in range(6)], start=False))
        assert len(threads) == 6 and len(set(threads)) <= workers  # never more (fewer when a worker is soon idle)
        assert all(t.name.startswith("snpvirt-apply") for t in threads)


class Clock:
    def __init__(self) -> None:
        self.now = "2026-01-01T00:00:00+00:00"

    def __call__(self) -> str:
        return self.now


def stamps(m: Manager, name: str) -> tuple[str, str]:
    status = m.status(name)
    return status["defined_at"], status["updated_at"]


def test_a_domain_is_stamped_when_defined_and_at_each_update(conn):
    """defined_at stays the first definition's time (an update never resets it), updated_at is the latest;
    renamed copies updated in one call (a fleet's count) each keep their own defined_at, not the other copy's."""
    clock = Clock()
    m = Manager(conn, gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []), clock=clock)
    first = clock.now
    m.apply([spec_input("stamp-01")], start=False)
    assert stamps(m, "stamp-01") == (first, first)
    clock.now = second = "2026-01-02T00:00:00+00:00"
    m.apply([spec_input("stamp-01", vcpus=2)], start=False)
    assert stamps(m, "stamp-01") == (first, second)
    clock.now = third = "2026-01-03T00:00:00+00:00"
    m.apply([spec_input("stamp-02", vcpus=2)], start=False)
    clock.now = fourth = "2026-01-04T00:00:00+00:00"
    assert all(o.ok for o in m.apply([spec_input("stamp-01", vcpus=4), spec_input("stamp-02", vcpus=4)], start=False))
    assert (stamps(m, "stamp-01"), stamps(m, "stamp-02")) == ((first, fourth), (third, fourth))


def test_renamed_copies_of_one_spec_are_rendered_once(conn):
    m = manager(conn, lambda: None)
    assert all(o.ok for o in m.apply([spec_input(f"copy-{i}") for i in range(4)], start=False))
    assert m._copies.copies_made == 3, "the first copy is rendered, the others filled in"


def test_new_domains_are_planned_from_one_list_of_names_not_a_lookup_each(conn, monkeypatch):
    """A batch of new domains costs one round trip for the names libvirt holds, not one lookup per spec."""
    looked_up: list[str] = []
    lookup = conn.lookup

    def recording(name):
        looked_up.append(name)
        return lookup(name)

    monkeypatch.setattr(conn, "lookup", recording)
    outcomes = manager(conn, lambda: None).apply(batch("new"), check=True)
    assert all(o.action == "create" for o in outcomes) and looked_up == []
