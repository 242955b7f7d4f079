"""What makes downloaded files trustworthy: a good signature over SHA256SUMS by a key of the keyring
(checked by gpgv, the distribution's verify-only OpenPGP tool), then each file's SHA-256 against the
list. Nothing is trusted for where it came from: a mirror (or the network) may hand out anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from snpvirt.errors import BadInputError, SnpvirtError

GPGV_TIMEOUT_S = 30.0  # gpgv checks one signature over a few KiB: seconds at most, even on a slow host
MAX_SUMS_BYTES = 1 << 20  # a release's SHA256SUMS is ~1-2 KiB; anything near this is not one
_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>\S.*)")


# gpgv's status keywords for a signature that is not good, the most telling first (a missing key
# gives ERRSIG and NO_PUBKEY both).
_WHY = (("BADSIG", "the signature does not match the file"),
        ("NO_PUBKEY", "it is signed by a key that is not in the keyring"),
        ("EXPKEYSIG", "the signing key has expired"), ("REVKEYSIG", "the signing key was revoked"),
        ("NODATA", "it is not a signature"), ("ERRSIG", "the signature cannot be checked"))


class VerificationError(SnpvirtError):
    """A signature or a digest that does not check out (exit 1): nothing of it is used or kept."""


def check_signature(sums: Path, signature: Path, keyring: str | os.PathLike, what: str) -> str:
    """gpgv over `sums` with the detached `signature`, against `keyring` only; returns the signing key's
    fingerprint. VerificationError unless gpgv says the signature is good and valid."""
    gpgv = shutil.which("gpgv")
    if gpgv is None:
        raise SnpvirtError("gpgv is not installed: the image's signature cannot be checked",
                           "install it: apt install gpgv (it comes with gnupg)")
    keyring = Path(keyring)
    if not keyring.is_file():
        raise BadInputError(f"keyring {keyring} does not exist or is not a file",
                            "install Ubuntu's keyring (apt install ubuntu-keyring), or give --keyring FILE")
    with tempfile.TemporaryDirectory(prefix="snpvirt-gpgv-") as home:  # no ~/.gnupg keys take part
        try:
            done = subprocess.run([gpgv, "--homedir", home, "--status-fd", "1", "--keyring", str(keyring.resolve()),
                                   str(signature), str(sums)],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=GPGV_TIMEOUT_S,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
        except subprocess.TimeoutExpired:
            raise VerificationError(f"{what}: gpgv did not finish in {GPGV_TIMEOUT_S:g} s",
                                    "try again; nothing was used") from None
    status = [line.split() for line in done.stdout.decode("utf-8", "replace").splitlines()]
    keywords = {words[1] for words in status if len(words) > 1 and words[0] == "[GNUPG:]"}
    valid = [words[2] for words in status if len(words) > 2 and words[:2] == ["[GNUPG:]", "VALIDSIG"]]
    # One good signature by a key of the keyring is enough (a list may carry a second signature by a key
    # the keyring lacks: gpgv then exits non-zero); any bad signature is tampering, whatever else is good.
    if not valid or "GOODSIG" not in keywords or "BADSIG" in keywords:
        why = next((text for keyword, text in _WHY if keyword in keywords), f"gpgv exit status {done.returncode}")
        raise VerificationError(f"{what}: no good signature by a key of {keyring}: {why}",
                                "nothing was used; check the mirror, or --keyring for a private mirror's key")
    return valid[0]


def parse_sums(data: bytes, what: str) -> dict[str, str]:
    """A SHA256SUMS file: `<hex>  name` or `<hex> *name` per line -> {name: lowercase hex}."""
    if len(data) > MAX_SUMS_BYTES:
        raise VerificationError(f"{what} is {len(data)} bytes: not a SHA256SUMS file", "check the mirror")
    sums: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        match = _LINE.fullmatch(line.strip())
        if match:
            sums[match["name"]] = match["digest"].lower()
    return sums


def sha256_file(path: str | os.PathLike) -> tuple[str, int]:
    """(hex digest, size) of a cache file, streamed."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def check_digest(path: str | os.PathLike, expected: str, what: str) -> int:
    """The file's size when its SHA-256 is `expected`; VerificationError (and the file deleted) otherwise."""
    actual, size = sha256_file(path)
    if not hmac.compare_digest(actual, expected.lower()):
        Path(path).unlink(missing_ok=True)
        raise VerificationError(f"{what}: SHA-256 {actual} is not the {expected} that the signed SHA256SUMS lists",
                                "the download was deleted; pull again, or check the mirror")
    return size
