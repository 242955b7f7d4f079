"""The 64-bit SEV-SNP guest policy: named flags <-> integer, and its validity rules.

Bit layout: AMD SEV-SNP firmware ABI spec 56860 §4.3 (see docs/snp-facts.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass

from snpvirt.errors import BadInputError, quoted

MUST_BE_ONE_BIT = 1 << 17
DEBUG_BIT = 1 << 19
# Bits 63:26 are reserved and must be zero.
RESERVED_MASK = ~((1 << 26) - 1) & ((1 << 64) - 1)
DEFAULT_POLICY = 0x30000  # SMT allowed + bit 17: QEMU's, KubeVirt's and Nova's default

# name -> (first bit, width in bits)
FIELDS: dict[str, tuple[int, int]] = {
    "abi_minor": (0, 8),
    "abi_major": (8, 8),
    "smt": (16, 1),
    "migrate_ma": (18, 1),
    "debug": (19, 1),
    "single_socket": (20, 1),
    "cxl_allow": (21, 1),
    "mem_aes_256_xts": (22, 1),
    "rapl_dis": (23, 1),
    "ciphertext_hiding": (24, 1),
    "page_swap_disable": (25, 1),
}
FLAG_NAMES = [name for name, (_, width) in FIELDS.items() if width == 1]


@dataclass(frozen=True)
class PolicyProblem:
    rule_id: str
    message: str
    hint: str


def from_fields(fields: dict[str, bool | int]) -> int:
    """Build a policy from named fields; unnamed flags are clear, bit 17 is always set."""
    value = MUST_BE_ONE_BIT
    for name, setting in fields.items():
        bit, width = FIELDS[name]
        number = int(setting)
        if not 0 <= number < (1 << width):
            shown = repr(setting) if number.bit_length() <= 64 else f"a {number.bit_length()}-bit number"  # str() has a limit
            raise BadInputError(
                f"snp.policy.{name} = {shown} is out of range 0..{(1 << width) - 1}",
                "abi_major/abi_minor are 0..255, the other policy fields are true/false",
            )
        value |= number << bit
    return value


def to_fields(value: int) -> dict[str, bool | int]:
    out: dict[str, bool | int] = {}
    for name, (bit, width) in FIELDS.items():
        part = (value >> bit) & ((1 << width) - 1)
        out[name] = bool(part) if width == 1 else part
    return out


def set_flag_names(value: int) -> list[str]:
    return [name for name in FLAG_NAMES if value >> FIELDS[name][0] & 1]


def to_hex(value: int) -> str:
    """Lowercase hex, as libvirt's schema (`hexuint`) requires."""
    return f"0x{value:x}"


def problems(value: int, allow_debug: bool = False) -> list[PolicyProblem]:
    """Everything that makes `value` unlaunchable or unsafe; empty when it is fine."""
    found = []
    if not 0 <= value < (1 << 64):
        return [PolicyProblem("snp.policy_range", f"policy {value:#x} does not fit in 64 bits",
                              "an SNP policy is a 64-bit value such as 0x30000")]
    if not value & MUST_BE_ONE_BIT:
        found.append(PolicyProblem(
            "snp.policy_bit17",
            f"policy {to_hex(value)} has bit 17 clear; SEV-SNP requires it set (KVM rejects the launch with -EINVAL)",
            f"use {to_hex(value | MUST_BE_ONE_BIT)} (bit 17 added), e.g. 0x30000 for SMT allowed",
        ))
    if value & RESERVED_MASK:
        found.append(PolicyProblem(
            "snp.policy_reserved",
            f"policy {to_hex(value)} sets reserved bits {to_hex(value & RESERVED_MASK)} (bits 63:26 must be zero)",
            f"clear them: {to_hex(value & ~RESERVED_MASK)}",
        ))
    if value & DEBUG_BIT and not allow_debug:
        found.append(PolicyProblem(
            "snp.policy_debug",
            f"policy {to_hex(value)} allows debugging (bit 19): the host can read the guest's memory",
            "clear snp.policy.debug, or pass --allow-debug for a throw-away test guest",
        ))
    return found


def parse_hex(text: str) -> int:
    """Parse a policy given as text ("0x30000"); raise BadInputError when it is not hex."""
    cleaned = text.strip().lower()
    digits = cleaned[2:] if cleaned.startswith("0x") else cleaned
    if not digits or any(c not in "0123456789abcdef" for c in digits):
        raise BadInputError(f"snp.policy {quoted(text)} is not a hexadecimal number",
                            'write it as "0x30000" or as a table: policy = { smt = true }')
    return int(digits, 16)


# Not the SNP policy: bit 2 of the older SEV policy says the guest is SEV-ES.
SEV_ES_POLICY_BIT = 0x4


def uses_es_asid(launch_type: str | None, sev_policy_text: str | None) -> bool:
    """Whether a domain's <launchSecurity> (its type and <policy> text) takes an ASID from the SEV-ES range:
    SEV-SNP guests do, and SEV guests with the ES policy bit. ValueError for a policy that is not hex."""
    if launch_type == "sev-snp":
        return True
    return launch_type == "sev" and bool(int((sev_policy_text or "0").strip(), 16) & SEV_ES_POLICY_BIT)

