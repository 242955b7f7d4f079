"""A plan never promises what the run refuses: `--check` runs the same readiness gate and the same conflict
checks as the real run, and ends with the same exit code and JSON error kind, having changed nothing.

Through the real CLI against a real libvirtd's test driver judging a captured host (--sysroot, --host-caps)."""

from __future__ import annotations

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import GOLDEN, vector
from tests.integration.test_gate import LEGACY_SEV, import_ready_xml
from tests.integration.test_gate_cli import WEB, held, hosts, libvirt_state, run_on  # noqa: F401 (fixtures)
from tests.unit.fakehost import SNP_FIRMWARE

pytestmark = pytest.mark.daemon
# virt-manager's SEV domain keeps an OVMF_CODE.fd that is no SNP build: replaced by the captured host's SNP build.
IMPORT_LEGACY = ("import", vector(LEGACY_SEV), "--fix", "--firmware", SNP_FIRMWARE)


def _define_web(uri, _held):
    from tests.conftest import run_cli

    assert run_cli("define", WEB, "-c", uri).code == 0  # no captured host: the gate does not apply


def _unmanaged(name):
    """Another tool's domain (SEV-SNP, but no snpvirt metadata) holding `name`."""
    def setup(_uri, held):
        held.defineXML(import_ready_xml().replace("<name>vm1</name>", f"<name>{name}</name>"))
    return setup


# case: (host, setup, arguments, the exit code both runs must end with)
CASES = {
    "apply (create), host not ready": ("unready", None, ("apply", WEB), ExitCode.NOT_READY),
    "apply (stopped: would start it), host not ready": ("unready", _define_web, ("apply", WEB), ExitCode.NOT_READY),
    "define (spec), host not ready": ("unready", None, ("define", WEB), ExitCode.NOT_READY),
    "define (XML), host not ready": ("unready", None, ("define", GOLDEN / "db-01.xml"), ExitCode.NOT_READY),
    "import --fix (file), host not ready": ("unready", None, IMPORT_LEGACY, ExitCode.NOT_READY),
    "import --fix (by name), host not ready": ("unready", _unmanaged("vm1"), ("import", "vm1", "--fix"), ExitCode.NOT_READY),
    "apply, name held by another tool": ("ready", _unmanaged("web-01"), ("apply", WEB), ExitCode.CONFLICT),
    "define (spec), name held by another tool": ("ready", _unmanaged("web-01"), ("define", WEB), ExitCode.CONFLICT),
    "define (XML), name held by another tool": ("ready", _unmanaged("db-01"), ("define", GOLDEN / "db-01.xml"),
                                                ExitCode.CONFLICT),
    "import --fix (file), name held by another tool": ("ready", _unmanaged("linux2020"),
                                                       IMPORT_LEGACY, ExitCode.CONFLICT),
    "import --fix (file), its firmware is no SNP build": ("ready", None, ("import", vector(LEGACY_SEV), "--fix"),
                                                          ExitCode.BAD_INPUT),
}


@pytest.mark.parametrize("case", CASES)
def test_check_ends_as_the_run_would_and_changes_nothing(case, libvirtd, held, hosts):  # noqa: F811
    host, setup, args, expected = CASES[case]
    if setup:
        setup(libvirtd.test_uri, held)
    before = libvirt_state(held)

    planned, plan_doc = run_on(hosts[host], libvirtd.test_uri, *args, "--check")
    assert libvirt_state(held) == before, "--check changed libvirt"
    ran, run_doc = run_on(hosts[host], libvirtd.test_uri, *args)

    assert ran.code == expected, (ran.code, ran.stderr)
    assert planned.code == ran.code, (planned.stdout, planned.stderr)
    assert plan_doc["ok"] is run_doc["ok"] is False
    assert plan_doc["error"]["kind"] == run_doc["error"]["kind"]
    assert "Traceback" not in planned.stderr


@pytest.mark.parametrize("args", [("apply", WEB), ("define", WEB), ("define", GOLDEN / "db-01.xml"),
                                  IMPORT_LEGACY])
def test_on_a_ready_host_check_plans_the_change_and_makes_none(args, libvirtd, held, hosts):  # noqa: F811
    before = libvirt_state(held)
    planned, doc = run_on(hosts["ready"], libvirtd.test_uri, *args, "--check")
    assert planned.code == 0 and doc["ok"] and doc["changed"], planned.stderr
    assert all(r["planned"] for r in doc["results"])
    assert libvirt_state(held) == before
