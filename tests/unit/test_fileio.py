"""snpvirt/fileio.py on its own: every input is opened without blocking, checked on the open descriptor
and read within its kind's limit; every output replaces a regular file atomically (a temporary file
beside it, renamed), keeps its mode and owner, and leaves nothing behind when it fails. The CLI-level
cases are in test_bounded_inputs.py and test_output_files.py; here each refusal's exact words and each
detail of the writer are pinned, so that a weakened check fails a test (scripts/mutation fileio)."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import tracemalloc
from pathlib import Path

import pytest

from snpvirt import fileio
from snpvirt.errors import BadInputError
from tests.conftest import unreadable_even_for_root


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- reading: what may be opened, and what each refusal says -------------------------------------------


@pytest.mark.parametrize("size, text", [(64 * fileio.MiB, "64 MiB"), (2 * fileio.GiB, "2 GiB"), (64 * fileio.KiB, "64 KiB"),
                                        (1536, "1536 bytes"), (fileio.MiB + fileio.KiB, "1025 KiB"), (1, "1 bytes"),
                                        (fileio.KiB, "1 KiB"), (fileio.MiB, "1 MiB"), (fileio.GiB, "1 GiB")])
def test_sizes_are_said_in_the_largest_whole_unit(size, text):
    assert fileio._size_text(size) == text


def test_every_kind_of_file_is_named(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        (tmp_path / "link").symlink_to("fifo")
        (tmp_path / "file").write_text("")
        modes = {name: os.lstat(tmp_path / name).st_mode for name in ("fifo", "sock", "link", "file")}
    assert {name: fileio.file_type(mode) for name, mode in modes.items()} == {
        "fifo": "a FIFO", "sock": "a socket", "link": "a symbolic link", "file": "a regular file"}
    assert fileio.file_type(os.stat(tmp_path).st_mode) == "a directory"
    assert fileio.file_type(os.stat("/dev/null").st_mode) == "a character device"
    assert fileio.file_type(stat.S_IFBLK | 0o600) == "a block device"
    assert fileio.file_type(0) == "not a regular file"


def refused(path, kind="spec", what=None, read=fileio.read_input) -> fileio.InputFileError:
    with pytest.raises(fileio.InputFileError) as caught:
        read(path, kind, what)
    return caught.value


def test_a_missing_file(tmp_path):
    error = refused(tmp_path / "absent.toml")
    assert (error.message, error.hint) == (f"spec {tmp_path / 'absent.toml'}: does not exist", "check the path")
    assert (error.present, error.reason) == (False, "does not exist")


def test_a_file_that_cannot_be_opened():
    error = refused("/etc/passwd/x", "xml")
    assert error.message == "domain XML /etc/passwd/x: cannot open: Not a directory"
    assert (error.hint, error.present) == ("check the path and permissions", False)


def test_a_file_even_root_may_not_read():
    path = unreadable_even_for_root()
    error = refused(path, "host")
    assert (error.message, error.hint) == (f"host {path}: permission denied", "check the permissions, or run as root")
    assert (error.present, error.reason) == (False, "permission denied")


@pytest.mark.parametrize("make, what", [(lambda p: p.mkdir(), "is a directory"), (os.mkfifo, "is a FIFO")])
def test_a_folder_or_fifo_is_present_but_never_usable_and_its_descriptor_is_closed(tmp_path, make, what):
    make(tmp_path / "input")
    before = open_fds()
    error = refused(tmp_path / "input", "domcaps", "--host-caps")
    assert error.message == f"--host-caps {tmp_path / 'input'}: {what}, not a regular file"
    assert (error.hint, error.present) == ("give the path of a regular domain capabilities file", True)
    assert open_fds() == before


def test_a_file_at_its_limit_is_read_one_byte_more_is_refused_by_its_size(tmp_path, monkeypatch):
    monkeypatch.setitem(fileio.LIMITS, "nonce", 100)
    exact = tmp_path / "exact"
    exact.write_bytes(b"n" * 100)
    assert fileio.read_input(exact, "nonce") == b"n" * 100
    assert fileio.sha256_input(exact, "nonce") == (hashlib.sha256(b"n" * 100).hexdigest(), 100)
    assert refused(tmp_path / "absent", "kernel", "boot.kernel", read=fileio.sha256_input).message == \
        f"boot.kernel {tmp_path / 'absent'}: does not exist"
    over = sparse(tmp_path / "over", 101)
    before = open_fds()
    error = refused(over, "nonce", "--nonce-file")
    assert error.message == f"--nonce-file {over}: 101 bytes is more than the 100 bytes a nonce file may have"
    assert (error.hint, error.present) == ("check that this is the right nonce file", True)
    assert open_fds() == before


def test_a_file_that_grows_past_its_limit_is_refused(monkeypatch):
    """procfs says size 0 and then gives more: only limit + 1 bytes are read, and that is too many."""
    monkeypatch.setitem(fileio.LIMITS, "host", 64)
    for read in (fileio.read_input, fileio.sha256_input):
        error = refused("/proc/self/maps", "host", read=read)
        assert error.message == "host /proc/self/maps: more bytes is more than the 64 bytes a host file may have"
        error = refused("/proc/self/maps", "host", "--sysroot file", read=read)
        assert error.message.startswith("--sysroot file /proc/self/maps: more bytes")
    monkeypatch.setitem(fileio.LIMITS, "xml", 64)
    error = refused("/proc/self/maps", "xml")
    assert (error.message, error.hint) == ("domain XML /proc/self/maps: more bytes is more than the 64 bytes a domain XML "
                                           "file may have", "check that this is the right domain XML file")


def test_sha256_streams_in_blocks_within_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_BLOCK", 7)
    data = bytes(range(256)) * 3
    (tmp_path / "kernel").write_bytes(data)
    assert fileio.sha256_input(tmp_path / "kernel", "kernel") == (hashlib.sha256(data).hexdigest(), len(data))
    monkeypatch.setitem(fileio.LIMITS, "host", 64)  # procfs: size 0, then more bytes than that, 7 at a time
    assert refused("/proc/self/maps", "host", read=fileio.sha256_input).reason.startswith("more bytes is more than")


def a_big_file_whose_size_says_0() -> str:
    """/proc/kallsyms: a regular file of several MiB whose size says 0, like any procfs file: it passes the size
    check at open, then gives more bytes than the limit (as a file that grows while it is read would)."""
    path = "/proc/kallsyms"
    if not os.path.isfile(path) or os.stat(path).st_size != 0:
        pytest.skip("needs procfs's /proc/kallsyms")
    with open(path, "rb") as handle:
        if len(handle.read(4 * fileio.MiB)) < 4 * fileio.MiB:
            pytest.skip("/proc/kallsyms is small here")
    return path


def peak_memory(call) -> int:
    """The most memory Python held while `call` ran, in bytes."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("read", [fileio.read_input, fileio.sha256_input], ids=["read_input", "sha256_input"])
def test_a_file_that_grows_past_its_limit_costs_no_more_memory_than_the_limit(read):
    """Refused either way; the bound is that only limit + 1 bytes were ever held, not the whole file."""
    path = a_big_file_whose_size_says_0()
    peak = peak_memory(lambda: refused(path, "nonce", read=read))
    assert peak < fileio.MiB, f"held {peak} bytes to refuse a {fileio.LIMITS['nonce']}-byte nonce file"


def test_a_tail_is_at_most_its_size_even_of_a_file_that_grows():
    assert len(fileio.read_tail(a_big_file_whose_size_says_0(), "log", 8)) == 8


def test_comparing_with_a_file_that_grew_since_its_stat_reads_one_byte_past_the_data(tmp_path):
    """write_file compares before writing: a target whose size matched but that grew is told apart by one byte."""
    path = a_big_file_whose_size_says_0()
    peak = peak_memory(lambda: fileio._same_content(Path(path), os.lstat(path), b""))
    assert peak < fileio.MiB


@pytest.mark.parametrize("read", [fileio.read_input, fileio.sha256_input, lambda p, k, w=None: fileio.read_tail(p, k, 8)],
                         ids=["read_input", "sha256_input", "read_tail"])
def test_a_read_that_fails_is_said(read):
    """/proc/self/mem is a regular file whose first page is never mapped: reading it fails with EIO."""
    error = refused("/proc/self/mem", "host", read=read)
    assert error.message == "host /proc/self/mem: cannot read: Input/output error"
    assert (error.hint, error.present) == ("check the file", True)
    if getattr(read, "__name__", "") != "<lambda>":  # read_tail takes no `what`
        assert refused("/proc/self/mem", "host", "--firmware", read=read).message.startswith("--firmware /proc/self/mem:")


def test_text_is_utf8_or_a_clear_error(tmp_path):
    (tmp_path / "vm.toml").write_bytes("name = 'café'\n".encode())
    assert fileio.read_text(tmp_path / "vm.toml", "spec") == "name = 'café'\n"
    (tmp_path / "vm.toml").write_bytes(b"name = 'caf\xe9'\n")
    error = refused(tmp_path / "vm.toml", "spec", "--policy", read=fileio.read_text)
    assert error.message == f"--policy {tmp_path / 'vm.toml'}: is not UTF-8 text (byte 11)"
    assert (error.hint, error.present) == ("save the spec file as UTF-8", True)
    assert fileio.read_text(tmp_path / "vm.toml", "spec", errors="replace") == "name = 'caf\ufffd'\n"
    error = refused(tmp_path / "vm.toml", "xml", read=fileio.read_text)
    assert (error.message, error.hint) == (f"domain XML {tmp_path / 'vm.toml'}: is not UTF-8 text (byte 11)",
                                           "save the domain XML file as UTF-8")
    assert refused(tmp_path / "absent", "spec", "--policy", read=fileio.read_text).message.startswith("--policy ")


def test_a_tail_is_the_last_bytes_or_the_whole_short_file(tmp_path):
    (tmp_path / "vm.log").write_bytes(b"0123456789")
    assert fileio.read_tail(tmp_path / "vm.log", "log", 4) == b"6789"
    assert fileio.read_tail(tmp_path / "vm.log", "log", 100) == b"0123456789"


# --- writing one file: where it may go ---------------------------------------------------------------------


def refusal(call) -> BadInputError:
    with pytest.raises(BadInputError) as caught:
        call()
    return caught.value


def test_a_link_is_refused_unless_followed(tmp_path):
    (tmp_path / "real.xml").write_text("old")
    (tmp_path / "vm.xml").symlink_to("real.xml")
    error = refusal(lambda: fileio.write_file(tmp_path / "vm.xml", b"new", what="--out"))
    assert error.message == f"--out {tmp_path / 'vm.xml'}: is a symbolic link; snpvirt does not write through links"
    assert error.hint == "give the real path of the file, or remove the link"
    assert fileio.output_target(tmp_path / "vm.xml", follow_symlink=True) == (tmp_path / "real.xml",
                                                                              os.stat(tmp_path / "real.xml"))
    assert fileio.write_file(tmp_path / "vm.xml", b"new", follow_symlink=True) is True
    assert (tmp_path / "real.xml").read_bytes() == b"new" and (tmp_path / "vm.xml").is_symlink()


def test_a_link_to_nothing_is_refused(tmp_path):
    (tmp_path / "vm.xml").symlink_to("absent.xml")
    error = refusal(lambda: fileio.output_target(tmp_path / "vm.xml", follow_symlink=True))
    assert error.message == f"-o {tmp_path / 'vm.xml'}: is a symbolic link to {tmp_path / 'absent.xml'}, which does not exist"
    assert error.hint == "give the real path of the file, or create the target first"


def test_a_link_to_a_device_names_both(tmp_path):
    (tmp_path / "out").symlink_to("/dev/null")
    error = refusal(lambda: fileio.output_target(tmp_path / "out", follow_symlink=True, hint="pick a file"))
    assert error.message == f"-o {tmp_path / 'out'} -> /dev/null: is a character device; snpvirt writes only regular files"
    assert error.hint == "pick a file"
    for call in (lambda: fileio.output_target("/dev/null"), lambda: fileio.write_file("/dev/null", b"")):
        error = refusal(call)
        assert error.message == "-o /dev/null: is a character device; snpvirt writes only regular files"
        assert error.hint == "give the path of a regular file"


def test_comparing_contents_never_reads_through_a_link(tmp_path):
    """write_file compares with what output_target checked; a link swapped in meanwhile is not the same file."""
    (tmp_path / "real").write_bytes(b"same")
    (tmp_path / "link").symlink_to("real")
    assert fileio._same_content(tmp_path / "link", os.stat(tmp_path / "real"), b"same") is False
    assert fileio._same_content(tmp_path / "real", os.stat(tmp_path / "real"), b"same") is True


def test_a_missing_folder_or_a_path_through_a_file(tmp_path):
    error = refusal(lambda: fileio.write_file(tmp_path / "absent" / "vm.xml", b"x"))
    assert (error.message, error.hint) == (f"-o {tmp_path / 'absent' / 'vm.xml'}: the folder {tmp_path / 'absent'} "
                                           "does not exist", "create the folder first")
    (tmp_path / "file").write_text("")
    error = refusal(lambda: fileio.write_file(tmp_path / "file" / "vm.xml", b"x", hint="somewhere else"))
    assert (error.message, error.hint) == (f"-o {tmp_path / 'file' / 'vm.xml'}: cannot check: Not a directory",
                                           "somewhere else")


def test_a_loop_of_links_is_refused(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    error = refusal(lambda: fileio.write_file(tmp_path / "a", b"x", follow_symlink=True))
    assert error.message == f"-o {tmp_path / 'a'}: cannot check: Too many levels of symbolic links"


def chain_of_links(tmp_path: Path, links: int) -> Path:
    (tmp_path / "end").write_bytes(b"old")
    previous = "end"
    for n in range(1, links + 1):
        (tmp_path / f"link{n}").symlink_to(previous)
        previous = f"link{n}"
    return tmp_path / previous


def test_links_are_followed_as_far_as_the_kernel_follows_them(tmp_path):
    """40 links in a row the kernel follows (open works), 41 it refuses (ELOOP): so does the writer."""
    forty = chain_of_links(tmp_path, 40)
    assert forty.read_bytes() == b"old", "the kernel follows 40 links"
    assert fileio.write_file(forty, b"new", follow_symlink=True) and (tmp_path / "end").read_bytes() == b"new"
    (tmp_path / "link41").symlink_to("link40")
    with pytest.raises(OSError, match="Too many levels"):
        (tmp_path / "link41").read_bytes()
    error = refusal(lambda: fileio.write_file(tmp_path / "link41", b"x", follow_symlink=True))
    assert error.message == f"-o {tmp_path / 'link41'}: cannot check: Too many levels of symbolic links"
    assert (tmp_path / "end").read_bytes() == b"new"


def shared_folder(tmp_path: Path, owner: int = 0, mode: int = 0o1777) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    os.chown(folder, owner, owner)
    return folder


def planted(folder: Path, target: Path, uid: int) -> Path:
    link = folder / "vm.xml"
    link.symlink_to(target)
    os.lchown(link, uid, uid)
    return link


@pytest.fixture
def root_only():
    if os.geteuid() != 0:
        pytest.skip("giving files to another user needs root")


def test_another_users_link_in_a_shared_folder_is_not_followed(tmp_path, root_only):
    victim = tmp_path / "shadow"
    victim.write_text("secret")
    link = planted(shared_folder(tmp_path), victim, 65534)
    error = refusal(lambda: fileio.write_file(link, b"owned", follow_symlink=True))
    assert error.message == (f"-o {link}: is a symbolic link owned by another user (uid 65534) in the shared folder "
                             f"{link.parent}; snpvirt does not follow it")
    assert error.hint == "give the real path of the file, or remove the link"
    assert victim.read_text() == "secret"


def test_a_relative_chain_of_links_is_checked_link_by_link(tmp_path, root_only):
    """Our link (followed: it is ours) leads to another user's link in a shared folder: refused there."""
    victim = tmp_path / "shadow"
    victim.write_text("secret")
    planted(shared_folder(tmp_path), victim, 65534)
    (tmp_path / "mine.xml").symlink_to("shared/vm.xml")
    error = refusal(lambda: fileio.write_file(tmp_path / "mine.xml", b"owned", follow_symlink=True))
    assert "owned by another user (uid 65534)" in error.message and victim.read_text() == "secret"


@pytest.mark.parametrize("folder_owner, mode", [(65534, 0o1777), (0, 0o1775), (0, 0o0777)],
                         ids=["the folder owner's link", "sticky, not world-writable", "world-writable, not sticky"])
def test_links_the_kernel_rule_would_follow_are_followed(tmp_path, root_only, folder_owner, mode):
    target = tmp_path / "real.xml"
    target.write_text("old")
    link = planted(shared_folder(tmp_path, folder_owner, mode), target, 65534 if folder_owner else 65533)
    assert fileio.write_file(link, b"new", follow_symlink=True) is True
    assert target.read_bytes() == b"new"


# --- writing one file: how it is written ---------------------------------------------------------------------


def test_same_bytes_are_not_rewritten(tmp_path):
    target = tmp_path / "vm.xml"
    target.write_bytes(b"same")
    before = target.stat()
    assert fileio.write_file(target, b"same") is False
    assert target.stat().st_ino == before.st_ino, "not replaced"
    assert fileio.write_file(target, b"sane") is True, "same size, other bytes"
    assert fileio.write_file(target, b"same!") is True and target.read_bytes() == b"same!"


def test_a_new_file_gets_what_open_would_give_it(tmp_path):
    old = os.umask(0o027)
    try:
        fileio.write_file(tmp_path / "new", b"x")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027, "the umask is left as it was"
    finally:
        os.umask(old)


def test_a_replaced_file_keeps_its_mode_and_owner(tmp_path, root_only):
    target = tmp_path / "vm.xml"
    target.write_text("old")
    target.chmod(0o604)
    os.chown(target, 65534, 65533)
    assert fileio.write_file(target, b"new") is True
    after = target.stat()
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (0o604, 65534, 65533)


def test_the_write_goes_to_a_temporary_file_beside_the_target_then_the_folder_is_synced(tmp_path, monkeypatch):
    target = tmp_path / "vm.xml"
    target.write_text("old")
    seen, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        seen.append((Path(src), Path(src).read_bytes(), stat.S_IMODE(os.stat(src).st_mode)))
        return real_replace(src, dst)

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real_fsync(fd)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    target.chmod(0o640)
    fileio.write_file(target, b"new")
    [(temporary, data, mode)] = seen
    assert temporary.parent == tmp_path and temporary.name.startswith(".vm.xml.") and temporary.name.endswith(".tmp")
    assert (data, mode) == (b"new", 0o640), "complete, with its final mode, before the rename"
    assert synced == [False, True], "the data before the rename, the folder after it"
    assert listing(tmp_path) == ["vm.xml"]


def test_a_failed_rename_is_said_and_leaves_the_old_file_alone(tmp_path, monkeypatch):
    target = tmp_path / "vm.xml"
    target.write_text("old")
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    error = refusal(lambda: fileio.write_file(target, b"new", what="--certs-out"))
    assert (error.message, error.hint) == (f"--certs-out {target}: cannot write: Invalid cross-device link",
                                           "choose a writable location")
    assert listing(tmp_path) == ["vm.xml"] and target.read_text() == "old"


def test_a_folder_that_cannot_be_synced_still_gets_the_file(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # some file systems cannot sync a directory
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    before = open_fds()
    assert fileio.write_file(tmp_path / "vm.xml", b"new") is True
    assert (tmp_path / "vm.xml").read_bytes() == b"new" and open_fds() == before


# --- writing a folder of files: all or nothing -----------------------------------------------------------------


def test_an_output_folder_must_be_a_folder_in_an_existing_one(tmp_path):
    (tmp_path / "file").write_text("")
    error = refusal(lambda: fileio.write_files(tmp_path / "file", {"a": b"a"}, what="--certs-out"))
    assert error.message == f"--certs-out {tmp_path / 'file'}: is a regular file, not a folder"
    assert error.hint == "give the path of a folder (it is created when absent)"
    error = refusal(lambda: fileio.write_files(tmp_path / "absent" / "certs", {"a": b"a"}, what="-o"))
    assert (error.message, error.hint) == (f"-o {tmp_path / 'absent' / 'certs'}: the folder {tmp_path / 'absent'} "
                                           "does not exist", "create it first")
    error = refusal(lambda: fileio.write_files(tmp_path / "file" / "certs", {"a": b"a"}, what="-o"))
    assert (error.message, error.hint) == (f"-o {tmp_path / 'file' / 'certs'}: cannot check: Not a directory",
                                           "choose a writable location")


def test_a_relative_new_folder_is_made_in_the_working_folder(tmp_path, monkeypatch, umask_022):
    """Built beside its final place under a hidden temporary name (one file system: the renames are atomic)."""
    monkeypatch.chdir(tmp_path)
    moves = []
    real_replace, real_rename = os.replace, os.rename
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((Path(src), Path(dst))), real_replace(src, dst))[1])
    monkeypatch.setattr(os, "rename", lambda src, dst: (moves.append((Path(src), Path(dst))), real_rename(src, dst))[1])
    assert fileio.write_files("certs", {"ark.pem": b"ark", "ask.pem": b"ask"}, what="-o") is True
    (ark, ark_in), (ask, ask_in), (staging, final) = moves
    assert final == Path("certs") and staging.parent == tmp_path and staging.name.startswith(".certs.")
    assert staging.name.endswith(".tmp") and ark_in == staging / "ark.pem" and ask_in == staging / "ask.pem"
    assert ark.parent == staging and ark.name.startswith(".ark.pem.") and ask.name.startswith(".ask.pem.")
    assert listing(tmp_path) == ["certs"] and listing(tmp_path / "certs") == ["ark.pem", "ask.pem"]
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o755
    assert (tmp_path / "certs" / "ask.pem").read_bytes() == b"ask"


def test_into_an_existing_folder_only_changed_files_are_written_with_their_modes_kept(tmp_path, umask_022, monkeypatch):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "ark.pem").write_bytes(b"ark")
    (folder / "ask.pem").write_bytes(b"old ask")
    (folder / "ask.pem").chmod(0o600)
    ark_inode = (folder / "ark.pem").stat().st_ino
    real_replace, staged = os.replace, []
    monkeypatch.setattr(os, "replace", lambda src, dst: (staged.append(Path(src)), real_replace(src, dst))[1])
    assert fileio.write_files(folder, {"ark.pem": b"ark", "ask.pem": b"new ask", "vcek.der": b"vcek"}, what="-o") is True
    assert [(p.parent, p.name[:9]) for p in staged] == [(folder, ".ask.pem."), (folder, ".vcek.der")]
    assert (folder / "ark.pem").stat().st_ino == ark_inode, "unchanged: not replaced"
    assert stat.S_IMODE((folder / "ask.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "vcek.der").stat().st_mode) == 0o644
    assert listing(folder) == ["ark.pem", "ask.pem", "vcek.der"] and (folder / "ask.pem").read_bytes() == b"new ask"
    assert fileio.write_files(folder, {"ark.pem": b"ark"}, what="-o") is False


def test_into_an_existing_folder_a_link_is_refused_before_anything_is_written(tmp_path):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "ark.pem").symlink_to(tmp_path / "victim")
    error = refusal(lambda: fileio.write_files(folder, {"ask.pem": b"ask", "ark.pem": b"ark"}, what="--certs-out"))
    assert error.message == f"--certs-out {folder / 'ark.pem'}: is a symbolic link; snpvirt does not write through links"
    assert error.hint == "give the real path of the file, or remove the link"
    assert listing(folder) == ["ark.pem"] and not (tmp_path / "victim").exists()
    (folder / "ark.pem").unlink()
    os.mkfifo(folder / "ark.pem")
    error = refusal(lambda: fileio.write_files(folder, {"ark.pem": b"ark"}, what="--certs-out"))
    assert (error.message, error.hint) == (f"--certs-out {folder / 'ark.pem'}: is a FIFO; snpvirt writes only regular files",
                                           "remove it, or choose another folder")


def test_a_link_swapped_in_after_the_check_is_refused_too(tmp_path, monkeypatch):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "ark.pem").write_bytes(b"old")
    checked = fileio.output_target

    def check_then_swap(path, **kwargs):
        found = checked(path, **kwargs)
        Path(path).unlink()
        Path(path).symlink_to(tmp_path / "victim")  # another process wins the race here
        return found
    monkeypatch.setattr(fileio, "output_target", check_then_swap)
    error = refusal(lambda: fileio.write_files(folder, {"ark.pem": b"new"}, what="--certs-out"))
    assert (error.message, error.hint) == (f"--certs-out {folder / 'ark.pem'}: is a symbolic link, not a regular file",
                                           "remove it, or choose another folder")
    assert listing(folder) == ["ark.pem"] and not (tmp_path / "victim").exists()
    error = refusal(lambda: fileio._write_into_folder(folder, {"ark.pem": b"new"}))
    assert error.message == f"-o {folder / 'ark.pem'}: is a symbolic link, not a regular file"


def test_a_failed_rename_into_a_folder_puts_back_every_file_it_replaced(tmp_path, monkeypatch):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "a").write_bytes(b"old a")
    (folder / "b").write_bytes(b"old b")
    real_replace = os.replace
    renamed = []

    def replace(src, dst):
        if Path(dst).name == "c" and Path(src).name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        renamed.append(Path(dst).name)
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    error = refusal(lambda: fileio.write_files(folder, {"a": b"new a", "b": b"new b", "c": b"new c"}, what="-o"))
    assert (error.message, error.hint) == (f"-o {folder}: cannot write: No space left on device", "choose a writable location")
    assert {name: (folder / name).read_bytes() for name in listing(folder)} == {"a": b"old a", "b": b"old b"}
    assert renamed == ["a", "b", "b", "a"], "each target got its old file back, the newest first"


def test_a_failed_rename_into_a_folder_removes_the_new_files_it_added(tmp_path, monkeypatch):
    folder = tmp_path / "certs"
    folder.mkdir()
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(5, "Input/output error"))
                        if Path(dst).name == "b" else real_replace(src, dst))
    refusal(lambda: fileio.write_files(folder, {"a": b"a", "b": b"b"}, what="-o"))
    assert listing(folder) == []


def test_a_failed_new_folder_leaves_no_staging_folder(tmp_path, monkeypatch):
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: (_ for _ in ()).throw(OSError(17, "File exists")))
    error = refusal(lambda: fileio.write_files(tmp_path / "certs", {"a": b"a"}, what="-o"))
    assert error.message == f"-o {tmp_path / 'certs'}: cannot write: File exists"
    assert listing(tmp_path) == []
    monkeypatch.setattr(os, "rename", real_rename)


def test_a_failed_new_folder_says_its_own_error_even_if_the_clean_up_fails(tmp_path, monkeypatch):
    """Someone removed the staging folder before the rename failed: the clean-up finds nothing to remove, and
    the error said is still the rename's."""
    def rename(src, dst):
        fileio.shutil.rmtree(src)
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "rename", rename)
    error = refusal(lambda: fileio.write_files(tmp_path / "certs", {"a": b"a"}, what="-o"))
    assert error.message == f"-o {tmp_path / 'certs'}: cannot write: Permission denied"
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_a_backup_of_a_link_swapped_in_is_the_link_not_its_target(tmp_path):
    """A file replaced in a folder is kept under a second name to put back on failure; if a link was swapped
    in meanwhile, that name must be the link's: a hard link to its target would put that file in the folder."""
    (tmp_path / "victim").write_bytes(b"secret")
    (tmp_path / "ark.pem").symlink_to(tmp_path / "victim")
    backup = fileio._keep(tmp_path / "ark.pem")
    assert backup.is_symlink() and os.readlink(backup) == str(tmp_path / "victim")
    assert (tmp_path / "victim").stat().st_nlink == 1


def test_a_backup_name_is_never_one_already_taken(tmp_path, monkeypatch):
    target = tmp_path / "ark.pem"
    target.write_bytes(b"ark")
    names = iter(["taken", "free"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".ark.pem.taken.old").write_bytes(b"someone's")
    backup = fileio._keep(target)
    assert backup == tmp_path / ".ark.pem.free.old" and backup.read_bytes() == b"ark"
    assert (tmp_path / ".ark.pem.taken.old").read_bytes() == b"someone's"
    tries = []
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: tries.append(n) or "taken")
    assert fileio._keep(tmp_path / "absent") is None, "nothing to keep"
    tries.clear()
    with pytest.raises(FileExistsError, match=f"no free name beside {target}"):
        fileio._keep(target)
    assert len(tries) == 100


def test_a_file_replaced_in_a_folder_keeps_its_owner(tmp_path, root_only):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "ark.pem").write_bytes(b"old")
    os.chown(folder / "ark.pem", 65534, 65533)
    fileio.write_files(folder, {"ark.pem": b"new"}, what="-o")
    assert ((folder / "ark.pem").stat().st_uid, (folder / "ark.pem").stat().st_gid) == (65534, 65533)
