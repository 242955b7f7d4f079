"""SEV-SNP ID block (96 bytes) and ID authentication information (4096 bytes), signed with P-384 keys.

Layout and signing: docs/measurement.md §9. AMD's structures store ECDSA numbers
little-endian, zero-extended to 72 bytes. Keys never leave this module: only public digests do.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from snpvirt import fileio
from snpvirt.amd_ecdsa import KEY_SIZE, SIG_SIZE, public_key_struct, sign
from snpvirt.errors import BadInputError

ID_BLOCK_SIZE = 96
ID_AUTH_SIZE = 4096
ALGO_ECDSA_P384_SHA384 = 1
ID_KEY_OFFSET = 0x240  # the ID public key structure inside ID_AUTH_INFO (§13.1)
AUTHOR_KEY_OFFSET = 0x880  # the author public key structure


def id_block(measurement: bytes, policy: int, family_id: bytes = bytes(16), image_id: bytes = bytes(16),
             guest_svn: int = 0, version: int = 1) -> bytes:
    if len(measurement) != 48 or len(family_id) != 16 or len(image_id) != 16:
        raise BadInputError("the ID block needs a 48-byte measurement and 16-byte family and image ids",
                            "give --measurement as 96 hex digits, --family-id/--image-id as 32 hex digits")
    return measurement + family_id + image_id + struct.pack("<IIQ", version, guest_svn, policy)


def load_private_key(path: str | Path, role: str) -> ec.EllipticCurvePrivateKey:
    data = fileio.read_input(path, "key", f"the {role}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"the {role} {path} is not an unencrypted PEM private key ({exc})",
                            "create one with: openssl ecparam -name secp384r1 -genkey -noout -out key.pem") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise BadInputError(f"the {role} {path} is not a P-384 EC private key; SEV-SNP ID keys must be ECDSA P-384",
                            "create one with: openssl ecparam -name secp384r1 -genkey -noout -out key.pem")
    return key


def id_auth(block_signature: bytes, id_key: bytes, key_signature: bytes = bytes(SIG_SIZE),
            author_key: bytes = bytes(KEY_SIZE)) -> bytes:
    """ID_AUTH_INFO from its four parts (signatures and keys already in AMD's layouts)."""
    auth = bytearray(ID_AUTH_SIZE)
    struct.pack_into("<II", auth, 0, ALGO_ECDSA_P384_SHA384, ALGO_ECDSA_P384_SHA384)
    auth[0x040:0x040 + SIG_SIZE] = block_signature
    auth[ID_KEY_OFFSET:ID_KEY_OFFSET + KEY_SIZE] = id_key
    auth[0x680:0x680 + SIG_SIZE] = key_signature
    auth[AUTHOR_KEY_OFFSET:AUTHOR_KEY_OFFSET + KEY_SIZE] = author_key
    return bytes(auth)


def launched_key_digests(id_auth_b64: str, author_key_enabled: bool) -> tuple[bytes, bytes]:
    """The ID_KEY_DIGEST and AUTHOR_KEY_DIGEST a report carries when its guest was launched with this
    base64 ID_AUTH_INFO (libvirt's <idAuth>): SHA-384 of each public key structure (§13.2). The firmware
    reads the author key only with AUTH_KEY_EN (authorKey='yes'); without it the report's author digest is zeros."""
    try:
        auth = base64.b64decode(id_auth_b64.strip(), validate=True)
    except ValueError:
        auth = b""
    if len(auth) != ID_AUTH_SIZE:
        raise BadInputError(f"the ID authentication information is not {ID_AUTH_SIZE} bytes of base64",
                            "build it with: snpvirt idblock SPEC --id-key PEM")
    id_key = auth[ID_KEY_OFFSET:ID_KEY_OFFSET + KEY_SIZE]
    author_key = auth[AUTHOR_KEY_OFFSET:AUTHOR_KEY_OFFSET + KEY_SIZE]
    return hashlib.sha384(id_key).digest(), hashlib.sha384(author_key).digest() if author_key_enabled else bytes(48)


@dataclass(frozen=True)
class IdBlockSet:
    id_block: bytes
    id_auth: bytes
    id_key_digest: bytes  # SHA-384 of the ID key structure: the report's ID_KEY_DIGEST
    author_key_digest: bytes | None  # the report's AUTHOR_KEY_DIGEST, with an author key


def build(measurement: bytes, policy: int, id_key: ec.EllipticCurvePrivateKey,
          author_key: ec.EllipticCurvePrivateKey | None = None, family_id: bytes = bytes(16),
          image_id: bytes = bytes(16), guest_svn: int = 0) -> IdBlockSet:
    block = id_block(measurement, policy, family_id, image_id, guest_svn)
    id_key_struct = public_key_struct(id_key)
    author_struct = public_key_struct(author_key) if author_key is not None else bytes(KEY_SIZE)
    key_signature = sign(author_key, id_key_struct) if author_key is not None else bytes(SIG_SIZE)
    auth = id_auth(sign(id_key, block), id_key_struct, key_signature, author_struct)
    return IdBlockSet(block, auth, hashlib.sha384(id_key_struct).digest(),
                      hashlib.sha384(author_struct).digest() if author_key is not None else None)
