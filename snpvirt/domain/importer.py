"""`import --fix`: add to a hand-written or virt-manager domain only what SEV-SNP needs, keep the rest.

What is added: `<launchSecurity type='sev-snp'>` (policy 0x30000), stateless ROM-style firmware
without NVRAM, and policy bit 17 when a policy lacks it. Everything else stays as it was; rules
that cannot be fixed without changing the machine (q35, SMM, ...) are left for the user.
"""

from __future__ import annotations

from lxml import etree

from snpvirt import policy as snp_policy
from snpvirt.errors import BadInputError
from snpvirt.domain.sevparams import SevParams


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    """Append a child indented like its siblings, so the document keeps its layout (and diffs stay small)."""
    siblings = list(parent)
    depth = len(list(parent.iterancestors())) + 1
    child = etree.SubElement(parent, tag, attrs)
    child.text = text
    if siblings:
        child.tail = siblings[-1].tail
        siblings[-1].tail = "\n" + "  " * depth
    else:
        parent.text = "\n" + "  " * depth
        child.tail = "\n" + "  " * (depth - 1)
    return child


def fix(root: etree._Element, sev: SevParams | None, firmware: str | None = None) -> list[str]:
    """Edit `root` in place; return one line per change made."""
    changes: list[str] = []
    _fix_launch_security(root, sev, changes)
    _fix_firmware(root, firmware, changes)
    return changes


def _fix_launch_security(root: etree._Element, sev: SevParams | None, changes: list[str]) -> None:
    ls = root.find("launchSecurity")
    if ls is not None and ls.get("type") == "sev-snp":
        policy = ls.find("policy")
        if policy is not None and policy.text:
            try:
                value = snp_policy.parse_hex(policy.text)
            except BadInputError:
                return  # not hex: the policy rule reports it
            if not value & snp_policy.MUST_BE_ONE_BIT:
                fixed = value | snp_policy.MUST_BE_ONE_BIT
                changes.append(f"policy {policy.text.strip()} -> {snp_policy.to_hex(fixed)}: set bit 17, which SEV-SNP requires")
                policy.text = snp_policy.to_hex(fixed)
        return
    if ls is not None:
        changes.append(f"replaced <launchSecurity type='{ls.get('type')}'> with sev-snp (legacy SEV policy bits "
                       "mean other things in SNP, so the policy is the SNP default 0x30000)")
        tail = ls.tail
        ls.clear()  # reuse the element in place, keeping its position and layout
        ls.tail = tail
        ls.set("type", "sev-snp")
    else:
        changes.append("added <launchSecurity type='sev-snp'> with policy 0x30000")
        ls = _sub(root, "launchSecurity", type="sev-snp")
    if sev is not None:
        _sub(ls, "cbitpos", str(sev.cbitpos))
        _sub(ls, "reducedPhysBits", str(sev.reduced_phys_bits))
    else:
        changes.append("cbitpos/reducedPhysBits left out: libvirt fills them from the host when the domain starts")
    _sub(ls, "policy", snp_policy.to_hex(snp_policy.DEFAULT_POLICY))


def _fix_firmware(root: etree._Element, firmware: str | None, changes: list[str]) -> None:
    os_el = root.find("os")
    if os_el is None:
        return
    nvram = os_el.find("nvram")
    if nvram is not None:
        _remove(nvram)
        changes.append("removed <nvram>: SEV-SNP firmware is stateless")
    loader = os_el.find("loader")
    if firmware is not None:
        if loader is None:
            loader = etree.Element("loader")
            _insert_after_type(os_el, loader)
        loader.attrib.clear()
        loader.set("type", "rom")
        loader.set("stateless", "yes")
        loader.text = firmware
        os_el.attrib.pop("firmware", None)
        changes.append(f"firmware is {firmware}, loaded as a stateless ROM")
        return
    if loader is not None and (loader.get("type") == "rom" or loader.get("stateless") == "yes"):
        return
    if loader is None:
        loader = etree.Element("loader")
        _insert_after_type(os_el, loader)
        os_el.set("firmware", "efi")
        loader.set("stateless", "yes")
        changes.append("added <loader stateless='yes'/>: libvirt picks a firmware that declares amd-sev-snp")
    else:
        loader.set("stateless", "yes")
        what = f"the firmware {loader.text.strip()}" if loader.text and loader.text.strip() else "the firmware"
        changes.append(f"made {what} stateless (no NVRAM)")  # whether it is an SEV-SNP build: manager.import_domain


def _remove(element: etree._Element) -> None:
    """Remove an element and keep the layout: lxml drops its tail (the indent of what follows) with it."""
    previous, parent = element.getprevious(), element.getparent()
    if previous is not None:
        previous.tail = element.tail
    else:
        parent.text = element.tail
    parent.remove(element)


def _insert_after_type(os_el: etree._Element, element: etree._Element) -> None:
    os_type = os_el.find("type")
    if os_type is not None:
        element.tail = os_type.tail
        os_type.addnext(element)
        os_type.tail = (os_type.getprevious().tail if os_type.getprevious() is not None else os_el.text) or element.tail
    else:
        os_el.insert(0, element)
