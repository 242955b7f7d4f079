"""`define XML` through the manager on libvirt's test driver: what it refuses and says, what a plan (--check)
promises, and what it records in the domain. (scripts/mutation define)"""

from __future__ import annotations

import hashlib

import pytest
from lxml import etree

from snpvirt.domain import metadata
from snpvirt.domain import xml as domxml
from snpvirt.errors import BadInputError, ConflictError, SnpvirtError
from tests.conftest import GOLDEN, vector
from tests.integration.test_manager import make_manager, spec
from tests.unit.fakehost import SNP_FIRMWARE, installed_firmware

WEB = (GOLDEN / "web-01.xml").read_text()
NOW = "2026-11-27T00:00:00+00:00"


@pytest.fixture
def mgr(conn):
    manager = make_manager(conn)
    manager.clock = lambda: NOW
    return manager


def without_snpvirt(document: str) -> str:
    """The document as another tool would hand it over: no snpvirt element under <metadata>."""
    start = document.index("<metadata>")
    return document[:start] + document[document.index("</metadata>") + len("</metadata>"):]


def test_a_document_breaking_rules_names_the_first_and_counts_the_rest(mgr, conn):
    debug = WEB.replace("<policy>0x30000</policy>", "<policy>0xb0000</policy>")
    with pytest.raises(BadInputError) as one:
        mgr.define_xml(debug.encode(), "web.xml")
    [finding] = [f for f in domxml.check(debug.encode(), False) if f.severity == "error"]
    assert (one.value.message, one.value.hint) == (f"web.xml: snp.policy_debug: {finding.message}", finding.hint)
    worse = debug.replace("<smm state='off'/>", "<smm state='on'/>")
    errors = [f for f in domxml.check(worse.encode(), False) if f.severity == "error"]
    assert len(errors) == 2
    with pytest.raises(BadInputError) as two:
        mgr.define_xml(worse.encode(), "web.xml")
    assert two.value.message == f"web.xml: {errors[0].rule_id}: {errors[0].message} (and 1 more)"
    assert two.value.hint == errors[0].hint and conn.lookup("web-01") is None
    mgr.allow_debug = True
    assert mgr.define_xml(debug.encode(), "web.xml").action == "define", "--allow-debug: a throw-away test guest"


def test_a_plan_promises_what_the_run_does_and_changes_nothing(mgr, conn):
    plan = mgr.define_xml(WEB.encode(), "web.xml", check=True)
    assert (plan.name, plan.action, plan.changed, plan.state, plan.details) == ("web-01", "define", True, "absent",
                                                                                {"planned": True})
    assert conn.lookup("web-01") is None
    done = mgr.define_xml(WEB.encode(), "web.xml")
    assert (done.name, done.action, done.changed, done.state) == ("web-01", "define", True, "shutoff")
    again = mgr.define_xml(WEB.encode(), "web.xml")
    assert (again.name, again.action, again.changed, again.state) == ("web-01", "unchanged", False, "shutoff")
    edited = WEB.replace("<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>")
    assert edited != WEB
    plan = mgr.define_xml(edited.encode(), "web.xml", check=True)
    assert (plan.action, plan.changed, plan.state, plan.details) == ("update", True, "shutoff", {"planned": True})
    assert domxml.parse(conn.lookup("web-01").xml).findtext("vcpu") == "4", "the plan defined nothing"
    done = mgr.define_xml(edited.encode(), "web.xml")
    assert (done.name, done.action, done.changed, done.state) == ("web-01", "update", True, "shutoff")


def test_a_document_from_another_tool_is_recorded_as_imported(mgr, conn):
    document = without_snpvirt(WEB)
    mgr.define_xml(document.encode(), "web.xml")
    info = metadata.read(domxml.parse(conn.lookup("web-01").xml))
    assert (info.origin, info.defined_at) == ("import", NOW)
    assert info.digest == "sha256:" + hashlib.sha256(document.encode()).hexdigest()
    assert info.xml_digest == metadata.content_digest(domxml.parse(document))


def test_a_name_taken_by_another_domain_is_a_conflict(mgr, conn, clean_test_driver):
    clean_test_driver.defineXML(without_snpvirt(WEB))  # defined by another tool: not snpvirt's
    with pytest.raises(ConflictError) as unmanaged:
        mgr.define_xml(WEB.encode(), "web.xml")
    assert unmanaged.value.message == "a domain named web-01 already exists and is not managed by snpvirt"
    assert unmanaged.value.hint == "bring it under management with: snpvirt import web-01"
    clean_test_driver.lookupByName("web-01").undefine()
    mgr.define_xml(WEB.encode(), "web.xml")
    uuid = conn.lookup("web-01").uuid
    other = WEB.replace("<name>web-01</name>", "<name>web-01</name><uuid>00000000-0000-4000-8000-000000000001</uuid>")
    with pytest.raises(ConflictError) as another:
        mgr.define_xml(other.encode(), "web.xml")
    assert another.value.message == f"a domain named web-01 already exists with UUID {uuid}"
    same = WEB.replace("<name>web-01</name>", f"<name>web-01</name><uuid>{uuid}</uuid>").replace(
        "<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>")
    assert mgr.define_xml(same.encode(), "web.xml").action == "update", "its own UUID: an update"
    assert conn.lookup("web-01").uuid == uuid


def test_a_document_without_a_uuid_updates_the_domain_of_that_name_in_place(mgr, conn):
    mgr.define_xml(WEB.encode(), "web.xml")
    uuid = conn.lookup("web-01").uuid
    edited = WEB.replace("<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>")
    assert "<uuid>" not in edited
    assert mgr.define_xml(edited.encode(), "web.xml").action == "update"
    assert conn.lookup("web-01").uuid == uuid and domxml.parse(conn.lookup("web-01").xml).findtext("uuid") == uuid


# --- import: what it refuses and says, and what it promises ------------------------------------------------------

SEV = "virt-manager/virt-install-amd-sev.xml"  # legacy SEV, OVMF_CODE.fd: neither SEV-SNP nor an SNP build


def importing(mgr, xml: bytes, **options):
    arguments = {"from_domain": None, "fix": True, "check": False, "sev": None, "firmware": None, **options}
    return mgr.import_domain(xml, arguments.pop("from_domain"), **arguments)


def test_an_import_of_what_is_not_xml_is_bad_input(mgr):
    with pytest.raises(BadInputError) as refused:
        importing(mgr, b"<domain><name>x</name>")
    assert refused.value.message.startswith("not well-formed XML: ")
    assert refused.value.hint == "fix the XML syntax at that line"


def test_an_import_without_fix_names_every_broken_rule_and_offers_fix(mgr, conn, tmp_path):
    xml = vector(SEV).read_bytes()
    outcome = importing(mgr, xml, fix=False, installed=installed_firmware(tmp_path))
    remaining = [f["id"] for f in outcome.details["remaining"] if f["severity"] == "error"]
    assert (outcome.ok, outcome.name, outcome.action, outcome.state) == (False, "linux2020", "import", None)
    assert outcome.error.message == f"linux2020 breaks {len(remaining)} SEV-SNP rule(s): {', '.join(remaining)}"
    assert len(remaining) > 1 and outcome.error.hint == "run again with --fix"
    assert outcome.details["changes"] == [] and outcome.details["xml_diff"] == "" and conn.lookup("linux2020") is None
    fixed = importing(mgr, xml, firmware=SNP_FIRMWARE, installed=installed_firmware(tmp_path), check=True)
    assert fixed.details["xml_diff"].startswith("--- original\n+++ fixed\n@@ ")
    assert not fixed.details["xml_diff"].endswith("\\ No newline at end of file\n")


@pytest.mark.parametrize("fix", [False, True])
def test_an_import_with_a_firmware_not_known_as_snp_is_refused(mgr, conn, fix):
    document = WEB.replace("/usr/share/ovmf/OVMF.amdsev.fd", "/opt/firmware/unknown.fd")
    outcome = importing(mgr, without_snpvirt(document).encode(), fix=fix)
    assert not outcome.ok and conn.lookup("web-01") is None
    assert outcome.error.message.startswith("firmware /opt/firmware/unknown.fd is not known here as an SEV-SNP build (")
    assert outcome.error.message.endswith("); web-01 was not imported")
    assert outcome.error.hint.startswith("pass --firmware PATH of an SEV-SNP build, e.g. --firmware " if fix else
                                         "run again with --fix and --firmware PATH of an SEV-SNP build, e.g. --firmware ")


def test_an_import_whose_name_is_taken_is_a_conflict_and_the_same_file_unchanged(mgr, conn):
    document = without_snpvirt(WEB).encode()
    done = importing(mgr, document)
    assert (done.ok, done.action, done.changed, done.state) == (True, "import", True, "shutoff")
    again = importing(mgr, document)
    assert (again.ok, again.action, again.changed, again.state) == (True, "unchanged", False, "shutoff")
    other = importing(mgr, document.replace(b"<vcpu placement='static'>4</vcpu>", b"<vcpu placement='static'>2</vcpu>"))
    assert not other.ok and isinstance(other.error, ConflictError)
    assert (other.error.message, other.error.hint) == ("a domain named web-01 already exists",
                                                       "import it by name: snpvirt import web-01")


def test_importing_a_managed_domain_by_name_changes_nothing(mgr, conn):
    mgr.define_xml(WEB.encode(), "web.xml")
    record = conn.lookup("web-01")
    outcome = importing(mgr, record.xml.encode(), from_domain=record)
    assert (outcome.ok, outcome.name, outcome.action, outcome.changed, outcome.state) == (True, "web-01", "unchanged",
                                                                                          False, "shutoff")
    assert outcome.details == {"managed": True, "restart_required": False}


# --- what define and import do to a domain that exists, and what they report (scripts/mutation define) ---------


def test_the_same_document_again_puts_back_what_another_tool_changed(mgr, conn, clean_test_driver):
    """The recorded digest says the document is the same, but libvirt holds another definition now: the
    document given is defined again, not reported unchanged."""
    from tests.integration.test_manager_drift import _set, edit_outside

    mgr.define_xml(WEB.encode(), "web.xml")
    edit_outside(clean_test_driver, "web-01", _set("vcpu", text="2"))
    again = mgr.define_xml(WEB.encode(), "web.xml")
    assert (again.action, again.changed) == ("update", True)
    assert domxml.parse(conn.lookup("web-01").xml).findtext("vcpu") == "4"


def test_an_update_of_a_running_domain_reports_it_running(mgr, conn):
    mgr.define_xml(WEB.encode(), "web.xml")
    mgr.start("web-01")
    edited = WEB.replace("<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>")
    done = mgr.define_xml(edited.encode(), "web.xml")
    assert (done.action, done.changed, done.state) == ("update", True, "running"), "a redefinition stops nothing"
    assert conn.state("web-01") == "running"


def rolled_back(define):
    """Run `define(manager, conn)` on a connection whose next define comes back without <launchSecurity> (as an
    SNP-unaware libvirt keeps it); the domain as it was before, and as it is after."""
    from tests.integration.test_manager_drift import MangledDefine, without

    with MangledDefine("test:///default") as conn:
        manager = make_manager(conn)
        return define(manager, conn, without("launchSecurity"))


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_a_failed_update_by_define_puts_the_previous_definition_back(clean_test_driver, running):
    """Never an undefine, which would delete the user's domain."""
    def update(manager, conn, mangle):
        manager.define_xml(WEB.encode(), "web.xml")
        if running:
            manager.start("web-01")
        before = conn.lookup("web-01")
        conn.mangle = mangle
        with pytest.raises(SnpvirtError, match="the change was rolled back"):
            manager.define_xml(WEB.replace("<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>").encode(),
                               "web.xml")
        return before, conn.lookup("web-01")

    before, after = rolled_back(update)
    assert after is not None and (after.uuid, after.state, after.xml) == (before.uuid, before.state, before.xml)


def test_a_failed_import_by_name_puts_the_previous_definition_back(clean_test_driver):
    def reimport(manager, conn, mangle):
        clean_test_driver.defineXML(without_snpvirt(WEB))
        before = conn.lookup("web-01")
        conn.mangle = mangle
        outcome = None
        with pytest.raises(SnpvirtError, match="the change was rolled back"):
            outcome = manager.import_domain(before.xml.encode(), before, fix=True, check=False, sev=None, firmware=None)
        assert outcome is None
        return before, conn.lookup("web-01")

    before, after = rolled_back(reimport)
    assert after is not None and (after.uuid, after.xml) == (before.uuid, before.xml), "still the user's, unmanaged"


def test_an_import_by_name_reports_the_domain_s_state_whether_it_succeeds_or_not(mgr, conn, clean_test_driver):
    clean_test_driver.defineXML(without_snpvirt(WEB).replace("<policy>0x30000</policy>", "<policy>0xb0000</policy>")).create()
    record = conn.lookup("web-01")
    refused = importing(mgr, record.xml.encode(), from_domain=record, fix=False)
    assert (refused.ok, refused.action, refused.state) == (False, "import", "running")
    assert refused.error.hint == "run again with --fix"
    clean_test_driver.lookupByName("web-01").destroy()
    clean_test_driver.lookupByName("web-01").undefine()
    clean_test_driver.defineXML(without_snpvirt(WEB)).create()
    record = conn.lookup("web-01")
    done = importing(mgr, record.xml.encode(), from_domain=record)
    assert (done.ok, done.action, done.changed, done.state) == (True, "import", True, "running")


def test_import_with_allow_debug_judges_the_document_as_a_debug_guest(mgr, conn):
    """--allow-debug is the rules' to apply on both sides of the fix: a debug policy is then no broken rule."""
    debug = without_snpvirt(WEB).replace("<policy>0x30000</policy>", "<policy>0xb0000</policy>").encode()
    mgr.allow_debug = True
    done = importing(mgr, debug)
    assert (done.ok, done.details["broken_rules"], done.details["changes"]) == (True, [], [])
    assert conn.lookup("web-01") is not None


def test_import_fills_in_the_host_s_sev_parameters(mgr, conn):
    """--fix with the host's cbitpos/reducedPhysBits (host caps or the connection): they go into the added
    <launchSecurity>, not left to libvirt."""
    from snpvirt.domain.sevparams import SevParams

    root = domxml.parse(without_snpvirt(WEB))
    root.remove(root.find("launchSecurity"))
    done = importing(mgr, etree.tostring(root), sev=SevParams(47, 5, "host caps"))
    assert done.ok, done.error
    stored = domxml.parse(conn.lookup("web-01").xml)
    assert (stored.findtext("launchSecurity/cbitpos"), stored.findtext("launchSecurity/reducedPhysBits")) == ("47", "5")


def test_a_document_without_a_trailing_newline_shows_no_change_where_there_is_none(mgr):
    """The diff compares like with like: a file without a final newline is not shown as gaining one."""
    document = without_snpvirt(WEB).rstrip("\n").encode()
    plan = importing(mgr, document, check=True)
    assert (plan.ok, plan.details["changes"], plan.details["xml_diff"]) == (True, [], "")


def test_a_document_without_a_name_is_named_unnamed(mgr):
    root = domxml.parse(without_snpvirt(WEB))
    root.remove(root.find("name"))
    outcome = importing(mgr, etree.tostring(root))
    assert (outcome.ok, outcome.name) == (False, "(unnamed)")


def test_rules_fix_cannot_repair_give_their_own_hint(mgr, conn):
    """--fix was given and changed nothing that helps: "run again with --fix" would send the user in a circle."""
    document = without_snpvirt(WEB).replace("<policy>0x30000</policy>", "<policy>0xb0000</policy>").encode()
    outcome = importing(mgr, document)
    errors = [f for f in outcome.details["remaining"] if f["severity"] == "error"]
    assert (outcome.ok, outcome.details["changes"]) == (False, [])
    assert outcome.error.hint == errors[0]["hint"] != "run again with --fix"


def test_the_firmware_named_with_fix_is_taken_and_earlier_warnings_are_kept(mgr, conn):
    """--firmware PATH is the user's word that PATH is an SEV-SNP build: import --fix takes it though this host
    knows nothing of it (with a warning that says so), and the manager's earlier warnings stay."""
    mgr.apply([spec(name="def-01")])
    assert [w.rule_id for w in mgr.warnings] == ["gate.simulated"]
    document = without_snpvirt(WEB).replace("/usr/share/ovmf/OVMF.amdsev.fd", "/opt/firmware/custom.fd").encode()
    done = importing(mgr, document, firmware="/opt/firmware/custom.fd")
    assert done.ok, done.error
    assert domxml.parse(conn.lookup("web-01").xml).findtext("os/loader") == "/opt/firmware/custom.fd"
    assert mgr.warnings[0].rule_id == "gate.simulated" and len(mgr.warnings) > 1


def test_a_firmware_known_not_to_be_snp_is_refused_as_such(mgr, conn, tmp_path):
    """The host's descriptors say this firmware offers no SEV-SNP: said as a fact, not as unknown."""
    document = without_snpvirt(WEB).replace("/usr/share/ovmf/OVMF.amdsev.fd", "/usr/share/OVMF/OVMF.sev.fd").encode()
    outcome = importing(mgr, document, installed=installed_firmware(tmp_path))
    assert not outcome.ok and outcome.error.message.startswith("firmware /usr/share/OVMF/OVMF.sev.fd is not an SEV-SNP build (")
    assert conn.lookup("web-01") is None


# --- the check after define: what a rollback and a lost race say (scripts/mutation define) ----------------------

SNP_UNAWARE_HINT = "this libvirt does not keep these SEV-SNP settings: use libvirt >= 10.5 on this host"


def test_a_definition_libvirt_kept_without_snp_is_rolled_back_and_says_which_libvirt_keeps_it(clean_test_driver):
    def create(manager, conn, mangle):
        conn.mangle = mangle
        with pytest.raises(SnpvirtError) as failed:
            manager.define_xml(WEB.encode(), "web.xml")
        return failed.value, conn.lookup("web-01")

    error, after = rolled_back(create)
    assert error.message.startswith("libvirt's definition of web-01 does not keep what it was given (")
    assert error.message.endswith("); the change was rolled back") and "launch_security" in error.message
    assert error.hint == SNP_UNAWARE_HINT and after is None, "a new domain is removed"


def test_a_definition_libvirt_returns_as_broken_xml_is_rolled_back(clean_test_driver):
    """libvirt's copy cannot be read back: nothing says it kept the SEV-SNP settings, so it is not kept."""
    from tests.integration.test_manager_drift import MangledDefine

    with MangledDefine("test:///default") as conn:
        conn.mangle = lambda xml: xml[:xml.index("</domain>")]
        with pytest.raises(SnpvirtError) as failed:
            make_manager(conn).define_xml(WEB.encode(), "web.xml")
        assert failed.value.message.startswith("libvirt's definition of web-01 is not well-formed XML (")
        assert failed.value.message.endswith("); the change was rolled back")
        assert failed.value.hint == "see the libvirt log of this host"
        assert conn.lookup("web-01") is None


def test_a_define_that_loses_the_race_to_another_client_says_to_run_it_again(clean_test_driver):
    """Another client defined the same name between snpvirt's look and its define: a conflict that says what
    happened and that a second run will see that domain; the other client's domain is left as it is."""
    from tests.integration.test_manager_drift import AnotherClientFirst

    with AnotherClientFirst("test:///default") as conn:
        conn.races = ("define",)
        with pytest.raises(ConflictError) as lost:
            make_manager(conn).define_xml(WEB.encode(), "web.xml")
        assert (lost.value.message, lost.value.hint) == ("domain web-01 was defined by another client at the same time",
                                                         "run the command again: it will see that domain")
        assert [d.name() for d in clean_test_driver.listAllDomains()].count("web-01") == 1
