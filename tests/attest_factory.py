"""A test AMD-like CA (RSA ARK and ASK, P-384 VCEK with AMD's extensions) that signs reports: the
hardware-free round trip. Nothing here is used by snpvirt itself."""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from snpvirt.attest import amd_ecdsa

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                                      "Advanced Micro Devices")])


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return bytes([0x02, len(body)]) + body


def _cert(subject: str, issuer: str, public_key, signing_key, extensions=(), days=3650, serial=1, pss=True) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public_key).serial_number(serial).not_valid_before(START)
               .not_valid_after(START + datetime.timedelta(days=days)))
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    if not isinstance(signing_key, rsa.RSAPrivateKey):
        return builder.sign(signing_key, hashes.SHA384())  # an EC "intermediate": AMD's are all RSA
    return builder.sign(signing_key, hashes.SHA384(), rsa_padding=PSS if pss else padding.PKCS1v15())


@dataclass
class TestCA:
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    chip_id: bytes
    tcb: dict
    product: str = "Milan"

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, cert in (("ark", self.ark), ("ask", self.ask), ("vcek", self.vcek)):
            paths[name] = folder / f"{name}.pem"
            paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return paths

    def report(self, measurement: bytes = bytes(48), *, report_data: bytes = bytes(64), policy: int = 0x30000,
               host_data: bytes = bytes(32), version: int = 2, id_key_digest: bytes = bytes(48),
               author_key_digest: bytes | None = None, current_tcb: dict | None = None, launch_tcb: dict | None = None,
               patch: dict[int, bytes] | None = None) -> bytes:
        """A report as the firmware would sign it with this CA's VCEK. The reported TCB is the VCEK's;
        current_tcb/launch_tcb change some of their parts (a guest launched before a firmware update,
        or a firmware rolled back since). `patch` writes raw bytes (offset: bytes) before signing."""
        raw = bytearray(0x4A0)
        turin = self.product == "Turin"
        reported = _tcb_value(self.tcb, turin)
        current = _tcb_value({**self.tcb, **(current_tcb or {})}, turin)
        struct.pack_into("<IIQ", raw, 0, version, 0, policy)
        struct.pack_into("<II", raw, 0x30, 0, 1)
        struct.pack_into("<QQ", raw, 0x38, current, 0x1)
        struct.pack_into("<I", raw, 0x48, 1 if author_key_digest is not None else 0)  # AUTHOR_KEY_EN
        raw[0x50:0x90] = report_data
        raw[0x90:0xC0] = measurement
        raw[0xC0:0xE0] = host_data
        raw[0xE0:0x110] = id_key_digest
        raw[0x110:0x140] = author_key_digest or bytes(48)
        raw[0x160:0x180] = b"\xff" * 32
        struct.pack_into("<Q", raw, 0x180, reported)
        raw[0x1A0:0x1E0] = self.chip_id
        struct.pack_into("<Q", raw, 0x1E0, current)
        raw[0x1E8:0x1EB] = bytes([4, 52, 1])
        struct.pack_into("<Q", raw, 0x1F0, _tcb_value({**self.tcb, **(launch_tcb or {})}, turin))
        for offset, value in (patch or {}).items():
            raw[offset:offset + len(value)] = value
        signature = amd_ecdsa.sign(self.vcek_key, bytes(raw[:0x2A0]))
        raw[0x2A0:0x2A0 + 144] = signature[:144]
        return bytes(raw)


def _tcb_value(parts: dict, turin: bool = False) -> int:
    """TCB_VERSION. Milan/Genoa: boot loader, TEE, 4 reserved bytes, SNP, microcode. Turin: FMC, boot
    loader, TEE, SNP, 3 reserved bytes, microcode."""
    if turin:
        return parts["fmc"] | parts["bootloader"] << 8 | parts["tee"] << 16 | parts["snp"] << 24 | parts["microcode"] << 56
    return parts["bootloader"] | parts["tee"] << 8 | parts["snp"] << 48 | parts["microcode"] << 56


CHIP_ID = object()  # make_ca(hw_id=CHIP_ID): the VCEK's hwID is the chip id, as KDS issues it


# Making an RSA-2048 key takes ~0.1 s: most of an attestation test's time, and of every mutant's in
# scripts/mutation. make_ca takes its RSA keys from a pool in turn, so keys repeat only after
# _RSA_POOL_SIZE draws (a test that needs CAs with distinct keys makes at most 4, all of them in the
# test: a CA kept across tests, like test_attest's shared_ca(), may share keys with a later one),
# and a forked process (mutmut tests each mutant in one) inherits the pool instead of making it again.
_RSA_POOL_SIZE = 12
_rsa_pool: list[rsa.RSAPrivateKey] = []
_rsa_draws = 0


def _rsa_key() -> rsa.RSAPrivateKey:
    global _rsa_draws
    if len(_rsa_pool) < _RSA_POOL_SIZE:
        _rsa_pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    key = _rsa_pool[_rsa_draws % _RSA_POOL_SIZE]
    _rsa_draws += 1
    return key


def make_ca(product: str = "Milan", chip_id: bytes = bytes(range(64)), tcb: dict | None = None, *,
            hw_id: bytes | None | object = CHIP_ID, expired: tuple[str, ...] = (), ark_self_signed: bool = True) -> TestCA:
    """A CA and its VCEK. Broken on request: `hw_id` another hwID (None: no hwID extension), `expired`
    the roles ("ark", "ask", "vcek") whose validity ended in January 2024, `ark_self_signed=False` an
    ARK signed by some other key. A Turin CA's TCB has an FMC part and Turin's layout."""
    tcb = tcb or {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, **({"fmc": 1} if product == "Turin" else {})}
    ark_key, ask_key = _rsa_key(), _rsa_key()
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    days = {role: 30 if role in expired else 3650 for role in ("ark", "ask", "vcek")}
    ark_signer = ark_key if ark_self_signed else _rsa_key()
    ark = _cert(f"ARK-{product}", f"ARK-{product}", ark_key.public_key(), ark_signer, days=days["ark"])
    ask = _cert(f"SEV-{product}", f"ARK-{product}", ask_key.public_key(), ark_key, days=days["ask"])
    hw_id = chip_id if hw_id is CHIP_ID else hw_id
    vcek = _cert("SEV-VCEK", f"SEV-{product}", vcek_key.public_key(), ask_key, _leaf_extensions(product, tcb, hw_id),
                 days=days["vcek"])
    return TestCA(ark_key, ask_key, vcek_key, ark, ask, vcek, chip_id, tcb, product)


def _leaf_extensions(product: str, tcb: dict, hw_id: bytes | None) -> list[tuple[str, bytes]]:
    """AMD's VCEK extensions: structure version, product name, the TCB's SPLs, the hwID (chip id)."""
    amd = "1.3.6.1.4.1.3704.1"
    extensions = [(f"{amd}.1", _der_int(0)), (f"{amd}.2", b"\x16" + bytes([len(product) + 3]) + f"{product}-B0".encode()),
                  (f"{amd}.3.1", _der_int(tcb["bootloader"])), (f"{amd}.3.2", _der_int(tcb["tee"])),
                  (f"{amd}.3.3", _der_int(tcb["snp"])), (f"{amd}.3.8", _der_int(tcb["microcode"]))]
    if "fmc" in tcb:
        extensions.append((f"{amd}.3.9", _der_int(tcb["fmc"])))
    if hw_id is not None:
        extensions.append((f"{amd}.4", hw_id))
    return extensions


def issue_vcek(ca: TestCA, tcb: dict, chip_id: bytes | None = None, product: str = "Milan",
               days: int = 3650) -> x509.Certificate:
    """Another VCEK from this CA's ASK: the same chip after a firmware update (another TCB), or one that
    expires `days` after 2024-01-01."""
    key = ec.generate_private_key(ec.SECP384R1())
    return _cert("SEV-VCEK", f"SEV-{product}", key.public_key(), ca.ask_key,
                 _leaf_extensions(product, tcb, ca.chip_id if chip_id is None else chip_id), days=days)


def leaf_cert(ca: TestCA, *, cn: str = "SEV-VCEK", issuer: str = "SEV-Milan", product: str = "Milan",
              tcb: dict | None = None, hw_id: bytes | None | object = CHIP_ID, key=None, signer=None,
              pss: bool = True) -> x509.Certificate:
    """Another leaf, signed by this CA's ASK unless `signer` is given: the same VCEK key for another TCB,
    a VLEK, another chip's VCEK, a key of another kind (`key`), a PKCS#1 v1.5 signature (pss=False)."""
    public_key = (key or ca.vcek_key).public_key()
    extensions = _leaf_extensions(product, {**ca.tcb, **(tcb or {})}, ca.chip_id if hw_id is CHIP_ID else hw_id)
    return _cert(cn, issuer, public_key, signer or ca.ask_key, extensions, pss=pss)
