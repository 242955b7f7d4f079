"""The user's cache of image files: `$XDG_CACHE_HOME/snpvirt/images` (or `$SNPVIRT_CACHE_DIR/images`).

  partial/<sha256>   a download in progress, named by the digest the signed SHA256SUMS promises
                     (resumed with an HTTP Range request; deleted when the finished file does not match)
  sha256/<sha256>    a file whose bytes have that SHA-256: moved here only after the check

So a file in `sha256/` is verified by its very name, and the launch measurement can take a kernel or
initrd from here by digest (`verified_path`). The folders are this user's alone (0700, owned by
them, never a symbolic link): anyone else able to write there could choose what snpvirt uploads.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from snpvirt.errors import SnpvirtError

_HEX = re.compile(r"[0-9a-f]{64}")


class UnsafeCacheError(SnpvirtError):
    """The cache folder could be written by someone else (exit 1)."""


def default_root() -> Path:
    base = os.environ.get("SNPVIRT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "snpvirt")
    return Path(base) / "images"


class Cache:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def folder(self, name: str) -> Path:
        """`partial` or `sha256` under the root, created 0700 and checked to be this user's alone."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.root / name):
            _private_dir(path)
        return self.root / name

    def partial(self, sha256: str) -> Path:
        return self.folder("partial") / _checked(sha256)

    def verified(self, sha256: str) -> Path:
        return self.folder("sha256") / _checked(sha256)

    def verified_path(self, sha256: str) -> Path | None:
        """The cached file whose SHA-256 is `sha256` (it got its name only after that check), or None."""
        path = self.verified(sha256.lower())
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return path


def verified_path(sha256: str) -> Path | None:
    """The verified cache copy of a file by its SHA-256 (e.g. a kernel whose volume the spec names), or None."""
    return Cache().verified_path(sha256)


def _checked(sha256: str) -> str:
    if not _HEX.fullmatch(sha256):
        raise ValueError(f"not a lowercase SHA-256: {sha256!r}")
    return sha256


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeCacheError(f"cannot create the image cache folder {path}: {exc.strerror}",
                               "point SNPVIRT_CACHE_DIR (or XDG_CACHE_HOME) at a writable folder") from None
    st = os.lstat(path)
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "it is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"it is owned by uid {st.st_uid}, not by uid {os.geteuid()}"
    elif st.st_mode & 0o077:
        problem = f"others can use it (mode {stat.S_IMODE(st.st_mode):04o}, not 0700)"
    if problem:
        raise UnsafeCacheError(f"image cache folder {path} is not safe to use: {problem}",
                               f"remove {path} (snpvirt recreates it with mode 0700) or point SNPVIRT_CACHE_DIR "
                               "at another folder")
