"""Issue 9 §5: output files are written atomically, and never onto a device, a FIFO or through a link.

`render -o` replaces a regular file (or a symlink's regular target) by temp-file-and-rename in the
same folder; `-o -` is stdout; devices, FIFOs and folders are refused with nothing changed.
`guest report -o`, `--certs-out` and `attest fetch-certs -o` use the same writer and refuse links;
a folder of certificates appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from snpvirt import fileio
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError, ExitCode
from tests.conftest import EXAMPLES, GOLDEN, ROOT, CliRun, assert_clean_error, vector

WEB = str(EXAMPLES / "web-01.toml")
XML = (GOLDEN / "web-01.xml").read_text()


def run_bounded(*args) -> CliRun:
    """A real run; a FIFO target must not block it (before the fix, nothing but the guard ended it)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "snpvirt", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"snpvirt {' '.join(map(str, args))} blocked")
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def char_device(path: Path, major: int, minor: int) -> Path:
    """Our own copy of /dev/null or /dev/full, so a regression damages a temporary folder, not /dev."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("creating device nodes needs root (CAP_MKNOD)")
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- render -o: what may not be replaced --------------------------------------------------------


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_render_refuses_the_real_device_nodes(device):
    before = os.stat(device)
    result = run_bounded("render", WEB, "-o", device)
    assert_clean_error(result, ExitCode.BAD_INPUT, f"-o {device}: is a character device")
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert not [name for name in os.listdir("/dev") if name.endswith(".tmp")], "no temporary file left in /dev"


@pytest.mark.parametrize("name, minor", [("full", 7), ("null", 3)])
def test_render_leaves_a_device_node_a_device_node(tmp_path, name, minor):
    device = char_device(tmp_path / name, 1, minor)
    result = run_bounded("render", WEB, "-o", device, "--json")
    assert result.code == ExitCode.BAD_INPUT and "is a character device" in result.stderr
    assert json.loads(result.stdout)["error"]["kind"] == "bad_input"
    assert stat.S_ISCHR(os.lstat(device).st_mode) and listing(tmp_path) == [name]


def test_render_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_clean_error(run_bounded("render", WEB, "-o", fifo), ExitCode.BAD_INPUT, f"-o {fifo}: is a FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and listing(tmp_path) == ["pipe"]


def test_render_refuses_a_directory(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    assert_clean_error(run_bounded("render", WEB, "-o", folder), ExitCode.BAD_INPUT, f"-o {folder}: is a directory")
    assert folder.is_dir() and listing(folder) == [] and listing(tmp_path) == ["out"]


def test_render_refuses_a_link_to_a_device_and_keeps_the_link(tmp_path):
    device = char_device(tmp_path / "null", 1, 3)
    link = tmp_path / "stdout"
    link.symlink_to(device)  # what /dev/stdout is when stdout is a terminal: a link to a device
    result = run_bounded("render", WEB, "-o", link)
    assert_clean_error(result, ExitCode.BAD_INPUT, f"-o {link} -> {device}: is a character device")
    assert os.readlink(link) == str(device) and stat.S_ISCHR(os.lstat(device).st_mode)
    assert listing(tmp_path) == ["null", "stdout"]


def test_render_does_not_replace_the_dev_stdout_link(tmp_path):
    link = tmp_path / "stdout"
    link.symlink_to("/dev/stdout")  # -> /proc/self/fd/1: a pipe here, never a regular file to replace
    result = run_bounded("render", WEB, "-o", link)
    assert result.code == ExitCode.BAD_INPUT and "Traceback" not in result.stderr
    assert os.readlink(link) == "/dev/stdout" and listing(tmp_path) == ["stdout"]


def test_render_through_a_link_replaces_its_target_and_keeps_link_and_mode(tmp_path):
    real = tmp_path / "real" / "vm.xml"
    real.parent.mkdir()
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "vm.xml"
    link.symlink_to(real)
    result = run_bounded("render", WEB, "-o", link)
    assert result.code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == XML and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert listing(tmp_path) == ["real", "vm.xml"] and listing(real.parent) == ["vm.xml"]


def test_render_onto_a_file_that_is_not_utf8_compares_bytes(tmp_path):
    target = tmp_path / "vm.xml"
    target.write_bytes(b"\xff\xfe not UTF-8")
    result = run_bounded("render", WEB, "-o", target, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["changed"] is True and target.read_text() == XML


def test_dash_means_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["render", WEB, "-o", "-"]) == 0
    assert capsys.readouterr().out == XML and listing(tmp_path) == [], "no file named '-'"
    assert run(["render", WEB, "-o", "-", "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["results"][0]
    assert item["xml"] == XML and item["output"] is None and listing(tmp_path) == []


# --- render -o: how a file is written -----------------------------------------------------------


def test_a_new_file_gets_the_umask_not_0600(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert run(["render", WEB, "-o", str(tmp_path / "vm.xml")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "vm.xml").stat().st_mode) == 0o640


def test_the_temporary_file_is_beside_the_target_and_renamed_over_it(tmp_path, monkeypatch, capsys):
    real = tmp_path / "real" / "vm.xml"
    real.parent.mkdir()
    real.write_text("old")
    (tmp_path / "vm.xml").symlink_to(real)
    renames = []
    original = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), original(src, dst))[1])
    assert run(["render", WEB, "-o", str(tmp_path / "vm.xml")]) == 0
    [(temporary, target)] = renames
    assert target == real and temporary.parent == real.parent, "same folder: the rename is atomic (not /tmp)"
    assert temporary.name.startswith(".vm.xml.") and temporary.name.endswith(".tmp") and not temporary.exists()


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, capsys):
    target = tmp_path / "vm.xml"
    target.write_text("precious")

    def failing(src, dst):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "replace", failing)
    assert run(["render", WEB, "-o", str(target)]) == ExitCode.BAD_INPUT
    assert "cannot write: Invalid cross-device link" in capsys.readouterr().err
    assert target.read_text() == "precious" and listing(tmp_path) == ["vm.xml"]


def test_a_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "vm.xml"

    def failing(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(BadInputError, match="No space left on device"):
        fileio.write_file(target, b"data")
    assert listing(tmp_path) == []


def test_a_missing_folder_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        fileio.write_file(tmp_path / "absent" / "vm.xml", b"data")


# --- guest report, --certs-out, attest fetch-certs ----------------------------------------------


def _guest_report_args(root: Path, out: Path, certs: Path | None = None):
    args = ["guest", "report", "--sysroot", str(root), "--report-data", "ab" * 32, "-o", str(out)]
    return args + (["--certs-out", str(certs)] if certs else [])


def test_guest_report_refuses_links_before_asking_the_firmware(tmp_path, capsys):
    from tests.attest_factory import make_ca
    from tests.unit.test_guest import FakeTsmKernel, guest_root

    root = guest_root(tmp_path / "root")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "report.bin"
    link.symlink_to(victim)
    certs_link = tmp_path / "certs"
    certs_link.symlink_to(tmp_path / "root")
    with FakeTsmKernel(root, make_ca()) as kernel:
        assert run(_guest_report_args(root, link)) == ExitCode.BAD_INPUT
        assert "is a symbolic link" in capsys.readouterr().err
        assert run(_guest_report_args(root, tmp_path / "new.bin", certs_link)) == ExitCode.BAD_INPUT
        assert "is a symbolic link, not a folder" in capsys.readouterr().err
    assert victim.read_text() == "precious" and link.is_symlink() and not (tmp_path / "new.bin").exists()
    assert kernel.seen == [], "refused before a report was requested"


def test_guest_report_writes_the_certificates_folder_whole(tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization

    from tests.attest_factory import make_ca
    from tests.unit.test_guest import FakeTsmKernel, cert_table, guest_root

    root = guest_root(tmp_path / "root")
    ca = make_ca()
    table = cert_table({"vcek.der": ca.vcek.public_bytes(serialization.Encoding.DER)})
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "vcek.der").symlink_to(tmp_path / "victim")
    with FakeTsmKernel(root, ca, table):
        assert run(_guest_report_args(root, tmp_path / "report.bin", certs)) == ExitCode.BAD_INPUT
        assert "is a symbolic link" in capsys.readouterr().err
        (certs / "vcek.der").unlink()
        assert run(_guest_report_args(root, tmp_path / "report.bin", certs)) == 0
    assert listing(certs) == ["vcek.der"] and not (tmp_path / "victim").exists()
    assert len((tmp_path / "report.bin").read_bytes()) == 1184


def test_fetch_certs_that_fails_on_the_vcek_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from tests.unit.test_kds import CHIP, REPORT, FakeKds

    FakeKds.routes = {"/vcek/v1/Milan/cert_chain": vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes()}
    with _kds_server() as url:
        monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
        out = tmp_path / "certs"
        code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", url, "-o", str(out)])
        assert code == ExitCode.NOT_FOUND and not out.exists(), "nothing half-written: no ARK/ASK without the VCEK"
        assert listing(tmp_path) == ["cache"]
        out.mkdir()
        (out / "old.txt").write_text("kept")
        code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", url, "-o", str(out)])
        assert code == ExitCode.NOT_FOUND and listing(out) == ["old.txt"]
        FakeKds.routes[f"/vcek/v1/Milan/{CHIP}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"] = \
            vector("attestation/virtee-sev/vcek_milan.der").read_bytes()
        capsys.readouterr()
        code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", url, "-o", str(out)])
        assert code == 0 and listing(out) == ["ark.pem", "ask.pem", "old.txt", "vcek.der"], capsys.readouterr()


def test_fetch_certs_refuses_a_linked_folder_before_any_request(tmp_path, capsys):
    from tests.unit.test_kds import REPORT

    (tmp_path / "real").mkdir()
    (tmp_path / "certs").symlink_to(tmp_path / "real")
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", "http://127.0.0.1:9",
                "-o", str(tmp_path / "certs")])
    assert code == ExitCode.BAD_INPUT and "is a symbolic link, not a folder" in capsys.readouterr().err
    assert listing(tmp_path / "real") == []


def test_write_files_is_all_or_nothing_when_a_rename_fails(tmp_path, monkeypatch):
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "ark.pem").write_text("old ark")
    original, calls = os.replace, []

    def third_fails(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return original(src, dst)
    monkeypatch.setattr(os, "replace", third_fails)
    with pytest.raises(BadInputError, match="Input/output error"):
        fileio.write_files(folder, {"ark.pem": b"new ark", "ask.pem": b"ask", "vcek.der": b"vcek"}, what="-o")
    assert listing(folder) == ["ark.pem"], "the renames made are undone, temporaries and backups removed"
    assert (folder / "ark.pem").read_text() == "old ark"
    calls.clear()
    with pytest.raises(BadInputError, match="Input/output error"):
        fileio.write_files(tmp_path / "new", {"a": b"a", "b": b"b", "c": b"c"}, what="-o")
    assert listing(tmp_path) == ["certs"], "a new folder appears whole or not at all"


def test_write_files_gives_a_new_folder_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert fileio.write_files(tmp_path / "certs", {"ark.pem": b"ark"}, what="-o") is True
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "certs" / "ark.pem").stat().st_mode) == 0o640
    assert fileio.write_files(tmp_path / "certs", {"ark.pem": b"ark"}, what="-o") is False, "same bytes: unchanged"


def _kds_server():
    import contextlib
    import http.server
    import threading

    from tests.unit.test_kds import FakeKds

    @contextlib.contextmanager
    def serving():
        FakeKds.failures, FakeKds.requests = [], []
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKds)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
    return serving()
