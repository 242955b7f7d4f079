"""The expected SEV-SNP launch measurement of a QEMU + OVMF guest, computed from its launch inputs.

Specification: docs/measurement.md §1-§7 (checked bit for bit against virtee/sev-snp-measure).
Pure Python over hashlib; the firmware's own structure comes from ovmf.py.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from snpvirt import ovmf
from snpvirt.errors import BadInputError
from snpvirt.models import VCPUS_RANGE

PAGE = 4096
VMSA_GPA = 0x0000FFFFFFFFF000
PAGE_INFO_LEN = 0x70
NORMAL, VMSA, ZERO, UNMEASURED, SECRETS, CPUID = 1, 2, 3, 4, 5, 6
SNP_SEC_MEM, SNP_SECRETS, SNP_CPUID, SVSM_CAA, SNP_KERNEL_HASHES = 1, 2, 3, 4, 0x10
DEFAULT_GUEST_FEATURES = 0x1  # SNPActive: what upstream KVM (6.11+) sets for QEMU guests

RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e").bytes_le
HASH_TABLE_BLOCK_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454").bytes_le
HASH_TABLE_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21").bytes_le
CMDLINE_ENTRY_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a").bytes_le
INITRD_ENTRY_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d").bytes_le
KERNEL_ENTRY_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b").bytes_le

# QEMU CPU model -> (family, model, stepping): the vCPU signature in the VMSA (docs/measurement.md §7.3).
# This one table decides which `cpu_model` a spec may name and which `--vcpu-type` measure takes: a model
# snpvirt cannot measure is refused, never rendered with a measurement that silently becomes "unknown".
# QEMU's versions of a model (EPYC-Milan-v2, ...) change CPUID features and the model-id string, never
# family/model/stepping, so each measures like its base model. Versions as QEMU 10.1 defines them
# (target/i386/cpu.c); EPYC-IBPB is QEMU's alias of EPYC-v2.
_EPYC = (23, 1, 2)
_ROME = (23, 49, 0)
_MILAN = (25, 1, 1)
_GENOA = (25, 17, 0)
_TURIN = (26, 0, 0)
_QEMU_MODELS = {"EPYC": (_EPYC, 5), "EPYC-Rome": (_ROME, 5), "EPYC-Milan": (_MILAN, 3), "EPYC-Genoa": (_GENOA, 2),
                "EPYC-Turin": (_TURIN, 1)}
CPU_MODELS: dict[str, tuple[int, int, int]] = {
    **{f"{base}{version}": fms for base, (fms, newest) in _QEMU_MODELS.items()
       for version in ("", *(f"-v{n}" for n in range(1, newest + 1)))},
    "EPYC-IBPB": _EPYC,
}
HOST_PASSTHROUGH = "host-passthrough"


def cpu_model_error(name: str, what: str, escape: str) -> str:
    """(message, hint) parts shared by the spec's cpu_model and measure's --vcpu-type: one table, one answer."""
    return f"{what} {name!r} is not a QEMU EPYC model snpvirt can measure", \
        f"use one of: {', '.join(CPU_MODELS)}; or {escape}"


def cpu_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX encoding of family/model/stepping (AMD CPUID spec #25481)."""
    if family > 0xF:
        family_bits, extended_family = 0xF, family - 0xF
    else:
        family_bits, extended_family = family, 0
    return (extended_family & 0xFF) << 20 | ((model >> 4) & 0xF) << 16 | family_bits << 8 | (model & 0xF) << 4 | (stepping & 0xF)


def vcpu_signature(vcpu_type: str) -> int:
    if vcpu_type == HOST_PASSTHROUGH:
        raise BadInputError("host-passthrough has no fixed vCPU signature to measure",
                            "give the host CPU's signature: --vcpu-sig HEX (or snp.vcpu_signature in the spec), "
                            "e.g. 0xa10f10 for Genoa")
    if vcpu_type not in CPU_MODELS:
        raise BadInputError(*cpu_model_error(vcpu_type, "vCPU type", "give the CPUID signature: --vcpu-sig HEX"))
    return cpu_signature(*CPU_MODELS[vcpu_type])


class LaunchDigest:
    """GCTX.LD: folded with one PAGE_INFO per measured page (docs/measurement.md §4)."""

    __slots__ = ("ld", "updates")

    def __init__(self, seed: bytes = bytes(48)) -> None:
        self.ld = seed
        self.updates = 0

    def update(self, page_type: int, gpa: int, contents: bytes) -> None:
        info = self.ld + contents + struct.pack("<HBBBBBBQ", PAGE_INFO_LEN, page_type, 0, 0, 0, 0, 0, gpa)
        self.ld = hashlib.sha384(info).digest()
        self.updates += 1

    def update_pages(self, page_type: int, gpa: int, size: int) -> None:
        """Pages with zero CONTENTS (ZERO, SECRETS, CPUID, UNMEASURED), one per 4 KiB."""
        zero = bytes(48)
        for offset in range(0, size, PAGE):
            self.update(page_type, gpa + offset, zero)


def firmware_seed(image: bytes) -> bytes:
    """Step (A): every firmware page, ascending, as NORMAL pages below 4 GiB (the `ovmf-hash`)."""
    if len(image) % PAGE:
        raise BadInputError(f"{len(image)} bytes, not a multiple of 4096: not an OVMF image",
                            "SNP needs the whole AmdSev OVMF image, e.g. OVMF.amdsev.fd")
    digest = LaunchDigest()
    base = 0x1_0000_0000 - len(image)
    view = memoryview(image)
    for offset in range(0, len(image), PAGE):
        digest.update(NORMAL, base + offset, hashlib.sha384(view[offset:offset + PAGE]).digest())
    return digest.ld


@dataclass(frozen=True)
class KernelHashes:
    """SHA-256 of kernel, initrd and cmdline (with its NUL), as QEMU puts them in the hash table (§7)."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @classmethod
    def of(cls, kernel_sha256: bytes, initrd_sha256: bytes | None, cmdline: str | None) -> KernelHashes:
        return cls(kernel_sha256, initrd_sha256 or hashlib.sha256(b"").digest(),
                   hashlib.sha256((cmdline or "").encode() + b"\0").digest())

    def table(self) -> bytes:
        """The 168-byte table, padded to 176: cmdline, initrd, kernel entries in that order."""
        entries = b"".join(guid + struct.pack("<H", 50) + digest for guid, digest in (
            (CMDLINE_ENTRY_GUID, self.cmdline), (INITRD_ENTRY_GUID, self.initrd), (KERNEL_ENTRY_GUID, self.kernel)))
        table = HASH_TABLE_GUID + struct.pack("<H", 16 + 2 + len(entries)) + entries
        return table + bytes(-len(table) % 16)


def _segment(selector: int, attrib: int, limit: int, base: int) -> bytes:
    return struct.pack("<HHIQ", selector, attrib, limit, base)


def vmsa_page(cs_base: int, rip: int, signature: int, guest_features: int) -> bytes:
    """A vCPU's initial VMSA for the QEMU VMM (§8.2): every byte zero except these fields."""
    page = bytearray(PAGE)
    data = _segment(0, 0x93, 0xFFFF, 0)
    for offset, segment in ((0x000, data), (0x010, _segment(0xF000, 0x9B, 0xFFFF, cs_base)), (0x020, data),
                            (0x030, data), (0x040, data), (0x050, data), (0x060, _segment(0, 0, 0xFFFF, 0)),
                            (0x070, _segment(0, 0x82, 0xFFFF, 0)), (0x080, _segment(0, 0, 0xFFFF, 0)),
                            (0x090, _segment(0, 0x8B, 0xFFFF, 0))):
        page[offset:offset + 16] = segment
    for offset, value in ((0x0D0, 0x1000), (0x148, 0x40), (0x158, 0x10), (0x160, 0x400), (0x168, 0xFFFF0FF0),
                          (0x170, 0x2), (0x178, rip), (0x268, 0x0007040600070406), (0x310, signature),
                          (0x3B0, guest_features), (0x3E8, 0x1)):
        struct.pack_into("<Q", page, offset, value)
    struct.pack_into("<I", page, 0x408, 0x1F80)
    struct.pack_into("<H", page, 0x410, 0x037F)
    return bytes(page)


@dataclass
class Measurement:
    digest: bytes
    updates: int  # PAGE_INFO updates folded in

    @property
    def hex(self) -> str:
        return self.digest.hex()


def measure(image: bytes, *, vcpus: int, signature: int, guest_features: int = DEFAULT_GUEST_FEATURES,
            kernel_hashes: KernelHashes | None = None, firmware_ld: bytes | None = None) -> Measurement:
    """MEASUREMENT for SNP with the QEMU VMM: firmware pages, metadata sections in table order, VMSAs."""
    lo, hi = VCPUS_RANGE
    if not lo <= vcpus <= hi:
        raise BadInputError(f"vcpus {vcpus} is out of range {lo}..{hi}", f"give --vcpus from {lo} to {hi}")
    try:
        firmware = ovmf.parse(image)
    except ovmf.OvmfError as exc:
        raise BadInputError(f"not an SEV-capable OVMF build ({exc}); SNP needs the AmdSev build, e.g. OVMF.amdsev.fd",
                            "point at the AmdSev OVMF image (OvmfPkg/AmdSev/AmdSevX64.dsc), not OVMF_CODE.fd") from None
    digest = LaunchDigest(firmware_ld if firmware_ld is not None else firmware_seed(image))
    hash_page = None
    if kernel_hashes is not None:
        if not firmware.has_kernel_hashes:
            raise BadInputError("kernel hashes requested, but this firmware's SEV metadata has no SNP_KERNEL_HASHES section",
                                "use the AmdSev OVMF build (OVMF.amdsev.fd), or turn kernel hashes off")
        block = firmware.footer_entries.get(HASH_TABLE_BLOCK_GUID, b"")
        base, size = struct.unpack_from("<II", block) if len(block) >= 8 else (0, 0)
        if base == 0 or size < 176:
            raise BadInputError("the firmware's hash table area is invalid (base 0 or too small) for kernel hashes",
                                "use the AmdSev OVMF build (OVMF.amdsev.fd), or turn kernel hashes off")
        hash_page = bytearray(PAGE)
        offset = base & 0xFFF
        table = kernel_hashes.table()
        hash_page[offset:offset + len(table)] = table
    for section in firmware.sev_sections:
        kind, gpa, size = section.section_type, section.gpa, section.size
        if kind == SNP_SECRETS:
            digest.update(SECRETS, gpa, bytes(48))
        elif kind == SNP_CPUID:
            digest.update(CPUID, gpa, bytes(48))
        elif kind == SNP_KERNEL_HASHES and hash_page is not None:
            if size != PAGE:
                raise BadInputError(f"SNP_KERNEL_HASHES section of {size:#x} bytes; only one page is supported",
                                    "use a standard AmdSev OVMF build")
            digest.update(NORMAL, gpa, hashlib.sha384(hash_page).digest())
        else:  # SNP_SEC_MEM, SVSM_CAA, kernel hashes off, and anything else QEMU maps to ZERO
            digest.update_pages(ZERO, gpa, size)
    reset = firmware.footer_entries.get(RESET_BLOCK_GUID, b"")
    reset_addr = struct.unpack_from("<I", reset)[0] if len(reset) >= 4 else 0
    if vcpus > 1 and reset_addr == 0:
        raise BadInputError("the firmware has no SEV-ES reset block, so secondary vCPUs cannot start",
                            "use an SEV-capable OVMF build, or one vCPU")
    bsp = hashlib.sha384(vmsa_page(0xFFFF0000, 0xFFF0, signature, guest_features)).digest()
    ap = hashlib.sha384(vmsa_page(reset_addr & 0xFFFF0000, reset_addr & 0xFFFF, signature, guest_features)).digest()
    for index in range(vcpus):
        digest.update(VMSA, VMSA_GPA, bsp if index == 0 else ap)
    return Measurement(digest.ld, digest.updates)
