"""QEMU firmware descriptors (docs/interop/firmware.json): which installed firmware can boot SEV-SNP."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from snpvirt import fileio
from snpvirt.errors import BadInputError
from snpvirt.models import Finding

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
        device = _text(mapping.get("device"), "mapping.device")
        executable = (mapping.get("executable") or {}).get("filename") if device == "flash" else mapping.get("filename")
        features = doc.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise TypeError("features is not a list of names")
        return Descriptor(
            path=path,
            features=frozenset(features),
            device=device,
            mode=_text(mapping.get("mode", "split"), "mapping.mode") if device == "flash" else None,
            executable=_text(executable, "the firmware file name"),
            nvram_template=_text((mapping.get("nvram-template") or {}).get("filename"), "the NVRAM template name"),
        )
    except (ValueError, AttributeError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        return Descriptor(path=path, error=f"not a valid firmware descriptor: {exc}")


def _text(value, what: str) -> str | None:
    """A field that must be a string: a descriptor is JSON, so any shape can arrive where a path should."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} is not a string")
    return value


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


# --- is this firmware file an SEV-SNP build? (import) ----------------------------------------------

# OVMF's AmdSev build as distributions install it (Fedora: /usr/share/edk2/ovmf/OVMF.amdsev.fd, Debian
# and Ubuntu: /usr/share/ovmf/OVMF.amdsev.fd): recognised by name where no descriptor names the file,
# e.g. for a domain imported for another host.
SNP_BUILD_NAME_PART = "amdsev"
EXAMPLE_SNP_BUILD = "/usr/share/edk2/ovmf/OVMF.amdsev.fd"


@dataclass(frozen=True)
class SnpVerdict:
    snp: bool | None  # True: an SEV-SNP build; False: a descriptor says it is not one; None: unknown here
    reason: str
    by_descriptor: bool = False


@dataclass(frozen=True)
class InstalledFirmware:
    """What a host's files say about firmware: its descriptors and, with `root`, which files exist.

    `root` is where host paths are found (/, or a captured host's sysroot); None when this machine's
    files are not the target host's (a remote URI): then only descriptors and names can speak."""

    descriptors: tuple[Descriptor, ...] = ()
    root: Path | None = None

    @classmethod
    def read(cls, sysroot: Path, files_here: bool = True) -> InstalledFirmware:
        return cls(tuple(read_descriptors(sysroot)), sysroot if files_here else None)

    def verdict(self, path: str) -> SnpVerdict:
        """Descriptors first (they say what the file is built for), then the AmdSev build's name."""
        wanted = os.path.normpath(path)
        naming = [d for d in self.descriptors if d.error is None and d.executable
                  and os.path.normpath(d.executable) == wanted]
        snp = next((d for d in naming if d.offers_snp), None)
        if snp is not None:
            return SnpVerdict(True, f"descriptor {snp.path} offers amd-sev-snp", by_descriptor=True)
        if naming:
            return SnpVerdict(False, f"its descriptor {naming[0].path} does not offer amd-sev-snp", by_descriptor=True)
        if SNP_BUILD_NAME_PART in os.path.basename(wanted).lower():
            return SnpVerdict(True, "named as OVMF's AmdSev build")
        return SnpVerdict(None, "no firmware descriptor here names it, nor is it named as OVMF's AmdSev build")

    def example(self) -> str:
        """An SEV-SNP build to suggest: one a descriptor here offers, else the usual path."""
        return next((d.executable for d in self.descriptors if d.offers_snp and d.executable), EXAMPLE_SNP_BUILD)

    def file_kind(self, path: str) -> str | None:
        """None for a regular file below `root`; else why it is not one. A stat, never a read: nothing to hang on."""
        try:
            mode = os.stat(self.root / path.lstrip("/")).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return "does not exist on this machine"
        except OSError as exc:
            return f"cannot be checked here: {exc.strerror}"
        return None if stat.S_ISREG(mode) else "is not a regular file"

    def check_option(self, path: str) -> list[Finding]:
        """`import --firmware PATH`: an absolute path to an SEV-SNP build that exists (or that a descriptor
        names). Bad input raises; what cannot be checked here comes back as warnings."""
        hint = f"give the SEV-SNP firmware's absolute path on the host, e.g. --firmware {self.example()}"
        if not path.startswith("/"):
            raise BadInputError(f"--firmware {path} must be an absolute path", hint)
        verdict = self.verdict(path)
        if verdict.snp is False:
            raise BadInputError(f"--firmware {path} is not an SEV-SNP build: {verdict.reason}",
                                f"give an OVMF AmdSev build, e.g. --firmware {self.example()}")
        warnings = []
        if not verdict.by_descriptor:
            if self.root is None:
                warnings.append(Finding("firmware.unchecked", "warning", f"--firmware {path} cannot be checked here "
                                        "(the domain is for another host)", "make sure the file exists on that host"))
            else:
                problem = self.file_kind(path)
                if problem is not None:
                    raise BadInputError(f"--firmware {path} {problem}", hint)
        if verdict.snp is None:
            warnings.append(Finding("firmware.unknown_build", "warning", f"--firmware {path}: {verdict.reason}; "
                                    "snpvirt takes it as the SEV-SNP build you named",
                                    "make sure it is an OVMF AmdSev build: another build does not launch"))
        return warnings
