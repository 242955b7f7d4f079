"""Inside an SEV-SNP guest: can it get reports, and get one (configfs-tsm, or the sev-guest ioctl).

configfs-tsm (Linux >= 6.7, Documentation/ABI/testing/configfs-tsm): mkdir an entry under
/sys/kernel/config/tsm/report, write 64 bytes to inblob, read outblob (and auxblob, the
certificates), rmdir the entry. Older kernels: SNP_GET_REPORT on /dev/sev-guest (linux/sev-guest.h).
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from snpvirt import fileio
from snpvirt.errors import BadInputError, SnpvirtError
from snpvirt.models import CheckResult
from snpvirt.report import REPORT_SIZE

TSM_DIR = "sys/kernel/config/tsm/report"
SEV_GUEST = "dev/sev-guest"
# Certificate table GUIDs of an extended report (GHCB spec 56421), as they name the files written.
CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek.der",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek.der",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask.der",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark.der",
}


def _result(check_id: str, ok: bool, message: str, hint: str = "", **facts) -> CheckResult:
    return CheckResult(check_id, "pass" if ok else "fail", message, "" if ok else hint, facts)


def check(sysroot: str | Path = "/") -> list[CheckResult]:
    root = Path(sysroot)
    try:
        cpuinfo = fileio.read_text(root / "proc/cpuinfo", "host", errors="replace")
    except fileio.InputFileError:
        cpuinfo = ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    tsm, device = root / TSM_DIR, root / SEV_GUEST
    module = (root / "sys/module/sev_guest").is_dir()
    results = [
        _result("guest.sev_snp", "sev_snp" in flags, "CPU flag sev_snp " + ("present: this is an SEV-SNP guest"
                if "sev_snp" in flags else "absent: not an SEV-SNP guest (or its kernel lacks SNP guest support)"),
                "launch the VM with <launchSecurity type='sev-snp'> and a kernel with SNP guest support "
                "(Ubuntu: apt install linux-generic)", flags=[f for f in flags if f.startswith("sev")]),
        _result("guest.module", module, "sev-guest module " + ("loaded" if module else "not loaded"), "modprobe sev-guest"),
        _result("guest.configfs_tsm", tsm.is_dir(), f"/{TSM_DIR} " + ("present" if tsm.is_dir() else "absent"),
                "mount configfs (mount -t configfs none /sys/kernel/config) on a kernel >= 6.7 with CONFIG_TSM_REPORTS; "
                "modprobe sev-guest"),
        _result("guest.sev_guest_device", device.exists(), f"/{SEV_GUEST} " + ("present" if device.exists() else "absent"),
                "modprobe sev-guest (Ubuntu: apt install linux-generic for the module)"),
    ]
    usable = tsm.is_dir() or device.exists()
    results.append(_result("guest.report_interface", usable, "reports can be requested through " +
                           ("configfs-tsm" if tsm.is_dir() else "/dev/sev-guest" if device.exists() else "nothing"),
                           "modprobe sev-guest; on kernels >= 6.7 also mount configfs"))
    return results


@dataclass(frozen=True)
class GuestReport:
    report: bytes
    certificates: dict[str, bytes]  # file name -> DER, from the extended report's certificate table
    interface: str


def parse_cert_table(aux: bytes) -> dict[str, bytes]:
    """The extended report's certificate table: (GUID in RFC 4122 byte order, as libuuid stores it;
    offset; length) entries, ended by a zero GUID."""
    certs: dict[str, bytes] = {}
    for index in range(0, len(aux) - 23, 24):
        guid, offset, length = aux[index:index + 16], *struct.unpack_from("<II", aux, index + 16)
        if guid == bytes(16):
            break
        name = CERT_GUIDS.get(uuid.UUID(bytes=guid), f"cert-{uuid.UUID(bytes=guid)}.der")
        if offset + length > len(aux):
            raise SnpvirtError("the certificate table points past its data", "the host supplied a malformed table")
        certs[name] = aux[offset:offset + length]
    return certs


def report_via_tsm(report_data: bytes, vmpl: int | None, sysroot: str | Path = "/", attempts: int = 3) -> GuestReport:
    base = Path(sysroot) / TSM_DIR
    entry = base / f"snpvirt-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    entry.mkdir()
    try:
        provider = (entry / "provider").read_text().strip() if (entry / "provider").exists() else "sev_guest"
        if provider not in ("sev_guest", "sev-guest"):
            raise SnpvirtError(f"the TSM provider is {provider}, not sev_guest", "this is not an SEV-SNP guest")
        for _ in range(attempts):
            if vmpl is not None:
                (entry / "privlevel").write_text(str(vmpl))
            (entry / "inblob").write_bytes(report_data)
            _await(entry / "outblob")
            generation = _read_int(entry / "generation")
            report = (entry / "outblob").read_bytes()
            aux = (entry / "auxblob").read_bytes() if (entry / "auxblob").exists() else b""
            # A write by another process between ours and the read bumps the generation: retry then.
            if _read_int(entry / "generation") == generation:
                break
        else:
            raise SnpvirtError("the report entry kept changing under us", "another process uses the same entry; retry")
    finally:
        _remove_entry(entry)
    if len(report) < REPORT_SIZE:
        raise SnpvirtError(f"the kernel returned {len(report)} bytes, not a {REPORT_SIZE}-byte report",
                           "check dmesg for sev-guest errors")
    return GuestReport(report[:REPORT_SIZE], parse_cert_table(aux) if aux else {}, "configfs-tsm")


def _await(path: Path, timeout_s: float = 5.0) -> None:
    """configfs creates outblob with the entry (reading it blocks until the report is made); other
    implementations of the interface (and test trees) may create it a moment later."""
    import time

    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SnpvirtError(f"{path} did not appear", "is this a configfs-tsm report entry? see snpvirt guest check")
        time.sleep(0.005)


def _remove_entry(entry: Path) -> None:
    """configfs removes an entry with rmdir; a plain directory (tests, captures) needs its files removed first."""
    try:
        entry.rmdir()
    except OSError:
        for child in entry.iterdir():
            child.unlink()
        entry.rmdir()


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# --- /dev/sev-guest SNP_GET_REPORT (linux/sev-guest.h) ------------------------------------------
SNP_REPORT_REQ = struct.Struct("<64sI28x")  # user_data, vmpl, reserved
SNP_GUEST_REQUEST = struct.Struct("<B7xQQQ")  # msg_version, req_data, resp_data, exitinfo2 (fw/vmm error)
SNP_REPORT_RESP_SIZE = 4000
SNP_GET_REPORT = (3 << 30) | (SNP_GUEST_REQUEST.size << 16) | (ord("S") << 8) | 0x0  # _IOWR('S', 0x0, ...)


def report_request(report_data: bytes, vmpl: int) -> bytes:
    if len(report_data) > 64:
        raise BadInputError("report data is at most 64 bytes", "give a shorter nonce")
    return SNP_REPORT_REQ.pack(report_data.ljust(64, b"\0"), vmpl)


def parse_report_response(response: bytes) -> bytes:
    """MSG_REPORT_RSP: status, report size, 24 reserved bytes, then the report."""
    status, size = struct.unpack_from("<II", response, 0)
    if status != 0:
        raise SnpvirtError(f"the firmware refused the report request (status {status:#x})",
                           "status 0x16 means an invalid VMPL; check --vmpl")
    if size != REPORT_SIZE or len(response) < 32 + size:
        raise SnpvirtError(f"the firmware returned a {size}-byte report", "expected 1184 bytes")
    return response[32:32 + size]


def report_via_ioctl(report_data: bytes, vmpl: int, sysroot: str | Path = "/") -> GuestReport:
    import ctypes
    import fcntl

    request = ctypes.create_string_buffer(report_request(report_data, vmpl))
    response = ctypes.create_string_buffer(SNP_REPORT_RESP_SIZE)
    ioctl_arg = bytearray(SNP_GUEST_REQUEST.pack(1, ctypes.addressof(request), ctypes.addressof(response), 0))
    with open(Path(sysroot) / SEV_GUEST, "rb+", buffering=0) as device:
        try:
            fcntl.ioctl(device, SNP_GET_REPORT, ioctl_arg)
        except OSError as exc:
            errors = SNP_GUEST_REQUEST.unpack(bytes(ioctl_arg))[3]
            raise SnpvirtError(f"SNP_GET_REPORT failed: {exc.strerror} (fw/vmm error {errors:#x})",
                               "check dmesg for sev-guest errors") from None
    return GuestReport(parse_report_response(response.raw), {}, "/dev/sev-guest")


def get_report(report_data: bytes, vmpl: int | None, sysroot: str | Path = "/") -> GuestReport:
    root = Path(sysroot)
    if (root / TSM_DIR).is_dir():
        return report_via_tsm(report_data, vmpl, root)
    if (root / SEV_GUEST).exists():
        return report_via_ioctl(report_data, vmpl or 0, root)
    raise SnpvirtError("no report interface: neither configfs-tsm nor /dev/sev-guest",
                       "modprobe sev-guest (and mount configfs on kernels >= 6.7); see snpvirt guest check")
