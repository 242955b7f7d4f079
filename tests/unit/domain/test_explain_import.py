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


# --- import --fix, edit by edit: what it changes, what it says, and that the layout survives ----------

HAND_WRITTEN = b"""<domain type='kvm'>
  <name>x</name>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file'/>
  </devices>
</domain>"""


def fix_text(xml, sev=None, firmware=None):
    root = etree.fromstring(xml)
    changes = importer.fix(root, sev, firmware)
    return changes, etree.tostring(root).decode()


def test_a_hand_written_domain_gets_launch_security_and_stateless_firmware_in_its_own_layout():
    changes, text = fix_text(HAND_WRITTEN, SevParams(51, 1, "host"))
    assert changes == ["added <launchSecurity type='sev-snp'> with policy 0x30000",
                       "removed <nvram>: SEV-SNP firmware is stateless",
                       "added <loader stateless='yes'/>: libvirt picks a firmware that declares amd-sev-snp"]
    assert text == """<domain type="kvm">
  <name>x</name>
  <os firmware="efi">
    <type arch="x86_64" machine="q35">hvm</type>
    <loader stateless="yes"/>
  </os>
  <devices>
    <disk type="file"/>
  </devices>
  <launchSecurity type="sev-snp">
    <cbitpos>51</cbitpos>
    <reducedPhysBits>1</reducedPhysBits>
    <policy>0x30000</policy>
  </launchSecurity>
</domain>"""


def test_a_given_firmware_replaces_the_loader_as_a_stateless_rom():
    changes, text = fix_text(HAND_WRITTEN.replace(b"<os>", b"<os firmware='efi'>"), firmware="/fw/OVMF.amdsev.fd")
    assert changes == ["added <launchSecurity type='sev-snp'> with policy 0x30000",
                       "cbitpos/reducedPhysBits left out: libvirt fills them from the host when the domain starts",
                       "removed <nvram>: SEV-SNP firmware is stateless",
                       "firmware is /fw/OVMF.amdsev.fd, loaded as a stateless ROM"]
    assert """  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <loader type="rom" stateless="yes">/fw/OVMF.amdsev.fd</loader>
  </os>""" in text
    assert "<launchSecurity type=\"sev-snp\">\n    <policy>0x30000</policy>\n  </launchSecurity>" in text
    changes, text = fix_text(HAND_WRITTEN.replace(b"<nvram>", b"<loader readonly='yes' type='pflash'>/x.fd</loader><nvram>"),
                             firmware="/fw/OVMF.amdsev.fd")
    assert '<loader type="rom" stateless="yes">/fw/OVMF.amdsev.fd</loader>' in text and "readonly" not in text


LEGACY = b"""<domain type='kvm'>
  <os firmware='efi'>
    <type>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
  </os>
  <launchSecurity type='sev'>
    <policy>0x0003</policy>
  </launchSecurity>
  <on_crash>destroy</on_crash>
</domain>"""


def test_legacy_sev_is_replaced_in_place_and_a_pflash_loader_made_stateless():
    changes, text = fix_text(LEGACY)
    assert changes == [
        "replaced <launchSecurity type='sev'> with sev-snp (legacy SEV policy bits mean other things in SNP, "
        "so the policy is the SNP default 0x30000)",
        "cbitpos/reducedPhysBits left out: libvirt fills them from the host when the domain starts",
        "made the firmware /usr/share/OVMF/OVMF_CODE.fd stateless (no NVRAM)"]  # whether it is an SNP build: import's verdict
    assert text == """<domain type="kvm">
  <os firmware="efi">
    <type>hvm</type>
    <loader readonly="yes" type="pflash" stateless="yes">/usr/share/OVMF/OVMF_CODE.fd</loader>
  </os>
  <launchSecurity type="sev-snp">
    <policy>0x30000</policy>
  </launchSecurity>
  <on_crash>destroy</on_crash>
</domain>"""
    changes, _ = fix_text(LEGACY.replace(b">/usr/share/OVMF/OVMF_CODE.fd<", b"><"))
    assert changes[-1] == "made the firmware stateless (no NVRAM)"


@pytest.mark.parametrize("policy,changes", [
    ("0x10000", ["policy 0x10000 -> 0x30000: set bit 17, which SEV-SNP requires"]),
    (" 0x1 ", ["policy 0x1 -> 0x20001: set bit 17, which SEV-SNP requires"]),
    ("0x30000", []),
    ("0xzz", []),  # not hex: left for the policy rule to report, never guessed at
    ("", []),
])
def test_an_snp_policy_gets_bit_17_and_nothing_else(policy, changes):
    xml = (b"<domain><os><type>hvm</type><loader type='rom'>/fw.fd</loader></os>"
           b"<launchSecurity type='sev-snp'><policy>" + policy.encode() + b"</policy></launchSecurity></domain>")
    got, text = fix_text(xml)
    assert got == changes
    expected_policy = "0x%x" % (int(policy, 16) | 0x20000) if changes else policy
    assert f"<policy>{expected_policy}</policy>" in text or (not policy and "<policy/>" in text)


@pytest.mark.parametrize("loader", ["<loader type='rom'>/fw.fd</loader>", "<loader stateless='yes'>/fw.fd</loader>"])
def test_firmware_that_is_already_stateless_is_left_alone(loader):
    xml = f"<domain><os><type>hvm</type>{loader}</os><launchSecurity type='sev-snp'/></domain>".encode()
    changes, text = fix_text(xml)
    assert changes == [] and text == xml.decode().replace("'", '"')


def test_a_domain_without_os_or_type_still_gets_what_it_can():
    assert fix_text(b"<domain><launchSecurity type='sev-snp'/></domain>") == (
        [], '<domain><launchSecurity type="sev-snp"/></domain>')
    changes, text = fix_text(b"<domain><os><kernel>/k</kernel></os><launchSecurity type='sev-snp'/></domain>")
    assert text.startswith('<domain><os firmware="efi"><loader stateless="yes"/><kernel>/k</kernel></os>'), text


def test_removing_nvram_keeps_the_indentation_wherever_it_stands():
    first = b"<domain>\n  <os>\n    <nvram>/v.fd</nvram>\n    <type>hvm</type>\n    <loader type='rom'>/f</loader>\n  </os>\n</domain>"
    assert fix_text(first)[1].startswith('<domain>\n  <os>\n    <type>hvm</type>\n    <loader type="rom">/f</loader>\n  </os>')


def test_an_added_loader_takes_the_indentation_of_what_precedes_type():
    xml = b"<domain>\n  <os><kernel>/k</kernel>\n    <type>hvm</type>\n  </os>\n</domain>"
    assert fix_text(xml)[1].startswith('<domain>\n  <os firmware="efi"><kernel>/k</kernel>\n    <type>hvm</type>\n'
                                       '    <loader stateless="yes"/>\n  </os>')
