"""`snpvirt host check` against real libvirt: this machine has no SEV, so it must say so cleanly."""

from __future__ import annotations

import json

import pytest

from snpvirt.libvirt.connection import Connection
from snpvirt.errors import ExitCode
from tests.conftest import GOLDEN, run_cli


@pytest.mark.daemon
def test_real_qemu_driver_host_is_not_ready(libvirtd):
    result = run_cli("host", "check", "--connect", libvirtd.qemu_uri, "--json")
    assert result.code == ExitCode.NOT_READY, result.stderr
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    checks = {c["name"]: c for c in doc["results"]}
    assert doc["ready"] is False and doc["host"]["uri"] == libvirtd.qemu_uri and doc["host"]["remote"] is False
    assert checks["domcaps.sev_snp"]["status"] == "fail"
    assert checks["domcaps.sev"]["status"] == "fail" and "<sev supported='no'>" in checks["domcaps.sev"]["message"]
    assert checks["libvirt.version"]["status"] == "pass" and checks["qemu.version"]["status"] == "pass"
    assert checks["capacity.snp_guests"]["status"] == "skip"
    # Every check ran or said why not: no silent passes on the files this machine lacks.
    assert all(c["message"] for c in doc["results"])
    assert all(c["hint"] for c in doc["results"] if c["status"] in ("fail", "warn"))


@pytest.mark.daemon
def test_human_output_against_the_real_daemon(libvirtd):
    result = run_cli("host", "check", "--connect", libvirtd.qemu_uri, "--policy", "0x30000")
    assert result.code == ExitCode.NOT_READY
    assert "fail  domcaps.sev_snp" in result.stdout and "fix:" in result.stdout
    assert "pass  policy.bits" in result.stdout and result.stdout.rstrip().splitlines()[-1].startswith("not ready:")


def test_unreachable_libvirt_is_a_skip_not_a_crash(tmp_path):
    result = run_cli("host", "check", "--connect", f"qemu+unix:///system?socket={tmp_path}/absent", "--json")
    doc = json.loads(result.stdout)
    checks = {c["name"]: c for c in doc["results"]}
    assert result.code == ExitCode.NOT_READY
    assert checks["libvirt.version"]["status"] == "skip" and "no libvirt connection" in checks["libvirt.version"]["message"]
    assert "cannot talk to" in doc["host"]["libvirt_error"]


def test_running_snp_guests_are_counted(clean_test_driver):
    dom = clean_test_driver.defineXML((GOLDEN / "web-01.xml").read_text())
    with Connection("test:///default") as conn:
        before = conn.libvirt_facts().running_es_snp_guests
        dom.create()
        facts = conn.libvirt_facts()
    assert facts.running_es_snp_guests == before + 1
    assert facts.driver == "TEST" and facts.lib_version >= 10_005_000 and facts.domcaps_xml
