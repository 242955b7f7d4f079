"""Where a domain's cbitpos and reducedPhysBits come from: never guessed.

Order: the spec, then a saved domcapabilities document (--host-caps), then the connected host.
"""

from __future__ import annotations

from dataclasses import dataclass

from snpvirt.domain.spec import CBITPOS_RANGE, REDUCED_PHYS_BITS_RANGE
from snpvirt.errors import BadInputError, HostNotReadyError
from snpvirt.models import Finding, HostSevCaps, VmSpec

# The spec checks its own values; the host's are held to the same bounds before they go into a domain.
_RANGES = {"cbitpos": ("cbitpos", CBITPOS_RANGE), "reduced_phys_bits": ("reducedPhysBits", REDUCED_PHYS_BITS_RANGE)}


@dataclass(frozen=True)
class HostCapsSource:
    caps: HostSevCaps
    label: str  # "--host-caps FILE" or "host qemu:///system", for messages


@dataclass(frozen=True)
class SevParams:
    cbitpos: int
    reduced_phys_bits: int
    source: str
    warnings: tuple[Finding, ...] = ()


def resolve(spec: VmSpec, sources: list[HostCapsSource]) -> SevParams:
    values: dict[str, tuple[int, str]] = {}
    if spec.snp.cbitpos is not None:
        values["cbitpos"] = (spec.snp.cbitpos, "spec")
    if spec.snp.reduced_phys_bits is not None:
        values["reduced_phys_bits"] = (spec.snp.reduced_phys_bits, "spec")
    warnings: list[Finding] = []
    for source in sources:
        if len(values) == 2:
            break
        caps = source.caps
        if not caps.sev_supported:
            raise HostNotReadyError(
                f"{source.label}: the domain capabilities say SEV is not supported, so cbitpos is unknown",
                "run snpvirt on an SEV-SNP host (BIOS: SEV-SNP and SMEE on; kvm_amd sev_snp=1), "
                "or set snp.cbitpos and snp.reduced_phys_bits in the spec",
            )
        if not caps.snp_advertised:
            warnings.append(Finding(
                "host.snp_not_advertised", "warning",
                f"{source.label}: <launchSecurity> does not list sev-snp (libvirt < 10.5 or QEMU < 9.1?)",
                "use libvirt >= 10.5 and QEMU >= 9.1 on the host that runs this domain",
            ))
        if caps.cbitpos is not None:
            values.setdefault("cbitpos", (caps.cbitpos, source.label))
        if caps.reduced_phys_bits is not None:
            values.setdefault("reduced_phys_bits", (caps.reduced_phys_bits, source.label))
    missing = [k for k in ("cbitpos", "reduced_phys_bits") if k not in values]
    if missing:
        raise BadInputError(
            f"snp.{missing[0]} is not known: it is not in the spec and no host capabilities were given",
            "set snp.cbitpos and snp.reduced_phys_bits in the spec, pass --host-caps FILE "
            "(saved with: virsh domcapabilities > domcaps.xml), or --connect URI to ask the host",
        )
    for key, (value, origin) in values.items():
        _check_host_value(key, value, origin)
    origins = sorted({origin for _, origin in values.values()})
    return SevParams(values["cbitpos"][0], values["reduced_phys_bits"][0], " + ".join(origins), tuple(warnings))


def _check_host_value(key: str, value: int, origin: str) -> None:
    tag, (lo, hi) = _RANGES[key]
    if not lo <= value <= hi:
        shown = value if value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"
        raise BadInputError(f"{origin}: {tag} {shown} is out of range {lo}..{hi}, so it is no SEV host's value",
                            f"check that {origin} describes an SEV-SNP host, or set snp.{key} in the spec")
