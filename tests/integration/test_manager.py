"""The manager on libvirt's in-process test driver: the whole lifecycle, idempotency, conflicts, imports."""

from __future__ import annotations

import threading
import time

import pytest
from lxml import etree

from snpvirt.libvirt import events
from snpvirt.host import readiness
from snpvirt.domain import render, sevparams
from snpvirt.domain.copies import PLACEHOLDER
from snpvirt.domain import spec as specs
from snpvirt.libvirt.connection import Connection
from snpvirt.errors import (BadInputError, ConflictError, ExitCode, NotFoundError, OperationTimeoutError, SnpvirtError,
                            StartFailedError)
from snpvirt.fleet.fleetfile import _owned
from snpvirt.manager import Manager, SpecInput
from tests.conftest import GOLDEN, vector
from tests.unit.fakehost import SNP_FIRMWARE, installed_firmware

BASE = {"name": "mgr-01", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "boot": {"kernel": "/boot/vmlinuz", "cmdline": "console=ttyS0"},
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1}, "disks": [{"path": "/var/lib/libvirt/images/mgr-01.qcow2"}]}


def spec(**changes):
    raw = {**BASE, **changes}
    return SpecInput(raw["name"], specs.parse_spec(raw))


def make_manager(conn):
    return Manager(conn, gate=lambda: readiness.gate_report(conn),
                   resolve_sev=lambda s: sevparams.resolve(s, []))


@pytest.fixture
def mgr(conn):
    return make_manager(conn)


def test_idempotency_triple_and_the_simulated_gate_warning(mgr, conn):
    plan = mgr.apply([spec()], check=True)[0]
    assert (plan.action, plan.changed, plan.details["will_start"], plan.state) == ("create", True, True, "absent")
    assert conn.lookup("mgr-01") is None, "--check changes nothing"
    done = mgr.apply([spec()])[0]
    assert (done.ok, done.action, done.changed, done.state) == (True, "create", True, "running")
    assert [w.rule_id for w in mgr.warnings] == ["gate.simulated"]
    again = mgr.apply([spec()], check=True)[0]
    assert (again.action, again.changed) == ("unchanged", False)
    assert mgr.apply([spec()])[0].changed is False


def test_update_of_a_running_domain_reports_restart_required_and_keeps_identity(mgr, conn):
    mgr.apply([spec()])
    before = mgr.status("mgr-01")
    plan = mgr.apply([spec(vcpus=4)], check=True)[0]
    assert plan.action == "update" and plan.details["diff"] == [{"key": "vcpus", "from": 2, "to": 4}]
    assert plan.details["restart_required"] is True
    done = mgr.apply([spec(vcpus=4)])[0]
    assert done.changed and done.state == "running" and done.details["restart_required"]
    after = mgr.status("mgr-01")
    assert after["uuid"] == before["uuid"] and after["defined_at"] == before["defined_at"]
    assert after["spec"]["vcpus"] == 4 and conn.state("mgr-01") == "running", "nothing restarted by itself"


def test_state_lives_in_the_domain(mgr):
    mgr.apply([spec()])
    status = mgr.status("mgr-01")
    assert status["origin"] == "spec" and status["spec_digest"].startswith("sha256:")
    assert status["launch"]["firmware"]["path"] == "/usr/share/ovmf/OVMF.amdsev.fd"
    assert status["launch"]["firmware"]["sha256"] == "unknown"  # not on this machine: said, not invented
    assert status["launch"]["firmware"]["reason"] == "not found on this machine"
    assert status["launch"]["cmdline"] == "console=ttyS0" and status["launch"]["policy"] == "0x30000"
    assert status["defined_at"] and status["updated_at"] and status["policy_flags"] == ["smt"]
    # No cloud-init: said so (a seed's volume and digest are checked on a daemon, tests/integration/test_apply_volumes.py).
    assert status["cloud_init_seed"] is None
    # Another connection (as another tool would) sees the same truth.
    with Connection("test:///default") as other:
        assert make_manager(other).status("mgr-01")["spec_digest"] == status["spec_digest"]


def test_launch_file_digests_are_recorded_when_readable(mgr, tmp_path):
    firmware = tmp_path / "OVMF.amdsev.fd"
    firmware.write_bytes(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin").read_bytes())
    mgr.apply([spec(firmware=str(firmware))])
    assert mgr.status("mgr-01")["launch"]["firmware"]["sha256"] == \
        "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c"


def test_unmanaged_same_name_domain_is_a_conflict_and_untouched(mgr, conn, clean_test_driver):
    xml = (GOLDEN / "web-01.xml").read_text().replace("<name>web-01</name>", "<name>mgr-01</name>")
    plain = xml[:xml.index("  <metadata>")] + xml[xml.index("</metadata>\n") + len("</metadata>\n"):]
    clean_test_driver.defineXML(plain)
    before = conn.lookup("mgr-01").xml
    outcome = mgr.apply([spec()])[0]
    assert not outcome.ok and isinstance(outcome.error, ConflictError) and outcome.error.exit_code == ExitCode.CONFLICT
    assert outcome.action == "conflict", "another domain holds the name: not a fault of the spec"
    assert conn.lookup("mgr-01").xml == before


def test_a_spec_that_cannot_be_planned_here_is_invalid_and_named(mgr, conn):
    """A spec whose pool volumes this connection cannot reach is the spec's problem (action `invalid`), not a
    conflict with another domain; the others in the call are still applied."""
    volumes = spec(name="mgr-40", boot={"kernel": {"pool": "default", "volume": "vmlinuz"}, "cmdline": "console=ttyS0"},
                   snp={"cbitpos": 51, "reduced_phys_bits": 1, "kernel_hashes": False})
    refused, other = mgr.apply([volumes, spec(name="mgr-41")])
    assert (refused.name, refused.ok, refused.action, refused.error.kind) == ("mgr-40", False, "invalid", "bad_input")
    assert "offers no storage" in refused.error.message and conn.lookup("mgr-40") is None
    assert other.ok and conn.state("mgr-41") == "running"


def test_other_uuid_is_a_conflict(mgr):
    mgr.apply([spec()])
    outcome = mgr.apply([spec(uuid="00000000-1111-2222-3333-444444444444")])[0]
    assert isinstance(outcome.error, ConflictError) and "UUID" in outcome.error.message


def test_partial_failure_reports_each_spec(mgr, conn):
    bad = SpecInput("broken.toml", error=SnpvirtError("broken.toml: malformed TOML", "fix it"))
    outcomes = mgr.apply([spec(name="mgr-02"), bad, spec(name="mgr-02")])
    assert [o.ok for o in outcomes] == [True, False, False]
    assert "named by two specs" in outcomes[2].error.message and conn.state("mgr-02") == "running"


class FailingStart(Connection):
    """The real test driver, with start failing as the real QEMU driver fails here."""

    def start(self, name):
        raise StartFailedError(f"start {name}: unsupported configuration: 'sev-snp' launch security is not supported "
                               "with this QEMU binary", "run snpvirt host check")

    def start_definition(self, name, xml):
        self.start(name)


def test_a_domain_that_fails_to_start_stays_defined_and_says_so(clean_test_driver):
    with FailingStart("test:///default") as conn:
        outcome = make_manager(conn).apply([spec(name="mgr-03")])[0]
        assert not outcome.ok and outcome.details["defined"] is True and outcome.details["started"] is False
        assert conn.state("mgr-03") == "shutoff"


class DroppingDefinition(Connection):
    """libvirt returning a definition without launch security (as an SNP-unaware libvirt would)."""

    def define(self, xml):
        record = super().define(xml)
        return type(record)(record.name, record.uuid, record.state, record.xml.replace("sev-snp", "sev"))


def test_a_definition_that_fails_validation_is_rolled_back(clean_test_driver):
    with DroppingDefinition("test:///default") as conn:
        outcome = make_manager(conn).apply([spec(name="mgr-04")])[0]
        assert not outcome.ok and "rolled back" in outcome.error.message and outcome.details["defined"] is False
        assert conn.lookup("mgr-04") is None


def fleet_copies(prefix: str, count: int, allow_debug: bool = False, **changes) -> list[SpecInput]:
    """A fleet's `count = N` copies of one spec, as fleet/fleetfile.py makes them."""
    one = specs.parse_spec({**BASE, "name": prefix, **changes}, allow_debug)
    return [SpecInput(f"{prefix}-{n}", _owned(one, f"{prefix}-{n}", "web", None)) for n in range(1, count + 1)]


def test_a_fleets_copies_are_checked_once_per_shape_and_each_in_libvirts_copy(clean_test_driver, monkeypatch):
    """The SNP rules run on the shape and on the first copy, not on every copy filled in from the shape;
    libvirt's copy of each is still checked after its define (here it drops launch security: each is rolled back)."""
    checked = []
    real_check = render.check_rendered
    monkeypatch.setattr(render, "check_rendered", lambda name, *a, **k: checked.append(name) or real_check(name, *a, **k))
    with Connection("test:///default") as conn:
        outcomes = make_manager(conn).apply(fleet_copies("mgr-cp", 4))
        assert [o.ok for o in outcomes] == [True] * 4 and [conn.state(f"mgr-cp-{n}") for n in range(1, 5)] == ["running"] * 4
    assert checked == [PLACEHOLDER, "mgr-cp-1"], "the shape as the first copy is rendered, then that copy on its own"
    with DroppingDefinition("test:///default") as conn:
        outcomes = make_manager(conn).apply(fleet_copies("mgr-dc", 4))
        assert [("rolled back" in o.error.message, o.details["defined"]) for o in outcomes] == [(True, False)] * 4
        assert not conn.domain_names() & {f"mgr-dc-{n}" for n in range(1, 5)}


def test_a_debug_fleets_copies_allowed_debugging_are_checked_once_per_shape_too(clean_test_driver, monkeypatch):
    """The shape is checked as its copies are: with the manager's allow_debug (a debug policy passes there)."""
    checked = []
    real_check = render.check_rendered
    monkeypatch.setattr(render, "check_rendered", lambda name, *a, **k: checked.append(name) or real_check(name, *a, **k))
    with Connection("test:///default") as conn:
        m = Manager(conn, gate=lambda: readiness.gate_report(conn), resolve_sev=lambda s: sevparams.resolve(s, []),
                    allow_debug=True)
        debug = {**BASE["snp"], "policy": {"debug": True}}
        assert [o.ok for o in m.apply(fleet_copies("mgr-dbg", 3, allow_debug=True, snp=debug))] == [True] * 3
    assert checked == [PLACEHOLDER, "mgr-dbg-1"], "the shape stood in for the two later copies"


class RecordsStarts(Connection):
    """Which of libvirt's start calls apply made, per domain."""

    def __init__(self, uri):
        super().__init__(uri)
        self.starts = []

    def start(self, name):
        self.starts.append(("create", name))
        super().start(name)

    def start_definition(self, name, xml):
        self.starts.append(("createXML", name))
        super().start_definition(name, xml)


def test_a_created_domain_starts_on_its_checked_copy_an_updated_one_with_create(clean_test_driver):
    """createXML for a domain apply has just created; create for an existing one, which may hold a managed-save
    image that createXML would boot past and leave behind for a later start to restore over newer disks."""
    with RecordsStarts("test:///default") as conn:
        m = make_manager(conn)
        assert m.apply([spec(name="mgr-41")])[0].ok
        assert m.apply([spec(name="mgr-42")], start=False)[0].ok
        assert m.apply([spec(name="mgr-42", vcpus=4)])[0].action == "update"
        assert conn.starts == [("createXML", "mgr-41"), ("create", "mgr-42")]
        assert [conn.state(n) for n in ("mgr-41", "mgr-42")] == ["running", "running"]


def test_verbs_are_idempotent(mgr, conn):
    mgr.apply([spec()], start=False)
    assert conn.state("mgr-01") == "shutoff"
    assert [mgr.start("mgr-01").changed, mgr.start("mgr-01").changed] == [True, False]
    assert [mgr.stop("mgr-01", 5, False).changed, mgr.stop("mgr-01", 5, False).changed] == [True, False]
    mgr.start("mgr-01")
    assert [mgr.destroy("mgr-01").changed, mgr.destroy("mgr-01").changed] == [True, False]
    assert [mgr.undefine("mgr-01").changed, mgr.undefine("mgr-01").changed] == [True, False]
    with pytest.raises(NotFoundError) as missing:
        mgr.start("mgr-01")
    assert (missing.value.message, missing.value.hint) == (
        "no domain named mgr-01 on test:///default", "list them with: snpvirt list --all")


def test_undefine_refuses_a_running_domain_as_a_conflict(mgr, conn):
    mgr.apply([spec()])
    with pytest.raises(ConflictError, match="undefines only stopped domains") as info:
        mgr.undefine("mgr-01")
    assert info.value.exit_code == ExitCode.CONFLICT and "snpvirt stop mgr-01" in info.value.hint
    assert conn.state("mgr-01") == "running"


def test_stop_with_no_time_to_wait_reads_the_state_again(mgr, conn):
    """The test driver's guests stop the moment they are asked: with --timeout 0 the deadline has passed
    by the time anyone looks, and the guest is stopped. That is a stop, not a timeout."""
    mgr.apply([spec()])
    done = mgr.stop("mgr-01", 0, False)
    assert (done.ok, done.changed, done.state) == (True, True, "shutoff")


def test_a_negative_stop_timeout_is_bad_input(mgr, conn):
    mgr.apply([spec()])
    with pytest.raises(BadInputError, match="0 or more seconds"):
        mgr.stop_all(["mgr-01"], -5, False)
    assert conn.state("mgr-01") == "running"


class RecordsCalls(Connection):
    """Records the order of shutdown requests and state reads; with `ignore`, guests never react."""

    def __init__(self, uri, ignore=False):
        super().__init__(uri)
        self.calls, self.ignore = [], ignore

    def shutdown(self, name):
        self.calls.append(("shutdown", name))
        if not self.ignore:
            super().shutdown(name)

    def state(self, name):
        self.calls.append(("state", name))
        return super().state(name)

    def start(self, name):
        self.calls.append(("start", name))
        return super().start(name)


def test_stop_asks_every_domain_before_waiting_for_any(clean_test_driver):
    with RecordsCalls("test:///default", ignore=True) as conn:
        m = make_manager(conn)
        names = ["mgr-21", "mgr-22", "mgr-23"]
        m.apply([spec(name=n) for n in names])
        conn.calls.clear()
        heard = []
        outcomes = m.stop_all(names + ["nosuch"], 0.2, False, poll_s=0.05, waiting=lambda left, _s: heard.append(left))
        first_read = next(i for i, call in enumerate(conn.calls) if call[0] == "state")
        assert [c for c in conn.calls[:first_read]] == [("shutdown", n) for n in names]
        assert heard and heard[0] == names, "people hear which guests are still shutting down"
        assert [o.error.kind for o in outcomes] == ["timeout", "timeout", "timeout", "not_found"]
        assert [conn.state(n) for n in names] == ["running"] * 3


def test_stop_all_stops_them_all(clean_test_driver):
    with RecordsCalls("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="mgr-24"), spec(name="mgr-25")])
        outcomes = m.stop_all(["mgr-24", "mgr-25"], 5, False)
        assert [(o.ok, o.changed, o.state) for o in outcomes] == [(True, True, "shutoff")] * 2


class IgnoresShutdown(Connection):
    def shutdown(self, name):
        pass  # a guest that does not react to ACPI shutdown


def test_stop_times_out_and_force_destroys(clean_test_driver):
    with IgnoresShutdown("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="mgr-05")])
        with pytest.raises(OperationTimeoutError) as info:
            m.stop("mgr-05", 0.3, False, poll_s=0.05)
        assert info.value.exit_code == ExitCode.TIMEOUT and "--force" in info.value.hint
        forced = m.stop("mgr-05", 0.3, True, poll_s=0.05)
        assert forced.details == {"forced": True} and forced.state == "shutoff"


def test_the_manager_uses_the_image_cache_it_is_given(conn):
    """Where apply finds the verified copy of a pulled boot file (image pull's cache), so that a kernel volume
    the host swapped is measured from the bytes the pull verified: the behaviour is tested through a daemon
    (tests/integration/test_image_pull.py) and in-process (test_manager_drift.py, HeldContent)."""
    def cache(sha256):
        return None

    assert Manager(conn, gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []), image_cache=cache).image_cache is cache


def test_a_graceful_shutdown_is_given_a_minute_unless_told_otherwise(mgr):
    """apply's shutdown of a domain whose spec says shutoff (and --restart) waits this long by default,
    as the README says of --timeout; the CLI sets it from --timeout."""
    assert mgr.shutdown_timeout_s == 60.0


class DefaultUri:
    """A connection to libvirt's default URI (none given), holding no domains."""

    uri = None
    simulated = True

    def lookup(self, name):
        return None


def test_a_missing_domain_on_the_default_uri_says_so():
    manager = Manager(DefaultUri(), gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []))
    with pytest.raises(NotFoundError) as missing:
        manager.status("web-01")
    assert missing.value.message == "no domain named web-01 on the default URI"


def test_verbs_refuse_unmanaged_domains(mgr, clean_test_driver):
    with pytest.raises(ConflictError) as unmanaged:
        mgr.start("test")  # the test driver's built-in domain
    assert (unmanaged.value.message, unmanaged.value.hint) == (
        "domain test is not managed by snpvirt", "bring it under management first: snpvirt import test")


def test_list_shows_only_managed_domains(mgr):
    mgr.apply([spec(name="mgr-06"), spec(name="mgr-07")])
    mgr.stop("mgr-07", 5, False)
    names = [r["name"] for r in mgr.list()]
    assert "mgr-06" in names and "mgr-07" not in names and "test" not in names
    rows = {r["name"]: r for r in mgr.list(include_inactive=True)}
    assert rows["mgr-07"]["state"] == "shutoff"
    row = rows["mgr-06"]
    assert (row["vcpus"], row["memory_mib"], row["policy"], row["kernel_hashes"], row["state"]) == (2, 2048, "0x30000", True, "running")


class StoppedFirst(Connection):
    """The real test driver, its domains listed stopped ones first (libvirt promises no order)."""

    def domains(self):
        return sorted(super().domains(), key=lambda record: record.state != "shutoff")


def test_list_shows_every_running_domain_whatever_the_order_libvirt_gives(clean_test_driver):
    with StoppedFirst("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="mgr-08", state="shutoff"), spec(name="mgr-09")])
        assert "mgr-09" in [r["name"] for r in m.list()] and "mgr-08" not in [r["name"] for r in m.list()]


@pytest.mark.parametrize("name,firmware,ok,changes", [
    ("virt-install-x86_64-launch-security-sev-snp.xml", None, True, 2),
    ("virt-install-amd-sev.xml", SNP_FIRMWARE, True, 3),  # its OVMF_CODE.fd is no SNP build: replaced
    ("virt-install-amd-sev.xml", None, False, 3),
    ("virt-install-x86_64-launch-security-sev-snp-full.xml", None, False, 0),
])
def test_import_virt_manager_domains(mgr, conn, name, firmware, ok, changes, tmp_path):
    xml = vector(f"virt-manager/{name}").read_bytes()
    installed = installed_firmware(tmp_path)
    outcome = mgr.import_domain(xml, None, fix=True, check=False, sev=None, firmware=firmware, installed=installed)
    assert outcome.ok is ok
    if ok:
        assert len(outcome.details["changes"]) == changes
    domain = outcome.name
    if ok:
        assert mgr.status(domain)["origin"] == "import"
        again = mgr.import_domain(xml, None, fix=True, check=False, sev=None, firmware=firmware, installed=installed)
        assert (again.ok, again.action, again.changed) == (True, "unchanged", False)
    else:
        assert outcome.error.exit_code == ExitCode.BAD_INPUT and conn.lookup(domain) is None


def test_import_by_name_brings_an_existing_domain_under_management(mgr, conn, clean_test_driver):
    plain = vector("virt-manager/virt-install-x86_64-launch-security-sev-snp.xml").read_text()
    plain = plain.replace("<policy>0x24</policy>", "<policy>0x30000</policy>").replace(
        '<os firmware="efi">', '<os firmware="efi">\n    <loader stateless="yes"/>')
    clean_test_driver.defineXML(plain)
    record = conn.lookup("vm1")
    outcome = mgr.import_domain(record.xml.encode(), record, fix=True, check=False, sev=None, firmware=None)
    assert outcome.ok and outcome.details["changes"] == [] and outcome.changed
    assert mgr.status("vm1")["uuid"] == record.uuid == "00000000-1111-2222-3333-444444444444"


def with_nvram(xml: str) -> str:
    """virt-manager's legacy SEV domain as virt-manager writes it for UEFI: a pflash loader and its NVRAM store."""
    loader = '<loader readonly="yes" type="pflash">/usr/share/OVMF/OVMF_CODE.fd</loader>'
    assert loader in xml
    return xml.replace(loader, loader + "\n    <nvram>/var/lib/libvirt/qemu/nvram/linux2020_VARS.fd</nvram>")


def test_import_fix_drops_nvram_from_what_libvirt_defines(mgr, conn, tmp_path):
    xml = with_nvram(vector("virt-manager/virt-install-amd-sev.xml").read_text()).encode()
    outcome = mgr.import_domain(xml, None, fix=True, check=False, sev=None, firmware=SNP_FIRMWARE,
                                installed=installed_firmware(tmp_path))
    assert outcome.ok, outcome.error
    assert "snp.no_nvram" in {f["id"] for f in outcome.details["broken_rules"]}
    assert "removed <nvram>: SEV-SNP firmware is stateless" in outcome.details["changes"]
    defined = etree.fromstring(conn.lookup("linux2020").xml.encode())  # libvirt's own view of what was defined
    assert defined.find("os/nvram") is None and defined.find("os/loader").get("stateless") == "yes"


def test_import_check_defines_nothing(mgr, conn, tmp_path):
    xml = with_nvram(vector("virt-manager/virt-install-amd-sev.xml").read_text()).encode()
    plan = mgr.import_domain(xml, None, fix=True, check=True, sev=None, firmware=SNP_FIRMWARE,
                             installed=installed_firmware(tmp_path))
    assert (plan.ok, plan.changed, plan.details["planned"]) == (True, True, True)
    assert plan.details["changes"] and "-    <nvram>" in plan.details["xml_diff"]
    assert conn.lookup("linux2020") is None, "--check defines nothing"


def test_import_check_by_name_leaves_the_definition_as_it_was(mgr, conn, clean_test_driver):
    plain = vector("virt-manager/virt-install-x86_64-launch-security-sev-snp.xml").read_text()
    clean_test_driver.defineXML(plain)
    record = conn.lookup("vm1")
    plan = mgr.import_domain(record.xml.encode(), record, fix=True, check=True, sev=None, firmware=None)
    assert plan.ok and plan.details["planned"] and plan.details["changes"]
    assert conn.lookup("vm1").xml == record.xml, "--check changes nothing"
    with pytest.raises(ConflictError, match="not managed by snpvirt"):
        mgr.status("vm1")


PROBE_XML = ("<domain type='test'><name>watch-probe</name><uuid>00000000-0000-0000-0000-0000000a7c12</uuid>"
             "<memory>131072</memory><os><type>hvm</type></os></domain>")


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


@pytest.mark.event_loop
def test_watch_sees_lifecycle_events(mgr, clean_test_driver):
    seen, stop = [], threading.Event()
    thread = threading.Thread(target=events.watch, args=("test:///default", {"mgr-08", "watch-probe"}, seen.append, print, stop))
    thread.start()
    try:
        def probe_seen():  # subscribed once the probe's (re)definition is reported: no sleeping and hoping
            clean_test_driver.defineXML(PROBE_XML)
            return any(e.domain == "watch-probe" for e in seen)
        wait_for(probe_seen, 10, "no event for the probe domain")
        # What the events report must have happened: checked in libvirt first, so a broken apply or destroy
        # fails here at once instead of after waiting out the deadline for events that cannot come.
        assert all(o.ok for o in mgr.apply([spec(name="mgr-08"), spec(name="mgr-09")]))
        assert clean_test_driver.lookupByName("mgr-08").isActive()
        assert mgr.destroy("mgr-08").changed and not clean_test_driver.lookupByName("mgr-08").isActive()
        watched = lambda: [e for e in seen if e.domain == "mgr-08"]  # noqa: E731
        wait_for(lambda: len(watched()) >= 3, 10, "not 3 events for mgr-08")
    finally:
        stop.set()
        thread.join(5)
    assert [(e.domain, e.event, e.detail) for e in watched()] == [
        ("mgr-08", "defined", "added"), ("mgr-08", "started", "booted"), ("mgr-08", "stopped", "destroyed")]
    assert {e.domain for e in seen} == {"mgr-08", "watch-probe"}, "mgr-09 is not among the names watched"
    assert seen[0].uri == "test:///default" and len(seen[0].uuid) == 36


def test_define_xml_validates_marks_managed_and_is_idempotent(mgr, conn):
    from snpvirt.errors import BadInputError

    golden = (GOLDEN / "db-01.xml").read_bytes()
    first = mgr.define_xml(golden, "db-01.xml")
    assert (first.action, first.changed, first.state) == ("define", True, "shutoff")
    assert mgr.status("db-01")["origin"] == "spec", "render's own metadata is kept"
    assert mgr.define_xml(golden, "db-01.xml").action == "unchanged"
    legacy = vector("virt-manager/virt-install-amd-sev.xml").read_bytes()
    with pytest.raises(BadInputError, match="snp.launch_security"):
        mgr.define_xml(legacy, "amd-sev.xml")
    assert conn.lookup("linux2020") is None, "a domain without SEV-SNP is never defined"


def test_a_definition_edited_to_lose_snp_is_never_started_and_apply_restores_it(mgr, conn, clean_test_driver):
    mgr.apply([spec(name="mgr-11")], start=False)
    xml = conn.lookup("mgr-11").xml
    stripped = xml[:xml.index("<launchSecurity")] + xml[xml.index("</launchSecurity>") + len("</launchSecurity>"):]
    clean_test_driver.defineXML(stripped)  # someone edits it outside snpvirt, metadata kept
    with pytest.raises(ConflictError, match="breaks snp.launch_security.*does not start it"):
        mgr.start("mgr-11")
    assert conn.state("mgr-11") == "shutoff"
    plan = mgr.apply([spec(name="mgr-11")], check=True)[0]
    assert plan.action == "update" and plan.details["diff"][-1]["key"] == "(definition)"
    done = mgr.apply([spec(name="mgr-11")])[0]
    assert done.ok and done.state == "running" and "<launchSecurity type='sev-snp'" in conn.lookup("mgr-11").xml


def test_define_of_an_edited_document_updates_it(mgr, conn):
    golden = (GOLDEN / "db-01.xml").read_text()
    assert mgr.define_xml(golden.encode(), "db-01.xml").action == "define"
    edited = golden.replace("<memory unit='MiB'>8192</memory>", "<memory unit='MiB'>4096</memory>").replace(
        "<currentMemory unit='MiB'>8192</currentMemory>", "<currentMemory unit='MiB'>4096</currentMemory>")
    outcome = mgr.define_xml(edited.encode(), "db-01.xml")
    assert (outcome.action, outcome.changed) == ("update", True) and mgr.status("db-01")["memory_mib"] == 4096
    assert mgr.define_xml(edited.encode(), "db-01.xml").action == "unchanged"


# --- desired run state: state, autostart, --restart ------------------------------------------------


def test_state_shutoff_defines_without_starting_and_shuts_a_running_domain_down(mgr, conn):
    plan = mgr.apply([spec(state="shutoff")], check=True)[0]
    assert (plan.action, plan.changed, plan.details["will_start"]) == ("create", True, False)
    assert mgr.apply([spec(state="shutoff")])[0].state == "shutoff" and conn.state("mgr-01") == "shutoff"
    assert mgr.apply([spec(state="shutoff")])[0].changed is False

    mgr.apply([spec()])  # running (the default)
    plan = mgr.apply([spec(state="shutoff")], check=True)[0]
    assert (plan.action, plan.changed, plan.details["will_stop"]) == ("unchanged", True, True)
    assert plan.details["diff"] == [{"key": "state", "from": "running", "to": "shutoff"}]
    assert conn.state("mgr-01") == "running", "--check changes nothing"
    done = mgr.apply([spec(state="shutoff")])[0]
    assert (done.ok, done.changed, done.state) == (True, True, "shutoff") and conn.state("mgr-01") == "shutoff"
    assert mgr.apply([spec(state="shutoff")], check=True)[0].changed is False
    assert mgr.apply([spec(state="shutoff")])[0].changed is False


def test_the_run_state_never_redefines_the_domain(mgr, conn):
    mgr.apply([spec()])
    before = conn.lookup("mgr-01").xml
    mgr.apply([spec(state="shutoff", autostart=True)])
    assert conn.lookup("mgr-01").xml == before


def test_autostart_converges_through_libvirts_flag(mgr, conn):
    plan = mgr.apply([spec(autostart=True)], check=True)[0]
    assert {"key": "autostart", "from": False, "to": True} in plan.details["diff"]
    assert mgr.apply([spec(autostart=True)])[0].changed and conn.autostart("mgr-01") is True
    assert mgr.apply([spec(autostart=True)], check=True)[0].changed is False
    assert mgr.apply([spec(autostart=True)])[0].changed is False
    assert mgr.apply([spec()])[0].changed is False and conn.autostart("mgr-01") is True, "a silent spec leaves it"
    plan = mgr.apply([spec(autostart=False)], check=True)[0]
    assert (plan.changed, plan.details["diff"]) == (True, [{"key": "autostart", "from": True, "to": False}])
    assert conn.autostart("mgr-01") is True, "--check changes nothing"
    assert mgr.apply([spec(autostart=False)])[0].changed and conn.autostart("mgr-01") is False
    assert mgr.apply([spec(autostart=False)])[0].changed is False


def test_restart_applies_a_new_definition_only_when_asked(mgr, conn):
    mgr.apply([spec()])
    updated = mgr.apply([spec(vcpus=4)])[0]
    assert updated.details["restart_required"] and "restarted" not in updated.details, "nothing restarts implicitly"
    plan = mgr.apply([spec(vcpus=4)], check=True, restart=True)[0]
    assert (plan.changed, plan.details["will_restart"]) == (True, True)
    assert mgr.status("mgr-01")["restart_required"] is True, "--check changes nothing"
    done = mgr.apply([spec(vcpus=4)], restart=True)[0]
    assert (done.ok, done.changed, done.state, done.details["restarted"]) == (True, True, "running", True)
    assert done.details["restart_required"] is False, "it runs the new definition now"
    assert mgr.status("mgr-01")["restart_required"] is False and mgr.status("mgr-01")["vcpus"] == 4
    again = mgr.apply([spec(vcpus=4)], restart=True)[0]
    assert (again.changed, again.details["will_restart"]) == (False, False)


class SlowToShutDown(RecordsCalls):
    """Guests that take a moment to shut down, so restarts on two workers would overlap; counts the
    restarts in flight (from the shutdown request until the start)."""

    def __init__(self, uri):
        super().__init__(uri)
        self.in_flight, self.most_in_flight, self.lock = set(), 0, threading.Lock()

    def shutdown(self, name):
        with self.lock:
            self.in_flight.add(name)
            self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        time.sleep(0.2)  # gives another worker the time to begin a restart, if it may
        super().shutdown(name)

    def start(self, name):
        super().start(name)
        with self.lock:
            self.in_flight.discard(name)


def test_restart_takes_one_domain_at_a_time(clean_test_driver):
    with SlowToShutDown("test:///default") as conn:
        m = make_manager(conn)
        names = ["mgr-31", "mgr-32", "mgr-33"]
        m.apply([spec(name=n) for n in names])
        m.apply([spec(name=n, vcpus=4) for n in names])
        conn.calls.clear()
        outcomes = m.apply([spec(name=n, vcpus=4) for n in names], restart=True)
        assert all(o.details.get("restarted") for o in outcomes)
        steps = [c for c in conn.calls if c[0] in ("shutdown", "start")]
        assert sorted(steps[i][1] for i in range(0, 6, 2)) == names
        assert all(steps[i][1] == steps[i + 1][1] and (steps[i][0], steps[i + 1][0]) == ("shutdown", "start")
                   for i in range(0, 6, 2)), steps
        assert conn.most_in_flight == 1
