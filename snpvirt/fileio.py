"""Bounded reads of input files, and the one atomic writer of output files (DESIGN.md "Everything bounded").

Reading: every file snpvirt takes as input is opened without blocking (a FIFO cannot stall the open),
checked on the open descriptor to be a regular file (not /dev/zero, a FIFO or a directory), and read
up to a size limit for its kind, so no input can hang snpvirt or exhaust its memory.

Writing: a file is replaced by a temporary file in the same folder, renamed over it; devices, FIFOs and
folders are refused, and a symbolic link is either refused or followed to its regular target. A
folder of several files is written all or nothing.

Vocabulary level: imports nothing of snpvirt but errors.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from snpvirt.errors import BadInputError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# The largest input accepted per kind of file. Each is far above real files, far below what would
# take snpvirt minutes or its memory (firmware is read whole; kernel and initrd are only streamed
# through SHA-256).
LIMITS: dict[str, int] = {
    # OVMF AmdSev builds are 2-4 MiB (4 MiB flash layouts), and QEMU maps x86 firmware into a window
    # just below 4 GiB that is a few MiB; 64 MiB is 16x the biggest build, and is read into memory.
    "firmware": 64 * MiB,
    # bzImage kernels are 8-20 MiB, unified kernel images with an embedded initrd up to ~200 MiB.
    "kernel": 512 * MiB,
    # Distribution initrds are 30-300 MiB; QEMU's x86 loader places the initrd below 4 GiB and kernels
    # advertise initrd_addr_max 2 GiB, so a bigger one could not boot anyway.
    "initrd": 2 * GiB,
    # Text and small binary inputs: spec TOML and domain XML are a few KiB, domcapabilities ~10 KiB,
    # PEM keys and certificate bundles ~1-5 KiB, a report 1184 bytes (2368 as hex).
    "spec": 1 * MiB,
    "xml": 16 * MiB,  # libvirt's own RPC message limit is 32 MiB; domain XML is a few KiB
    "domcaps": 4 * MiB,
    "plan": 64 * MiB,  # a fleet plan (fleet plan -o): about 300 bytes a domain, plus the diffs of updates
    "key": 64 * KiB,
    # cloud-init user-data: a #cloud-config or script of a few KiB; the seed is built in memory.
    "user_data": 1 * MiB,
    "certificate": 1 * MiB,
    "report": 64 * KiB,
    "nonce": 4 * KiB,
    "host": 16 * MiB,  # host facts under /proc, /sys, /etc: /proc/cpuinfo of a 512-CPU host is ~1 MiB
    # Cloud images (qcow2) are 0.5-1 GiB; they are only streamed (hashed, uploaded), never held in memory.
    "image": 64 * GiB,
    "log": 1 << 62,  # QEMU's log grows without bound: only its tail is ever read (read_tail)
}

# How a kind of file is named in messages, where its key is not already the word.
NAMES = {"xml": "domain XML", "domcaps": "domain capabilities", "host": "host", "user_data": "cloud-init user-data"}

_OPEN_INPUT = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
_BLOCK = 1 * MiB


class InputFileError(BadInputError):
    """An input file that cannot be used. `present` is False when it is absent or not readable here
    (a remote host's path may be fine there), True when it exists but is never usable (a device,
    a FIFO, a folder, too large)."""

    def __init__(self, message: str, hint: str, present: bool, reason: str) -> None:
        super().__init__(message, hint)
        self.present = present
        self.reason = reason  # the message without the "what path:" prefix


def _size_text(size: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def file_type(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _input_error(kind: str, path: str | os.PathLike, what: str | None, reason: str, present: bool,
                 hint: str | None = None) -> InputFileError:
    name = NAMES.get(kind, kind)
    return InputFileError(f"{what or name} {os.fspath(path)}: {reason}", hint or f"give the path of a regular {name} file",
                          present, reason)


@contextmanager
def open_input(path: str | os.PathLike, kind: str, what: str | None = None) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """Open an input file for reading: (file, its fstat). Raises InputFileError naming `what` (or the kind)."""
    limit = LIMITS[kind]
    try:
        fd = os.open(path, _OPEN_INPUT)
    except FileNotFoundError:
        raise _input_error(kind, path, what, "does not exist", False, "check the path") from None
    except PermissionError:
        raise _input_error(kind, path, what, "permission denied", False, "check the permissions, or run as root") from None
    except IsADirectoryError:
        raise _input_error(kind, path, what, "is a directory, not a regular file", True) from None
    except OSError as exc:
        raise _input_error(kind, path, what, f"cannot open: {exc.strerror}", False, "check the path and permissions") from None
    try:
        st = os.fstat(fd)  # the open descriptor: the file checked is the file read
        if not stat.S_ISREG(st.st_mode):  # checked before fdopen, which refuses a directory with its own error
            raise _input_error(kind, path, what, f"is {file_type(st.st_mode)}, not a regular file", True)
        if st.st_size > limit:
            raise _too_large(kind, path, what, f"{st.st_size} bytes")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle, st


def _too_large(kind: str, path: str | os.PathLike, what: str | None, size: str) -> InputFileError:
    name = NAMES.get(kind, kind)
    return _input_error(kind, path, what, f"{size} is more than the {_size_text(LIMITS[kind])} a {name} file may have",
                        True, f"check that this is the right {name} file")


def _read_error(kind: str, path: str | os.PathLike, what: str | None, exc: OSError) -> InputFileError:
    return _input_error(kind, path, what, f"cannot read: {exc.strerror}", True, "check the file")


def read_input(path: str | os.PathLike, kind: str, what: str | None = None) -> bytes:
    """The whole file, at most LIMITS[kind] bytes, even when it grows while being read."""
    limit = LIMITS[kind]
    with open_input(path, kind, what) as (handle, _):
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise _read_error(kind, path, what, exc) from None
    if len(data) > limit:
        raise _too_large(kind, path, what, "more bytes")
    return data


def read_text(path: str | os.PathLike, kind: str, what: str | None = None, errors: str = "strict") -> str:
    """read_input decoded as UTF-8; a file that is not UTF-8 is an InputFileError (with errors='strict')."""
    data = read_input(path, kind, what)
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise _input_error(kind, path, what, f"is not UTF-8 text (byte {exc.start})", True,
                           f"save the {NAMES.get(kind, kind)} file as UTF-8") from None


def read_tail(path: str | os.PathLike, kind: str, size: int) -> bytes:
    """The last `size` bytes of a file that may be any length (a log): only they are read."""
    with open_input(path, kind) as (handle, st):
        try:
            handle.seek(max(0, st.st_size - size))
            return handle.read(size)
        except OSError as exc:
            raise _read_error(kind, path, None, exc) from None


def sha256_input(path: str | os.PathLike, kind: str, what: str | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file streamed in blocks: big files are never held in memory."""
    limit = LIMITS[kind]
    digest, size = hashlib.sha256(), 0
    with open_input(path, kind, what) as (handle, _):
        try:
            while block := handle.read(min(_BLOCK, limit + 1 - size)):
                digest.update(block)
                size += len(block)
                if size > limit:
                    raise _too_large(kind, path, what, "more bytes")
        except OSError as exc:
            raise _read_error(kind, path, what, exc) from None
    return digest.hexdigest(), size


# --- writing -----------------------------------------------------------------------------------


def _refuse(path: str | os.PathLike, what: str, reason: str, hint: str) -> BadInputError:
    return BadInputError(f"{what} {os.fspath(path)}: {reason}", hint)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _refuse_untrusted_links(link: Path, what: str) -> None:
    """Refuse to follow a link someone else planted in a shared folder like /tmp: the kernel's
    fs.protected_symlinks rule, applied whatever the sysctl says (it is off on many hosts, and realpath
    reads links without the kernel's check). Otherwise root writing -o /tmp/vm.xml would overwrite
    whatever file another user's link there points at, e.g. /etc/shadow. Every link of the chain is checked."""
    for _ in range(41):  # the kernel follows 40 links in a row (MAXSYMLINKS): 40 followed, one more finds the end
        st = _lstat(link)
        if st is None or not stat.S_ISLNK(st.st_mode):  # the end of the chain (missing: output_target says so)
            return
        folder = os.stat(link.parent)
        shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
        if shared and st.st_uid not in (os.geteuid(), folder.st_uid):
            raise _refuse(link, what, f"is a symbolic link owned by another user (uid {st.st_uid}) in the shared "
                          f"folder {link.parent}; snpvirt does not follow it",
                          "give the real path of the file, or remove the link")
        link = link.parent / os.readlink(link)  # the kernel resolves the rest of the path as written
    raise OSError(40, "Too many levels of symbolic links")


def output_target(path: str | os.PathLike, *, what: str = "-o", hint: str = "give the path of a regular file",
                  follow_symlink: bool = False) -> tuple[Path, os.stat_result | None]:
    """Where writing `path` will go, and its current lstat (None when absent); BadInputError for a
    device, FIFO, socket or directory, and for a symbolic link unless `follow_symlink` (then for a link
    whose final target is missing or not a regular file). Call it before any work, to fail early."""
    target = Path(path)
    try:
        st = _lstat(target)
        if st is not None and stat.S_ISLNK(st.st_mode):
            if not follow_symlink:
                raise _refuse(path, what, "is a symbolic link; snpvirt does not write through links",
                              "give the real path of the file, or remove the link")
            _refuse_untrusted_links(target, what)
            target = Path(os.path.realpath(target))
            st = _lstat(target)
            if st is None:
                raise _refuse(path, what, f"is a symbolic link to {target}, which does not exist",
                              "give the real path of the file, or create the target first")
        if st is not None and not stat.S_ISREG(st.st_mode):
            shown = f"{path} -> {target}" if target != Path(path) else path
            raise _refuse(shown, what, f"is {file_type(st.st_mode)}; snpvirt writes only regular files", hint)
        if st is None and not target.parent.is_dir():
            raise _refuse(path, what, f"the folder {target.parent} does not exist", "create the folder first")
    except OSError as exc:
        raise _refuse(path, what, f"cannot check: {exc.strerror}", hint) from None
    return target, st


def _same_content(target: Path, st: os.stat_result | None, data: bytes) -> bool:
    """Bytes compared: an existing file in any encoding is just different, never an error."""
    if st is None or st.st_size != len(data):
        return False
    try:
        fd = os.open(target, _OPEN_INPUT | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        return stat.S_ISREG(os.fstat(fd).st_mode) and handle.read(len(data) + 1) == data


def _umask() -> int:
    mask = os.umask(0o077)  # there is no way to read the umask without setting it
    os.umask(mask)
    return mask


def _new_file_mode() -> int:
    """0666 less the umask, what open(2) would give a new file (mkstemp's own files are 0600)."""
    return 0o666 & ~_umask()


def _write_temporary(folder: Path, name: str, data: bytes, mode: int, owner: tuple[int, int] | None) -> Path:
    """A new file beside the target (so the rename is atomic), complete and synced to disk."""
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)  # O_EXCL, unguessable
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(handle.fileno(), *owner)  # root replacing a user's file leaves it theirs
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(temporary)
        raise
    return Path(temporary)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; a folder that cannot be opened is only a weaker guarantee."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike, data: bytes, *, what: str = "-o", hint: str = "give the path of a regular file",
               follow_symlink: bool = False) -> bool:
    """Replace `path` atomically with `data`: readers see the old or the new file, never a part.
    Returns False (and writes nothing) when the file already holds exactly `data`."""
    target, st = output_target(path, what=what, hint=hint, follow_symlink=follow_symlink)
    if _same_content(target, st, data):
        return False
    mode = stat.S_IMODE(st.st_mode) if st is not None else _new_file_mode()
    owner = (st.st_uid, st.st_gid) if st is not None else None
    try:
        temporary = _write_temporary(target.parent, target.name, data, mode, owner)
        try:
            os.replace(temporary, target)  # replaces a name, never writes through what it points at
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise _refuse(path, what, f"cannot write: {exc.strerror}", "choose a writable location") from None
    _sync_folder(target.parent)
    return True


def output_folder(path: str | os.PathLike, *, what: str) -> os.stat_result | None:
    """Check a folder output before any work: absent (its parent must exist) or a real directory."""
    folder = Path(path)
    try:
        st = _lstat(folder)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise _refuse(path, what, f"is {file_type(st.st_mode)}, not a folder",
                          "give the path of a folder (it is created when absent)")
        if st is None and not folder.absolute().parent.is_dir():
            raise _refuse(path, what, f"the folder {folder.absolute().parent} does not exist", "create it first")
    except OSError as exc:
        raise _refuse(path, what, f"cannot check: {exc.strerror}", "choose a writable location") from None
    return st


def write_files(path: str | os.PathLike, files: dict[str, bytes], *, what: str) -> bool:
    """Write several files into a folder, all or nothing: a new folder appears complete (built under a
    temporary name, then renamed); in an existing one every file is staged before any is renamed into
    place, and a failed rename puts back what the earlier ones replaced. Files already there under
    these names must be regular files (links are refused)."""
    folder = Path(path)
    st = output_folder(folder, what=what)
    try:
        if st is None:
            return _write_new_folder(folder, files)
        for name in files:
            output_target(folder / name, what=what, hint="remove it, or choose another folder")
        return _write_into_folder(folder, files, what)
    except OSError as exc:
        raise _refuse(path, what, f"cannot write: {exc.strerror}", "choose a writable location") from None


def _write_new_folder(folder: Path, files: dict[str, bytes]) -> bool:
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.absolute().parent))
    try:
        mode = _new_file_mode()
        for name, data in files.items():
            os.replace(_write_temporary(staging, name, data, mode, None), staging / name)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700: give it what mkdir(2) would
        os.rename(staging, folder)  # fails, leaving nothing, if someone created the folder meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _sync_folder(folder.absolute().parent)
    return True


def _write_into_folder(folder: Path, files: dict[str, bytes], what: str = "-o") -> bool:
    """Stage every file, then rename them into place; a failed rename undoes the ones made before it."""
    staged: dict[Path, Path] = {}  # temporary -> target
    done: list[tuple[Path, Path | None]] = []  # (target, hard link to the file it replaced)
    try:
        for name, data in files.items():
            target = folder / name
            st = _lstat(target)
            if st is not None and not stat.S_ISREG(st.st_mode):  # swapped since the check: never take a link's mode
                raise _refuse(target, what, f"is {file_type(st.st_mode)}, not a regular file",
                              "remove it, or choose another folder")
            if _same_content(target, st, data):
                continue
            mode = stat.S_IMODE(st.st_mode) if st is not None else _new_file_mode()
            staged[_write_temporary(folder, name, data, mode, (st.st_uid, st.st_gid) if st else None)] = target
        for temporary, target in list(staged.items()):
            backup = _keep(target)
            os.replace(temporary, target)
            del staged[temporary]
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):  # newest first: each target gets its old file back
            if backup is not None:
                os.replace(backup, target)
            else:
                os.unlink(target)
        done.clear()
        raise
    finally:
        for temporary in staged:  # left only when something failed
            os.unlink(temporary)
        for _, backup in done:
            if backup is not None:
                os.unlink(backup)
    _sync_folder(folder)
    return bool(done)


def _keep(target: Path) -> Path | None:
    """A second name for the file about to be replaced, so a failure later can put it back."""
    for _ in range(100):
        backup = target.with_name(f".{target.name}.{secrets.token_hex(6)}.old")
        try:
            os.link(target, backup, follow_symlinks=False)  # fails rather than reuse an existing name
            return backup
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
    raise FileExistsError(f"no free name beside {target}")
