"""Definitions edited outside snpvirt, and running domains whose definition changed: on the test driver.

The edits are made the way `virsh define` makes them: libvirt-python defines a modified copy of the
domain's own XML, snpvirt's metadata left in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from snpvirt.domain import drift, sevparams
from snpvirt.domain import xml as domxml
from snpvirt.domain import rules as snp_rules
from snpvirt.domain import spec as specs
from snpvirt.libvirt.connection import Connection
from snpvirt import imagepool
from snpvirt.errors import BadInputError, ConflictError, ConnectionFailedError, ExitCode
from snpvirt.libvirt.storage import Storage
from snpvirt.orchestration import volumes as pool_volumes
from snpvirt.manager import Manager, SpecInput
from tests.conftest import EXAMPLES, GOLDEN
from tests.integration.test_manager import make_manager, spec

FOREIGN_NS = "urn:example:other-tool"


@pytest.fixture
def mgr(conn):
    return make_manager(conn)


def edit_outside(raw: libvirt.virConnect, name: str, edit) -> str:
    """What `virsh edit` does: the domain's persistent XML, changed by `edit(root)`, defined again."""
    dom = raw.lookupByName(name)
    root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    edit(root)
    raw.defineXML(etree.tostring(root, encoding="unicode"))
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def strip_snp_behind_a_comment(root: etree._Element) -> None:
    """Issue 9 §2's edit: no <launchSecurity>, SMM on, machine 'pc', and the text the old check looked for
    kept inside a comment in another tool's <metadata> child (libvirt keeps both)."""
    root.remove(root.find("launchSecurity"))
    root.find("features/smm").set("state", "on")
    root.find("os/type").set("machine", "pc")
    note = etree.SubElement(root.find("metadata"), f"{{{FOREIGN_NS}}}note")
    note.append(etree.Comment(" <launchSecurity type='sev-snp'> "))


def debug_policy(root: etree._Element) -> None:
    root.find("launchSecurity/policy").text = "0x000f0000"  # DEBUG and MIGRATE_MA


def two_vcpus_and_debug(root: etree._Element) -> None:
    """Issue 9 §3's edit: 2 vCPUs and policy 0xb0000 (DEBUG on)."""
    root.find("vcpu").text = "2"
    root.find("launchSecurity/policy").text = "0xb0000"


# --- §2: never start a domain that lost SEV-SNP ---------------------------------------------------------

@pytest.mark.parametrize("edit", [strip_snp_behind_a_comment, debug_policy], ids=["no-launch-security", "debug-policy"])
def test_a_definition_edited_to_lose_snp_is_refused_by_start_and_restored_by_apply(mgr, conn, clean_test_driver, edit):
    mgr.apply([spec(name="drift-01")], start=False)
    stored = edit_outside(clean_test_driver, "drift-01", edit)
    if edit is strip_snp_behind_a_comment:
        assert "<!-- <launchSecurity type='sev-snp'> -->" in stored and "machine='pc'" in stored

    plan = mgr.apply([spec(name="drift-01")], check=True)[0]
    assert (plan.action, plan.changed) == ("update", True), "a drifted definition is never 'unchanged'"
    broken = "snp.launch_security" if edit is strip_snp_behind_a_comment else "snp.policy_debug"
    assert {"key": "(definition)", "from": f"breaks {broken}", "to": "as the spec renders it"} in plan.details["diff"]
    assert [d for d in plan.details["diff"] if d["key"].startswith("definition.launch_security")]

    with pytest.raises(ConflictError, match="snpvirt does not start it") as refused:
        mgr.start("drift-01")
    assert refused.value.exit_code == ExitCode.CONFLICT and "snpvirt apply" in refused.value.hint
    assert conn.state("drift-01") == "shutoff"

    done = mgr.apply([spec(name="drift-01")])[0]
    assert (done.ok, done.action, done.state) == (True, "update", "running")
    restored = domxml.parse(conn.lookup("drift-01").xml)
    assert restored.find("launchSecurity").get("type") == "sev-snp"
    assert restored.findtext("launchSecurity/policy") == "0x00030000"
    assert restored.find("features/smm").get("state") == "off" and restored.find("os/type").get("machine") == "q35"
    assert mgr.apply([spec(name="drift-01")], check=True)[0].action == "unchanged"


def test_a_debug_definition_starts_only_with_allow_debug(conn, clean_test_driver):
    debug = Manager(conn, gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []), allow_debug=True)
    debug.apply([SpecInput("d", specs.parse_spec({**_base("drift-02"), "snp": {"cbitpos": 51, "reduced_phys_bits": 1, "policy": "0xb0000"}}, allow_debug=True))],
                start=False)
    with pytest.raises(ConflictError, match="snp.policy_debug"):
        make_manager(conn).start("drift-02")
    again = debug.apply([SpecInput("d", specs.parse_spec({**_base("drift-02"), "snp": {"cbitpos": 51, "reduced_phys_bits": 1, "policy": "0xb0000"}}, allow_debug=True))],
                        start=False, check=True)[0]
    assert (again.action, again.changed) == ("unchanged", False), "with --allow-debug a debug definition is not broken"
    assert debug.start("drift-02").changed is True


def test_the_check_before_start_reads_the_parsed_document_not_its_text(mgr, conn, clean_test_driver):
    """An imported domain has no spec to compare with: the SNP rules alone decide, on the parsed document."""
    mgr.define_xml((GOLDEN / "web-01.xml").read_bytes(), "web-01.xml")
    edit_outside(clean_test_driver, "web-01", strip_snp_behind_a_comment)
    with pytest.raises(ConflictError, match="breaks snp.launch_security"):
        mgr.start("web-01")
    assert conn.state("web-01") == "shutoff"


def _base(name: str) -> dict:
    from tests.integration.test_manager import BASE
    return {**BASE, "name": name}


# --- the check after define, and its rollback (issue 10) --------------------------------------------------

class MangledDefine(Connection):
    """The real test driver, but the next define's returned record is mangled by `mangle` (as an SNP-unaware
    or broken libvirt would return it); the restore that follows goes through unmangled."""

    mangle = None

    def define(self, xml):
        record = super().define(xml)
        mangle, self.mangle = self.mangle, None
        return record if mangle is None else dataclasses.replace(record, xml=mangle(record.xml))


def without(tag):
    def mangle(xml):
        root = etree.fromstring(xml.encode())
        for element in root.iter(tag):
            element.getparent().remove(element)
        return etree.tostring(root, encoding="unicode")
    return mangle


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
@pytest.mark.parametrize("mangle", [without("launchSecurity"), without("hostData")], ids=["launch-security", "host-data"])
def test_a_failed_update_puts_the_previous_definition_back(clean_test_driver, mangle, running):
    """Not an undefine (which would delete the user's domain), and not left as the new definition."""
    with MangledDefine("test:///default") as conn:
        m = make_manager(conn)
        created = m.apply([spec(name="drift-03", snp={"cbitpos": 51, "reduced_phys_bits": 1, "host_data": HOST_DATA})],
                          start=running)[0]
        assert created.ok
        before = conn.lookup("drift-03")
        conn.mangle = mangle
        failed = m.apply([spec(name="drift-03", vcpus=4, snp={"cbitpos": 51, "reduced_phys_bits": 1, "host_data": HOST_DATA})],
                         start=running)[0]
        assert not failed.ok and "the change was rolled back" in failed.error.message
        after = conn.lookup("drift-03")
        assert after is not None, "the user's domain still exists"
        assert (after.uuid, after.state, after.xml) == (before.uuid, before.state, before.xml), "the previous definition is back"


def test_a_failed_create_leaves_nothing_behind(clean_test_driver):
    with MangledDefine("test:///default") as conn:
        conn.mangle = without("hostData")
        failed = make_manager(conn).apply([spec(name="drift-04", snp={"cbitpos": 51, "reduced_phys_bits": 1,
                                                                      "host_data": HOST_DATA})])[0]
        assert not failed.ok and "does not keep what it was given" in failed.error.message
        assert "launch_security.hostData" in failed.error.message and conn.lookup("drift-04") is None


HOST_DATA = "5rLtUUmoVQtIr7RBa3FJ/DnMhGnRKMc8pDdejNg2ldQ="


# --- §3: what runs is what is reported ----------------------------------------------------------------------

def test_restart_required_holds_until_the_domain_restarts(mgr, conn):
    mgr.apply([spec(name="drift-05")])
    updated = mgr.apply([spec(name="drift-05", vcpus=4, snp={"cbitpos": 51, "reduced_phys_bits": 1, "policy": "0x20000"})])[0]
    assert (updated.action, updated.details["restart_required"]) == ("update", True)
    for _ in range(2):  # apply after apply: the definition is as specified, the running domain is not
        again = mgr.apply([spec(name="drift-05", vcpus=4, snp={"cbitpos": 51, "reduced_phys_bits": 1, "policy": "0x20000"})])[0]
        assert (again.action, again.changed, again.details["restart_required"]) == ("unchanged", False, True)
    row = {r["name"]: r for r in mgr.list()}["drift-05"]
    assert (row["vcpus"], row["policy"], row["policy_flags"], row["restart_required"]) == (2, "0x30000", ["smt"], True)
    assert row["pending"] == {"vcpus": 4, "policy": "0x20000", "policy_flags": []}
    status = mgr.status("drift-05")
    assert status["vcpus"] == 2 and status["pending"]["vcpus"] == 4 and status["restart_required"] is True
    mgr.destroy("drift-05")
    mgr.start("drift-05")
    row = {r["name"]: r for r in mgr.list()}["drift-05"]
    assert (row["vcpus"], row["policy"], row["restart_required"], row["pending"]) == (4, "0x20000", False, {})
    assert mgr.apply([spec(name="drift-05", vcpus=4, snp={"cbitpos": 51, "reduced_phys_bits": 1, "policy": "0x20000"})],
                     check=True)[0].details["restart_required"] is False


def test_import_fix_of_a_running_domain_lists_what_runs_and_what_is_pending(mgr, conn, clean_test_driver):
    xml = (GOLDEN / "web-01.xml").read_text().replace("<name>web-01</name>", "<name>drift-06</name>")
    root = etree.fromstring(xml.encode())
    root.remove(root.find("metadata"))
    root.remove(root.find("launchSecurity"))
    clean_test_driver.defineXML(etree.tostring(root, encoding="unicode")).create()  # running without SEV-SNP
    record = conn.lookup("drift-06")
    outcome = mgr.import_domain(record.xml.encode(), record, fix=True, check=False, sev=None, firmware=None)
    assert outcome.ok and outcome.changed and outcome.details["restart_required"] is True
    row = {r["name"]: r for r in mgr.list()}["drift-06"]
    assert row["state"] == "running" and row["restart_required"] is True
    assert (row["launch_security"], row["policy"], row["policy_flags"]) == (None, None, [])
    assert row["pending"] == {"launch_security": "sev-snp", "policy": "0x30000", "policy_flags": ["smt"]}
    again = mgr.import_domain(conn.lookup("drift-06").xml.encode(), conn.lookup("drift-06"), fix=True, check=False,
                              sev=None, firmware=None)
    assert (again.action, again.details["restart_required"]) == ("unchanged", True)


def test_drift_by_another_tool_is_planned_and_applied_as_an_update(mgr, conn, clean_test_driver):
    mgr.apply([spec(name="drift-07", vcpus=4)], start=False)
    edit_outside(clean_test_driver, "drift-07", two_vcpus_and_debug)
    row = {r["name"]: r for r in mgr.list(include_inactive=True)}["drift-07"]
    assert (row["vcpus"], row["policy_flags"]) == (2, ["smt", "debug"])
    assert row["expected_measurement"] is None and row["measurement_stale"] == ["vcpus", "policy"]
    plan = mgr.apply([spec(name="drift-07", vcpus=4)], check=True)[0]
    assert (plan.action, plan.changed) == ("update", True)
    assert {d["key"]: (d["from"], d["to"]) for d in plan.details["diff"] if d["key"].startswith("definition.")} == {
        "definition.vcpus": (2, 4), "definition.vcpus.current": (2, 4), "definition.launch_security.policy": ("0xb0000", "0x30000")}
    done = mgr.apply([spec(name="drift-07", vcpus=4)])[0]
    assert (done.ok, done.action, done.state) == (True, "update", "running")
    assert mgr.apply([spec(name="drift-07", vcpus=4)], check=True)[0].action == "unchanged"
    row = {r["name"]: r for r in mgr.list()}["drift-07"]
    assert (row["vcpus"], row["policy"], row["measurement_stale"], row["restart_required"]) == (4, "0x30000", [], False)


def test_drift_of_a_running_domain_shows_the_live_values_and_apply_puts_the_definition_back(mgr, conn, clean_test_driver):
    mgr.apply([spec(name="drift-08", vcpus=4)])
    edit_outside(clean_test_driver, "drift-08", two_vcpus_and_debug)
    row = {r["name"]: r for r in mgr.list()}["drift-08"]
    assert (row["vcpus"], row["policy"], row["restart_required"]) == (4, "0x30000", True)
    assert row["pending"] == {"vcpus": 2, "policy": "0xb0000", "policy_flags": ["smt", "debug"],
                              "measurement_stale": ["vcpus", "policy"]}
    done = mgr.apply([spec(name="drift-08", vcpus=4)])[0]
    assert (done.action, done.details["restart_required"]) == ("update", False), "the live domain already runs the spec"
    assert {r["name"]: r for r in mgr.list()}["drift-08"]["pending"] == {}


# --- the comparison: no false drift, and every kind of drift seen -----------------------------------------

def fixed_sev(vm):
    """cbitpos/reducedPhysBits for specs that leave them to the host (db-01), as a Genoa host gives them."""
    return sevparams.resolve(vm, []) if vm.snp.cbitpos is not None else sevparams.SevParams(51, 1, "test host")


@pytest.mark.parametrize("example", ["web-01", "db-01"])
def test_a_fresh_apply_is_unchanged_afterwards(conn, example):
    m = Manager(conn, gate=lambda: None, resolve_sev=fixed_sev)
    item = SpecInput(example, specs.load_spec(EXAMPLES / f"{example}.toml"))
    assert m.apply([item])[0].action == "create"
    plan = m.apply([item], check=True)[0]
    assert (plan.action, plan.changed, plan.details["diff"], plan.details["restart_required"]) == ("unchanged", False, [], False)
    assert m.apply([item])[0].changed is False


@pytest.mark.parametrize("golden", ["web-01", "db-01"])
def test_a_defined_golden_is_unchanged_afterwards(mgr, conn, golden):
    document = (GOLDEN / f"{golden}.xml").read_bytes()
    assert mgr.define_xml(document, golden).action == "define"
    stored = domxml.parse(conn.lookup(golden).xml)
    assert drift.differences(drift.project(domxml.parse(document)), drift.project(stored)) == []
    assert mgr.define_xml(document, golden).action == "unchanged"


def _set(path, attr=None, value=None, text=None):
    def edit(root):
        element = root.find(path)
        if attr:
            element.set(attr, value)
        if text is not None:
            element.text = text
    return edit


def _remove(path):
    def edit(root):
        element = root.find(path)
        element.getparent().remove(element)
    return edit


def _add(parent, xml):
    def edit(root):
        root.find(parent).append(etree.fromstring(xml))
    return edit


def _pflash(root):
    loader = root.find("os/loader")
    loader.attrib.clear()
    loader.set("type", "pflash")


def _pflash_with_nvram(root):
    _pflash(root)
    _add("os", "<nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>")(root)


DRIFTS = {
    "vcpus": (_set("vcpu", text="3"), "vcpus"),
    "memory": (_set("memory", text="1048576"), "memory_kib"),
    "policy": (_set("launchSecurity/policy", text="0x70000"), "launch_security.policy"),
    "host-data": (_remove("launchSecurity/hostData"), "launch_security.hostData"),
    "kernel-hashes": (lambda root: root.find("launchSecurity").attrib.pop("kernelHashes"), "launch_security.@kernelHashes"),
    "launch-security": (_remove("launchSecurity"), "launch_security.type"),
    "cbitpos": (_set("launchSecurity/cbitpos", text="47"), "launch_security.cbitpos"),
    "kernel": (_set("os/kernel", text="/boot/other"), "kernel"),
    "initrd": (_set("os/initrd", text="/boot/other.img"), "initrd"),
    "cmdline": (_set("os/cmdline", text="console=ttyS0 init=/bin/sh"), "cmdline"),
    "firmware": (_set("os/loader", text="/usr/share/OVMF/OVMF_CODE.fd"), "loader.path"),
    "pflash": (_pflash, "loader.type"),
    "nvram": (_pflash_with_nvram, "nvram"),
    "machine": (_set("os/type", "machine", "pc"), "machine"),
    "smm": (_set("features/smm", "state", "on"), "features.smm"),
    "cpu-model": (_set("cpu/model", text="EPYC-Milan"), "cpu.model"),
    "disk-source": (_set("devices/disk/source", "file", "/tmp/other.qcow2"), "disk[vda].source"),
    "disk-added": (_add("devices", "<disk type='file' device='disk'><source file='/tmp/x.raw'/>"
                                   "<target dev='vdb' bus='virtio'/></disk>"), "disk[vdb].source"),
    "interface": (_set("devices/interface/source", "network", "other"), "interface[0].source"),
    "hostdev": (_add("devices", "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                                "<address domain='0' bus='1' slot='0' function='0'/></source></hostdev>"), "devices.hostdev"),
    "memory-backing": (_remove("memoryBacking"), "memory_backing"),
}


@pytest.mark.parametrize("kind", DRIFTS)
def test_each_kind_of_drift_is_seen_and_restored(mgr, conn, clean_test_driver, kind):
    edit, key = DRIFTS[kind]
    item = SpecInput("web-01", specs.load_spec(EXAMPLES / "web-01.toml"))
    mgr.apply([item], start=False)
    edit_outside(clean_test_driver, "web-01", edit)
    plan = mgr.apply([item], check=True)[0]
    assert plan.action == "update" and f"definition.{key}" in [d["key"] for d in plan.details["diff"]], plan.details["diff"]
    assert mgr.apply([item], start=False)[0].action == "update"
    assert mgr.apply([item], check=True, start=False)[0].action == "unchanged"


def test_an_update_keeps_the_mac_address_libvirt_gave(mgr, conn):
    mgr.apply([spec(name="drift-09", networks=[{"network": "default"}])])
    mac = domxml.parse(conn.lookup("drift-09").xml).find("devices/interface/mac").get("address")
    assert mgr.apply([spec(name="drift-09", vcpus=4, networks=[{"network": "default"}])])[0].action == "update"
    assert domxml.parse(conn.lookup("drift-09").xml).find("devices/interface/mac").get("address") == mac
    row = {r["name"]: r for r in mgr.list()}["drift-09"]
    assert row["pending"] == {"vcpus": 4} and row["restart_required"] is True


# --- two clients at once (issue 9 §8): deterministic versions of the race the daemon test repeats ------------

class AnotherClientFirst(Connection):
    """Another client defines (or starts) the same domain just before this one does."""

    races = ("define", "start")

    def define(self, xml):
        if "define" in self.races:
            self._as_another_client(lambda other: other.defineXML(xml))  # no UUID: ours fails "already exists with uuid"
        return super().define(xml)

    def start(self, name):
        self._start_first(name)
        super().start(name)  # "domain is already running"

    def start_definition(self, name, xml):
        self._start_first(name)
        super().start_definition(name, xml)  # "domain is already active"

    def _start_first(self, name):
        if "start" in self.races:
            self._as_another_client(lambda other: other.lookupByName(name).create())

    @staticmethod
    def _as_another_client(call):
        other = libvirt.open("test:///default")
        try:
            call(other)
        finally:
            other.close()


def test_losing_the_create_race_replans_against_the_domain_the_other_client_made(clean_test_driver):
    with AnotherClientFirst("test:///default") as conn:
        conn.races = ("define",)
        outcome = make_manager(conn).apply([spec(name="drift-10")], start=False)[0]
        assert (outcome.ok, outcome.action, outcome.changed) == (True, "unchanged", False), outcome.error
        assert [d.name() for d in clean_test_driver.listAllDomains()].count("drift-10") == 1


def test_a_domain_another_client_started_meanwhile_is_running_as_asked(clean_test_driver):
    with AnotherClientFirst("test:///default") as conn:
        conn.races = ("start",)
        started = make_manager(conn).apply([spec(name="drift-11")])[0]
        assert (started.ok, started.state, started.details["started"]) == (True, "running", False), started.error


class AnotherClientBetweenDefineAndStart(Connection):
    """Another client acts on the domain apply has just created, just before apply's start: `meanwhile(raw, name)`;
    and, when given, right after apply's start: `afterwards(raw, name)`."""

    meanwhile = None
    afterwards = None

    def start_definition(self, name, xml):
        self._as_another_client(self.meanwhile, name)
        super().start_definition(name, xml)
        if self.afterwards is not None:
            self._as_another_client(self.afterwards, name)

    @staticmethod
    def _as_another_client(call, name):
        other = libvirt.open("test:///default")
        try:
            call(other, name)
        finally:
            other.close()


def redefine_without_snp_and_start(raw, name):
    edit_outside(raw, name, strip_snp_behind_a_comment)
    raw.lookupByName(name).create()


def test_a_guest_another_client_started_first_on_its_own_definition_is_not_reported_as_snpvirts(clean_test_driver):
    """apply's start loses the race to another client that started the domain on a definition without SEV-SNP:
    what runs is checked as after any start, and it is destroyed rather than reported as the guest snpvirt defined."""
    with AnotherClientBetweenDefineAndStart("test:///default") as conn:
        conn.meanwhile = redefine_without_snp_and_start
        outcome = make_manager(conn).apply([spec(name="race-07")])[0]
        assert not outcome.ok and "started without the SEV-SNP settings" in outcome.error.message, outcome
        assert not clean_test_driver.lookupByName("race-07").isActive()


def test_a_domain_another_client_undefined_before_the_start_does_not_run_as_a_transient_domain(clean_test_driver):
    """createXML of a name libvirt no longer holds makes a transient domain: it is destroyed, and apply fails
    instead of reporting a created domain that nothing defines (it would vanish at its first shutdown)."""
    with AnotherClientBetweenDefineAndStart("test:///default") as conn:
        conn.meanwhile = lambda raw, name: raw.lookupByName(name).undefine()
        outcome = make_manager(conn).apply([spec(name="race-08")])[0]
        assert not outcome.ok and isinstance(outcome.error, ConflictError), outcome
        assert (outcome.error.message, outcome.error.hint) == (
            "another client undefined race-08 after snpvirt created it, so nothing defines it any more; snpvirt "
            "destroyed the domain it started", "run the command again: it defines the domain anew")
        assert (outcome.state, outcome.changed, outcome.details["started"], outcome.details["defined"]) == (
            "absent", False, False, False)
        assert "race-08" not in {d.name() for d in clean_test_driver.listAllDomains()}


class DestroyFails(AnotherClientBetweenDefineAndStart):
    def destroy(self, name):
        raise ConnectionFailedError(f"destroy {name}: the connection is closed", "check the host")


def test_a_transient_domain_that_cannot_be_destroyed_fails_with_the_reason(clean_test_driver):
    """The destroy of the transient domain fails (the connection broke): the outcome says so, with that error, and
    still running, as it is."""
    with DestroyFails("test:///default") as conn:
        conn.meanwhile = lambda raw, name: raw.lookupByName(name).undefine()
        try:
            outcome = make_manager(conn).apply([spec(name="race-19")])[0]
            assert (outcome.ok, outcome.state, outcome.error.kind, outcome.error.message) == (
                False, "running", "connection", "destroy race-19: the connection is closed")
        finally:
            destroy_left_running(clean_test_driver, "race-19")


def destroy_left_running(raw, name):
    """A transient domain cannot be undefined, so clean_test_driver cannot remove it: destroying it does."""
    for dom in raw.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT):
        if dom.name() == name:
            dom.destroy()


def start_and_undefine(raw, name):
    dom = raw.lookupByName(name)
    dom.create()
    dom.undefine()


def test_a_created_domain_another_client_started_and_undefined_is_not_reported_as_created(clean_test_driver):
    """apply's start loses the race to another client that starts the domain as defined (it passes the check of
    what runs) and undefines it: it runs transient, nothing defines it, so apply fails instead of reporting it
    created; snpvirt did not start it and leaves it running."""
    with AnotherClientBetweenDefineAndStart("test:///default") as conn:
        conn.meanwhile = start_and_undefine
        try:
            outcome = make_manager(conn).apply([spec(name="race-15")])[0]
            assert not outcome.ok and isinstance(outcome.error, ConflictError), outcome
            assert "another client undefined race-15" in outcome.error.message
            assert (outcome.details["started"], outcome.details["defined"]) == (False, False)
            assert clean_test_driver.lookupByName("race-15").isActive(), "a guest snpvirt did not start is left alone"
            assert (outcome.error.message, outcome.error.hint) == (
                "another client undefined race-15 after snpvirt created it, so nothing defines it any more; another "
                "client started it, and snpvirt leaves what runs under that name alone",
                "stop what runs as race-15 (snpvirt stop race-15: nothing defines it, so it vanishes), then run the "
                "command again: it defines the domain anew"), "a rerun leaves the running domain as it is: stop it first"
            assert make_manager(conn).apply([spec(name="race-15")])[0].action == "unchanged"
        finally:
            destroy_left_running(clean_test_driver, "race-15")


def test_a_domain_undefined_before_the_start_and_gone_by_the_end_is_not_reported_as_created(clean_test_driver):
    """The transient domain apply's start made is gone (shut down, destroyed) before the run's one look: a domain
    libvirt does not hold at all is not reported as created and running either."""
    with AnotherClientBetweenDefineAndStart("test:///default") as conn:
        conn.meanwhile = lambda raw, name: raw.lookupByName(name).undefine()
        conn.afterwards = lambda raw, name: raw.lookupByName(name).destroy()
        outcome = make_manager(conn).apply([spec(name="race-16")])[0]
        assert not outcome.ok and isinstance(outcome.error, ConflictError), outcome
        assert (outcome.state, outcome.details["defined"]) == ("absent", False)


def start_another_guest_under_the_name(raw, name):
    """Another client ends the transient domain apply's start made and starts its own, without SEV-SNP, as `name`."""
    dom = raw.lookupByName(name)
    root = etree.fromstring(dom.XMLDesc(0).encode())
    dom.destroy()
    root.remove(root.find("uuid"))
    root.remove(root.find("launchSecurity"))
    raw.createXML(etree.tostring(root, encoding="unicode"), 0)


def test_the_end_of_run_destroy_never_hits_another_clients_domain_under_the_name(clean_test_driver):
    """The one look is by name; the destroy that follows acts on the domain apply started (its UUID), so another
    client's guest that took the name since keeps running, and apply still fails as a conflict."""
    with AnotherClientBetweenDefineAndStart("test:///default") as conn:
        conn.meanwhile = lambda raw, name: raw.lookupByName(name).undefine()
        conn.afterwards = start_another_guest_under_the_name
        try:
            outcome = make_manager(conn).apply([spec(name="race-17")])[0]
            assert not outcome.ok and isinstance(outcome.error, ConflictError), outcome
            assert clean_test_driver.lookupByName("race-17").isActive(), "another client's guest was destroyed"
        finally:
            destroy_left_running(clean_test_driver, "race-17")


def define_another_guest_under_the_name(raw, name):
    """Another client ends and undefines the domain apply has just started and defines and starts its own, without
    SEV-SNP, as `name` (libvirt gives it another UUID)."""
    dom = raw.lookupByName(name)
    root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    dom.destroy()
    dom.undefine()
    root.remove(root.find("uuid"))
    root.remove(root.find("launchSecurity"))
    raw.defineXML(etree.tostring(root, encoding="unicode")).create()


def test_a_name_another_client_defined_again_after_the_start_is_not_reported_as_the_domain_created(clean_test_driver):
    """The one look compares UUIDs, not only names: a guest without SEV-SNP that another client defined under the
    name after apply's start is not reported as the domain apply created and started; it is not apply's to destroy."""
    with AnotherClientBetweenDefineAndStart("test:///default") as conn:
        conn.meanwhile = lambda raw, name: None
        conn.afterwards = define_another_guest_under_the_name
        outcome = make_manager(conn).apply([spec(name="race-18")])[0]
        assert not outcome.ok and isinstance(outcome.error, ConflictError), outcome
        assert "another client undefined race-18" in outcome.error.message
        assert clean_test_driver.lookupByName("race-18").isActive(), "another client's guest was destroyed"


class ListingFails(Connection):
    """A connection that breaks after the work is done, when apply looks for the domains still defined."""

    def persistent_domains(self):
        raise ConnectionFailedError("list persistent domains: the connection is closed", "check the host")


def test_a_transient_look_that_fails_after_the_work_leaves_what_was_done_reported(clean_test_driver):
    """The look for the domains still defined comes after the work: a connection that breaks then does not turn
    the domains apply created and started into failures (a rerun does not look again: it finds them running)."""
    with ListingFails("test:///default") as conn:
        outcomes = make_manager(conn).apply([spec(name="race-09"), spec(name="race-10")])
        assert [(o.ok, o.action, o.state) for o in outcomes] == [(True, "create", "running")] * 2


def test_only_the_domains_left_transient_fail_and_nothing_is_looked_for_without_a_create(clean_test_driver):
    """One look for all the domains started: the one another client undefined fails alone, and a run that
    created nothing (or only planned) does not look at all."""
    looks = []

    class Counted(AnotherClientBetweenDefineAndStart):
        def persistent_domains(self):
            looks.append(1)
            return super().persistent_domains()

    with Counted("test:///default") as conn:
        conn.meanwhile = lambda raw, name: name == "race-12" and raw.lookupByName(name).undefine()
        outcomes = make_manager(conn).apply([spec(name="race-11"), spec(name="race-12"), spec(name="race-13")])
        assert [(o.name, o.ok) for o in outcomes] == [("race-11", True), ("race-12", False), ("race-13", True)]
        assert (outcomes[1].state, outcomes[1].changed, outcomes[1].details["defined"]) == ("absent", False, False)
        assert looks == [1]
        make_manager(conn).apply([spec(name="race-11")])  # unchanged, running
        make_manager(conn).apply([spec(name="race-14")], check=True)
        assert looks == [1]


START_REFUSED = ["policy", "host-data", "kernel-hashes", "vcpus", "cmdline", "kernel", "cpu-model"]


@pytest.mark.parametrize("kind", START_REFUSED)
def test_start_refuses_snp_settings_changed_since_the_recorded_spec(mgr, conn, clean_test_driver, kind):
    """Every SNP rule still passes after these edits: only the comparison with the recorded spec sees them."""
    edit, key = DRIFTS[kind]
    mgr.apply([SpecInput("web-01", specs.load_spec(EXAMPLES / "web-01.toml"))], start=False)
    stored = edit_outside(clean_test_driver, "web-01", edit)
    assert not [f for f in snp_rules.check_rules(domxml.parse(stored)) if f.severity == "error"]
    with pytest.raises(ConflictError, match=rf"SEV-SNP settings were changed outside snpvirt \({re.escape(key)}:") as refused:
        mgr.start("web-01")
    assert "snpvirt apply SPEC" in refused.value.hint and conn.state("web-01") == "shutoff"


def test_start_is_not_refused_for_changes_that_leave_the_launch_alone(mgr, conn, clean_test_driver):
    mgr.apply([SpecInput("web-01", specs.load_spec(EXAMPLES / "web-01.toml"))], start=False)
    edit_outside(clean_test_driver, "web-01", DRIFTS["memory"][0])  # e.g. `virsh setmaxmem --config`
    assert mgr.start("web-01").changed is True


def test_start_checks_what_runs_a_definition_changed_between_check_and_start_is_destroyed(conn, clean_test_driver):
    """The check before start and libvirt's create are two calls: another tool can define in between
    (here, at the worst moment: just before create). What runs is checked again and never left running."""
    make_manager(conn).apply([spec(name="race-01")], start=False)

    real_start = conn.start

    def start_after_another_tool_defines(name):
        edit_outside(clean_test_driver, name, strip_snp_behind_a_comment)
        real_start(name)

    conn.start = start_after_another_tool_defines
    with pytest.raises(ConflictError, match="changed while snpvirt started it") as refused:
        make_manager(conn).start("race-01")
    assert conn.state("race-01") == "shutoff"
    assert refused.value.hint == "restore it: snpvirt apply SPEC, or snpvirt import race-01 --fix", "the check's own hint"


# --- the check before start: its exact refusals, and what it leaves to others (scripts/mutation guards) ---------


def test_a_start_refusal_names_the_rule_and_how_to_restore(mgr, conn, clean_test_driver):
    mgr.apply([spec(name="drift-20")], start=False)
    edit_outside(clean_test_driver, "drift-20", debug_policy)
    with pytest.raises(ConflictError) as debug:
        mgr.start("drift-20")
    assert debug.value.message.startswith("drift-20's definition breaks snp.policy_debug (")
    assert debug.value.message.endswith("); snpvirt does not start it")
    assert debug.value.hint == ("restore it: snpvirt apply SPEC, or snpvirt import drift-20 --fix, or pass --allow-debug "
                                "for a throw-away test guest")
    edit_outside(clean_test_driver, "drift-20", strip_snp_behind_a_comment)
    with pytest.raises(ConflictError) as lost:
        mgr.start("drift-20")
    assert lost.value.message.startswith("drift-20's definition breaks snp.launch_security")
    assert lost.value.hint == "restore it: snpvirt apply SPEC, or snpvirt import drift-20 --fix", "no --allow-debug to offer"


def test_a_drift_refusal_says_what_changed_and_how_to_restore(mgr, conn, clean_test_driver):
    mgr.apply([SpecInput("web-01", specs.load_spec(EXAMPLES / "web-01.toml"))], start=False)
    edit_outside(clean_test_driver, "web-01", DRIFTS["policy"][0])
    with pytest.raises(ConflictError) as refused:
        mgr.start("web-01")
    assert refused.value.message == ("web-01's SEV-SNP settings were changed outside snpvirt (launch_security.policy: "
                                     "'0x70000', snpvirt defined '0x30000'); snpvirt does not start it")
    assert refused.value.hint == "restore them from the spec: snpvirt apply SPEC (snpvirt status web-01 shows it)"


def test_reduced_phys_bits_changed_since_the_spec_is_refused(mgr, conn, clean_test_driver):
    mgr.apply([SpecInput("web-01", specs.load_spec(EXAMPLES / "web-01.toml"))], start=False)
    edit_outside(clean_test_driver, "web-01", _set("launchSecurity/reducedPhysBits", text="5"))
    with pytest.raises(ConflictError, match=r"\(launch_security.reducedPhysBits: 5, snpvirt defined 1\)"):
        mgr.start("web-01")


def test_what_the_spec_leaves_to_the_host_is_not_drift(mgr, conn, clean_test_driver):
    """A spec without cbitpos/reducedPhysBits leaves them to libvirt: whatever the definition holds, or its
    lack of them, is the host's, not a change to refuse."""
    from snpvirt.host import readiness

    mgr = Manager(conn, gate=lambda: readiness.gate_report(conn), resolve_sev=lambda s: sevparams.SevParams(51, 1, "host"))
    done = mgr.apply([SpecInput("drift-21", specs.parse_spec({**_base("drift-21"), "snp": {}}))], start=False)[0]
    assert done.ok, done.error

    def drop_both(root):
        for tag in ("cbitpos", "reducedPhysBits"):
            root.find("launchSecurity").remove(root.find(f"launchSecurity/{tag}"))
    edit_outside(clean_test_driver, "drift-21", drop_both)
    assert mgr.start("drift-21").changed is True


def test_an_unreadable_recorded_spec_refuses_the_start(mgr, conn, clean_test_driver):
    mgr.apply([spec(name="drift-22")], start=False)

    def unreadable_spec(root):
        recorded = root.find(f"metadata/{{{domxml.METADATA_NS}}}domain/{{{domxml.METADATA_NS}}}spec")
        recorded.text = recorded.text.replace('"vcpus":2', '"vcpus":0')
    edit_outside(clean_test_driver, "drift-22", unreadable_spec)
    with pytest.raises(ConflictError) as refused:
        mgr.start("drift-22")
    message = refused.value.message
    assert message.startswith("drift-22's SEV-SNP settings were changed outside snpvirt ((recorded spec): '")
    assert message.endswith("', snpvirt defined 'a spec snpvirt can read'); snpvirt does not start it")
    # apply of the same spec: the definition is unchanged, and the start it needs is refused alike, plan and run.
    for check in (True, False):
        refused = mgr.apply([spec(name="drift-22")], check=check)[0]
        assert (refused.ok, refused.action, refused.error.message) == (False, "unchanged", message)
    assert conn.state("drift-22") == "shutoff"


def test_a_document_given_to_define_xml_starts_as_given(mgr, conn, clean_test_driver):
    """`define XML` records the document's digest: that document, not the spec it may carry, is what the
    user asked for, so only the SNP rules judge it at start."""
    document = (GOLDEN / "web-01.xml").read_text().replace("<policy>0x30000</policy>", "<policy>0x70000</policy>")
    mgr.define_xml(document.encode(), "web-01.xml")
    assert mgr.start("web-01").changed is True


# --- a spec booting pool volumes: the check before start compares at the paths the host gave (scripts/mutation guards)


@pytest.fixture
def boot_volumes(test_driver):
    """A kernel and an initrd volume in the test driver's own pool, removed afterwards; (storage, pool name)."""
    from snpvirt.libvirt import storage

    pool = test_driver.storagePoolLookupByName("default-pool")
    made = [pool.createXML(f"<volume><name>{name}</name><capacity>1048576</capacity>"
                           "<target><format type='raw'/></target></volume>") for name in ("drift-vmlinuz", "drift-initrd")]
    with storage.connect("test:///default") as store:
        yield store, "default-pool"
    for volume in made:
        volume.delete()


def test_a_spec_booting_pool_volumes_starts_on_the_host_paths_it_was_defined_with(conn, clean_test_driver, boot_volumes):
    """The recorded spec names volumes, the definition their host paths: the comparison reads the paths snpvirt
    recorded at define, so the domain starts, and a boot path another tool changed since is refused."""
    from snpvirt.host import readiness

    store, pool = boot_volumes
    mgr = Manager(conn, gate=lambda: readiness.gate_report(conn), resolve_sev=lambda s: sevparams.resolve(s, []),
                  storage=store)
    raw = {**_base("drift-30"), "disks": [], "snp": {"cbitpos": 51, "reduced_phys_bits": 1, "kernel_hashes": False},
           "boot": {"kernel": {"pool": pool, "volume": "drift-vmlinuz"}, "initrd": {"pool": pool, "volume": "drift-initrd"},
                    "cmdline": "console=ttyS0"}}
    assert mgr.apply([SpecInput("drift-30", specs.parse_spec(raw))], start=False)[0].ok
    assert mgr.status("drift-30")["launch"]["kernel"]["path"] == "/default-pool/drift-vmlinuz"
    assert mgr.start("drift-30").changed is True and conn.state("drift-30") == "running"
    mgr.destroy("drift-30")
    edit_outside(clean_test_driver, "drift-30", _set("os/kernel", text="/boot/other"))
    with pytest.raises(ConflictError, match=r"\(kernel: '/boot/other', snpvirt defined '/default-pool/drift-vmlinuz'\)"):
        mgr.start("drift-30")
    assert conn.state("drift-30") == "shutoff"

    def lose_the_recorded_kernel(root):  # snpvirt's record of the launch rewritten by hand, without the kernel
        launch = root.find(f"metadata/{{{domxml.METADATA_NS}}}domain/{{{domxml.METADATA_NS}}}launch")
        launch.remove(launch.find(f"{{{domxml.METADATA_NS}}}kernel"))
    edit_outside(clean_test_driver, "drift-30", lose_the_recorded_kernel)
    with pytest.raises(ConflictError, match=r"\(kernel: '/boot/other', snpvirt defined '\(volume kernel: no path recorded\)'\)"):
        mgr.start("drift-30")


def test_import_of_a_running_domain_that_needs_no_fix_requires_no_restart(mgr, conn, clean_test_driver):
    """What runs is what is imported: a running domain defined as SEV-SNP already is not reported as running
    an older definition (a restart the user would make for nothing)."""
    root = etree.fromstring((GOLDEN / "web-01.xml").read_text().replace("<name>web-01</name>", "<name>drift-31</name>").encode())
    root.remove(root.find("metadata"))
    clean_test_driver.defineXML(etree.tostring(root, encoding="unicode")).create()
    record = conn.lookup("drift-31")
    outcome = mgr.import_domain(record.xml.encode(), record, fix=True, check=False, sev=None, firmware=None)
    assert (outcome.ok, outcome.changed, outcome.details["changes"], outcome.details["restart_required"]) == (True, True, [], False)
    again = mgr.import_domain(conn.lookup("drift-31").xml.encode(), conn.lookup("drift-31"), fix=True, check=False,
                              sev=None, firmware=None)
    assert (again.action, again.details["restart_required"]) == ("unchanged", False)


def test_a_definition_that_lost_only_snpvirts_record_while_starting_runs_as_defined(conn, clean_test_driver):
    """What runs is checked for its SEV-SNP settings: another tool's redefinition between the check and libvirt's
    create that drops snpvirt's metadata but keeps every SEV-SNP setting leaves a guest that runs as SEV-SNP,
    started, not destroyed (there is no recorded spec left to compare with)."""
    make_manager(conn).apply([spec(name="race-02")], start=False)
    real_start = conn.start

    def start_after_another_tool_defines(name):
        edit_outside(clean_test_driver, name, lambda root: root.remove(root.find("metadata")))
        real_start(name)

    conn.start = start_after_another_tool_defines
    assert make_manager(conn).start("race-02").changed is True
    assert conn.state("race-02") == "running"


# --- apply's own decisions around an existing domain (scripts/mutation apply) -----------------------------------


def test_an_update_gives_an_interface_the_spec_s_mac_and_a_new_one_its_own(mgr, conn):
    """The MAC libvirt gave is kept only for an interface the spec leaves without one: a MAC the spec names
    wins, and an interface the update adds gets a MAC of its own (there is no earlier one to keep)."""
    mgr.apply([spec(name="drift-32", networks=[{"network": "default"}])])
    given = domxml.parse(conn.lookup("drift-32").xml).find("devices/interface/mac").get("address")
    updated = mgr.apply([spec(name="drift-32", networks=[{"network": "default", "mac": "52:54:00:aa:bb:cc"},
                                                        {"network": "default"}])])[0]
    assert updated.ok and updated.action == "update", updated.error
    macs = [i.find("mac").get("address") for i in domxml.parse(conn.lookup("drift-32").xml).iterfind("devices/interface")]
    assert macs[0] == "52:54:00:aa:bb:cc" and len(macs) == 2 and macs[1] not in (given, macs[0])


def test_restart_starts_the_new_definition_whatever_the_old_one_broke(mgr, conn, clean_test_driver):
    """--restart after an update starts the definition apply just defined (and checked); the definition it
    replaced (here edited outside to allow debugging) is no reason to refuse."""
    mgr.apply([spec(name="drift-33")])
    edit_outside(clean_test_driver, "drift-33", debug_policy)
    done = mgr.apply([spec(name="drift-33", vcpus=4)], restart=True)[0]
    assert (done.ok, done.state, done.details.get("restarted")) == (True, "running", True), done.error
    live = domxml.parse(conn.lookup("drift-33").live_xml)
    assert (live.findtext("vcpu"), int(live.findtext("launchSecurity/policy"), 16)) == ("4", 0x30000)


def test_apply_never_forces_a_guest_off(clean_test_driver):
    """state = "shutoff" asks the guest to shut down and waits; a guest that does not react is left running
    and reported as timed out (forcing it off could lose its data), never destroyed."""
    from tests.integration.test_manager import IgnoresShutdown

    with IgnoresShutdown("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="drift-34")])
        m.shutdown_timeout_s = 0.2
        outcome = m.apply([spec(name="drift-34", state="shutoff")])[0]
        assert (outcome.ok, outcome.error.kind) == (False, "timeout") and "--force" in outcome.error.hint
        assert conn.state("drift-34") == "running"


def test_the_create_race_lost_replans_and_starts_what_the_other_client_defined(clean_test_driver):
    """The re-plan is carried out, not only planned: the domain the other client defined is started."""
    with AnotherClientFirst("test:///default") as conn:
        conn.races = ("define",)
        outcome = make_manager(conn).apply([spec(name="drift-35")])[0]
        assert (outcome.ok, outcome.action, outcome.state, outcome.details.get("started")) == (True, "unchanged", "running", True)
        assert conn.state("drift-35") == "running"


def test_the_create_race_lost_to_an_unmanaged_domain_is_a_conflict(clean_test_driver):
    """The other client's domain is not snpvirt's: the re-plan refuses it as any plan would, and leaves it alone."""

    class AnotherToolFirst(AnotherClientFirst):
        def define(self, xml):
            root = domxml.parse(xml)
            root.remove(root.find("metadata"))
            self._as_another_client(lambda other: other.defineXML(etree.tostring(root, encoding="unicode")))
            return Connection.define(self, xml)

    with AnotherToolFirst("test:///default") as conn:
        outcome = make_manager(conn).apply([spec(name="drift-36")])[0]
        assert (outcome.name, outcome.ok, outcome.action, outcome.error.kind) == ("drift-36", False, "conflict", "conflict")
        assert "is not managed by snpvirt" in outcome.error.message
        assert conn.state("drift-36") == "shutoff"


def test_a_create_race_lost_again_and_again_gives_up(clean_test_driver):
    """Each lost race re-plans; a domain that another client keeps defining and undefining is given up on after
    RACE_RETRIES re-plans (never an endless loop), as a conflict that says what happened."""
    from snpvirt.orchestration.apply import RACE_RETRIES

    class Flapping(AnotherClientFirst):
        defines = 0

        def define(self, xml):
            self.defines += 1
            return super().define(xml)

        def lookup(self, name):  # the other client undefines it right after each look
            found = super().lookup(name)
            if found is not None:
                self._as_another_client(lambda other: other.lookupByName(name).undefine())
            return found

    with Flapping("test:///default") as conn:
        conn.races = ("define",)
        outcome = make_manager(conn).apply([spec(name="drift-37")], start=False)[0]
        assert (outcome.ok, outcome.error.kind) == (False, "conflict")
        assert "was defined by another client at the same time" in outcome.error.message
        assert conn.defines == 1 + RACE_RETRIES


def test_a_recorded_boot_volume_path_edited_into_text_is_no_path(conn, clean_test_driver, boot_volumes):
    """snpvirt's record is part of the definition, which another tool may edit: a launch element left without
    attributes reads as its text, and the comparison takes that as no path recorded (a refusal), not a crash."""
    from snpvirt.domain.xml import METADATA_NS
    from snpvirt.host import readiness

    store, pool = boot_volumes
    mgr = Manager(conn, gate=lambda: readiness.gate_report(conn), resolve_sev=lambda s: sevparams.resolve(s, []),
                  storage=store)
    raw = {**_base("drift-40"), "disks": [], "snp": {"cbitpos": 51, "reduced_phys_bits": 1, "kernel_hashes": False},
           "boot": {"kernel": {"pool": pool, "volume": "drift-vmlinuz"}, "cmdline": "console=ttyS0"}}
    assert mgr.apply([SpecInput("drift-40", specs.parse_spec(raw))], start=False)[0].ok

    def kernel_as_text(root):
        kernel = root.find(f"metadata/{{{METADATA_NS}}}domain/{{{METADATA_NS}}}launch/{{{METADATA_NS}}}kernel")
        kernel.attrib.clear()
        kernel.text = "/default-pool/drift-vmlinuz"
    edit_outside(clean_test_driver, "drift-40", kernel_as_text)
    with pytest.raises(ConflictError, match=r"\(kernel: '/default-pool/drift-vmlinuz', snpvirt defined "
                                            r"'\(volume kernel: no path recorded\)'\)"):
        mgr.start("drift-40")


def test_a_domain_apply_creates_runs_the_copy_the_define_checked_whatever_is_defined_meanwhile(conn, clean_test_driver):
    """The define was checked in libvirt's copy; another tool's definition between that check and the start
    must not run as the guest snpvirt defined. apply starts a domain it created on exactly that checked copy
    (one createXML call): what runs is snpvirt's SEV-SNP guest, and the other tool's definition waits for the
    next boot (which `start` refuses), without a second read of what runs."""
    real_start = conn.start_definition
    reads = []

    def start_after_another_tool_defines(name, xml):
        edit_outside(clean_test_driver, name, strip_snp_behind_a_comment)
        real_start(name, xml)

    conn.start_definition = start_after_another_tool_defines
    conn.live_xml = lambda name: reads.append(name)
    conn.lookup = lambda name: reads.append(name)
    outcome = make_manager(conn).apply([spec(name="race-04")])[0]
    assert outcome.ok and outcome.state == "running" and outcome.details["started"] is True, outcome.error
    assert reads == [], "the copy that started is the one the define checked: nothing to read again"
    dom = clean_test_driver.lookupByName("race-04")
    assert dom.isActive() and dom.isPersistent()
    assert domxml.parse(dom.XMLDesc(0)).find("launchSecurity").get("type") == "sev-snp", "what runs is snpvirt's"
    assert domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("launchSecurity") is None, "the next boot's"
    del conn.lookup, conn.live_xml
    make_manager(conn).destroy("race-04")
    with pytest.raises(ConflictError, match="snpvirt does not start it"):
        make_manager(conn).start("race-04")


def test_an_update_apply_starts_is_checked_in_one_read_and_destroyed_if_another_definition_ran(conn, clean_test_driver):
    """An updated domain starts with libvirt's create (it may hold a managed-save image), so what runs is compared
    with what the define checked: in one read of the live XML when it is that (no look-up and render), and a
    definition another tool made in between is destroyed."""
    assert make_manager(conn).apply([spec(name="race-07")], start=False)[0].ok
    lookups = []
    real_lookup = conn.lookup
    conn.lookup = lambda name: lookups.append(name) or real_lookup(name)
    updated = make_manager(conn).apply([spec(name="race-07", vcpus=4)])[0]
    assert (updated.ok, updated.action, updated.state) == (True, "update", "running"), updated.error
    assert lookups == ["race-07"], "the plan's look-up only: what runs was compared with what the define checked"
    del conn.lookup
    conn.destroy("race-07")
    real_start = conn.start

    def start_after_another_tool_defines(name):
        edit_outside(clean_test_driver, name, strip_snp_behind_a_comment)
        real_start(name)

    conn.start = start_after_another_tool_defines
    swapped = make_manager(conn).apply([spec(name="race-07", vcpus=2)])[0]
    assert not swapped.ok and "changed while snpvirt started it" in swapped.error.message, swapped
    assert conn.state("race-07") == "shutoff"


def test_live_xml_is_what_runs_and_none_once_the_domain_stopped(conn, clean_test_driver):
    """The check after start reads what runs in one call: an active domain's live XML (with its run id), and
    None for a domain that is not running (libvirt then answers with the persistent definition)."""
    assert make_manager(conn).apply([spec(name="race-06")])[0].ok
    live = conn.live_xml("race-06")
    assert live is not None and domxml.parse(live).get("id") == str(clean_test_driver.lookupByName("race-06").ID())
    conn.destroy("race-06")
    assert conn.live_xml("race-06") is None


@pytest.mark.parametrize("restart", [False, True])
def test_apply_checks_what_it_started_a_definition_changed_before_create_is_destroyed(conn, clean_test_driver, restart):
    """apply's start (and --restart's) is the same two calls as `start`: another tool's definition between the
    check and libvirt's create never runs as the guest snpvirt defined (here it lost SEV-SNP)."""
    make_manager(conn).apply([spec(name="race-03")], start=restart)  # running: --restart starts it on 4 vCPUs
    real_start = conn.start

    def start_after_another_tool_defines(name):
        edit_outside(clean_test_driver, name, strip_snp_behind_a_comment)
        real_start(name)

    conn.start = start_after_another_tool_defines
    outcome = make_manager(conn).apply([spec(name="race-03", vcpus=4 if restart else 2)], restart=restart)[0]
    assert not outcome.ok and "changed while snpvirt started it" in outcome.error.message, outcome
    assert conn.state("race-03") == "shutoff"


def _in_fleet(name: str, fleet: str | None) -> SpecInput:
    given = spec(name=name)
    return SpecInput(given.label, dataclasses.replace(given.spec, fleet=fleet))


def test_a_domain_of_another_fleet_or_of_none_is_refused_and_where_it_belongs_is_said(mgr, conn):
    """A fleet never takes a single-host apply's domain, nor the reverse; the refusal says who owns it and
    where to manage it (an upgrade script keys on these words)."""
    assert mgr.apply([_in_fleet("drift-40", "web")], start=False)[0].ok
    refused = mgr.apply([spec(name="drift-40")])[0]
    assert (refused.action, refused.error.kind, refused.error.message, refused.error.hint) == (
        "conflict", "conflict", "domain drift-40 belongs to fleet web; it is left untouched",
        "choose another name, or manage it where it belongs (the fleet file of web: snpvirt fleet apply FILE)")
    assert mgr.apply([spec(name="drift-41")], start=False)[0].ok
    refused = mgr.apply([_in_fleet("drift-41", "web")])[0]
    assert (refused.action, refused.error.message, refused.error.hint) == (
        "conflict", "domain drift-41 belongs to no fleet; it is left untouched",
        "choose another name, or manage it where it belongs (snpvirt apply SPEC -c URI), "
        "or undefine it first: snpvirt undefine drift-41")
    assert (conn.state("drift-40"), conn.state("drift-41")) == ("shutoff", "shutoff"), "left untouched"


def test_a_domain_apply_may_not_change_is_refused_with_how_to_go_on(mgr, conn, clean_test_driver):
    root = etree.fromstring((GOLDEN / "web-01.xml").read_text().replace("<name>web-01</name>", "<name>drift-42</name>").encode())
    root.remove(root.find("metadata"))
    clean_test_driver.defineXML(etree.tostring(root, encoding="unicode"))
    refused = mgr.apply([spec(name="drift-42")])[0]
    assert (refused.error.message, refused.error.hint) == (
        "a domain named drift-42 exists and is not managed by snpvirt; it is left untouched",
        "choose another name, or bring it under management: snpvirt import drift-42")
    mgr.apply([spec(name="drift-43")], start=False)
    uuid = conn.lookup("drift-43").uuid
    refused = mgr.apply([spec(name="drift-43", uuid="00000000-1111-2222-3333-444444444444")])[0]
    assert (refused.action, refused.error.message, refused.error.hint) == (
        "conflict", f"domain drift-43 exists with UUID {uuid}, the spec says 00000000-1111-2222-3333-444444444444",
        "remove uuid from the spec or fix it; snpvirt never replaces another domain")


# --- pool disks, the cloud-init seed and the image cache on the test driver's pool (scripts/mutation apply) --------


class HeldContent(Storage):
    """The test driver's own pools, with the bytes of what is uploaded held here: libvirt's test driver simulates
    volumes but moves no content (virStorageVolUpload and Download are not supported); every other call is
    libvirt's. Real transfers are tested on a daemon (test_apply_volumes.py, test_image_pull.py)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.content: dict[tuple[str, str], bytes] = {}

    def upload(self, pool, name, src_path, fmt, progress=None):
        data = Path(src_path).read_bytes()
        info = self.create_volume(pool, name, len(data), "raw")
        self.content[(pool, name)] = data
        return info

    def download(self, pool, name, dest, max_bytes, progress=None):
        data = self.content[(pool, name)]
        if len(data) > max_bytes:
            raise BadInputError(f"{name} is larger than {max_bytes} bytes", "")
        Path(dest).write_bytes(data)
        return len(data)

    def delete(self, pool, name):
        super().delete(pool, name)
        self.content.pop((pool, name), None)


POOL = "default-pool"


@pytest.fixture
def pool_store(conn, test_driver):
    """HeldContent over the test driver; the volumes named vols-* are removed afterwards."""
    yield HeldContent(conn)
    for volume in test_driver.storagePoolLookupByName(POOL).listAllVolumes():
        if volume.name().startswith("vols-"):
            volume.delete()


def pool_manager(conn, store, **options) -> Manager:
    return Manager(conn, gate=lambda: None, resolve_sev=lambda s: sevparams.resolve(s, []), storage=store, **options)


def pool_spec(name: str, **changes) -> SpecInput:
    return SpecInput(name, specs.parse_spec({**_base(name), "disks": [{"pool": POOL, "volume": f"{name}.qcow2", "size_gib": 1}],
                                             **changes}))


def test_a_pool_disk_is_planned_created_and_made_again_when_it_is_gone(conn, test_driver, pool_store):
    """apply --check lists the volume to create; the run creates it before the define; a disk volume deleted
    since is a change of an otherwise unchanged domain (made again, empty), never a reason to redefine it."""
    m = pool_manager(conn, pool_store)
    create = [{"pool": POOL, "volume": "vols-01.qcow2", "action": "create", "backing": None, "size_bytes": 1 << 30}]
    plan = m.apply([pool_spec("vols-01")], check=True)[0]
    assert (plan.changed, plan.details["volumes"]) == (True, create) and pool_store.volume(POOL, "vols-01.qcow2") is None
    assert m.apply([pool_spec("vols-01")])[0].ok and pool_store.volume(POOL, "vols-01.qcow2").capacity == 1 << 30
    again = m.apply([pool_spec("vols-01")], check=True)[0]
    assert (again.action, again.changed, again.details["volumes"]) == ("unchanged", False, [])
    pool_store.delete(POOL, "vols-01.qcow2")
    plan = m.apply([pool_spec("vols-01")], check=True)[0]
    assert (plan.action, plan.changed, plan.details["volumes"]) == ("unchanged", True, create)
    done = m.apply([pool_spec("vols-01")])[0]
    assert (done.ok, done.action, done.changed) == (True, "unchanged", True) and pool_store.volume(POOL, "vols-01.qcow2")


def test_a_failed_create_removes_the_disk_volume_it_made(conn, test_driver, pool_store):
    with MangledDefine("test:///default") as mangled:
        mangled.mangle = without("launchSecurity")
        failed = pool_manager(mangled, pool_store).apply([pool_spec("vols-02")])[0]
        assert not failed.ok and mangled.lookup("vols-02") is None
    assert pool_store.volume(POOL, "vols-02.qcow2") is None, "nothing is left half made"


def test_a_seed_is_stored_recorded_and_replaced_when_its_user_data_changes(conn, pool_store, tmp_path):
    """The seed's digest is in the definition's metadata; the same spec with another user_data file is an
    update that says so (seed.sha256 from the stored seed to the new one) and replaces the volume."""
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\nhostname: first\n")
    seeded = pool_spec("vols-03", disks=[], cloud_init={"pool": POOL, "user_data": str(user_data)})
    m = pool_manager(conn, pool_store)
    plan = m.apply([seeded], check=True)[0]
    [volume] = plan.details["volumes"]
    first = volume["seed_sha256"]
    assert volume == {"pool": POOL, "volume": "vols-03-cidata.iso", "action": "create", "seed_sha256": first}
    assert m.apply([seeded])[0].ok
    assert m.status("vols-03")["cloud_init_seed"] == {"pool": POOL, "volume": "vols-03-cidata.iso", "sha256": first}
    assert hashlib.sha256(pool_store.content[(POOL, "vols-03-cidata.iso")]).hexdigest() == first
    assert m.apply([seeded], check=True)[0].changed is False

    user_data.write_text("#cloud-config\nhostname: second\n")
    plan = m.apply([seeded], check=True)[0]
    [volume] = plan.details["volumes"]
    second = volume["seed_sha256"]
    assert second != first and volume["action"] == "replace"
    assert (plan.action, plan.details["diff"]) == ("update", [{"key": "seed.sha256", "from": first, "to": second}])
    assert m.apply([seeded])[0].ok
    assert m.status("vols-03")["cloud_init_seed"]["sha256"] == second
    assert hashlib.sha256(pool_store.content[(POOL, "vols-03-cidata.iso")]).hexdigest() == second
    assert m.apply([seeded], check=True)[0].action == "unchanged"


def test_a_pulled_kernel_is_measured_from_the_image_cache_the_manager_is_given(conn, pool_store, tmp_path):
    """A kernel volume that image pull's manifest vouches for is measured from the verified copy in the cache
    (the host may have swapped the volume's bytes), for a new domain and for an update alike."""
    kernel = b"a verified kernel"
    verified = tmp_path / "verified-kernel"
    verified.write_bytes(kernel)
    digest = hashlib.sha256(kernel).hexdigest()
    swapped = tmp_path / "swapped"
    swapped.write_bytes(b"x" * len(kernel))  # the size the manifest records: the cache's copy is measured
    pool_store.upload(POOL, "vols-vmlinuz", swapped, "raw")
    manifest = tmp_path / "manifest"
    manifest.write_text(json.dumps({"manifest_version": imagepool.MANIFEST_VERSION,
                                    "files": [{"volume": "vols-vmlinuz", "size_bytes": len(kernel), "sha256": digest}]}))
    pool_store.upload(POOL, "vols-image" + pool_volumes.MANIFEST_SUFFIX, manifest, "raw")
    asked = []

    def cache(sha256):
        asked.append(sha256)
        return verified if sha256 == digest else None

    m = pool_manager(conn, pool_store, image_cache=cache)
    booting = {"disks": [], "boot": {"kernel": {"pool": POOL, "volume": "vols-vmlinuz"}, "cmdline": "console=ttyS0"}}
    assert m.apply([pool_spec("vols-04", **booting)], start=False)[0].ok
    assert m.status("vols-04")["launch"]["kernel"]["sha256"] == digest and asked == [digest]
    assert m.apply([pool_spec("vols-04", vcpus=4, **booting)], start=False)[0].ok
    assert m.status("vols-04")["launch"]["kernel"]["sha256"] == digest and asked == [digest] * 2
