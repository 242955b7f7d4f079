"""Which of a spec's host paths (firmware, kernel, initrd, disks) do not exist on this machine.

Rendering for another host is legitimate, so a missing path is a warning, never an error; but a typo in
a path should not go unnoticed until the guest fails to start, and a missing launch file means the
expected measurement cannot be computed here.
"""

from __future__ import annotations

import os

from snpvirt.models import Finding, VmSpec

RULE_ID = "path.not_found"
ELSEWHERE = "fine when the domain is for another host"


def missing_paths(spec: VmSpec) -> tuple[Finding, ...]:
    """One warning per path that does not exist here (a path that cannot be checked, e.g. no permission, is
    not reported: it may well exist)."""
    measured = "; the expected measurement is recorded as unknown"
    hashed = measured if spec.snp.kernel_hashes else ""
    paths = [("firmware", spec.firmware, measured, "record the measurement there: snpvirt measure SPEC --record NAME"),
             ("boot.kernel", spec.boot.kernel, hashed, "record the measurement there: snpvirt measure SPEC --record NAME"),
             ("boot.initrd", spec.boot.initrd, hashed, "record the measurement there: snpvirt measure SPEC --record NAME")]
    paths += [(f"disks.{i}.path", disk.path, "", "create it there, e.g. qemu-img create -f qcow2 PATH 20G")
              for i, disk in enumerate(spec.disks) if disk.path]  # a pool volume is the host's to find
    return tuple(Finding(RULE_ID, "warning", f"{key} {path} does not exist on this machine{consequence}",
                         f"{ELSEWHERE} ({then}); otherwise correct the path")
                 for key, path, consequence, then in paths if path and _absent(path))


def _absent(path: str) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # e.g. permission denied on a folder: it may exist, and libvirt runs as another user
    return False
