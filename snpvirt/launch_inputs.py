"""SHA-256 of the files a launch measures (firmware, kernel, initrd), where they are readable here."""

from __future__ import annotations

import functools
import hashlib
import os

from snpvirt.models import FileDigest, VmSpec


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached by size and mtime: a fleet of specs usually shares one firmware file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str) -> FileDigest:
    try:
        st = os.stat(path)
        return FileDigest(_sha256(path, st.st_size, st.st_mtime_ns))
    except FileNotFoundError:
        return FileDigest(None, "not found on this machine")
    except OSError as exc:
        return FileDigest(None, f"not readable here: {exc.strerror}")


def launch_digests(spec: VmSpec) -> dict[str, FileDigest]:
    files = {"firmware": spec.firmware, "kernel": spec.boot.kernel, "initrd": spec.boot.initrd}
    return {kind: file_digest(path) for kind, path in files.items() if path}
