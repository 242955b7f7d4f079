"""What matters in a domain definition, as a canonical projection that survives libvirt's normalisation.

libvirt never stores a document as it was given: it converts memory to KiB, writes the policy as
0x%08x, expands machine='q35' to 'pc-q35-10.0', adds MAC addresses, controllers, PCI addresses,
input devices, an emulator, a watchdog... and a running domain's live XML adds aliases, ports and
the values filled in at start. Comparing raw text would see drift everywhere, and a spec digest
sees none. So both documents are reduced to the parts that decide what runs (launch security with
all its attributes and children, firmware, direct-boot kernel, vCPUs, memory, machine, SMM, devices,
QEMU pass-through arguments) in one canonical form, and those are compared.

`project(root)` gives flat keys (`vcpus`, `launch_security.policy`, `disk[vda].source`) with
JSON-friendly values, so a difference names what drifted. `differences(desired, actual)` compares
two projections; a few keys that libvirt fills in when a document leaves them out (a MAC address,
cbitpos, the firmware path it selects) are compared only when the desired document gives them.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lxml import etree

from snpvirt.domain.rules import children_by_tag

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_QEMU_TAG = f"{{{QEMU_NS}}}"

# Devices libvirt adds or completes by itself (QEMU driver: controllers, PS/2 input, audio, the iTCO
# watchdog, the emulator path, the console mirroring a serial port); compared elsewhere or not at all.
_IMPLICIT_DEVICES = {"controller", "input", "audio", "watchdog", "emulator", "console", "disk", "interface", "memballoon"}
# Keys libvirt fills in when the document leaves them out: compared only when the desired side has them.
_FILLED_BY_LIBVIRT = ("launch_security.cbitpos", "launch_security.reducedPhysBits", "loader.path", ".mac")
# Parts that decide the launch measurement or the SEV-SNP protection itself: drift here is never started.
_SNP_PREFIXES = ("type", "machine", "arch", "os.", "loader.", "nvram", "kernel", "initrd", "cmdline", "dtb", "vcpus",
                 "cpu.", "features.smm", "launch_security.", "qemu.")
# idAuth carries two ECDSA signatures (ID block, ID key), which are new on every signing: compare the keys only.
_ID_AUTH_SIGNATURES = ((0x40, 0x240), (0x680, 0x880))
_ID_AUTH_BYTES = 4096
_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2, "mb": 1000 ** 2,
          "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4}


def project(root: etree._Element, snp_only: bool = False) -> dict[str, Any]:
    """The parts of a <domain> that decide what runs, each in one canonical form; with `snp_only`, only
    the SEV-SNP settings (is_snp_setting), which is all the check after a define compares."""
    top = children_by_tag(root)
    out: dict[str, Any] = {"type": root.get("type")}
    _os(top.get("os"), out)
    vcpu = top.get("vcpu")
    out["vcpus"] = _int(vcpu.text) if vcpu is not None else None
    current = _int(vcpu.get("current")) if vcpu is not None else None
    out["vcpus.current"] = current if current is not None else out["vcpus"]  # libvirt omits it when it is the maximum
    cpu = top.get("cpu")
    model = cpu.find("model") if cpu is not None else None
    out["cpu.mode"] = (cpu.get("mode") or ("custom" if model is not None else None)) if cpu is not None else None
    out["cpu.model"] = _text(model)
    features = top.get("features")
    smm = features.find("smm") if features is not None else None
    out["features.smm"] = smm.get("state", "on") if smm is not None else None
    _launch_security(top.get("launchSecurity"), out)
    if any(tag.startswith(_QEMU_TAG) for tag in top):  # rare: look at every one of them
        out["qemu.passthrough"] = [_describe(element) for child in root.iterchildren(etree.Element)
                                   if child.tag.startswith(_QEMU_TAG) for element in child.iter(etree.Element)]
    if snp_only:
        return out
    out["memory_kib"] = kib(top.get("memory"))
    out["current_memory_kib"] = kib(top.get("currentMemory")) or out["memory_kib"]
    _memory_backing(top.get("memoryBacking"), out)
    out["features"] = sorted(_describe(f) for f in features.iterchildren(etree.Element) if f.tag != "smm") \
        if features is not None else []
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        out[event] = _text(top.get(event))
    _devices(top.get("devices"), out)
    return out


def differences(desired: dict[str, Any], actual: dict[str, Any]) -> list[dict[str, Any]]:
    """Each key whose value differs: {key, from: actual, to: desired}, in key order."""
    if desired == actual:
        return []
    found = []
    for key in sorted(desired.keys() | actual.keys()):
        want, have = desired.get(key), actual.get(key)
        if want is None and key.endswith(_FILLED_BY_LIBVIRT):
            continue
        if want != have:
            found.append({"key": key, "from": have, "to": want})
    return found


def is_snp_setting(key: str) -> bool:
    """Whether a projection key decides the launch measurement or the SEV-SNP protection."""
    return key.startswith(_SNP_PREFIXES)


# --- the parts -------------------------------------------------------------------------------------

def _os(os_el: etree._Element | None, out: dict[str, Any]) -> None:
    parts = children_by_tag(os_el)
    os_type = parts.get("type")
    out["machine"] = _machine_family(os_type.get("machine") if os_type is not None else None)
    out["arch"] = os_type.get("arch") if os_type is not None else None
    out["os.type"] = _text(os_type)
    out["os.firmware"] = os_el.get("firmware") if os_el is not None else None
    loader = parts.get("loader")
    if loader is not None:
        out["loader.path"] = _text(loader)
        for attr in ("type", "stateless", "readonly", "secure"):
            out[f"loader.{attr}"] = loader.get(attr)
    nvram = parts.get("nvram")
    out["nvram"] = (_text(nvram) or nvram.get("template") or "present") if nvram is not None else None
    for part in ("kernel", "initrd", "cmdline", "dtb"):
        out[part] = _text(parts.get(part))


def _machine_family(machine: str | None) -> str | None:
    """libvirt expands q35 to the newest versioned name (pc-q35-10.0) and pc to pc-i440fx-*."""
    if machine is None:
        return None
    if machine == "q35" or machine.startswith("pc-q35-"):
        return "q35"
    if machine == "pc" or machine.startswith("pc-i440fx-"):
        return "pc"
    return machine


def _memory_backing(backing: etree._Element | None, out: dict[str, Any]) -> None:
    if backing is None:
        out["memory_backing"] = None
        return
    source, access = backing.find("source"), backing.find("access")
    out["memory_backing"] = {
        "source": source.get("type") if source is not None else None,
        "access": access.get("mode") if access is not None else None,
        "other": sorted(child.tag for child in backing.iterchildren(etree.Element) if child.tag not in ("source", "access")),
    }


def _launch_security(ls: etree._Element | None, out: dict[str, Any]) -> None:
    if ls is None:
        out["launch_security.type"] = None
        return
    out["launch_security.type"] = ls.get("type")
    for attr, value in ls.attrib.items():
        if attr != "type":
            out[f"launch_security.@{attr}"] = value
    for child in ls.iterchildren(etree.Element):  # a comment inside launchSecurity decides nothing
        # The first of a repeated child, as libvirt (XPath string(./policy)) and the SNP rules read it.
        text = child.text or "" if len(child) == 0 else "".join(child.itertext())
        out.setdefault(f"launch_security.{child.tag}", _launch_value(child.tag, text))


def _launch_value(tag: str, text: str) -> Any:
    """Numbers by value; anything else as written, trimmed (no more: the SNP rules read it that way too)."""
    value = text.strip()
    if tag in ("policy", "cbitpos", "reducedPhysBits"):
        try:
            return f"{int(value, 16):#x}" if tag == "policy" else int(value)
        except ValueError:
            return value  # not a number: compared as written (the SNP rules refuse it anyway)
    if tag == "idAuth":
        return _id_auth_keys(value)
    return value


def _id_auth_keys(b64: str) -> str:
    """idAuth without its two signatures: ECDSA signs with a fresh nonce, so a re-signed block of the same
    keys and ID block differs only there. Anything that is not a 4096-byte idAuth is compared whole."""
    try:
        data = bytearray(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError):
        return b64
    if len(data) != _ID_AUTH_BYTES:
        return b64
    for start, end in _ID_AUTH_SIGNATURES:
        data[start:end] = bytes(end - start)
    return "keys:" + base64.b64encode(bytes(data)).decode()


def _devices(devices: etree._Element | None, out: dict[str, Any]) -> None:
    children = list(devices.iterchildren(etree.Element)) if devices is not None else []
    for disk in children:
        if disk.tag == "disk":
            _disk(disk, out)
    for index, interface in enumerate(d for d in children if d.tag == "interface"):
        _interface(index, interface, out)
    balloon = next((d for d in children if d.tag == "memballoon"), None)
    out["devices.memballoon"] = balloon.get("model") if balloon is not None else None
    others: dict[str, list[str]] = {}
    for device in children:
        if device.tag not in _IMPLICIT_DEVICES:
            others.setdefault(f"devices.{device.tag}", []).append(device.get("type") or device.get("model") or "")
    out.update({key: sorted(kinds) for key, kinds in others.items()})


def _disk(disk: etree._Element, out: dict[str, Any]) -> None:
    target, driver, source = disk.find("target"), disk.find("driver"), disk.find("source")
    where = f"disk[{target.get('dev') if target is not None else '?'}]"
    kind = disk.get("type", "file")
    out[f"{where}.type"] = kind
    out[f"{where}.device"] = disk.get("device", "disk")
    out[f"{where}.source"] = _source(kind, source)
    out[f"{where}.bus"] = target.get("bus") if target is not None else None
    out[f"{where}.format"] = driver.get("type") if driver is not None else None
    out[f"{where}.iommu"] = driver.get("iommu") if driver is not None else None
    out[f"{where}.readonly"] = disk.find("readonly") is not None
    out[f"{where}.shareable"] = disk.find("shareable") is not None


def _source(kind: str, source: etree._Element | None) -> str | None:
    """The attributes that name what a disk reads, by disk type (live XML adds index= and more)."""
    if source is None:
        return None
    names = {"file": ("file",), "block": ("dev",), "dir": ("dir",), "network": ("protocol", "name"),
             "volume": ("pool", "volume"), "nvme": ("type", "managed"), "vhostuser": ("type", "path")}.get(kind, ())
    return " ".join(f"{name}={source.get(name)}" for name in names if source.get(name) is not None) or None


def _interface(index: int, interface: etree._Element, out: dict[str, Any]) -> None:
    where = f"interface[{index}]"
    kind = interface.get("type")
    source, mac, model = interface.find("source"), interface.find("mac"), interface.find("model")
    driver, rom = interface.find("driver"), interface.find("rom")
    # The live XML adds bridge= and portid= to a network's <source>: name the source by type.
    attr = {"network": "network", "bridge": "bridge", "direct": "dev", "user": None}.get(kind, "dev")
    out[f"{where}.type"] = kind
    out[f"{where}.source"] = source.get(attr) if source is not None and attr else None
    out[f"{where}.mac"] = (mac.get("address", "").lower() or None) if mac is not None else None
    out[f"{where}.model"] = model.get("type") if model is not None else None
    out[f"{where}.iommu"] = driver.get("iommu") if driver is not None else None
    out[f"{where}.rom"] = rom.get("enabled") if rom is not None else None


def _describe(element: etree._Element) -> str:
    """A small element as one comparable string: its name, attributes and text."""
    attrs = " ".join(f"{k}={v}" for k, v in sorted(element.attrib.items()))
    text = (element.text or "").strip()
    return etree.QName(element).localname + (f" {attrs}" if attrs else "") + (f" {text}" if text else "")


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return (element.text or "").strip()


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def kib(element: etree._Element | None) -> int | None:
    """A <memory>-style element's size in KiB, whatever its unit (libvirt stores KiB)."""
    value = _int(element.text if element is not None else None)
    if value is None:
        return None
    return value * _UNITS.get(element.get("unit", "KiB").lower(), 1024) // 1024
