"""Definitions changed outside snpvirt, through the real CLI against a real, isolated libvirtd.

The edits are made as `virsh define` makes them: another client defines a modified copy of the domain's
XML on the same daemon, snpvirt's metadata kept.
"""

from __future__ import annotations

import json
import re

import libvirt
import pytest
from lxml import etree

from snpvirt import domxml, drift, render, sevparams
from snpvirt import spec as specs
from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, assert_clean_error, run_cli
from tests.integration.test_manager_drift import debug_policy, edit_outside, strip_snp_behind_a_comment, two_vcpus_and_debug

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"


def cli_json(*args):
    result = run_cli(*args, "--json")
    return result, json.loads(result.stdout)


@pytest.mark.parametrize("edit", [strip_snp_behind_a_comment, debug_policy], ids=["no-launch-security", "debug-policy"])
def test_start_refuses_a_definition_that_lost_snp_and_apply_restores_it(libvirtd, held, edit):
    uri = libvirtd.test_uri
    assert run_cli("define", WEB, "-c", uri).code == 0
    edit_outside(held, "web-01", edit)

    result, plan = cli_json("apply", WEB, "--check", "-c", uri)
    assert result.code == 0 and plan["results"][0]["action"] == "update" and plan["changed"] is True
    assert any(d["key"].startswith("definition.launch_security") for d in plan["results"][0]["diff"])

    refused = run_cli("start", "web-01", "-c", uri)
    assert_clean_error(refused, ExitCode.CONFLICT, "snpvirt does not start it")
    assert "hint: restore it: snpvirt apply SPEC" in refused.stderr
    assert held.lookupByName("web-01").isActive() == 0

    result, done = cli_json("apply", WEB, "-c", uri)
    assert result.code == 0 and done["results"][0]["action"] == "update" and done["results"][0]["state"] == "running"
    restored = domxml.parse(held.lookupByName("web-01").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert restored.find("launchSecurity").get("type") == "sev-snp" and restored.findtext("launchSecurity/policy") == "0x00030000"
    _, again = cli_json("apply", WEB, "--check", "-c", uri)
    assert again["results"][0]["action"] == "unchanged"


def test_drift_by_another_client_is_seen_listed_and_restored(libvirtd, held):
    uri = libvirtd.test_uri
    assert run_cli("apply", WEB, "-c", uri).code == 0
    edit_outside(held, "web-01", two_vcpus_and_debug)  # what `virsh define` of an edited dump does

    _, listed = cli_json("list", "-c", uri)
    row = listed["results"][0]
    assert (row["vcpus"], row["policy"], row["restart_required"]) == (4, "0x30000", True), "the live values run"
    assert row["pending"]["vcpus"] == 2 and row["pending"]["policy"] == "0xb0000"
    human = run_cli("list", "-c", uri).stdout
    assert re.search(r"web-01\s+running\s+4\s+4096\s+0x30000 smt\s+yes\s+unknown\s+vcpus=2,policy=0xb0000", human), human

    _, plan = cli_json("apply", WEB, "--check", "-c", uri)
    drifted = {d["key"]: (d["from"], d["to"]) for d in plan["results"][0]["diff"]}
    assert plan["results"][0]["action"] == "update"
    assert drifted["definition.vcpus"] == (2, 4) and drifted["definition.launch_security.policy"] == ("0xb0000", "0x30000")
    text = run_cli("apply", WEB, "--check", "-c", uri).stdout
    assert "web-01: definition.vcpus: 2 -> 4" in text

    _, done = cli_json("apply", WEB, "-c", uri)
    assert done["results"][0]["action"] == "update" and done["results"][0]["restart_required"] is False
    _, listed = cli_json("list", "-c", uri)
    assert (listed["results"][0]["restart_required"], listed["results"][0]["pending"]) == (False, {})


def test_an_update_of_a_running_domain_stays_restart_required_until_it_restarts(libvirtd, held, tmp_path):
    uri = libvirtd.test_uri
    assert run_cli("apply", WEB, "-c", uri).code == 0
    two = tmp_path / "web-01.toml"
    two.write_text(WEB.read_text().replace("vcpus = 4", "vcpus = 2"))
    for round_ in range(3):  # the update, then apply after apply
        _, doc = cli_json("apply", two, "-c", uri)
        assert doc["results"][0]["action"] == ("update" if round_ == 0 else "unchanged")
        assert doc["results"][0]["restart_required"] is True
    _, status = cli_json("status", "web-01", "-c", uri)
    assert (status["results"][0]["vcpus"], status["results"][0]["pending"]) == (4, {"vcpus": 2})
    assert "pending (after a restart" in run_cli("status", "web-01", "-c", uri).stdout
    assert run_cli("destroy", "web-01", "-c", uri).code == 0 and run_cli("start", "web-01", "-c", uri).code == 0
    _, doc = cli_json("apply", two, "-c", uri)
    assert (doc["results"][0]["action"], doc["results"][0]["restart_required"]) == ("unchanged", False)


def test_import_fix_of_a_running_domain_lists_no_launch_security_until_restart(libvirtd, held):
    uri = libvirtd.test_uri
    xml = render.render(specs.load_spec(WEB), sevparams.resolve(specs.load_spec(WEB), [])).xml
    root = etree.fromstring(xml.encode())
    root.remove(root.find("metadata"))
    root.remove(root.find("launchSecurity"))
    held.defineXML(etree.tostring(root, encoding="unicode")).create()
    result, doc = cli_json("import", "web-01", "--fix", "-c", uri)
    assert result.code == 0 and doc["results"][0]["restart_required"] is True
    _, listed = cli_json("list", "-c", uri)
    row = listed["results"][0]
    assert (row["state"], row["launch_security"], row["policy"], row["restart_required"]) == ("running", None, None, True)
    assert row["pending"]["launch_security"] == "sev-snp" and row["pending"]["policy"] == "0x30000"
    assert re.search(r"web-01\s+running\s+4\s+4096\s+none\s", run_cli("list", "-c", uri).stdout)


def test_the_qemu_driver_normalises_nothing_that_reads_as_drift(libvirtd):
    """libvirt's QEMU driver adds controllers, addresses, an emulator, input devices, a watchdog, and
    expands the machine type. This host cannot define SEV-SNP on it, so the documents go without
    <launchSecurity>: everything else must compare equal, and an added QEMU argument must not."""
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        for example in ("web-01", "db-01"):
            vm = specs.load_spec(EXAMPLES / f"{example}.toml")
            sev = sevparams.resolve(vm, []) if vm.snp.cbitpos is not None else sevparams.SevParams(51, 1, "test host")
            root = etree.fromstring(render.render(vm, sev).xml.encode())
            root.remove(root.find("launchSecurity"))
            dom = conn.defineXML(etree.tostring(root, encoding="unicode"))
            try:
                stored = domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                assert stored.findtext("os/type").strip() == "hvm" and stored.find("devices/controller") is not None
                assert drift.differences(drift.project(root), drift.project(stored)) == [], example
                edited = edit_outside(conn, example, _qemu_argument)
                assert [d["key"] for d in drift.differences(drift.project(root), drift.project(domxml.parse(edited)))] \
                    == ["qemu.passthrough"]
            finally:
                dom.undefine()
    finally:
        conn.close()


def _qemu_argument(root):
    ns = drift.QEMU_NS
    commandline = etree.SubElement(root, f"{{{ns}}}commandline", nsmap={"qemu": ns})
    etree.SubElement(commandline, f"{{{ns}}}arg", value="-no-reboot")
