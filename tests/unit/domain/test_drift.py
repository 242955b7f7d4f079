"""The canonical projection of a domain: equal across libvirt's normalisation, different on every real change."""

from __future__ import annotations

import base64

from lxml import etree

from snpvirt.domain import drift
from tests.conftest import GOLDEN


def golden(name: str = "web-01") -> etree._Element:
    return etree.fromstring((GOLDEN / f"{name}.xml").read_bytes())


def changes(before: etree._Element, after: etree._Element) -> list[str]:
    return [d["key"] for d in drift.differences(drift.project(before), drift.project(after))]


def test_what_libvirt_writes_differently_is_the_same():
    root = golden()
    normalised = golden()
    normalised.find("memory").attrib.update({"unit": "KiB"})
    normalised.find("memory").text = "4194304"
    normalised.find("currentMemory").attrib.update({"unit": "KiB"})
    normalised.find("currentMemory").text = "4194304"
    normalised.find("launchSecurity/policy").text = "0x00030000"
    normalised.find("os/type").set("machine", "pc-q35-10.0")
    interface = normalised.find("devices/interface")
    etree.SubElement(interface, "mac", address="52:54:00:aa:bb:cc")
    etree.SubElement(interface, "address", type="pci", bus="0x01")
    etree.SubElement(normalised.find("devices"), "controller", type="pci", model="pcie-root")
    etree.SubElement(normalised.find("devices"), "watchdog", model="itco", action="reset")
    normalised.find("launchSecurity").insert(0, etree.Comment(" a comment decides nothing "))
    assert changes(root, normalised) == []


def test_a_mac_address_the_spec_gives_is_compared():
    root, other = golden("db-01"), golden("db-01")
    other.find("devices/interface/mac").set("address", "52:54:00:00:00:01")
    assert changes(root, other) == ["interface[0].mac"]


def test_an_id_auth_signed_again_with_the_same_keys_is_the_same_and_another_key_is_not():
    def id_auth(signature: int, key: int) -> str:
        data = bytearray(4096)
        data[0x40:0x240] = bytes([signature]) * 0x200  # ID block signature: a fresh ECDSA nonce each time
        data[0x680:0x880] = bytes([signature]) * 0x200  # ID key signature
        data[0x240:0x644] = bytes([key]) * 0x404  # the ID public key
        return base64.b64encode(bytes(data)).decode()

    def with_id_auth(value: str) -> etree._Element:
        root = golden()
        etree.SubElement(root.find("launchSecurity"), "idAuth").text = value
        return root

    assert changes(with_id_auth(id_auth(1, 7)), with_id_auth(id_auth(2, 7))) == []
    assert changes(with_id_auth(id_auth(1, 7)), with_id_auth(id_auth(1, 8))) == ["launch_security.idAuth"]


def test_libvirt_filled_values_are_compared_only_when_asked_for():
    asked, stored = golden(), golden()
    for tag in ("cbitpos", "reducedPhysBits"):
        asked.find("launchSecurity").remove(asked.find(f"launchSecurity/{tag}"))
    assert changes(asked, stored) == []
    assert changes(stored, asked) == ["launch_security.cbitpos", "launch_security.reducedPhysBits"]


def test_snp_settings_are_the_ones_that_decide_the_launch():
    assert all(drift.is_snp_setting(key) for key in (
        "launch_security.policy", "launch_security.@kernelHashes", "vcpus", "loader.path", "kernel", "cmdline",
        "machine", "features.smm", "nvram", "cpu.model", "qemu.passthrough", "type"))
    assert not any(drift.is_snp_setting(key) for key in ("memory_kib", "disk[vda].source", "interface[0].mac", "devices.hostdev"))


def test_the_snp_projection_holds_exactly_the_snp_settings():
    """The check after define compares project(snp_only=True): it must miss no SNP setting."""
    root = golden()
    etree.SubElement(root.find("launchSecurity"), "idBlock").text = "AAAA"
    full, snp = drift.project(root), drift.project(root, snp_only=True)
    assert {k for k in full if drift.is_snp_setting(k)} == set(snp) and all(full[k] == snp[k] for k in snp)


def test_a_repeated_launch_security_child_reads_as_libvirt_reads_it():
    root = golden()
    etree.SubElement(root.find("launchSecurity"), "policy").text = "0x30000"
    root.find("launchSecurity/policy").text = "0xb0000"
    assert drift.project(root)["launch_security.policy"] == "0xb0000"  # the first, like XPath string(./policy)
