"""Start-failure explanations and `import --fix` edits, on real error texts and virt-manager's XML."""

import pytest
from lxml import etree

from snpvirt.libvirt import explain
from snpvirt.domain import importer, metadata
from snpvirt.domain import xml as domxml
from snpvirt.domain.sevparams import SevParams
from tests.conftest import vector


@pytest.mark.parametrize("text,fragment", [
    # Texts as users reported them (docs/snp-facts.md, "Known start failures") or as this machine's libvirt says them.
    ("qemu-system-x86_64: sev_snp_launch_start: SNP_LAUNCH_START ret=-22 fw_error=0 ''", "policy bits"),
    ("SEV: guest firmware hashes table area is invalid (base=0x0 size=0x0)", "AmdSev OVMF"),
    ("qemu-system-x86_64: SEV information block/Firmware GUID Table block not found in pflash rom", "<loader type='rom'"),
    ("unsupported configuration: 'sev-snp' launch security is not supported with this QEMU binary", "host check"),
    ("sev_snp_launch_start: SNP_LAUNCH_START ret=-5 fw_error=21 'Feature not supported'", "PSP firmware refused"),
])
def test_known_causes(text, fragment):
    assert fragment in explain.explain(text)


def test_the_log_tail_counts_too_and_unknown_errors_get_none():
    assert "AmdSev" in explain.explain("internal error: process exited", "...hashes table area is invalid...")
    assert explain.explain("internal error: disk not found") is None


def fixed(name, sev=None, firmware=None):
    root = etree.fromstring(vector(f"virt-manager/{name}").read_bytes())
    changes = importer.fix(root, sev, firmware)
    return root, changes, domxml.check(etree.tostring(root))


def test_minimal_virt_manager_domain_becomes_valid_with_only_the_needed_changes():
    original = etree.fromstring(vector("virt-manager/virt-install-x86_64-launch-security-sev-snp.xml").read_bytes())
    root, changes, findings = fixed("virt-install-x86_64-launch-security-sev-snp.xml")
    assert [f for f in findings if f.severity == "error"] == []
    assert len(changes) == 2 and "0x20024" in changes[0] and "stateless" in changes[1]
    # Everything else is as it was: same devices, same CPU, same machine.
    for path in ("devices", "cpu", "features", "os/type"):
        assert etree.tostring(root.find(path), with_tail=False) == etree.tostring(original.find(path), with_tail=False)


def test_full_virt_manager_domain_keeps_the_rule_import_cannot_fix():
    _, changes, findings = fixed("virt-install-x86_64-launch-security-sev-snp-full.xml")
    assert [f.rule_id for f in findings if f.severity == "error"] == ["snp.kernel_hashes"]


def test_legacy_sev_domain_gets_snp_launch_security_and_host_values():
    root, changes, findings = fixed("virt-install-amd-sev.xml", SevParams(51, 1, "host"))
    ls = root.find("launchSecurity")
    assert (ls.get("type"), ls.findtext("cbitpos"), ls.findtext("reducedPhysBits"), ls.findtext("policy")) == (
        "sev-snp", "51", "1", "0x30000")
    assert not [f for f in findings if f.severity == "error"]


def test_firmware_option_loads_it_as_rom():
    root, changes, _ = fixed("virt-install-x86_64-launch-security-sev-snp.xml", firmware="/usr/share/ovmf/OVMF.amdsev.fd")
    loader = root.find("os/loader")
    assert (loader.get("type"), loader.get("stateless"), loader.text) == ("rom", "yes", "/usr/share/ovmf/OVMF.amdsev.fd")
    assert root.find("os").get("firmware") is None


def test_import_record_and_spec_diff():
    root = etree.fromstring(b"<domain type='kvm'><name>x</name><uuid>u</uuid><os/></domain>")
    metadata.add_import_record(root, b"<original/>", "2026-11-26T00:00:00+00:00")
    info = metadata.read(root)
    assert (info.origin, info.spec, info.defined_at) == ("import", None, "2026-11-26T00:00:00+00:00")
    assert root[2].tag == "metadata", "metadata goes after <uuid>"
    diff = metadata.spec_diff({"vcpus": 4, "snp": {"policy": {"smt": True}}, "disks": [{"path": "/a"}]},
                              {"vcpus": 8, "snp": {"policy": {"smt": False}}, "disks": [{"path": "/a"}]})
    assert diff == [{"key": "snp.policy.smt", "from": True, "to": False}, {"key": "vcpus", "from": 4, "to": 8}]
