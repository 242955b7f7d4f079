"""Fake sysroots that describe SEV-SNP hosts this machine is not, built from real captured values."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from tests.conftest import GENOA_DOMCAPS, vector

CPUID_SAMPLES = "host/cpuid-8000001f-samples.json"
AMDSEV_OVMF = "measurement/ovmf/ovmf_AmdSev_suffix.bin"
SNP_DESCRIPTOR = "libvirt/firmware/60-edk2-ovmf-x64-amdsev.json"


def cpuid_sample(prefix: str) -> tuple[int, int, int, int]:
    samples = json.loads(vector(CPUID_SAMPLES).read_text())["samples"]
    regs = next(s["regs"] for s in samples if s["name"].startswith(prefix))
    return regs["eax"], regs["ebx"], regs["ecx"], regs["edx"]


MILAN = "AMD EPYC 7713P"
RYZEN = "AMD Ryzen 9 5950X"


class FakeHost:
    """A host's files below `root`: write() what differs, remove() what is missing."""

    def __init__(self, root: Path, cpu: str = MILAN, model_name: str = "AMD EPYC 7713P 64-Core Processor") -> None:
        self.root = root
        self.set_cpuid(cpuid_sample(cpu))
        self.write("proc/cpuinfo", f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: {model_name}\n"
                                   "flags\t\t: fpu sme sev sev_es sev_snp\n")
        self.write("dev/kvm", "")
        self.write("dev/sev", "", mode=0o660)
        for name in ("sev", "sev_es", "sev_snp"):
            self.write(f"sys/module/kvm_amd/parameters/{name}", "Y\n")
        self.write("sys/module/kvm_amd/parameters/debug_swap", "N\n")
        self.write("proc/sys/kernel/osrelease", "6.12.0-snp-amd64\n")
        self.write("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n")
        (root / "sys/class/iommu/ivhd0").mkdir(parents=True)
        self.write("sys/devices/system/cpu/smt/active", "1\n")
        descriptor = json.loads(vector(SNP_DESCRIPTOR).read_text())
        self.write("usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json", json.dumps(descriptor))
        self.firmware = descriptor["mapping"]["executable"]["filename"]
        self.write(self.firmware, vector(AMDSEV_OVMF).read_bytes())
        self.write("etc/passwd", "root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:64055:106::/var/lib/libvirt:/usr/sbin/nologin\n")
        self.write("etc/group", "root:x:0:\nkvm:x:106:libvirt-qemu\n")
        os.chown(root / "dev/sev", 0, 106)

    def write(self, relative: str, content: str | bytes, mode: int | None = None) -> Path:
        path = self.root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            path.chmod(mode)
        return path

    def remove(self, relative: str) -> None:
        path = self.root / relative.lstrip("/")
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    def set_cpuid(self, regs: tuple[int, int, int, int], vendor: str = "AuthenticAMD") -> None:
        """The cpuid device as a sparse file: 16 bytes at offset = leaf, as the kernel's pread returns."""
        path = self.root / "dev/cpu/0/cpuid"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            b, d, c = struct.unpack("<3I", vendor.encode())
            handle.write(struct.pack("<4I", 0x10, b, c, d))
            handle.seek(0x8000001F)
            handle.write(struct.pack("<4I", *regs))


SEV_ONLY_DESCRIPTOR = "libvirt/firmware/45-ovmf-sev-stateless.json"  # names /usr/share/OVMF/OVMF.sev.fd
SNP_FIRMWARE = "/usr/share/edk2/ovmf/OVMF.amdsev.fd"  # what SNP_DESCRIPTOR names


def installed_firmware(root: Path):
    """A host's firmware as import judges it: the captured SNP descriptor and the file it names, and a
    captured SEV-only descriptor (no amd-sev-snp). Not this machine's /usr/share/qemu/firmware."""
    from snpvirt.firmware import InstalledFirmware

    for relative in (SNP_DESCRIPTOR, SEV_ONLY_DESCRIPTOR):
        target = root / "usr/share/qemu/firmware" / Path(relative).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(vector(relative).read_bytes())
    firmware = root / SNP_FIRMWARE.lstrip("/")
    firmware.parent.mkdir(parents=True, exist_ok=True)
    firmware.write_bytes(vector(AMDSEV_OVMF).read_bytes())
    return InstalledFirmware.read(root)


def captured_descriptors():
    """The captured descriptors alone, for a host whose files are not here (a remote URI)."""
    from snpvirt.firmware import InstalledFirmware, parse_descriptor

    return InstalledFirmware(tuple(parse_descriptor(vector(relative).read_text(), "/usr/share/qemu/firmware/"
                                                    + Path(relative).name)
                                   for relative in (SNP_DESCRIPTOR, SEV_ONLY_DESCRIPTOR)), None)


def genoa_domcaps() -> Path:
    return vector(GENOA_DOMCAPS)


def edited_domcaps(tmp_path: Path, name: str, *replacements: tuple[str, str]) -> Path:
    """A real domcaps document with a few values changed (e.g. the host model, cbitpos)."""
    text = genoa_domcaps().read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path
