"""ECDSA P-384 in AMD's SEV-SNP layouts: public keys and signatures with little-endian numbers.

Used by ID blocks (docs/measurement.md §9) and attestation report signatures (§11.1).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

KEY_SIZE = 0x404
SIG_SIZE = 512
CURVE_P384 = 2


def public_key_struct(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The 1028-byte key: curve id, then QX and QY little-endian, 72 bytes each."""
    numbers = (key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key).public_numbers()
    return (struct.pack("<I", CURVE_P384) + numbers.x.to_bytes(72, "little") + numbers.y.to_bytes(72, "little")
            ).ljust(KEY_SIZE, b"\0")


def signature_struct(der_signature: bytes) -> bytes:
    """A DER signature as R and S little-endian, 72 bytes each, in a 512-byte structure."""
    r, s = decode_dss_signature(der_signature)
    return (r.to_bytes(72, "little") + s.to_bytes(72, "little")).ljust(SIG_SIZE, b"\0")


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    try:
        # RFC 6979: the same inputs give the same signature, so re-rendering a spec changes nothing.
        algorithm = ec.ECDSA(hashes.SHA384(), deterministic_signing=True)
    except TypeError:  # cryptography < 44
        algorithm = ec.ECDSA(hashes.SHA384())
    return signature_struct(key.sign(data, algorithm))


def verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Check an AMD-layout signature (R, S little-endian) over data with ECDSA P-384 / SHA-384."""
    r = int.from_bytes(signature[0:72], "little")
    s = int.from_bytes(signature[72:144], "little")
    try:
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA384()))
        return True
    except InvalidSignature:
        return False
