"""VmSpec -> the equivalent `qemu-system-x86_64` command line, in the form of Ubuntu's SEV-SNP guide.

For people without libvirt, and for comparing with the guide: the same machine as the domain XML
(domain/render.py) describes, option for option. One option per line, each argument shell-quoted, so
the text can be pasted into a shell as is. Pure: paths of pool volumes come from the caller.
"""

from __future__ import annotations

import shlex
from typing import Mapping

from snpvirt import policy as snp_policy
from snpvirt.domain.sevparams import SevParams
from snpvirt.errors import BadInputError
from snpvirt.models import VmSpec, VolumeRef

BINARY = "qemu-system-x86_64"


def _value(text: str) -> str:
    """A value inside QEMU's key=value,... option syntax: a comma is written twice."""
    return text.replace(",", ",,")


def _props(kind: str, props: dict[str, object]) -> str:
    """`kind,key=value,...` with booleans as on/off, as QEMU's -object and -device parse them; None is left out.
    Keys are QEMU's own property names (some with '-', some with '_')."""
    parts = [kind]
    for key, value in props.items():
        if value is None:
            continue
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        parts.append(f"{key}={_value(text)}")
    return ",".join(parts)


def memory_backend(spec: VmSpec) -> str:
    """Guest RAM as the domain XML's <memoryBacking> gives it: memfd, shared (memory_backing = "memfd")."""
    kind = "memory-backend-memfd" if spec.memory_backing == "memfd" else "memory-backend-ram"
    # true/false as in Ubuntu's guide (QEMU reads on/off and true/false alike)
    return _props(kind, {"id": "ram1", "size": f"{spec.memory_mib}M",
                         "share": "true" if spec.memory_backing == "memfd" else None, "prealloc": "false"})


def sev_snp_guest(spec: VmSpec, sev: SevParams, id_block: str | None = None, id_auth: str | None = None) -> str:
    """The sev-snp-guest object: libvirt's <launchSecurity type='sev-snp'> in QEMU's words."""
    snp = spec.snp
    return _props("sev-snp-guest", {
        "id": "sev0", "cbitpos": sev.cbitpos, "reduced-phys-bits": sev.reduced_phys_bits,
        "kernel-hashes": True if snp.kernel_hashes else None, "policy": snp_policy.to_hex(snp.policy),
        "guest-visible-workarounds": snp.guest_visible_workarounds, "id-block": id_block or snp.id_block,
        "id-auth": id_auth or snp.id_auth, "author-key-enabled": snp.author_key, "host-data": snp.host_data})


def command(spec: VmSpec, sev: SevParams, volume_paths: Mapping[VolumeRef, str] | None = None,
            seed_path: str | None = None, id_block: str | None = None, id_auth: str | None = None) -> list[list[str]]:
    """The command as lines of arguments: the program, then one option (with its value) per line."""
    unresolved = spec.boot.unresolved
    if unresolved:
        raise BadInputError(f"boot.{unresolved[0]} is a pool volume: its path on the host is not known",
                            "give --connect URI (the host that holds the pool), or name the file by path")
    lines: list[list[str]] = [[BINARY], ["-enable-kvm"], ["-name", spec.name],
                              ["-machine", "q35,confidential-guest-support=sev0,memory-backend=ram1,vmport=off"],
                              ["-cpu", "host" if spec.cpu_model == "host-passthrough" else spec.cpu_model],
                              ["-smp", str(spec.vcpus)], ["-m", f"{spec.memory_mib}M"],
                              ["-no-reboot"],  # <on_reboot>destroy</on_reboot>: an SNP guest cannot reset in place
                              ["-object", memory_backend(spec)],
                              ["-object", sev_snp_guest(spec, sev, id_block, id_auth)],
                              ["-bios", spec.firmware]]
    if spec.boot.kernel:
        lines.append(["-kernel", spec.boot.kernel])
        if spec.boot.initrd:
            lines.append(["-initrd", spec.boot.initrd])
        if spec.boot.cmdline is not None:
            lines.append(["-append", spec.boot.cmdline])
    lines += _disks(spec, volume_paths or {}, seed_path)
    lines += _nics(spec)
    lines.append(["-nographic"])  # the serial console on the terminal, as <console type="pty">
    return lines


def _disks(spec: VmSpec, volume_paths: Mapping[VolumeRef, str], seed_path: str | None) -> list[list[str]]:
    drives = []
    for disk in spec.disks:
        path = disk.path or volume_paths.get(disk.volume_ref)
        if path is None:
            raise BadInputError(f"disk {disk.target} is volume {disk.volume!r} in pool {disk.pool!r}: "
                                "its path on the host is not known",
                                "give --connect URI (the host that holds the pool); a volume apply has not made yet "
                                "has no path")
        drives.append((disk.target, path, disk.format, disk.readonly))
    if spec.cloud_init is not None:
        if seed_path is None:
            raise BadInputError("the spec has [cloud_init]: the command line needs the seed's path",
                                "give --seed FILE (snpvirt writes the seed there), or --connect URI")
        drives.append((spec.cloud_init.target, seed_path, "raw", True))  # the seed is always read-only
    lines = []
    for target, path, fmt, readonly in drives:
        lines.append(["-drive", _props("if=none", {"id": target, "file": path, "format": fmt,
                                                   "readonly": True if readonly else None})])
        # iommu_platform: the device reaches guest memory through the DMA API, which SEV requires (iommu='on').
        lines.append(["-device", _props("virtio-blk-pci", {"drive": target, "iommu_platform": True,
                                                           "disable-legacy": True})])
    return lines


def _nics(spec: VmSpec) -> list[list[str]]:
    lines = []
    for index, net in enumerate(spec.networks):
        nic = f"net{index}"
        # Without libvirt there is no libvirt network: user-mode networking stands in for one (outbound NAT).
        backend = _props("bridge", {"id": nic, "br": net.bridge}) if net.bridge else _props("user", {"id": nic})
        lines.append(["-netdev", backend])
        lines.append(["-device", _props("virtio-net-pci", {"netdev": nic, "mac": net.mac, "iommu_platform": True,
                                                           "disable-legacy": True, "romfile": ""})])  # no iPXE: not SEV-aware
    return lines


def shell_text(lines: list[list[str]]) -> str:
    """One option per line, continued with backslashes, every argument quoted for a POSIX shell."""
    rendered = [" ".join(shlex.quote(arg) for arg in line) for line in lines]
    return " \\\n    ".join(rendered) + "\n"
