"""One `fleet apply` of a fleet at a time on this machine: an advisory lock per fleet name.

Two runs that observe the hosts at slightly different moments can place the same new domain on two
different hosts; the lock keeps the second one out (exit 5) instead. It guards this machine only: run a
fleet's applies from one place (a CI job, one operator host)."""

from __future__ import annotations

import fcntl
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from snpvirt.errors import ConflictError, SnpvirtError


def lock_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "snpvirt" if runtime else Path(f"/tmp/snpvirt-{os.getuid()}")


@contextmanager
def fleet_lock(fleet: str) -> Iterator[None]:
    folder = lock_dir()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise SnpvirtError(f"{folder} is not a folder of this user's", "remove it, or set XDG_RUNTIME_DIR")
        fd = os.open(folder / f"fleet-{fleet}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SnpvirtError(f"cannot take the lock of fleet {fleet} in {folder}: {exc.strerror}",
                           "set XDG_RUNTIME_DIR to a folder of your own") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise ConflictError(f"another fleet apply of fleet {fleet} is running on this machine (pid {holder})",
                                "wait for it to finish, then run again: it will find its work done") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
