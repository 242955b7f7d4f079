"""launchrecord on its own: what a domain launches with, checked against a measurement's inputs, and what
a report from it must show. Definitions another tool edited (no <cpu>, no <vcpu>, a record that is not
what snpvirt writes) are where a wrong answer would record a measurement the guest can never produce,
or pass a report for the wrong guest."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from snpvirt.domain import launchrecord
from snpvirt.domain.launchrecord import LaunchInputs
from snpvirt.domain.metadata import ManagedInfo
from snpvirt.errors import ConflictError
from snpvirt.launch import idblock
from snpvirt.launch.inputs import Expected
from snpvirt.models import FileDigest
from tests.conftest import vector

KEYS = "measurement/idblock-virtee-sev"


def domain(os_: str = "", vcpu: str | None = "4", cpu: str | None = None, security: str = "") -> etree._Element:
    parts = ["<domain type='kvm'><name>vm</name>", f"<vcpu>{vcpu}</vcpu>" if vcpu is not None else "",
             f"<os><type>hvm</type>{os_}</os>", cpu or "", f"<launchSecurity type='sev-snp'>{security}</launchSecurity>"
             if security is not None else "", "</domain>"]
    return etree.fromstring("".join(parts))


def info(origin: str = "spec", **launch) -> ManagedInfo:
    return ManagedInfo(version="1", origin=origin, spec=None, digest=None, launch=launch)


def expected(**digests: str | None) -> Expected:
    return Expected(value=None, reason=None, vcpu_signature=None, guest_features=1,
                    digests={kind: FileDigest(sha256) for kind, sha256 in digests.items()})


def given(vcpus: int = 4, cpu_model: str | None = None, cmdline: str | None = None, kernel_hashes: bool = False):
    return LaunchInputs(vcpus, cpu_model, cmdline, kernel_hashes, source="given")


# --- what an imported domain launches with: its definition ------------------------------------------


@pytest.mark.parametrize("cpu,model", [
    (None, None),  # no <cpu> at all: no model to compare
    ("<cpu><model>EPYC-Genoa</model></cpu>", "EPYC-Genoa"),  # libvirt's default mode is custom
    ("<cpu mode='custom'/>", None),  # custom without a model
    ("<cpu mode='custom'><model> EPYC-Milan </model></cpu>", "EPYC-Milan"),
    ("<cpu mode='host-passthrough'/>", "host-passthrough"),
])
def test_an_imported_domains_vcpu_model_is_read_from_its_cpu(cpu, model):
    root = domain(cpu=cpu)
    assert launchrecord.mismatches(root, info("import"), given(cpu_model=model), expected()) == []
    assert launchrecord.mismatches(root, info("import"), given(cpu_model="other"), expected()) == [
        f"vCPU model: domain {model!r}, given 'other'"]


def test_an_imported_domain_without_vcpu_launches_with_none_recorded():
    assert launchrecord.mismatches(domain(vcpu=None), info("import"), given(vcpus=1), expected()) == [
        "vCPUs: domain None, given '1'"]


def test_a_spec_domain_is_compared_with_its_record_not_its_definition():
    """Its record is what snpvirt launched it from; the definition may have drifted (the drift check says so)."""
    record = info(vcpus={"count": "4", "model": "EPYC-Genoa"}, cmdline="console=ttyS0")
    root = domain(vcpu="2", cpu="<cpu><model>EPYC-Milan</model></cpu>", security="")
    assert launchrecord.mismatches(root, record, LaunchInputs(4, "EPYC-Genoa", "console=ttyS0", False), expected()) == []
    assert launchrecord.mismatches(root, record, LaunchInputs(2, "EPYC-Milan", None, True), expected()) == [
        "vCPUs: domain '4', spec '2'", "vCPU model: domain 'EPYC-Genoa', spec 'EPYC-Milan'",
        "cmdline: domain 'console=ttyS0', spec None", "kernel hashes: domain False, spec True"]


def test_a_spec_domains_record_edited_into_text_compares_as_nothing_recorded():
    record = info(vcpus="4", kernel="c8f5", firmware="aa")
    assert launchrecord.mismatches(domain(), record, LaunchInputs(4, None, None, False),
                                   expected(kernel="bb", firmware="cc")) == ["vCPUs: domain None, spec '4'"]


# --- launch-file digests -------------------------------------------------------------------------


def test_each_recorded_launch_file_digest_must_match_the_measured_one():
    record = info(vcpus={"count": "4"}, firmware={"sha256": "f1"}, kernel={"sha256": "k1"}, initrd={"sha256": "i1"})
    inputs = LaunchInputs(4, None, None, False)
    assert launchrecord.mismatches(domain(), record, inputs, expected(firmware="f1", kernel="k1", initrd="i1")) == []
    assert launchrecord.mismatches(domain(), record, inputs, expected(firmware="f2", kernel="k2", initrd="i2")) == [
        "firmware sha256: domain 'f1', spec 'f2'", "kernel sha256: domain 'k1', spec 'k2'",
        "initrd sha256: domain 'i1', spec 'i2'"]


def test_digests_not_known_on_either_side_are_not_compared():
    record = info(vcpus={"count": "4"}, firmware={"sha256": "unknown"}, kernel={"sha256": "k1"}, initrd={})
    assert launchrecord.mismatches(domain(), record, LaunchInputs(4, None, None, False),
                                   expected(firmware="f2", kernel=None, initrd="i2")) == []


def test_an_imported_domain_has_no_recorded_digests_to_compare():
    """What it launches with is its definition: a digest in its record is not a launch input."""
    record = info("import", firmware={"sha256": "f1"}, kernel={"sha256": "k1"})
    assert launchrecord.mismatches(domain(), record, given(), expected(firmware="f2", kernel="k2")) == []


# --- the launch record of an imported domain ----------------------------------------------------------


def test_the_launch_record_holds_the_definitions_paths_and_the_measured_digests():
    root = domain(os_="<loader> /fw/OVMF.fd </loader><kernel>/boot/vmlinuz</kernel><cmdline>console=ttyS0</cmdline>",
                  cpu="<cpu mode='host-passthrough'/>", security="<policy>0x30000</policy>")
    assert launchrecord.launch_record(root, expected(firmware="f1", kernel="k1", initrd="i1")) == {
        "firmware": {"path": "/fw/OVMF.fd", "sha256": "f1"}, "kernel": {"path": "/boot/vmlinuz", "sha256": "k1"},
        "initrd": {"path": None, "sha256": "i1"},  # measured from a file the definition does not name
        "cmdline": "console=ttyS0", "vcpus": {"count": "4", "model": "host-passthrough"}, "policy": "0x30000"}


def test_the_launch_record_leaves_out_files_neither_named_nor_measured():
    record = launchrecord.launch_record(domain(os_="<loader></loader><initrd>/boot/initrd</initrd>"), expected())
    assert (record["firmware"], record["kernel"]) == (None, None)
    assert record["initrd"] == {"path": "/boot/initrd", "sha256": None}, "named, not measured"


@pytest.mark.parametrize("security,policy", [
    ("", "0x30000"),  # none written: the default libvirt launches with
    ("<policy>0x000000030000</policy>", "0x30000"),
    ("<policy>zz</policy>", "zz"),  # not hex: recorded as written, the SNP rules refuse it
])
def test_the_launch_record_holds_the_policy_the_domain_launches_with(security, policy):
    assert launchrecord.launch_record(domain(security=security), expected())["policy"] == policy


# --- what a report must show ------------------------------------------------------------------------


def test_expectations_come_from_the_record_and_the_definition():
    host_data = base64.b64encode(bytes(range(32))).decode()
    record = info(measurement={"value": "ab" * 48}, policy="0x30000",
                  id_block={"id_key_digest": base64.b64encode(b"i" * 48).decode(),
                            "author_key_digest": base64.b64encode(b"a" * 48).decode()})
    found = launchrecord.attestation_expectations("vm", domain(security=f"<policy>0x20000</policy>"
                                                                        f"<hostData> {host_data} </hostData>"), record)
    assert found["measurement"] == bytes.fromhex("ab" * 48)
    assert found["policy"] == 0x30000, "the recorded policy, not the definition's"
    assert found["host_data"] == bytes(range(32))
    assert (found["id_key_digest"], found["author_key_digest"]) == (b"i" * 48, b"a" * 48)


def test_without_a_recorded_policy_the_definitions_counts():
    found = launchrecord.attestation_expectations("vm", domain(security="<policy>0x20000</policy>"), info())
    assert found["policy"] == 0x20000
    assert (found["measurement"], found["host_data"], found["id_key_digest"]) == (None, None, None)


@pytest.mark.parametrize("measurement,why", [(None, "none recorded"), ("odd", "none recorded"),
                                             ({"status": "unknown", "reason": "kernel x: not found"}, "kernel x: not found")])
def test_a_missing_measurement_says_why_and_how_to_record_one(measurement, why):
    record = info() if measurement is None else info(measurement=measurement)
    found = launchrecord.attestation_expectations("vm", domain(), record)
    assert found["measurement"] is None
    assert found["measurement_unknown"] == (
        f"domain vm records no measurement ({why}); record one with: snpvirt measure SPEC --record vm (or, for an "
        "imported domain, with its launch files: snpvirt measure --firmware FILE --vcpus N --vcpu-type TYPE ... "
        "--record vm)")


@pytest.mark.parametrize("launch,security,what", [
    ({"measurement": {"value": "zz"}}, "", "measurement"),
    ({"measurement": {"value": {"nested": "x"}}}, "", "measurement"),  # an element that gained attributes
    ({"policy": "zz"}, "", "policy"),
    ({}, "<hostData>A</hostData>", "host data"),  # base64 with its padding cut
    ({"id_block": {"id_key_digest": "A"}}, "", "id key digest"),
    ({"id_block": {"author_key_digest": "A"}}, "", "author key digest"),
])
def test_a_recorded_value_another_tool_mangled_is_a_conflict(launch, security, what):
    with pytest.raises(ConflictError) as conflict:
        launchrecord.attestation_expectations("vm", domain(security=security), info(**launch))
    assert conflict.value.message == f"domain vm's recorded {what} is not readable (edited by another tool?)"
    assert conflict.value.hint == "restore it: snpvirt apply SPEC"


def id_blocks(author: bool) -> idblock.IdBlockSet:
    keys = [idblock.load_private_key(vector(f"{KEYS}/{name}"), name) for name in ("test_id_key.pem", "test_auth_key.pem")]
    return idblock.build(bytes(48), 0x30000, keys[0], keys[1] if author else None)


def with_id_auth(blocks: idblock.IdBlockSet, author: bool) -> etree._Element:
    auth = base64.b64encode(blocks.id_auth).decode()
    root = domain(security=f"<idAuth>{auth}</idAuth>")
    root.find("launchSecurity").set("authorKey", "yes" if author else "no")
    return root


def test_the_key_digests_follow_the_id_auth_the_domain_launches_with():
    blocks = id_blocks(author=True)
    record = info(id_block={"id_key_digest": base64.b64encode(blocks.id_key_digest).decode()})
    found = launchrecord.attestation_expectations("vm", with_id_auth(blocks, author=True), record)
    assert (found["id_key_digest"], found["author_key_digest"]) == (blocks.id_key_digest, blocks.author_key_digest)
    without = launchrecord.attestation_expectations("vm", with_id_auth(blocks, author=False), info())
    assert without["author_key_digest"] == bytes(48), "no AUTH_KEY_EN: the report's author digest is zeros"


def test_an_id_auth_of_another_id_key_than_the_recorded_one_is_a_conflict():
    blocks = id_blocks(author=True)
    record = info(id_block={"id_key_digest": base64.b64encode(blocks.author_key_digest).decode()})
    with pytest.raises(ConflictError) as conflict:
        launchrecord.attestation_expectations("vm", with_id_auth(blocks, author=True), record)
    assert conflict.value.message == ("domain vm's <idAuth> carries another ID key than the one snpvirt signed its ID "
                                      "block with (edited by another tool?)")
    assert conflict.value.hint == "restore it: snpvirt apply SPEC"


def test_an_unreadable_id_auth_is_a_conflict():
    with pytest.raises(ConflictError) as conflict:
        launchrecord.attestation_expectations("vm", domain(security="<idAuth>AAAA</idAuth>"), info())
    assert conflict.value.message == ("domain vm's <idAuth>: the ID authentication information is not "
                                      f"{idblock.ID_AUTH_SIZE} bytes of base64")
    assert conflict.value.hint == "restore it: snpvirt apply SPEC"
