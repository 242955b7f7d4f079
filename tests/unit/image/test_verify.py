"""gpgv over SHA256SUMS (real gpgv, a throwaway key) and SHA-256 of each file.

The error class is looked up as verify.VerificationError at raise time: scripts/mutation re-imports the
module, which makes a new class."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snpvirt.errors import BadInputError, ExitCode, SnpvirtError
from snpvirt.image import verify
from tests.image_mirror import mirror_key, sha256, signer, write_sums  # noqa: F401 (fixture)


@pytest.fixture
def signed(tmp_path, mirror_key):
    write_sums(tmp_path, {"a.img": b"disk", "b": b"kernel"}, mirror_key)
    return tmp_path / "SHA256SUMS"


def test_a_good_signature_gives_the_signing_key(signed, mirror_key):
    fingerprint = verify.check_signature(signed, f"{signed}.gpg", mirror_key.keyring, "SHA256SUMS")
    assert len(fingerprint) == 40
    assert verify.parse_sums(signed.read_bytes(), "x") == {"a.img": sha256(b"disk"), "b": sha256(b"kernel")}


def test_a_changed_list_fails_its_signature(signed, mirror_key):
    signed.write_text(signed.read_text().replace(sha256(b"disk"), sha256(b"evil")))
    with pytest.raises(verify.VerificationError, match="does not match the file"):
        verify.check_signature(signed, f"{signed}.gpg", mirror_key.keyring, "SHA256SUMS")


def test_a_signature_by_a_key_not_in_the_keyring_fails(tmp_path, mirror_key):
    with signer("someone else <other@example.invalid>") as other:
        write_sums(tmp_path, {"a.img": b"disk"}, other)
        with pytest.raises(verify.VerificationError, match="not in the keyring"):
            verify.check_signature(tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg", mirror_key.keyring, "x")


def test_something_that_is_no_signature_fails(signed, mirror_key, tmp_path):
    (tmp_path / "junk.gpg").write_bytes(b"<html>login</html>")
    with pytest.raises(verify.VerificationError, match="no good signature"):
        verify.check_signature(signed, tmp_path / "junk.gpg", mirror_key.keyring, "x")


def test_ubuntus_own_keyring_does_not_accept_a_test_key(signed):
    with pytest.raises(verify.VerificationError, match="not in the keyring"):
        verify.check_signature(signed, f"{signed}.gpg", "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg", "x")


def test_a_missing_keyring_is_bad_input_with_the_package_to_install(signed, tmp_path):
    with pytest.raises(BadInputError, match="does not exist") as caught:
        verify.check_signature(signed, f"{signed}.gpg", tmp_path / "none.gpg", "x")
    assert "ubuntu-keyring" in caught.value.hint


def test_a_file_that_does_not_match_is_deleted(tmp_path):
    path = tmp_path / "download"
    path.write_bytes(b"disk!")
    with pytest.raises(verify.VerificationError, match="SHA-256"):
        verify.check_digest(path, sha256(b"disk"), "a.img")
    assert not path.exists()
    path.write_bytes(b"disk")
    assert verify.check_digest(path, sha256(b"disk"), "a.img") == 4


def test_sums_lines_in_both_forms_and_nothing_else():
    text = f"{sha256(b'a')} *a.img\n{sha256(b'b').upper()}  unpacked/b\nnot a line\n\n".encode()
    assert verify.parse_sums(text, "x") == {"a.img": sha256(b"a"), "unpacked/b": sha256(b"b")}
    with pytest.raises(verify.VerificationError):
        verify.parse_sums(b"x" * (verify.MAX_SUMS_BYTES + 1), "x")


def test_a_list_signed_twice_needs_one_good_signature_by_the_keyring(tmp_path):
    """Ubuntu may sign with a second key the keyring lacks: one good signature by a key of the keyring is
    enough (gpgv then exits non-zero for the unknown one); the checker does not go by gpgv's exit alone."""
    import subprocess
    with signer("ours <ours@example.invalid>") as ours:
        subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(ours.home), "--passphrase", "",
                        "--quick-generate-key", "theirs <theirs@example.invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True, timeout=60)
        with open(ours.keyring, "wb") as out:  # the keyring holds only the first key
            subprocess.run(["gpg", "--batch", "--homedir", str(ours.home), "--export", "ours@example.invalid"],
                           stdout=out, check=True, timeout=60)
        sums = tmp_path / "SHA256SUMS"
        sums.write_text(f"{sha256(b'disk')} *a.img\n")
        subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(ours.home), "-u", "ours@example.invalid",
                        "-u", "theirs@example.invalid", "--armor", "--detach-sign", "-o", f"{sums}.gpg", str(sums)],
                       check=True, capture_output=True, timeout=60)
        assert verify.check_signature(sums, f"{sums}.gpg", ours.keyring, "x")
        sums.write_text(f"{sha256(b'evil')} *a.img\n")
        with pytest.raises(verify.VerificationError, match="does not match"):
            verify.check_signature(sums, f"{sums}.gpg", ours.keyring, "x")


def test_any_bad_signature_refuses_the_list_even_beside_a_good_one(tmp_path, mirror_key):
    """A signature file with a good signature and a bad one (over other bytes) is tampered with."""
    import subprocess
    sums, other = tmp_path / "SHA256SUMS", tmp_path / "other"
    sums.write_text(f"{sha256(b'disk')} *a.img\n")
    other.write_text("something else\n")
    for path in (sums, other):
        subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(mirror_key.home), "--detach-sign", "-o",
                        f"{path}.sig", str(path)], check=True, capture_output=True, timeout=60)
    (tmp_path / "both.gpg").write_bytes(Path(f"{sums}.sig").read_bytes() + Path(f"{other}.sig").read_bytes())
    assert verify.check_signature(sums, f"{sums}.sig", mirror_key.keyring, "x")
    with pytest.raises(verify.VerificationError, match="does not match"):
        verify.check_signature(sums, tmp_path / "both.gpg", mirror_key.keyring, "x")


def test_a_key_that_has_expired_is_refused_though_gpgv_calls_the_signature_valid(tmp_path):
    """gpgv exits 0 and says VALIDSIG for a signature by an expired key (EXPKEYSIG, no GOODSIG): not enough."""
    home = Path(tempfile.mkdtemp(prefix="snpvirt-gpg-", dir="/tmp"))  # short: gpg-agent's socket path
    try:
        def gpg(*args, at):
            subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(home), "--passphrase", "",
                            "--faked-system-time", at, *args], check=True, capture_output=True, timeout=60)
        gpg("--quick-generate-key", "old <old@example.invalid>", "ed25519", "sign", "1d", at="20200101T000000")
        sums = tmp_path / "SHA256SUMS"
        sums.write_text(f"{sha256(b'disk')} *a.img\n")
        gpg("--detach-sign", "-o", f"{sums}.gpg", str(sums), at="20200101T010000")
        with open(home / "keyring.gpg", "wb") as out:
            subprocess.run(["gpg", "--batch", "--homedir", str(home), "--export"], stdout=out, check=True, timeout=60)
        with pytest.raises(verify.VerificationError, match="the signing key has expired$"):
            verify.check_signature(sums, f"{sums}.gpg", home / "keyring.gpg", "x")
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def test_the_fingerprint_returned_is_the_signing_keys(signed, mirror_key):
    listed = subprocess.run(["gpg", "--batch", "--homedir", str(mirror_key.home), "--with-colons", "--fingerprint"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:"))
    assert verify.check_signature(signed, f"{signed}.gpg", mirror_key.keyring, "x") == fingerprint


# --- gpgv's status lines and how it is run, through a stand-in gpgv that records how it was called -------

FAKE_GPGV = """#!{python} -I
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
home = sys.argv[sys.argv.index("--homedir") + 1]
record = {{"argv": sys.argv[1:], "env": dict(os.environ), "stdin": os.readlink("/proc/self/fd/0"),
          "home": os.path.basename(home), "home_entries": os.listdir(home)}}
with open(os.path.join(here, "record.json"), "w") as out:
    json.dump(record, out)
if os.path.exists(os.path.join(here, "hang")):
    time.sleep(60)
with open(os.path.join(here, "status"), "rb") as status:
    sys.stdout.buffer.write(status.read())
sys.exit(int(open(os.path.join(here, "exit")).read()))
"""
GOOD = b"[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 5E6E433CA707E73D us <us@example.invalid>\n[GNUPG:] VALIDSIG FPR 2026-01-01\n"


@pytest.fixture
def fake_gpgv(tmp_path, monkeypatch):
    """A gpgv first on PATH: prints tmp/fake/status, exits with tmp/fake/exit; records its call."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "gpgv").write_text(FAKE_GPGV.format(python=sys.executable))
    (fake / "gpgv").chmod(0o755)
    (fake / "status").write_bytes(GOOD)
    (fake / "exit").write_text("0")
    (tmp_path / "keyring.gpg").write_bytes(b"")
    monkeypatch.setenv("PATH", f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return fake


def fake_check(tmp_path):
    return verify.check_signature(tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg", tmp_path / "keyring.gpg", "sums")


def test_gpgv_runs_with_only_path_and_the_c_locale_in_a_fresh_home_and_no_stdin(tmp_path, fake_gpgv):
    """No GNUPGHOME, GPG option or keys of the user take part; gpgv never reads a terminal (stdin)."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)  # our stdin is a pipe here: gpgv must not get it
    try:
        assert fake_check(tmp_path) == "FPR"
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    record = json.loads((fake_gpgv / "record.json").read_text())
    assert record["env"] == {"PATH": os.environ["PATH"], "LC_ALL": "C"}
    assert record["stdin"] == "/dev/null"
    assert record["home"].startswith("snpvirt-gpgv-") and record["home_entries"] == []  # a left-over is recognisable
    assert record["argv"][-2:] == [str(tmp_path / "SHA256SUMS.gpg"), str(tmp_path / "SHA256SUMS")]


def test_without_path_gpgv_gets_the_system_folders(tmp_path, fake_gpgv, monkeypatch):
    monkeypatch.setattr(verify.shutil, "which", lambda name: str(fake_gpgv / name))
    monkeypatch.delenv("PATH")
    assert fake_check(tmp_path) == "FPR"
    assert json.loads((fake_gpgv / "record.json").read_text())["env"] == {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def test_a_gpgv_that_hangs_is_stopped_at_its_timeout(tmp_path, fake_gpgv, monkeypatch):
    (fake_gpgv / "hang").touch()
    monkeypatch.setattr(verify, "GPGV_TIMEOUT_S", 0.5)
    with pytest.raises(verify.VerificationError) as caught:
        fake_check(tmp_path)
    assert (caught.value.message, caught.value.hint) == ("sums: gpgv did not finish in 0.5 s", "try again; nothing was used")


@pytest.mark.parametrize("status", [
    pytest.param(GOOD + b"[GNUPG:] BADSIG\n", id="a BADSIG without its arguments"),
    pytest.param(GOOD.replace(b"VALIDSIG FPR 2026-01-01", b"VALIDSIG"), id="a VALIDSIG without a fingerprint"),
    pytest.param(GOOD.replace(b"[GNUPG:] GOODSIG", b"[GNUPG:] XGOODSIG"), id="no GOODSIG"),
])
def test_status_lines_that_do_not_say_good_and_valid_are_refused(tmp_path, fake_gpgv, status):
    (fake_gpgv / "status").write_bytes(status)
    with pytest.raises(verify.VerificationError) as caught:
        fake_check(tmp_path)
    assert caught.value.hint == "nothing was used; check the mirror, or --keyring for a private mirror's key"


@pytest.mark.parametrize("status", [
    pytest.param(GOOD.replace(b"VALIDSIG FPR 2026-01-01", b"VALIDSIG FPR"), id="a VALIDSIG with the fingerprint only"),
    pytest.param(b"\n[GNUPG:]\n" + GOOD + "[GNUPG:] NOTATION_DATA \xe9t\xe9\n".encode("latin-1"), id="blank, bare, not UTF-8"),
    pytest.param(b"[GNUPG:] GOODSIG\n[GNUPG:] VALIDSIG FPR x\n", id="a GOODSIG without its arguments"),
])
def test_odd_but_good_status_lines_give_the_fingerprint(tmp_path, fake_gpgv, status):
    (fake_gpgv / "status").write_bytes(status)
    assert fake_check(tmp_path) == "FPR"


def test_a_refusal_without_a_known_keyword_names_gpgvs_exit_status(tmp_path, fake_gpgv):
    (fake_gpgv / "status").write_bytes(b"")
    (fake_gpgv / "exit").write_text("2")
    with pytest.raises(verify.VerificationError, match=r"^sums: no good signature by a key of .*: gpgv exit status 2$"):
        fake_check(tmp_path)


def test_without_gpgv_nothing_is_trusted_and_the_hint_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no gpgv there
    with pytest.raises(SnpvirtError) as caught:
        fake_check(tmp_path)
    assert type(caught.value) is SnpvirtError and caught.value.exit_code == ExitCode.FAILURE
    assert caught.value.message == "gpgv is not installed: the image's signature cannot be checked"
    assert caught.value.hint == "install it: apt install gpgv (it comes with gnupg)"


def test_the_missing_keyring_hint(signed, tmp_path):
    with pytest.raises(BadInputError) as caught:
        verify.check_signature(signed, f"{signed}.gpg", tmp_path / "none.gpg", "x")
    assert caught.value.hint == "install Ubuntu's keyring (apt install ubuntu-keyring), or give --keyring FILE"


def test_a_sums_file_of_the_largest_size_is_read_and_one_byte_more_is_refused():
    line = f"{sha256(b'a')} *a.img\n".encode()
    data = line + b"#" * (verify.MAX_SUMS_BYTES - len(line))
    assert verify.parse_sums(data, "x") == {"a.img": sha256(b"a")}
    with pytest.raises(verify.VerificationError) as caught:
        verify.parse_sums(data + b"#", "SHA256SUMS")
    assert caught.value.message == f"SHA256SUMS is {verify.MAX_SUMS_BYTES + 1} bytes: not a SHA256SUMS file"
    assert caught.value.hint == "check the mirror"


def test_a_line_that_is_not_utf8_does_not_hide_the_others():
    data = f"{sha256(b'a')} *a.img\n".encode() + f"{sha256(b'b')} *caf".encode() + b"\xe9.img\n"
    assert verify.parse_sums(data, "x") == {"a.img": sha256(b"a"), "caf\ufffd.img": sha256(b"b")}


def test_a_file_bigger_than_a_read_is_hashed_whole_in_bounded_reads(tmp_path, monkeypatch):
    data = os.urandom((1 << 20) + 1)
    path = tmp_path / "big"
    path.write_bytes(data)
    sizes = []

    class Recording(io.FileIO):
        def read(self, size=-1):
            sizes.append(size)
            return super().read(size)
    monkeypatch.setattr(verify, "open", lambda p, mode: Recording(p, "r"), raising=False)
    assert verify.check_digest(path, sha256(data), "big") == len(data)
    assert all(size is not None and 0 < size <= 1 << 22 for size in sizes), "a cloud image is never read whole"


def test_the_hint_after_a_wrong_digest(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(verify.VerificationError) as caught:
        verify.check_digest(tmp_path / "f", sha256(b"y"), "a.img")
    assert caught.value.hint == "the download was deleted; pull again, or check the mirror"


def test_a_wrong_file_that_another_pull_deleted_first_is_still_a_verification_error(tmp_path, monkeypatch):
    """Two pulls of one image verify the same download: the second to find it wrong finds it gone."""
    path = tmp_path / "download"
    path.write_bytes(b"disk!")
    hashed = verify.sha256_file

    def hashed_then_deleted_by_the_other_pull(p):
        result = hashed(p)
        Path(p).unlink()
        return result
    monkeypatch.setattr(verify, "sha256_file", hashed_then_deleted_by_the_other_pull)
    with pytest.raises(verify.VerificationError, match="SHA-256"):
        verify.check_digest(path, sha256(b"disk"), "a.img")
