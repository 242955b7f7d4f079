"""Each SNP rule fires on the document that breaks it, and only the rules that apply fire."""

import base64

import pytest
from lxml import etree

from snpvirt.domain import xml as domxml
from snpvirt.domain.rules import RULES, check_rules, children_by_tag
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


# What each rule tells the user, word for word, for each way a document can break it: a finding
# under the right rule id that names the wrong problem sends the user to fix the wrong thing.
VALID_ID_AUTH = base64.b64encode(bytes(4096)).decode()
HOST_DATA = "5rLtUUmoVQtIr7RBa3FJ/DnMhGnRKMc8pDdejNg2ldQ="
NOT_STATELESS = ("firmware is not stateless: libvirt loads it as pflash with an NVRAM store, "
                 "which SEV-SNP cannot launch (SNP_LAUNCH_START ret=-22)")


def _insert_device(xml):
    def mutate(root):
        root.find("devices").insert(0, etree.fromstring(xml))
    return mutate


SAYS = {
    "no launchSecurity": (_remove("launchSecurity"),
                          [("snp.launch_security", "no <launchSecurity type='sev-snp'>: this domain would run without SEV-SNP")]),
    "legacy SEV": (_set("launchSecurity", "type", "sev"), [("snp.launch_security", "<launchSecurity type='sev'> is not SEV-SNP")]),
    "not KVM": (_set(".", "type", "qemu"), [("snp.domain_kvm", "<domain type='qemu'>: SEV-SNP needs KVM")]),
    "i440fx": (_set("os/type", "machine", "pc-i440fx-8.2"), [("snp.machine_q35", "machine type pc-i440fx-8.2 is not q35")]),
    "no machine": (_drop_attr("os/type", "machine"), [("snp.machine_q35", "machine type (default: i440fx pc) is not q35")]),
    "versioned q35": (_set("os/type", "machine", "pc-q35-9.0"), []),
    "no os type": (_remove("os/type"), [("snp.machine_q35", "machine type (default: i440fx pc) is not q35")]),
    "not x86_64": (_set("os/type", "arch", "aarch64"), [("snp.machine_q35", "architecture aarch64 is not x86_64")]),
    "no arch": (_drop_attr("os/type", "arch"), []),
    "no firmware": (_remove("os/loader"), [("snp.firmware_stateless",
                                            "no UEFI firmware (neither <os firmware='efi'> nor <loader>): SEV-SNP needs OVMF")]),
    "efi autoselect": (_both(_remove("os/loader"), lambda root: root.find("os").set("firmware", "efi")),
                       [("snp.firmware_stateless", NOT_STATELESS)]),
    "pflash with NVRAM": (_both(_set("os/loader", "type", "pflash"), _drop_attr("os/loader", "stateless")),
                          [("snp.firmware_stateless", NOT_STATELESS)]),
    "rom is stateless": (_drop_attr("os/loader", "stateless"), []),
    "stateless pflash": (_set("os/loader", "type", "pflash"), []),
    "nvram": (_add("os", "<nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>"),
              [("snp.no_nvram", "<nvram> is set: SEV-SNP firmware is stateless and has no variable store")]),
    "smm on": (_set("features/smm", "state", "on"), [("snp.no_smm", "SMM is on: SEV-SNP guests run without SMM")]),
    "smm, on by default": (_drop_attr("features/smm", "state"), [("snp.no_smm", "SMM is on: SEV-SNP guests run without SMM")]),
    # <metadata> takes any element (the schema's customElement): an <smm> there is not the guest's SMM.
    "smm in metadata": (_add("metadata", "<smm state='on'/>"), []),
    "kernelHashes without kernel": (_both(_remove("os/kernel"), _both(_remove("os/initrd"), _remove("os/cmdline"))),
                                    [("snp.kernel_hashes", "kernelHashes='yes' without <kernel>: there is nothing to hash")]),
    "empty policy": (_text("launchSecurity/policy", None),
                     [("snp.policy_bit17", "policy '' is not a hexadecimal number")]),
    "empty hostData": (_text("launchSecurity/hostData", None),
                       [("snp.blob.hostData", "<hostData> decodes to 0 bytes, SEV-SNP needs exactly 32")]),
    # libvirt reads the first of two <policy> (XPath string()): so must the rules, or a debug policy hides.
    "two policies": (_add("launchSecurity", "<policy>0xb0000</policy>"), []),
    "hostData too short": (_text("launchSecurity/hostData", "AAAA"),
                           [("snp.blob.hostData", "<hostData> decodes to 3 bytes, SEV-SNP needs exactly 32")]),
    # A lenient decoder drops the '!' and finds 32 bytes: only a strict one sees the typo.
    "hostData with a stray character": (_text("launchSecurity/hostData", HOST_DATA[:8] + "!" + HOST_DATA[8:]),
                                        [("snp.blob.hostData", "<hostData> is not valid base64")]),
    "authorKey without idAuth": (_set("launchSecurity", "authorKey", "yes"),
                                 [("snp.id_auth", "authorKey='yes' without <idAuth>: the author key is carried in idAuth")]),
    "idAuth without idBlock": (_add("launchSecurity", f"<idAuth>{VALID_ID_AUTH}</idAuth>"),
                               [("snp.id_auth", "<idAuth> without <idBlock>: the ID authentication signs an ID block")]),
}


@pytest.mark.parametrize("case", list(SAYS))
def test_each_rule_says_what_it_found(case):
    mutation, expected = SAYS[case]
    root = golden_root()
    mutation(root)
    assert [(f.rule_id, f.message) for f in check_rules(root) if f.severity == "error"] == expected


def test_a_policy_that_is_not_hex_is_reported_once_with_a_hint():
    root = golden_root()
    _text("launchSecurity/policy", " zz ")(root)
    findings = [f for f in check_rules(root) if f.severity == "error"]
    assert [(f.rule_id, f.message, f.hint) for f in findings] == [
        ("snp.policy_bit17", "policy 'zz' is not a hexadecimal number", "write it as 0x30000")]


def test_debug_policy_is_refused_unless_the_caller_allows_it():
    root = golden_root()
    _text("launchSecurity/policy", "0xb0000")(root)
    assert [f.rule_id for f in check_rules(root)] == ["snp.policy_debug"]
    assert check_rules(root, allow_debug=True) == []


IOMMU = {
    "virtio disk": (lambda root: root.find("devices/disk/driver").attrib.pop("iommu"),
                    ["virtio disk vda lacks <driver iommu='on'/>"]),
    "virtio interface": (_remove("devices/interface/driver"), ["virtio interface lacks <driver iommu='on'/>"]),
    "e1000 interface": (_both(_remove("devices/interface/driver"), _set("devices/interface/model", "type", "e1000")), []),
    "interface without model": (_both(_remove("devices/interface/driver"), _remove("devices/interface/model")), []),
    "sata disk": (_both(lambda root: root.find("devices/disk/driver").attrib.pop("iommu"),
                        _set("devices/disk/target", "bus", "sata")), []),
    "disk without target": (_both(lambda root: root.find("devices/disk/driver").attrib.pop("iommu"),
                                  _remove("devices/disk/target")), []),
    # Devices of other kinds come first in many documents; the scan must go on past them.
    "after a controller": (_both(_insert_device("<controller type='usb' model='none'/>"), _remove("devices/disk/driver")),
                           ["virtio disk vda lacks <driver iommu='on'/>"]),
    "no devices at all": (_remove("devices"), []),
}


@pytest.mark.parametrize("case", list(IOMMU))
def test_virtio_devices_without_iommu_are_named(case):
    mutation, expected = IOMMU[case]
    root = golden_root()
    mutation(root)
    assert [f.message for f in check_rules(root) if f.rule_id == "snp.virtio_iommu"] == expected


def test_direct_kernel_without_hashes_warning_says_what_is_unmeasured():
    root = golden_root()
    root.find("launchSecurity").attrib.pop("kernelHashes")
    assert [(f.rule_id, f.severity, f.message) for f in check_rules(root)] == [
        ("snp.kernel_unmeasured", "warning",
         "direct kernel boot without kernelHashes='yes': the launch measurement does not cover the kernel, "
         "initrd or cmdline, so the host can swap them and attestation still passes")]


def test_children_by_tag_is_the_first_element_of_each_tag():
    """As parent.find(tag): comments and processing instructions are no elements, and a second <policy>
    does not replace the first (drift's projection would crash on a comment's non-string tag)."""
    parent = etree.fromstring("<d><!-- c --><?pi x?><a n='1'/><!-- c2 --><b/><a n='2'/></d>")
    found = children_by_tag(parent)
    assert list(found) == ["a", "b"] and found["a"].get("n") == "1"
    assert children_by_tag(None) == {}
