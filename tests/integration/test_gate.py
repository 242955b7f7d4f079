"""The readiness gate on libvirt's test driver, judging a captured host: every mutating verb refuses a host
that is not ready, with nothing changed in libvirt, and proceeds on one that is ready."""

from __future__ import annotations

import dataclasses

import pytest

from snpvirt.host import readiness
from snpvirt.domain import sevparams
from snpvirt.domain import spec as specs
from snpvirt.libvirt.connection import Connection
from snpvirt.errors import BadInputError, HostNotReadyError
from snpvirt.manager import Manager, SpecInput
from tests.conftest import GOLDEN, vector
from tests.unit.fakehost import SNP_FIRMWARE, FakeHost, captured_descriptors, genoa_domcaps

SPEC = {"name": "gate-01", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1}, "disks": [{"path": "/var/lib/libvirt/images/gate-01.qcow2"}]}
LEGACY_SEV = "virt-manager/virt-install-amd-sev.xml"  # virt-manager's SEV domain: import --fix makes it SNP
PLAIN_SNP = "virt-manager/virt-install-x86_64-launch-security-sev-snp.xml"


def spec_input() -> SpecInput:
    return SpecInput(SPEC["name"], specs.parse_spec(SPEC))


def import_ready_xml() -> str:
    """virt-manager's SNP domain as an existing, unmanaged libvirt domain that import --fix takes over."""
    return vector(PLAIN_SNP).read_text().replace("<policy>0x24</policy>", "<policy>0x30000</policy>")


# Each verb: (setup on an ungated manager and the raw test driver, the verb itself on the gated manager).
def _nothing(_setup, _raw):
    pass


def _define_stopped(setup, _raw):
    assert setup.apply([spec_input()], start=False)[0].ok


def _define_unmanaged(_setup, raw):
    raw.defineXML(import_ready_xml())


def _import_by_name(mgr):
    record = mgr.hv.lookup("vm1")
    return mgr.import_domain(record.xml.encode(), record, fix=True, check=False, sev=None, firmware=None)


VERBS = {
    "apply (create)": (_nothing, lambda mgr: mgr.apply([spec_input()])[0]),
    "apply (unchanged, stopped: starts it)": (_define_stopped, lambda mgr: mgr.apply([spec_input()])[0]),
    "define (spec)": (_nothing, lambda mgr: mgr.apply([spec_input()], start=False)[0]),
    "define (XML)": (_nothing, lambda mgr: mgr.define_xml((GOLDEN / "db-01.xml").read_bytes(), "db-01.xml")),
    "start": (_define_stopped, lambda mgr: mgr.start("gate-01")),
    "import --fix (file)": (_nothing, lambda mgr: mgr.import_domain(
        vector(LEGACY_SEV).read_bytes(), None, fix=True, check=False, sev=None, firmware=SNP_FIRMWARE,
        installed=captured_descriptors())),
    "import --fix (by name)": (_define_unmanaged, _import_by_name),
}


@pytest.fixture
def ready_host(tmp_path):
    return FakeHost(tmp_path / "ready")


@pytest.fixture
def unready_host(tmp_path):
    """A Milan host whose kvm_amd has SNP off: the most common reason a host is not ready."""
    host = FakeHost(tmp_path / "unready")
    host.write("sys/module/kvm_amd/parameters/sev_snp", "N\n")
    return host


def gated(hv, sysroot=None, domcaps=None, facts=None) -> Manager:
    """A manager whose gate is built as the CLI builds it (--sysroot, --host-caps); `facts`: where the gate
    reads libvirt's facts, when not from the hypervisor itself."""
    return Manager(hv, gate=lambda: readiness.gate_report(facts or hv, sysroot=sysroot, domcaps_file=domcaps),
                   resolve_sev=lambda s: sevparams.resolve(s, []))


def libvirt_state(conn) -> list[tuple]:
    """Everything a verb could change: which domains exist, their identity, state and definition."""
    return sorted((r.name, r.uuid, r.state, r.xml) for r in conn.domains())


class DomcapsUnavailable:
    """The test driver as a host whose libvirt cannot report domain capabilities (QEMU not probed, say)."""

    simulated = True

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.actual_uri = conn.actual_uri

    def libvirt_facts(self):
        return dataclasses.replace(self.conn.libvirt_facts(), domcaps_xml=None,
                                   domcaps_error="read domain capabilities: QEMU was not probed")


@pytest.mark.parametrize("verb", VERBS)
def test_every_mutating_verb_refuses_a_host_that_is_not_ready(verb, conn, clean_test_driver, unready_host):
    setup, act = VERBS[verb]
    setup(gated(conn), clean_test_driver)
    before = libvirt_state(conn)
    with pytest.raises(HostNotReadyError, match="nothing was changed: not ready: .*kvm_amd.sev_snp"):
        act(gated(conn, unready_host.root, genoa_domcaps()))
    assert libvirt_state(conn) == before


@pytest.mark.parametrize("verb", VERBS)
def test_every_mutating_verb_refuses_when_libvirt_cannot_say_it_launches_snp(verb, conn, clean_test_driver, ready_host):
    """Every other fact of the host is fine; only domcaps.sev_snp could not be checked: that is not a pass."""
    setup, act = VERBS[verb]
    setup(gated(conn), clean_test_driver)
    before = libvirt_state(conn)
    with pytest.raises(HostNotReadyError, match="domcaps.sev_snp could not be checked"):
        act(gated(conn, ready_host.root, facts=DomcapsUnavailable(conn)))
    assert libvirt_state(conn) == before


@pytest.mark.parametrize("verb", VERBS)
def test_every_mutating_verb_proceeds_on_a_ready_host(verb, conn, clean_test_driver, ready_host):
    setup, act = VERBS[verb]
    setup(gated(conn), clean_test_driver)
    before = libvirt_state(conn)
    mgr = gated(conn, ready_host.root, genoa_domcaps())
    outcome = act(mgr)
    assert outcome.ok and outcome.changed, outcome.error
    assert mgr.warnings == [], "the gate judged the captured host; it was not skipped as simulated"
    assert libvirt_state(conn) != before


def test_the_test_drivers_own_domcaps_offer_no_snp(conn, ready_host):
    """--sysroot without --host-caps: the test driver's domain capabilities speak for the host, and they have no SEV."""
    with pytest.raises(HostNotReadyError, match="domcaps.sev, domcaps.sev_snp"):
        gated(conn, ready_host.root).apply([spec_input()])
    assert conn.lookup("gate-01") is None


def test_without_a_captured_host_the_gate_does_not_apply_on_the_test_driver(conn):
    assert readiness.gate_report(conn) is None
    mgr = gated(conn)
    assert mgr.apply([spec_input()])[0].changed
    assert [(w.rule_id, w.severity, w.message, w.hint) for w in mgr.warnings] == [(
        "gate.simulated", "warning",
        "libvirt's test driver is a simulated hypervisor: the SEV-SNP readiness gate does not apply",
        "use a qemu:// URI for real guests")]


def test_a_refusal_names_what_is_not_ready_and_where_to_see_the_fixes(conn, unready_host):
    with pytest.raises(HostNotReadyError) as refused:
        gated(conn, unready_host.root, genoa_domcaps()).apply([spec_input()])
    assert refused.value.message.startswith("host not ready for SEV-SNP, nothing was changed: not ready: ")
    assert refused.value.hint == "see the fixes: snpvirt host check --connect test:///default"


class NoUri:
    """A real hypervisor whose connection has no URI to name (the default one): the hint says where one goes."""

    uri = None
    simulated = False


def test_a_real_hypervisor_without_host_facts_is_refused_with_a_hint_for_any_uri():
    mgr = Manager(NoUri(), gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []))
    with pytest.raises(HostNotReadyError) as refused:
        mgr.ensure_ready()
    assert (refused.value.message, refused.value.hint) == (
        "host not ready for SEV-SNP, nothing was changed: no host facts to check",
        "see the fixes: snpvirt host check --connect <uri>")


def test_a_captured_host_must_be_a_directory(conn, tmp_path):
    with pytest.raises(BadInputError) as refused:
        readiness.gate_report(conn, sysroot=tmp_path / "missing")
    assert (refused.value.message, refused.value.hint) == (
        f"--sysroot {tmp_path / 'missing'} is not a directory", "give the folder that holds the captured sys/, proc/, dev/")


class AsIfReal(Connection):
    """The test driver presented as a real hypervisor: the manager and the gate must treat it as one."""

    simulated = False


def test_a_real_hypervisor_never_goes_without_the_gate(clean_test_driver):
    with AsIfReal("test:///default") as real:
        before = libvirt_state(real)
        mgr = Manager(real, gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []))
        with pytest.raises(HostNotReadyError, match="no host facts to check"):
            mgr.apply([spec_input()])
        assert libvirt_state(real) == before


def test_a_captured_host_never_stands_in_for_a_real_hypervisor(clean_test_driver, ready_host):
    with AsIfReal("test:///default") as real:
        with pytest.raises(BadInputError) as refused:
            readiness.gate_report(real, sysroot=ready_host.root, domcaps_file=genoa_domcaps())
    assert (refused.value.message, refused.value.hint) == (
        "--sysroot describes a captured host; test:///default is a real hypervisor, and the readiness gate checks "
        "that host's own facts", "drop --sysroot (it is for libvirt's test driver, e.g. --connect test:///default)")


def test_a_real_hypervisor_is_judged_on_what_its_own_libvirt_reports(clean_test_driver):
    """No captured host: the gate reads the connected libvirt (versions, domain capabilities), which here
    offers no SEV, so the host is not ready."""
    with AsIfReal("test:///default") as real:
        report = readiness.gate_report(real)
    statuses = {c.check_id: c.status for c in report.checks}
    assert not report.ready and statuses["libvirt.version"] == "pass" and statuses["domcaps.sev_snp"] == "fail"
