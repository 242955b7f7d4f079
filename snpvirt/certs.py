"""AMD's SEV-SNP certificates: load and sort them, read the VCEK/VLEK extensions, check the chain.

ARK (RSA-4096, self-signed) -> ASK or ASVK -> VCEK or VLEK (EC P-384), every signature RSASSA-PSS
with SHA-384 and a 48-byte salt. The ARK is pinned by the SHA-256 of its public key
(docs/measurement.md §11.2-§11.3).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from snpvirt import fileio
from snpvirt.errors import BadInputError

# SHA-256 of the SubjectPublicKeyInfo of AMD's root keys, per product.
PINNED_ARK_SPKI = {
    "milan": "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    "genoa": "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    "turin": "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
}
AMD_OID = "1.3.6.1.4.1.3704.1"
SPL_OIDS = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@dataclass(frozen=True)
class Cert:
    cert: x509.Certificate
    source: str

    @functools.cached_property
    def fingerprint(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA256())

    @functools.cached_property
    def cn(self) -> str:
        names = self.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return names[0].value if names else ""

    @functools.cached_property
    def role(self) -> str:
        """ark, ask, asvk, vcek, vlek, or other, from AMD's naming of the subject."""
        cn = self.cn
        if cn.startswith("ARK-"):
            return "ark"
        if cn.startswith("SEV-VLEK-"):
            return "asvk"
        if cn == "SEV-VCEK":
            return "vcek"
        if cn == "SEV-VLEK":
            return "vlek"
        if cn.startswith("SEV-"):
            return "ask"
        return "other"

    @functools.cached_property
    def product(self) -> str | None:
        """milan/genoa/turin from the CN of an ARK/ASK/ASVK (ARK-Milan, SEV-Genoa, SEV-VLEK-Turin)."""
        for product in ("milan", "genoa", "turin"):
            if self.cn.lower().endswith(product):
                return product
        return None

    def spki_sha256(self) -> str:
        der = self.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()

    def extension(self, suffix: str) -> bytes | None:
        oid = x509.ObjectIdentifier(f"{AMD_OID}.{suffix}")
        try:
            return self.cert.extensions.get_extension_for_oid(oid).value.value
        except x509.ExtensionNotFound:
            return None

    def spl(self, name: str) -> int | None:
        value = self.extension(SPL_OIDS[name])
        return _der_integer(value) if value is not None else None

    def hw_id(self) -> bytes | None:
        """The chip id; KDS stores it raw, some tools wrap it in an OCTET STRING: accept both."""
        value = self.extension("4")
        # Wrapped only when it is exactly an OCTET STRING of 64 (or Turin's 8) bytes: a raw chip id that
        # happens to start with 04 3e must not be mistaken for one.
        if value is not None and (value[:2], len(value)) in ((b"\x04\x40", 66), (b"\x04\x08", 10)):
            return value[2:]
        return value

    def product_name(self) -> str | None:
        value = self.extension("2")
        if value is not None and len(value) >= 2 and value[0] == 0x16:
            return value[2:2 + value[1]].decode("ascii", "replace")
        return None


def _der_integer(value: bytes) -> int | None:
    if len(value) >= 3 and value[0] == 0x02 and value[1] == len(value) - 2:
        return int.from_bytes(value[2:], "big", signed=True)
    return None


def load(data: bytes, source: str) -> list[Cert]:
    """Every certificate in a PEM bundle, or one DER certificate."""
    with warnings.catch_warnings():
        # AMD's VCEKs have serial number 0, which RFC 5280 forbids; cryptography warns, we accept it.
        warnings.simplefilter("ignore")
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                return [Cert(_parsed(c), source) for c in x509.load_pem_x509_certificates(data)]
            return [Cert(_parsed(x509.load_der_x509_certificate(data)), source)]
        except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
            raise BadInputError(f"{source}: not an X.509 certificate ({exc})",
                                "give PEM or DER certificates (ARK, ASK, VCEK), e.g. from snpvirt attest fetch-certs") from None


def _parsed(cert: x509.Certificate) -> x509.Certificate:
    """The certificate with every part snpvirt reads parsed now. cryptography parses lazily, so a damaged
    certificate (an unknown curve, a malformed extension) would otherwise fail mid-verification."""
    _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key(), cert.signature_algorithm_oid,
         cert.not_valid_before_utc, cert.not_valid_after_utc)
    return cert


def load_paths(paths: list[Path]) -> list[Cert]:
    found: list[Cert] = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pem", ".der", ".crt", ".cer")) \
            if path.is_dir() else [path]
        for file in files:
            found.extend(load(fileio.read_input(file, "certificate"), str(file)))
    return found


@dataclass
class ChainCheck:
    """One pass/fail line of a verification."""

    check_id: str
    ok: bool
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"id": self.check_id, "status": "pass" if self.ok else "fail", "message": self.message}


# (child, parent) fingerprints -> result: a fleet's reports share a handful of chains.
_SIGNATURES: dict[tuple[bytes, bytes], tuple[bool, str]] = {}


def _signed_by(child: Cert, parent: Cert) -> tuple[bool, str]:
    key = (child.fingerprint, parent.fingerprint)
    if key not in _SIGNATURES:
        _SIGNATURES[key] = _check_signature(child, parent)
    return _SIGNATURES[key]


def _check_signature(child: Cert, parent: Cert) -> tuple[bool, str]:
    key = parent.cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False, f"{parent.cn} does not hold an RSA key"
    if child.cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        return False, f"{child.cn} is not signed with RSASSA-PSS"
    try:
        key.verify(child.cert.signature, child.cert.tbs_certificate_bytes, PSS, hashes.SHA384())
        return True, f"{child.cn} signed by {parent.cn} (RSA-PSS, SHA-384, salt 48)"
    except InvalidSignature:
        return False, f"{child.cn} ({child.source}) is NOT signed by {parent.cn} ({parent.source})"


def _valid_at(cert: Cert, now: datetime.datetime) -> tuple[bool, str]:
    before, after = cert.cert.not_valid_before_utc, cert.cert.not_valid_after_utc
    if now < before:
        return False, f"{cert.cn} is not valid before {before.isoformat()}"
    if now > after:
        return False, f"{cert.cn} expired {after.isoformat()}"
    return True, f"{cert.cn} valid {before.date()} .. {after.date()}"


@dataclass
class Chain:
    ark: Cert | None
    intermediate: Cert | None  # ASK for a VCEK, ASVK for a VLEK
    leaf: Cert | None
    checks: list[ChainCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


# Where the missing certificates come from, said where they are missed. A VLEK is the cloud provider's: AMD's
# KDS serves VLEKs only to providers, so --fetch cannot get one.
MISSING_LEAF_HINT = {
    "vcek": "give --certs DIR or --vcek FILE, or --fetch to get it from AMD KDS",
    "vlek": "give --vcek FILE or --certs DIR with the VLEK the cloud provider supplies (a guest gets it with "
            "snpvirt guest report --certs-out DIR)",
}
MISSING_CHAIN_HINT = "give --certs DIR or --chain PEM, or --fetch to get ARK and ASK from AMD KDS"


def verify_chain(pool: list[Cert], leaf: Cert | None, signer: str, product: str | None,
                 trust_root: Cert | None, now: datetime.datetime) -> Chain:
    """ARK (pinned or --trust-root) -> ASK/ASVK -> leaf; every link and validity period checked."""
    want_intermediate = "asvk" if signer == "vlek" else "ask"
    arks = [c for c in pool if c.role == "ark" and (product is None or c.product == product)]
    inters = [c for c in pool if c.role == want_intermediate and (product is None or c.product == product)]
    # Prefer the ARK that carries AMD's pinned key: an extra, untrusted root among the files cannot hide it.
    pinned = [c for c in arks if c.spki_sha256() == PINNED_ARK_SPKI.get(c.product or "")]
    ark = trust_root or (pinned or arks or [None])[0]
    intermediate = next((i for i in inters if ark is not None and _signed_by(i, ark)[0]), inters[0] if inters else None)
    chain = Chain(ark, intermediate, leaf)
    add = lambda check_id, ok, message: chain.checks.append(ChainCheck(check_id, ok, message))  # noqa: E731
    if leaf is None:
        add("cert.leaf", False, f"no {signer.upper()} certificate for this report ({MISSING_LEAF_HINT[signer]})")
        return chain
    if ark is None or intermediate is None:
        missing = "ARK" if ark is None else want_intermediate.upper()
        add("cert.chain", False, f"no {missing}{' for ' + product if product else ''} among the certificates given "
                                 f"({MISSING_CHAIN_HINT})")
        return chain
    if trust_root is not None:
        add("cert.ark_pinned", True, f"ARK is the --trust-root {trust_root.source} (AMD's pin replaced)")
    else:
        pin = PINNED_ARK_SPKI.get(ark.product or "")
        pinned = pin is not None and ark.spki_sha256() == pin
        add("cert.ark_pinned", pinned, f"{ark.cn} public key " + (f"matches AMD's pinned {ark.product} root" if pinned
                                                                  else "is not AMD's root key for any product"))
    add("cert.ark_self_signed", *_signed_by(ark, ark))
    add(f"cert.{want_intermediate}_signed_by_ark", *_signed_by(intermediate, ark))
    add(f"cert.{signer}_signed_by_{want_intermediate}", *_signed_by(leaf, intermediate))
    key = leaf.cert.public_key()
    is_p384 = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    add(f"cert.{signer}_key", is_p384, f"{leaf.cn} key is " + ("EC P-384" if is_p384 else "not EC P-384"))
    for cert in (ark, intermediate, leaf):
        add(f"cert.validity.{cert.role}", *_valid_at(cert, now))
    return chain


def signed_by(child: Cert, parent: Cert) -> tuple[bool, str]:
    """Whether `parent`'s key signed `child`, and a sentence saying so (the KDS client checks downloads with it)."""
    return _signed_by(child, parent)


def valid_at(cert: Cert, now: datetime.datetime) -> tuple[bool, str]:
    """Whether `now` is inside the certificate's validity period, and a sentence saying so."""
    return _valid_at(cert, now)
