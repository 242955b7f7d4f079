"""Frozen data passed between layers. No behaviour beyond trivial derived values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Bounds every vCPU count gets, in a spec and on the command line (measure --vcpus): the measurement
# folds one VMSA page per vCPU, so an unbounded count would run until killed.
VCPUS_RANGE = (1, 512)


@dataclass(frozen=True)
class VolumeRef:
    """A volume in a libvirt storage pool, by name: libvirt knows its host path, the spec does not."""

    pool: str
    volume: str


@dataclass(frozen=True)
class BootSpec:
    kernel: str | None = None  # host path; for a pool volume, filled in once the host has resolved it
    initrd: str | None = None
    cmdline: str | None = None
    kernel_volume: VolumeRef | None = None  # boot.kernel = { pool = "...", volume = "..." }
    initrd_volume: VolumeRef | None = None

    @property
    def direct(self) -> bool:
        """Direct kernel boot: a kernel is named, by path or as a pool volume."""
        return self.kernel is not None or self.kernel_volume is not None

    @property
    def unresolved(self) -> tuple[str, ...]:
        """The boot files named as pool volumes whose host path is not known yet."""
        return tuple(kind for kind, path, ref in (("kernel", self.kernel, self.kernel_volume),
                                                  ("initrd", self.initrd, self.initrd_volume))
                     if ref is not None and path is None)


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
    author_key: bool | None = None  # libvirt's authorKey attribute
    vcek: bool | None = None
    guest_features: int = 0x1  # VMSA SEV_FEATURES the host's KVM sets: 0x1, or 0x21 with DebugSwap
    vcpu_signature: int | None = None  # CPUID signature for measuring host-passthrough vCPUs
    id_key: str | None = None  # PEM file: snpvirt builds and signs the ID block
    author_key_file: str | None = None  # PEM file: signs the ID key
    family_id: str | None = None  # 16 bytes, hex
    image_id: str | None = None
    guest_svn: int = 0


@dataclass(frozen=True)
class DiskSpec:
    target: str  # vda, vdb, ...
    path: str | None = None  # a host file, or:
    pool: str | None = None  # a volume in a libvirt storage pool
    volume: str | None = None
    size_gib: int | None = None  # apply creates an absent volume this large (an overlay: its virtual size)
    backing: str | None = None  # apply creates an absent volume as a qcow2 overlay on this volume (same pool)
    format: str = "qcow2"
    readonly: bool = False

    @property
    def volume_ref(self) -> VolumeRef | None:
        return VolumeRef(self.pool, self.volume) if self.pool and self.volume else None


@dataclass(frozen=True)
class CloudInitSpec:
    """[cloud_init]: what the NoCloud seed tells cloud-init in the guest (image/seed.py builds it)."""

    hostname: str
    target: str  # the seed's virtio disk, after the spec's disks
    pool: str = "default"  # where apply stores the seed volume
    user: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    user_data: str | None = None  # a file used as the whole user-data, as is

    def volume_name(self, domain: str) -> str:
        return f"{domain}-cidata.iso"


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
    cloud_init: CloudInitSpec | None = None
    # Desired run state, converged by `apply` (not part of the definition): running | shutoff, and
    # libvirt's autostart flag (None: leave it as it is).
    state: str = "running"
    autostart: bool | None = None
    # The fleet that owns the domain (`snpvirt fleet`), written into its metadata; None for single-host use.
    fleet: str | None = None
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
class FileDigest:
    sha256: str | None
    reason: str | None = None  # why the digest is unknown (file not readable here, e.g. a remote host)
    size: int | None = None


@dataclass(frozen=True)
class Stamp:
    """What snpvirt records when it defines a domain, beyond the spec: input digests and times."""

    defined_at: str
    updated_at: str
    digests: dict[str, FileDigest]  # "firmware", "kernel", "initrd"


@dataclass(frozen=True)
class RenderResult:
    name: str
    xml: str
    policy: int
    cbitpos: int
    reduced_phys_bits: int
    sev_params_source: str  # where cbitpos/reducedPhysBits came from
    warnings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """One host readiness check. Its id is a stable interface for automation."""

    check_id: str
    status: str  # "pass" | "warn" | "fail" | "skip"
    message: str
    hint: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.check_id, "status": self.status, "message": self.message, "hint": self.hint,
                "facts": self.facts}


@dataclass(frozen=True)
class HostReport:
    ready: bool
    host: dict[str, Any]
    checks: tuple[CheckResult, ...]
    summary: str

    def by_id(self, check_id: str) -> CheckResult:
        return next(c for c in self.checks if c.check_id == check_id)

    def failed(self) -> list[str]:
        return [c.check_id for c in self.checks if c.status == "fail"]


@dataclass(frozen=True)
class LibvirtFacts:
    """What a libvirt connection reports about its host."""

    uri: str
    driver: str  # libvirt's driver type: "QEMU", "Test", ...
    hostname: str | None
    lib_version: int | None  # major * 1_000_000 + minor * 1_000 + release
    hypervisor_version: int | None
    domcaps_xml: str | None
    domcaps_error: str | None = None
    running_es_snp_guests: int | None = None  # they share one ASID pool


@dataclass(frozen=True)
class DomainRecord:
    """A libvirt domain as the manager sees it."""

    name: str
    uuid: str
    state: str  # libvirt's state name, lowercase: running, shutoff, paused, ...
    xml: str  # the inactive (persistent) definition
    live_xml: str | None = None  # an active domain's live definition: what runs until it restarts
