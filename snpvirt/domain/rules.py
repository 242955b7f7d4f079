"""SEV-SNP rules for a libvirt domain document, as data: id, severity, hint, and a check.

A check gets the parsed <domain> element and yields one message per problem (or a
(message, hint) pair when the hint depends on what was found). Sources for each rule are in
docs/snp-facts.md §1-§3.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from lxml import etree

from snpvirt import policy as snp_policy
from snpvirt.errors import BadInputError
from snpvirt.models import Finding

Problem = str | tuple[str, str]


def children_by_tag(parent: etree._Element | None) -> dict[str, etree._Element]:
    """The first child element of each tag, as parent.find(tag) finds it, in one pass: cheaper than a
    look-up per tag (the rules and drift's projection run on every render and define)."""
    found: dict[str, etree._Element] = {}
    for child in parent if parent is not None else ():
        tag = child.tag
        if tag not in found and isinstance(tag, str):  # comments and processing instructions have no str tag
            found[tag] = child
    return found


def _text_of(child: etree._Element | None) -> str | None:
    """As findtext: None without such a child, its text ("" when empty) otherwise."""
    return None if child is None else child.text or ""


class Domain:
    """The parts of a <domain> the rules look at, found once (the rules run on every render)."""

    __slots__ = ("root", "top", "os", "os_parts", "snp", "snp_parts", "launch_security", "policy_text", "policy")

    def __init__(self, root: etree._Element) -> None:
        self.root = root
        self.top = children_by_tag(root)
        self.os = self.top.get("os")
        self.os_parts = children_by_tag(self.os)
        self.launch_security = self.top.get("launchSecurity")
        ls = self.launch_security
        self.snp = ls if ls is not None and ls.get("type") == "sev-snp" else None
        self.snp_parts = children_by_tag(self.snp)
        self.policy_text = _text_of(self.snp_parts.get("policy"))
        self.policy: int | None = None  # None: absent (QEMU's default 0x30000 is valid) or not hex
        if self.policy_text is not None:
            try:
                self.policy = snp_policy.parse_hex(self.policy_text)
            except BadInputError:
                pass


@dataclass(frozen=True)
class Rule:
    rule_id: str
    severity: str
    hint: str
    check: Callable[[Domain, bool], Iterable[Problem]]


def _launch_security(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    if dom.snp is None:
        other = dom.launch_security
        if other is not None:
            yield f"<launchSecurity type='{other.get('type')}'> is not SEV-SNP"
        else:
            yield "no <launchSecurity type='sev-snp'>: this domain would run without SEV-SNP"


def _domain_kvm(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    if dom.root.get("type") != "kvm":
        yield f"<domain type='{dom.root.get('type')}'>: SEV-SNP needs KVM"


def _machine_q35(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    os_type = dom.os_parts.get("type")
    machine = os_type.get("machine", "") if os_type is not None else ""
    if machine != "q35" and not machine.startswith("pc-q35-"):
        yield f"machine type {machine or '(default: i440fx pc)'} is not q35"
    arch = os_type.get("arch") if os_type is not None else None
    if arch not in (None, "x86_64"):
        yield f"architecture {arch} is not x86_64"


def _firmware(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    os_el = dom.os
    loader = dom.os_parts.get("loader")
    efi = os_el is not None and os_el.get("firmware") == "efi"
    if loader is None and not efi:
        yield "no UEFI firmware (neither <os firmware='efi'> nor <loader>): SEV-SNP needs OVMF"
        return
    rom = loader is not None and loader.get("type") == "rom"
    stateless = loader is not None and loader.get("stateless") == "yes"
    if not (rom or stateless):
        yield ("firmware is not stateless: libvirt loads it as pflash with an NVRAM store, "
               "which SEV-SNP cannot launch (SNP_LAUNCH_START ret=-22)")


def _no_nvram(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    if "nvram" in dom.os_parts:
        yield "<nvram> is set: SEV-SNP firmware is stateless and has no variable store"


def _no_smm(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    # As find("features/smm") and libvirt's XPath read it: the first <smm> under any <features>.
    smm = next((smm for features in dom.root.iterchildren("features") for smm in features.iterchildren("smm")), None)
    if smm is not None and smm.get("state", "on") == "on":
        yield "SMM is on: SEV-SNP guests run without SMM"


def _policy(dom: Domain, allow_debug: bool, rule_id: str) -> Iterator[Problem]:
    if dom.policy is None:
        if dom.policy_text is not None and rule_id == "snp.policy_bit17":
            yield (f"policy {dom.policy_text.strip()!r} is not a hexadecimal number", "write it as 0x30000")
        return
    for problem in snp_policy.problems(dom.policy, allow_debug):
        if problem.rule_id == rule_id:
            yield (problem.message, problem.hint)


def _kernel_hashes(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    snp = dom.snp
    if snp is not None and snp.get("kernelHashes") == "yes" and "kernel" not in dom.os_parts:
        yield "kernelHashes='yes' without <kernel>: there is nothing to hash"


def _kernel_unmeasured(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    snp = dom.snp
    if snp is not None and "kernel" in dom.os_parts and snp.get("kernelHashes") != "yes":
        yield ("direct kernel boot without kernelHashes='yes': the launch measurement does not cover the kernel, "
               "initrd or cmdline, so the host can swap them and attestation still passes")


def _blob(element: str, size: int) -> Callable[[Domain, bool], Iterator[Problem]]:
    def check(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
        text = _text_of(dom.snp_parts.get(element))
        if text is None:
            return
        try:
            decoded = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            yield f"<{element}> is not valid base64"
            return
        if len(decoded) != size:
            yield f"<{element}> decodes to {len(decoded)} bytes, SEV-SNP needs exactly {size}"
    return check


def _author_key(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    snp = dom.snp
    if snp is None:
        return
    id_auth = dom.snp_parts.get("idAuth")
    if snp.get("authorKey") == "yes" and id_auth is None:
        yield "authorKey='yes' without <idAuth>: the author key is carried in idAuth"
    if id_auth is not None and "idBlock" not in dom.snp_parts:
        yield "<idAuth> without <idBlock>: the ID authentication signs an ID block"


def _virtio_iommu(dom: Domain, allow_debug: bool) -> Iterator[Problem]:
    devices = dom.top.get("devices")
    for device in devices if devices is not None else ():
        if device.tag not in ("disk", "interface"):
            continue
        parts = children_by_tag(device)
        if device.tag == "disk":
            target = parts.get("target")
            virtio = target is not None and target.get("bus") == "virtio"
            label = f"virtio disk {target.get('dev') if target is not None else ''}"
        else:
            model = parts.get("model")
            virtio, label = model is not None and model.get("type") == "virtio", "virtio interface"
        driver = parts.get("driver")
        if virtio and (driver is None or driver.get("iommu") != "on"):
            yield f"{label} lacks <driver iommu='on'/>"


BLOBS = {"hostData": 32, "guestVisibleWorkarounds": 16, "idBlock": 96, "idAuth": 4096}

RULES: tuple[Rule, ...] = (
    Rule("snp.launch_security", "error", "add <launchSecurity type='sev-snp'> (snpvirt import --fix does it)", _launch_security),
    Rule("snp.domain_kvm", "error", "use <domain type='kvm'>", _domain_kvm),
    Rule("snp.machine_q35", "error", "use <type arch='x86_64' machine='q35'>hvm</type>", _machine_q35),
    Rule("snp.firmware_stateless", "error",
         "load OVMF.amdsev.fd as <loader type='rom' stateless='yes'>/usr/share/ovmf/OVMF.amdsev.fd</loader>", _firmware),
    Rule("snp.no_nvram", "error", "remove <nvram> from <os>", _no_nvram),
    Rule("snp.no_smm", "error", "use <smm state='off'/> or remove <smm>", _no_smm),
    *(Rule(rule_id, "error", "", lambda dom, debug, rule_id=rule_id: _policy(dom, debug, rule_id))
      for rule_id in ("snp.policy_bit17", "snp.policy_reserved", "snp.policy_debug")),
    Rule("snp.kernel_hashes", "error", "add <kernel> for direct kernel boot, or drop kernelHashes='yes'", _kernel_hashes),
    *(Rule(f"snp.blob.{element}", "error", f"give the base64 of exactly {size} bytes (base64 -w0 FILE)", _blob(element, size))
      for element, size in BLOBS.items()),
    Rule("snp.id_auth", "error", "give <idBlock> and <idAuth> together (snpvirt idblock makes both)", _author_key),
    Rule("snp.kernel_unmeasured", "warning", "set kernelHashes='yes' (snp.kernel_hashes = true) with an AmdSev OVMF",
         _kernel_unmeasured),
    Rule("snp.virtio_iommu", "warning", "add <driver iommu='on'/> to the device (QEMU >= 6.0 usually sets it itself)", _virtio_iommu),
)


def check_rules(root: etree._Element, allow_debug: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    dom = Domain(root)
    for rule in RULES:
        for problem in rule.check(dom, allow_debug):
            message, hint = problem if isinstance(problem, tuple) else (problem, rule.hint)
            findings.append(Finding(rule.rule_id, rule.severity, message, hint))
    return findings
