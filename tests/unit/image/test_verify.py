"""gpgv over SHA256SUMS (real gpgv, a throwaway key) and SHA-256 of each file."""

import pytest

from snpvirt.errors import BadInputError
from snpvirt.image import verify
from snpvirt.image.verify import VerificationError
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
    with pytest.raises(VerificationError, match="does not match the file"):
        verify.check_signature(signed, f"{signed}.gpg", mirror_key.keyring, "SHA256SUMS")


def test_a_signature_by_a_key_not_in_the_keyring_fails(tmp_path, mirror_key):
    with signer("someone else <other@example.invalid>") as other:
        write_sums(tmp_path, {"a.img": b"disk"}, other)
        with pytest.raises(VerificationError, match="not in the keyring"):
            verify.check_signature(tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg", mirror_key.keyring, "x")


def test_something_that_is_no_signature_fails(signed, mirror_key, tmp_path):
    (tmp_path / "junk.gpg").write_bytes(b"<html>login</html>")
    with pytest.raises(VerificationError, match="no good signature"):
        verify.check_signature(signed, tmp_path / "junk.gpg", mirror_key.keyring, "x")


def test_ubuntus_own_keyring_does_not_accept_a_test_key(signed):
    with pytest.raises(VerificationError, match="not in the keyring"):
        verify.check_signature(signed, f"{signed}.gpg", "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg", "x")


def test_a_missing_keyring_is_bad_input_with_the_package_to_install(signed, tmp_path):
    with pytest.raises(BadInputError, match="does not exist") as caught:
        verify.check_signature(signed, f"{signed}.gpg", tmp_path / "none.gpg", "x")
    assert "ubuntu-keyring" in caught.value.hint


def test_a_file_that_does_not_match_is_deleted(tmp_path):
    path = tmp_path / "download"
    path.write_bytes(b"disk!")
    with pytest.raises(VerificationError, match="SHA-256"):
        verify.check_digest(path, sha256(b"disk"), "a.img")
    assert not path.exists()
    path.write_bytes(b"disk")
    assert verify.check_digest(path, sha256(b"disk"), "a.img") == 4


def test_sums_lines_in_both_forms_and_nothing_else():
    text = f"{sha256(b'a')} *a.img\n{sha256(b'b').upper()}  unpacked/b\nnot a line\n\n".encode()
    assert verify.parse_sums(text, "x") == {"a.img": sha256(b"a"), "unpacked/b": sha256(b"b")}
    with pytest.raises(VerificationError):
        verify.parse_sums(b"x" * (verify.MAX_SUMS_BYTES + 1), "x")
