"""Each SNP rule fires on the document that breaks it, and only the rules that apply fire."""

import pytest
from lxml import etree

from snpvirt.domain import xml as domxml
from snpvirt.domain.rules import RULES
from tests.conftest import GOLDEN, vector


def golden_root():
    return etree.fromstring((GOLDEN / "web-01.xml").read_bytes())


def errors_of(root, allow_debug=False):
    return sorted({f.rule_id for f in domxml.check(etree.tostring(root), allow_debug) if f.severity == "error"})


def _set(path, attr, value):
    def mutate(root):
        root.find(path).set(attr, value)
    return mutate


def _remove(path):
    def mutate(root):
        el = root.find(path)
        el.getparent().remove(el)
    return mutate


def _text(path, value):
    def mutate(root):
        root.find(path).text = value
    return mutate


def _add(path, xml):
    def mutate(root):
        root.find(path).append(etree.fromstring(xml))
    return mutate


def _drop_attr(path, attr):
    def mutate(root):
        root.find(path).attrib.pop(attr)
    return mutate


def _both(first, second):
    def mutate(root):
        first(root)
        second(root)
    return mutate


MUTATIONS = {
    "snp.launch_security": [_remove("launchSecurity"), _set("launchSecurity", "type", "sev")],
    "snp.domain_kvm": [_set(".", "type", "qemu")],
    "snp.machine_q35": [_set("os/type", "machine", "pc-i440fx-8.2")],
    # A read-only stateless pflash is what libvirt's own SNP test uses; pflash with a variable store is not.
    "snp.firmware_stateless": [_both(_set("os/loader", "type", "pflash"), _drop_attr("os/loader", "stateless")),
                               _both(_remove("os/loader"), lambda root: root.find("os").set("firmware", "efi")),
                               _remove("os/loader")],
    "snp.no_nvram": [_add("os", "<nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>")],
    "snp.no_smm": [_set("features/smm", "state", "on")],
    "snp.policy_bit17": [_text("launchSecurity/policy", "0x10000")],
    "snp.policy_reserved": [_text("launchSecurity/policy", "0x10000030000")],
    "snp.policy_debug": [_text("launchSecurity/policy", "0xb0000")],
    "snp.kernel_hashes": [_remove("os/kernel")],
    "snp.blob.hostData": [_text("launchSecurity/hostData", "AAAA")],
    "snp.blob.idBlock": [_add("launchSecurity", "<idBlock>AAAA</idBlock>")],
    "snp.id_auth": [_set("launchSecurity", "authorKey", "yes")],
}


def test_the_golden_is_clean():
    assert errors_of(golden_root()) == []


@pytest.mark.parametrize("rule_id,mutation", [(r, m) for r, ms in MUTATIONS.items() for m in ms])
def test_rule_fires_on_its_mutation(rule_id, mutation):
    root = golden_root()
    mutation(root)
    found = errors_of(root)
    assert rule_id in found
    # kernelHashes without <kernel> also breaks libvirt's schema for <initrd>/<cmdline>; nothing else may fire.
    assert set(found) - {rule_id, "libvirt.schema"} == set()


def test_every_error_rule_has_a_mutation_or_a_blob_twin():
    covered = set(MUTATIONS) | {"snp.blob.guestVisibleWorkarounds", "snp.blob.idAuth"}
    assert {r.rule_id for r in RULES if r.severity == "error"} <= covered


def test_debug_policy_passes_with_allow_debug():
    root = golden_root()
    _text("launchSecurity/policy", "0xb0000")(root)
    assert errors_of(root, allow_debug=True) == []


def test_virtio_without_iommu_is_a_warning_only():
    root = golden_root()
    root.find("devices/disk/driver").attrib.pop("iommu")
    findings = domxml.check(etree.tostring(root))
    assert [(f.rule_id, f.severity) for f in findings] == [("snp.virtio_iommu", "warning")]


def test_schema_violations_are_reported_with_line_numbers():
    root = golden_root()
    root.find("vcpu").text = "many"
    findings = domxml.check(etree.tostring(root))
    assert findings[0].rule_id == "libvirt.schema" and findings[0].message.startswith("line ")


def test_not_xml_and_not_a_domain():
    assert domxml.check(b"<domain>")[0].rule_id == "xml.well_formed"
    assert domxml.check(b"<network/>")[0].rule_id == "xml.domain"


def test_libvirts_own_snp_test_domains_are_valid():
    for name in ("launch-security-sev-snp.xml", "launch-security-sev-snp.x86_64-latest.xml"):
        findings = domxml.check(vector(f"libvirt/qemuxmlconfdata/{name}").read_bytes())
        assert [f for f in findings if f.severity == "error"] == [], name


@pytest.mark.parametrize("name", ["virt-install-x86_64-launch-security-sev-snp.xml",
                                  "virt-install-x86_64-launch-security-sev-snp-full.xml"])
def test_virt_managers_policy_0x24_is_rejected_by_the_bit17_rule(name):
    findings = domxml.check(vector(f"virt-manager/{name}").read_bytes())
    bit17 = [f for f in findings if f.rule_id == "snp.policy_bit17"]
    assert len(bit17) == 1 and "0x24" in bit17[0].message and "0x20024" in bit17[0].hint
    # libvirt's schema itself accepts 0x24: only snpvirt catches it before launch.
    assert not [f for f in findings if f.rule_id == "libvirt.schema"]


def test_legacy_sev_domain_is_not_snp():
    ids = {f.rule_id for f in domxml.check(vector("virt-manager/virt-install-amd-sev.xml").read_bytes())}
    assert "snp.launch_security" in ids


def test_a_direct_kernel_without_hashes_is_warned_about():
    root = golden_root()
    root.find("launchSecurity").attrib.pop("kernelHashes")
    findings = domxml.check(etree.tostring(root))
    assert [(f.rule_id, f.severity) for f in findings] == [("snp.kernel_unmeasured", "warning")]
    assert "attestation still passes" in findings[0].message
