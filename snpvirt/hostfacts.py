"""Read the local facts an SEV-SNP launch depends on, from files below a sysroot ("/" or a capture).

Nothing here judges: host.py turns these facts into checks. A fact that cannot be read is None,
with the reason in `unreadable`, so the check can say `skip` instead of passing silently.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from snpvirt import fileio, firmware, ovmf

CPUID_SEV_LEAF = 0x8000001F
KVM_AMD_PARAMS = ("sev", "sev_es", "sev_snp", "debug_swap")


@dataclass(frozen=True)
class DeviceNode:
    path: str
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True)
class QemuUser:
    name: str
    uid: int | None  # None: the user does not exist in the sysroot's /etc/passwd
    gids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class FirmwareFile:
    path: str
    image: ovmf.OvmfImage | None
    error: str | None


@dataclass(frozen=True)
class LocalFacts:
    sysroot: str
    cpuid_vendor: str | None = None
    cpuid_sev: tuple[int, int, int, int] | None = None  # EAX, EBX, ECX, EDX of leaf 0x8000001F
    cpuinfo_vendor: str | None = None
    cpuinfo_model: str | None = None
    cpuinfo_flags: frozenset[str] | None = None
    kvm_dev: bool = False
    kvm_amd_loaded: bool = False
    kvm_amd_params: dict[str, str] = field(default_factory=dict)
    dev_sev: DeviceNode | None = None
    qemu_user: QemuUser | None = None
    kernel_release: str | None = None
    cmdline: str | None = None
    iommu_units: tuple[str, ...] | None = None
    smt_active: bool | None = None
    descriptors: tuple[firmware.Descriptor, ...] = ()
    firmware_files: dict[str, FirmwareFile] = field(default_factory=dict)  # descriptor/spec file -> content check
    unreadable: dict[str, str] = field(default_factory=dict)  # fact name -> why it could not be read


class _Reader:
    def __init__(self, sysroot: Path) -> None:
        self.sysroot = sysroot
        self.unreadable: dict[str, str] = {}

    def path(self, host_path: str) -> Path:
        return self.sysroot / host_path.lstrip("/")

    def text(self, fact: str, host_path: str) -> str | None:
        try:
            return fileio.read_text(self.path(host_path), "host", host_path, errors="replace")
        except fileio.InputFileError as err:
            self.unreadable[fact] = f"{host_path} {err.reason}" + (" (run as root)" if err.reason == "permission denied" else "")
        return None

    def cpuid(self, leaf: int) -> tuple[int, int, int, int] | None:
        """pread 16 bytes at offset = leaf from the cpuid device (a sparse file in a test sysroot)."""
        host_path = "/dev/cpu/0/cpuid"
        try:
            fd = os.open(self.path(host_path), os.O_RDONLY | os.O_NONBLOCK)  # a FIFO in a --sysroot must not block
        except FileNotFoundError:
            self.unreadable["cpuid"] = f"{host_path} is absent"
            return None
        except PermissionError:
            self.unreadable["cpuid"] = f"permission denied opening {host_path} (run as root)"
            return None
        except OSError as exc:  # a captured host's odd tree: a parent that is a file, a link loop
            self.unreadable["cpuid"] = f"cannot open {host_path}: {exc.strerror}"
            return None
        try:
            data = os.pread(fd, 16, leaf)
        except OSError as exc:
            self.unreadable["cpuid"] = f"cannot read {host_path}: {exc.strerror}"
            return None
        finally:
            os.close(fd)
        if len(data) != 16:
            self.unreadable["cpuid"] = f"short read from {host_path}"
            return None
        return struct.unpack("<4I", data)


def _cpuinfo(text: str | None) -> tuple[str | None, str | None, frozenset[str] | None]:
    if text is None:
        return None, None, None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = frozenset(fields["flags"].split()) if "flags" in fields else None
    return fields.get("vendor_id"), fields.get("model name"), flags


def _id(text: str) -> int | None:
    """A uid or gid as /etc/passwd writes it: ASCII digits, 32 bits. (str.isdigit() also accepts '²',
    which int() refuses, and a number of thousands of digits is past int()'s limit.)"""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else None


def _qemu_user(reader: _Reader) -> QemuUser | None:
    """libvirt's QEMU user: qemu.conf's `user`, else the distro default (Debian libvirt-qemu, Fedora qemu)."""
    conf = reader.text("qemu_conf", "/etc/libvirt/qemu.conf") or ""
    match = re.search(r'^\s*user\s*=\s*"([^"]+)"', conf, re.MULTILINE)
    passwd = reader.text("passwd", "/etc/passwd") or ""
    users = {p[0]: (_id(p[2]), _id(p[3])) for p in (line.split(":") for line in passwd.splitlines())
             if len(p) > 3 and _id(p[2]) is not None and _id(p[3]) is not None}
    name = match.group(1).lstrip("+") if match else next((u for u in ("libvirt-qemu", "qemu") if u in users), None)
    if name is None:
        return None
    if _id(name) is not None:
        return QemuUser(name, _id(name), frozenset())
    if name not in users:
        return QemuUser(name, None)
    uid, gid = users[name]
    groups = reader.text("group", "/etc/group") or ""
    gids = {gid} | {_id(g[2]) for g in (line.split(":") for line in groups.splitlines())
                    if len(g) > 3 and _id(g[2]) is not None and name in g[3].split(",")}
    return QemuUser(name, uid, frozenset(gids))


def _firmware_file(reader: _Reader, host_path: str) -> FirmwareFile:
    try:
        data = fileio.read_input(reader.path(host_path), "firmware", host_path)
    except fileio.InputFileError as err:
        return FirmwareFile(host_path, None, f"{host_path} {err.reason}")
    try:
        return FirmwareFile(host_path, ovmf.parse(data), None)
    except ovmf.OvmfError as exc:
        return FirmwareFile(host_path, None, str(exc))


def read_local_facts(sysroot: str | Path = "/", spec_firmware: str | None = None) -> LocalFacts:
    root = Path(sysroot)
    reader = _Reader(root)
    vendor_regs = reader.cpuid(0)
    cpuid_vendor = struct.pack("<3I", vendor_regs[1], vendor_regs[3], vendor_regs[2]).decode("ascii", "replace") \
        if vendor_regs else None
    cpuid_sev = reader.cpuid(CPUID_SEV_LEAF) if vendor_regs else None
    vendor, model, flags = _cpuinfo(reader.text("cpuinfo", "/proc/cpuinfo"))
    params_dir = reader.path("/sys/module/kvm_amd/parameters")
    params = {}
    for name in KVM_AMD_PARAMS:
        value = reader.text(f"kvm_amd.{name}", f"/sys/module/kvm_amd/parameters/{name}")
        if value is not None:
            params[name] = value.strip()
    dev_sev = None
    try:
        st = reader.path("/dev/sev").stat()
        dev_sev = DeviceNode("/dev/sev", st.st_mode, st.st_uid, st.st_gid)
    except OSError:
        pass
    iommu_dir = reader.path("/sys/class/iommu")
    smt = reader.text("smt", "/sys/devices/system/cpu/smt/active")
    descriptors = tuple(firmware.read_descriptors(root))
    wanted = [d.executable for d in descriptors if d.offers_snp and d.executable] + ([spec_firmware] if spec_firmware else [])
    release = reader.text("kernel_release", "/proc/sys/kernel/osrelease")
    cmdline = reader.text("cmdline", "/proc/cmdline")
    return LocalFacts(
        sysroot=str(root),
        cpuid_vendor=cpuid_vendor,
        cpuid_sev=cpuid_sev,
        cpuinfo_vendor=vendor,
        cpuinfo_model=model,
        cpuinfo_flags=flags,
        kvm_dev=reader.path("/dev/kvm").exists(),
        kvm_amd_loaded=params_dir.parent.is_dir(),
        kvm_amd_params=params,
        dev_sev=dev_sev,
        qemu_user=_qemu_user(reader),
        kernel_release=release.strip() if release else None,
        cmdline=cmdline.strip() if cmdline is not None else None,
        iommu_units=tuple(sorted(os.listdir(iommu_dir))) if iommu_dir.is_dir() else None,
        smt_active=smt.strip() == "1" if smt is not None else None,
        descriptors=descriptors,
        firmware_files={path: _firmware_file(reader, path) for path in dict.fromkeys(wanted)},
        unreadable=reader.unreadable,
    )
