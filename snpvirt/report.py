"""The SEV-SNP attestation report (1184 bytes): parse every field, decode policy, TCB, platform info.

Layout: docs/measurement.md §10 (AMD ABI 56860 §7.3). Versions 2, 3 (4) and 5.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from snpvirt import policy as snp_policy
from snpvirt.errors import BadInputError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 4, 5)
SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}
PLATFORM_BITS = ("smt_en", "tsme_en", "ecc_en", "rapl_dis", "ciphertext_hiding_en", "alias_check_complete", None, "tio_en")
PRODUCTS = ("milan", "genoa", "turin")


def product_of(family: int, model: int) -> str | None:
    """The EPYC generation of a CPU family and model (a report's CPUID fields, or a host's /proc/cpuinfo)."""
    if family == 0x1A:
        return "turin"
    if family == 0x19:
        return "milan" if model < 0x10 else "genoa"
    return None


@dataclass(frozen=True)
class Tcb:
    raw: int
    layout: str  # "milan-genoa" | "turin"

    @property
    def parts(self) -> dict[str, int]:
        b = self.raw.to_bytes(8, "little")
        if self.layout == "turin":
            return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
        return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}

    def as_dict(self) -> dict[str, Any]:
        return {**self.parts, "raw": f"{self.raw:#018x}"}


@dataclass(frozen=True)
class Report:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: int
    current_version: tuple[int, int, int]  # major, minor, build
    committed_version: tuple[int, int, int]
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature(self) -> bytes:
        return self.raw[0x2A0:0x4A0]

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags >> 1 & 1)

    @property
    def signing_key(self) -> str:
        return SIGNING_KEYS.get(self.flags >> 2 & 0x7, f"reserved({self.flags >> 2 & 0x7})")

    def nonzero_reserved(self) -> list[str]:
        """The must-be-zero parts of the signed area that are not zero (§14's table), by offset."""
        found = [f"signer info bits 31:5 ({self.flags:#x})"] if self.flags >> 5 else []
        cpuid_end = 0x18B if self.version >= 3 else 0x188  # v3 put CPUID family/model/stepping there
        mitigations_end = 0x208 if self.version >= 5 else 0x1F8  # v5 put the mitigation vectors there
        for start, end in ((0x4C, 0x50), (cpuid_end, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (mitigations_end, SIGNED_SIZE)):
            if any(self.raw[start:end]):
                found.append(f"bytes {start:#x}..{end - 1:#x}")
        return found

    def product(self) -> str | None:
        """The CPU generation from CPUID family/model (v3+); None for v2, which does not say."""
        if self.version < 3 or self.cpuid_fam_id == 0:
            return None
        return product_of(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb(self, value: int, product: str | None) -> Tcb:
        return Tcb(value, "turin" if product == "turin" else "milan-genoa")

    def as_dict(self, product: str | None = None) -> dict[str, Any]:
        product = product or self.product()
        version = lambda v: f"{v[0]}.{v[1]}.{v[2]}"  # noqa: E731
        return {
            "version": self.version, "guest_svn": self.guest_svn,
            "policy": snp_policy.to_hex(self.policy), "policy_decoded": {
                **{k: v for k, v in snp_policy.to_fields(self.policy).items()},
                "reserved_bit17": bool(self.policy & snp_policy.MUST_BE_ONE_BIT)},
            "family_id": self.family_id.hex(), "image_id": self.image_id.hex(), "vmpl": self.vmpl,
            "signature_algo": self.signature_algo, "product": product, "tcb_layout": self.tcb(0, product).layout,
            "current_tcb": self.tcb(self.current_tcb, product).as_dict(),
            "platform_info": f"{self.platform_info:#x}",
            "platform_info_decoded": {name: bool(self.platform_info >> bit & 1)
                                      for bit, name in enumerate(PLATFORM_BITS) if name},
            "flags": f"{self.flags:#x}", "author_key_en": self.author_key_en, "mask_chip_key": self.mask_chip_key,
            "signing_key": self.signing_key,
            "report_data": self.report_data.hex(), "measurement": self.measurement.hex(), "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(), "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(), "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": self.tcb(self.reported_tcb, product).as_dict(),
            "cpuid_fam_id": self.cpuid_fam_id, "cpuid_mod_id": self.cpuid_mod_id, "cpuid_step": self.cpuid_step,
            "chip_id": self.chip_id.hex(), "committed_tcb": self.tcb(self.committed_tcb, product).as_dict(),
            "current_version": version(self.current_version), "committed_version": version(self.committed_version),
            "launch_tcb": self.tcb(self.launch_tcb, product).as_dict(),
            "launch_mit_vector": None if self.launch_mit_vector is None else f"{self.launch_mit_vector:#x}",
            "current_mit_vector": None if self.current_mit_vector is None else f"{self.current_mit_vector:#x}",
            "signature": {"r": f"{self.signature_r:x}", "s": f"{self.signature_s:x}"},
        }


def parse(data: bytes, origin: str = "report") -> Report:
    """Parse a raw report; a wrong size, version or algorithm is a clear BadInputError."""
    if len(data) == REPORT_SIZE * 2 + 1 or len(data) == REPORT_SIZE * 2:
        try:  # hex text, as some tools store it
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) != REPORT_SIZE:
        kind = "a PEM/DER certificate" if data[:5] == b"-----" or data[:2] == b"\x30\x82" else f"{len(data)} bytes"
        raise BadInputError(f"{origin}: not an SEV-SNP attestation report ({kind}; a report is exactly 1184 bytes)",
                            "give the raw report, e.g. from: snpvirt guest report -o report.bin")
    version, guest_svn, policy = struct.unpack_from("<IIQ", data, 0)
    if version not in SUPPORTED_VERSIONS:
        raise BadInputError(f"{origin}: unknown report version {version}", "snpvirt reads versions 2, 3, 4 and 5")
    vmpl, algo = struct.unpack_from("<II", data, 0x30)
    if algo != 1:
        raise BadInputError(f"{origin}: signature algorithm {algo} is not ECDSA P-384/SHA-384 (1)",
                            "this is not a report signed by an AMD SEV-SNP firmware")
    u64 = lambda offset: struct.unpack_from("<Q", data, offset)[0]  # noqa: E731
    v5 = version >= 5
    return Report(
        raw=bytes(data), version=version, guest_svn=guest_svn, policy=policy,
        family_id=data[0x10:0x20], image_id=data[0x20:0x30], vmpl=vmpl, signature_algo=algo,
        current_tcb=u64(0x38), platform_info=u64(0x40), flags=struct.unpack_from("<I", data, 0x48)[0],
        report_data=data[0x50:0x90], measurement=data[0x90:0xC0], host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110], author_key_digest=data[0x110:0x140], report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180], reported_tcb=u64(0x180),
        cpuid_fam_id=data[0x188] if version >= 3 else 0, cpuid_mod_id=data[0x189] if version >= 3 else 0,
        cpuid_step=data[0x18A] if version >= 3 else 0, chip_id=data[0x1A0:0x1E0], committed_tcb=u64(0x1E0),
        current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]), launch_tcb=u64(0x1F0),
        launch_mit_vector=u64(0x1F8) if v5 else None, current_mit_vector=u64(0x200) if v5 else None,
        signature_r=int.from_bytes(data[0x2A0:0x2E8], "little"), signature_s=int.from_bytes(data[0x2E8:0x330], "little"),
    )
