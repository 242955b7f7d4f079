"""The host's SEV firmware as Linux exposes it, read below a sysroot: the SNP firmware's version and TCB, and
the PSP bootloader and TEE versions.

Linux puts no SEV firmware version or TCB in sysfs: nothing under /sys/firmware, and /sys/module/kvm_amd holds
only the sev/sev_es/sev_snp switches. The ccp driver logs "SEV-SNP API:1.55 build:21" at boot and answers the
SNP_PLATFORM_STATUS command on /dev/sev (include/uapi/linux/psp-sev.h; root only), which is what
`snphost show tcb` reads. Its sysfs files carry the PSP bootloader and TEE versions where the platform lets
them be read (Documentation/ABI/testing/sysfs-driver-ccp, Linux >= 6.4). Nothing here judges or prints.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snpvirt import report as reports

DEV_SEV = "dev/sev"
CCP_DRIVER = "sys/bus/pci/drivers/ccp"
PSP_VERSION_FILES = ("bootloader_version", "tee_version")
KVM_AMD_SEV_SNP = "sys/module/kvm_amd/parameters/sev_snp"
SMALL_FILE = 256  # bytes read at most from a sysfs or procfs attribute
CPUINFO_LIMIT = 64 << 10  # the first processor's fields are at the top

# include/uapi/linux/psp-sev.h: SEV_ISSUE_CMD = _IOWR('S', 0x0, struct sev_issue_cmd) with the packed
# struct {u32 cmd; u64 data; u32 error}; SNP_PLATFORM_STATUS is command 9, answered in struct
# sev_user_data_snp_status (32 packed bytes).
_ISSUE_CMD = struct.Struct("<IQI")
SEV_ISSUE_CMD = (3 << 30) | (_ISSUE_CMD.size << 16) | (ord("S") << 8)
SNP_PLATFORM_STATUS = 9
_SNP_STATUS = struct.Struct("<BBBBIIIQQ")
IOCTL_DEADLINE_S = 10.0  # a PSP command answers in milliseconds; one that does not must not hang the command
SNP_STATES = {0: "uninitialized", 1: "initialized"}


@dataclass(frozen=True)
class SnpStatus:
    """SNP_PLATFORM_STATUS: the SNP firmware's version, state and TCB."""

    api_major: int
    api_minor: int
    state: int
    rmp_initialized: bool
    build_id: int
    mask_chip_id: bool
    mask_chip_key: bool
    vlek_en: bool
    guest_count: int
    current_tcb: int
    reported_tcb: int

    @property
    def version(self) -> str:
        """major.minor.build, as `attest show` prints a report's current_version."""
        return f"{self.api_major}.{self.api_minor}.{self.build_id}"

    def as_dict(self, product: str | None) -> dict[str, Any]:
        layout = "turin" if product == "turin" else "milan-genoa"
        return {"version": self.version, "state": SNP_STATES.get(self.state, f"unknown ({self.state})"),
                "rmp_initialized": self.rmp_initialized, "guest_count": self.guest_count,
                "mask_chip_id": self.mask_chip_id, "mask_chip_key": self.mask_chip_key, "vlek_loaded": self.vlek_en,
                "tcb_layout": layout, "current_tcb": reports.Tcb(self.current_tcb, layout).as_dict(),
                "reported_tcb": reports.Tcb(self.reported_tcb, layout).as_dict()}


def parse_snp_status(data: bytes) -> SnpStatus:
    major, minor, state, rmp, build, flags, guests, current, reported = _SNP_STATUS.unpack(data[:_SNP_STATUS.size])
    return SnpStatus(major, minor, state, bool(rmp & 1), build, bool(flags & 1), bool(flags >> 1 & 1),
                     bool(flags >> 2 & 1), guests, current, reported)


@dataclass(frozen=True)
class FirmwareFacts:
    sysroot: str
    product: str | None  # milan | genoa | turin, from /proc/cpuinfo: the TCB layout depends on it
    snp_status: SnpStatus | None
    snp_status_error: str | None  # why SNP_PLATFORM_STATUS could not be read
    psp: dict[str, dict[str, str]]  # PCI device -> {bootloader_version, tee_version} as the ccp driver shows them
    psp_error: str | None
    kvm_amd_sev_snp: str | None  # Y / N, or None without kvm_amd

    @property
    def found(self) -> bool:
        """Whether the host said anything about its firmware's versions."""
        return self.snp_status is not None or any(self.psp.values())

    def as_dict(self) -> dict[str, Any]:
        return {"sysroot": self.sysroot, "product": self.product,
                "snp_firmware": self.snp_status.as_dict(self.product) if self.snp_status else None,
                "snp_firmware_error": self.snp_status_error, "psp": self.psp, "psp_error": self.psp_error,
                "kvm_amd_sev_snp": self.kvm_amd_sev_snp}


def read(sysroot: str | Path = "/") -> FirmwareFacts:
    root = Path(sysroot)
    status, status_error = read_snp_status(root)
    psp, psp_error = read_psp_versions(root)
    snp_switch = _small_text(root / KVM_AMD_SEV_SNP)
    return FirmwareFacts(str(root), _product(root), status, status_error, psp, psp_error,
                         snp_switch.strip() if snp_switch is not None else None)


def read_psp_versions(root: Path) -> tuple[dict[str, dict[str, str]], str | None]:
    """The ccp driver's version files of each PSP device (absent where the platform does not allow reading them)."""
    driver = root / CCP_DRIVER
    try:
        devices = sorted(name for name in os.listdir(driver) if ":" in name)  # PCI addresses; the rest is bind/unbind...
    except FileNotFoundError:
        return {}, f"/{CCP_DRIVER} does not exist (the ccp driver is not loaded)"
    except OSError as exc:
        return {}, f"cannot list /{CCP_DRIVER}: {exc.strerror}"
    found = {}
    for device in devices:
        versions = {name: text.strip() for name in PSP_VERSION_FILES
                    if (text := _small_text(driver / device / name)) is not None}
        found[device] = versions
    if not any(found.values()):
        return found, (f"/{CCP_DRIVER} lists no PSP device" if not found else
                       "the ccp driver shows no bootloader or TEE version (Linux < 6.4, or the platform does not allow it)")
    return found, None


def read_snp_status(root: Path) -> tuple[SnpStatus | None, str | None]:
    """SNP_PLATFORM_STATUS on /dev/sev. Only a character device is asked: a captured host's file is not one."""
    path = root / DEV_SEV
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return None, f"/{DEV_SEV} is not a character device (a captured host cannot answer firmware commands)"
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, f"/{DEV_SEV} does not exist (no SEV firmware, or the ccp driver is not loaded)"
    except PermissionError:
        return None, f"permission denied opening /{DEV_SEV} (run as root)"
    except OSError as exc:
        return None, f"cannot open /{DEV_SEV}: {exc.strerror}"
    try:
        return _ask_snp_status(fd)
    finally:
        os.close(fd)


def _ask_snp_status(fd: int) -> tuple[SnpStatus | None, str | None]:
    import ctypes
    import fcntl

    answer = ctypes.create_string_buffer(_SNP_STATUS.size)
    command = bytearray(_ISSUE_CMD.pack(SNP_PLATFORM_STATUS, ctypes.addressof(answer), 0))
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            fcntl.ioctl(fd, SEV_ISSUE_CMD, command, True)
            outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=ask, name="snpvirt-sev-status", daemon=True)
    worker.start()
    worker.join(IOCTL_DEADLINE_S)
    if worker.is_alive():
        return None, f"SNP_PLATFORM_STATUS on /{DEV_SEV} did not answer within {IOCTL_DEADLINE_S:.0f} s"
    if "error" in outcome:
        firmware_error = _ISSUE_CMD.unpack(bytes(command))[2]
        return None, (f"SNP_PLATFORM_STATUS on /{DEV_SEV} failed: {outcome['error'].strerror}"
                      + (f" (firmware error {firmware_error:#x})" if firmware_error else "")
                      + ("; is SNP initialized (kvm_amd sev_snp=Y)?" if outcome["error"].errno in (errno.EINVAL, errno.ENODEV)
                         else ""))
    return parse_snp_status(answer.raw), None


def _product(root: Path) -> str | None:
    """The EPYC generation from /proc/cpuinfo's cpu family and model (decimal there)."""
    text = _small_text(root / "proc/cpuinfo", CPUINFO_LIMIT) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if not (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family", "").isdigit()
            and fields.get("model", "").isdigit()):
        return None
    return reports.product_of(int(fields["cpu family"]), int(fields["model"]))


def _small_text(path: Path, limit: int = SMALL_FILE) -> str | None:
    """A sysfs/procfs attribute, bounded; None when absent, unreadable, or not a regular file (a FIFO in a
    captured tree would block the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


NODE_SEV_KEYS = {"cbitpos": "cbitpos", "reduced-phys-bits": "reduced_phys_bits", "max-guests": "max_guests",
                 "max-es-guests": "max_es_guests"}


def node_sev_info(params: dict[str, Any]) -> dict[str, Any]:
    """libvirt's nodesevinfo in snake_case, with cpu0-id as the hex chip id a report carries (the PDH and
    certificate chain are legacy SEV's: left out). It holds no firmware version or TCB: libvirt does not ask."""
    import base64
    import binascii

    shown = {ours: params[theirs] for theirs, ours in NODE_SEV_KEYS.items() if theirs in params}
    cpu0 = params.get("cpu0-id")
    if isinstance(cpu0, str):
        try:
            shown["chip_id"] = base64.b64decode(cpu0, validate=True).hex()
        except (binascii.Error, ValueError):
            shown["chip_id"] = cpu0
    return shown
