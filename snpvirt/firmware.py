"""QEMU firmware descriptors (docs/interop/firmware.json): which installed firmware can boot SEV-SNP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from snpvirt import fileio

# /etc overrides a same-named descriptor in /usr/share (QEMU's firmware.json search rules).
DESCRIPTOR_DIRS = ("usr/share/qemu/firmware", "etc/qemu/firmware")


@dataclass(frozen=True)
class Descriptor:
    path: str  # as on the host, e.g. /usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json
    features: frozenset[str] = frozenset()
    device: str | None = None  # "memory" | "flash" | ...
    mode: str | None = None  # flash mode: "split" (default), "combined", "stateless"
    executable: str | None = None
    nvram_template: str | None = None
    error: str | None = None  # why the file could not be used

    @property
    def offers_snp(self) -> bool:
        return "amd-sev-snp" in self.features

    @property
    def snp_mapping_ok(self) -> bool:
        """SNP firmware is measured as a ROM: memory mapping, or flash in stateless mode."""
        return self.device == "memory" or (self.device == "flash" and self.mode == "stateless")


def parse_descriptor(text: str, path: str) -> Descriptor:
    try:
        doc = json.loads(text)
        mapping = doc.get("mapping", {})
        device = mapping.get("device")
        executable = (mapping.get("executable") or {}).get("filename") if device == "flash" else mapping.get("filename")
        return Descriptor(
            path=path,
            features=frozenset(doc.get("features", [])),
            device=device,
            mode=mapping.get("mode", "split") if device == "flash" else None,
            executable=executable,
            nvram_template=(mapping.get("nvram-template") or {}).get("filename"),
        )
    except (ValueError, AttributeError, TypeError) as exc:
        return Descriptor(path=path, error=f"not a valid firmware descriptor: {exc}")


def read_descriptors(sysroot: Path) -> list[Descriptor]:
    """Every descriptor below sysroot, by file name, /etc winning over /usr/share; sorted as QEMU does."""
    chosen: dict[str, Path] = {}
    for directory in DESCRIPTOR_DIRS:
        folder = sysroot / directory
        if folder.is_dir():
            for path in folder.glob("*.json"):
                chosen[path.name] = path
    found = []
    for name in sorted(chosen):
        path = chosen[name]
        host_path = "/" + str(path.relative_to(sysroot))
        try:
            found.append(parse_descriptor(fileio.read_text(path, "host", host_path), host_path))
        except fileio.InputFileError as err:
            found.append(Descriptor(path=host_path, error=f"unreadable: {err.reason}"))
    return found
