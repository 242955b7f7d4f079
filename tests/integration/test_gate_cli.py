"""The readiness gate through the real CLI, against a real libvirtd's test driver judging a captured host
(--sysroot, --host-caps): every mutating command exits 3 with nothing changed on a host that is not
ready, and proceeds on one that is; a captured host never stands in for a real hypervisor."""

from __future__ import annotations

import json

import libvirt
import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, GOLDEN, assert_clean_error, run_cli, vector
from tests.integration.test_gate import LEGACY_SEV, import_ready_xml
from tests.unit.fakehost import SNP_FIRMWARE, FakeHost, genoa_domcaps

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """A ready captured host, and one whose kvm_amd has SNP off."""
    root = tmp_path_factory.mktemp("captured")
    unready = FakeHost(root / "unready")
    unready.write("sys/module/kvm_amd/parameters/sev_snp", "N\n")
    return {"ready": FakeHost(root / "ready").root, "unready": unready.root}


def libvirt_state(conn) -> list[tuple]:
    return sorted((d.name(), d.UUIDString(), d.state()[0], d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                  for d in conn.listAllDomains())


def _define_web(uri, _held):
    assert run_cli("define", WEB, "-c", uri).code == 0  # the gate does not apply without a captured host


def _define_unmanaged(_uri, held):
    held.defineXML(import_ready_xml())


# command: (setup, arguments, what must be true of libvirt afterwards when it proceeded)
COMMANDS = {
    "apply (create)": (None, ("apply", WEB), lambda c: c.lookupByName("web-01").isActive()),
    "apply (unchanged, stopped: starts it)": (_define_web, ("apply", WEB), lambda c: c.lookupByName("web-01").isActive()),
    "define (spec)": (None, ("define", WEB), lambda c: not c.lookupByName("web-01").isActive()),
    "define (XML)": (None, ("define", GOLDEN / "db-01.xml"), lambda c: "snpvirt" in c.lookupByName("db-01").XMLDesc(0)),
    "start": (_define_web, ("start", "web-01"), lambda c: c.lookupByName("web-01").isActive()),
    "import --fix (file)": (None, ("import", vector(LEGACY_SEV), "--fix", "--firmware", SNP_FIRMWARE),
                            lambda c: "sev-snp" in c.lookupByName("linux2020").XMLDesc(0)),
    "import --fix (by name)": (_define_unmanaged, ("import", "vm1", "--fix"),
                               lambda c: "snpvirt" in c.lookupByName("vm1").XMLDesc(0)),
}


def run_on(host, uri, *args):
    result = run_cli(*args, "-c", uri, "--sysroot", host, "--host-caps", genoa_domcaps(), "--json")
    return result, json.loads(result.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_host_that_is_not_ready_is_refused_and_nothing_changes(command, libvirtd, held, hosts):
    setup, args, _ = COMMANDS[command]
    if setup:
        setup(libvirtd.test_uri, held)
    before = libvirt_state(held)
    result, doc = run_on(hosts["unready"], libvirtd.test_uri, *args)
    assert_clean_error(result, ExitCode.NOT_READY, "host not ready for SEV-SNP, nothing was changed", "kvm_amd.sev_snp")
    assert doc["ok"] is False and doc["error"]["kind"] == "not_ready"
    assert libvirt_state(held) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_ready_host_proceeds(command, libvirtd, held, hosts):
    setup, args, proceeded = COMMANDS[command]
    if setup:
        setup(libvirtd.test_uri, held)
    result, doc = run_on(hosts["ready"], libvirtd.test_uri, *args)
    assert result.code == 0 and doc["ok"] and doc["changed"], result.stderr
    assert not doc.get("warnings"), "the gate judged the captured host; it was not skipped as simulated"
    assert proceeded(held)


def test_without_host_caps_the_test_drivers_domcaps_speak_and_offer_no_snp(libvirtd, held, hosts):
    result = run_cli("apply", WEB, "-c", libvirtd.test_uri, "--sysroot", hosts["ready"])
    assert_clean_error(result, ExitCode.NOT_READY, "domcaps.sev, domcaps.sev_snp")
    assert [d.name() for d in held.listAllDomains()] == ["test"]


def test_a_captured_host_is_refused_on_a_real_hypervisor(libvirtd, hosts):
    result = run_cli("apply", WEB, "-c", libvirtd.qemu_uri, "--sysroot", hosts["ready"], "--host-caps", genoa_domcaps())
    assert_clean_error(result, ExitCode.BAD_INPUT, "--sysroot describes a captured host", "real hypervisor")
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        assert conn.listAllDomains() == []
    finally:
        conn.close()


def test_bad_captured_host_arguments(libvirtd, held, tmp_path):
    missing = run_cli("define", WEB, "-c", libvirtd.test_uri, "--sysroot", tmp_path / "nope")
    assert_clean_error(missing, ExitCode.BAD_INPUT, "is not a directory")
    caps_alone = run_cli("start", "web-01", "-c", libvirtd.test_uri, "--host-caps", genoa_domcaps())
    assert_clean_error(caps_alone, ExitCode.BAD_INPUT, "with --sysroot")
    assert [d.name() for d in held.listAllDomains()] == ["test"]
