"""Frozen data passed between layers. No behaviour beyond trivial derived values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BootSpec:
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class SnpSpec:
    policy: int
    kernel_hashes: bool
    cbitpos: int | None = None
    reduced_phys_bits: int | None = None
    host_data: str | None = None  # base64 blobs, already checked for length
    guest_visible_workarounds: str | None = None
    id_block: str | None = None
    id_auth: str | None = None
    author_key: bool | None = None
    vcek: bool | None = None


@dataclass(frozen=True)
class DiskSpec:
    path: str
    target: str  # vda, vdb, ...
    format: str = "qcow2"
    readonly: bool = False


@dataclass(frozen=True)
class NetworkSpec:
    network: str | None = None
    bridge: str | None = None
    mac: str | None = None


@dataclass(frozen=True)
class VmSpec:
    name: str
    memory_mib: int
    vcpus: int
    cpu_model: str
    firmware: str
    memory_backing: str
    boot: BootSpec
    snp: SnpSpec
    uuid: str | None = None
    description: str | None = None
    disks: tuple[DiskSpec, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()
    # The spec as the user wrote it (after --set overrides): stored in the domain's metadata.
    source: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class HostSevCaps:
    """What a host's domain capabilities say about SEV (`virsh domcapabilities`)."""

    sev_supported: bool
    snp_advertised: bool  # <launchSecurity> lists sev-snp
    cbitpos: int | None = None
    reduced_phys_bits: int | None = None
    max_guests: int | None = None
    max_es_guests: int | None = None


@dataclass(frozen=True)
class Finding:
    """One broken rule in a domain document."""

    rule_id: str
    severity: str  # "error" | "warning"
    message: str
    hint: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.rule_id, "severity": self.severity, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class RenderResult:
    name: str
    xml: str
    policy: int
    cbitpos: int
    reduced_phys_bits: int
    sev_params_source: str  # where cbitpos/reducedPhysBits came from
    warnings: tuple[Finding, ...] = ()
