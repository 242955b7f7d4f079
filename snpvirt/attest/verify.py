"""Verify an attestation report: AMD's chain, the report signature, the VCEK's binding to the report,
and the report's contents against what was launched. Verified means every check passed; a check
that could not be made fails (there is no "verified" without an expected measurement).
"""

from __future__ import annotations

import datetime
import hmac
from dataclasses import dataclass, field

from snpvirt.attest import amd_ecdsa, certs
from snpvirt.attest import report as reports
from snpvirt import policy as snp_policy


@dataclass(frozen=True)
class Expectations:
    measurement: bytes | None = None
    measurement_source: str = ""  # "--expected-measurement", "domain web-01", or why it is unknown
    report_data: bytes | None = None  # the nonce; without one a replayed report would pass...
    accept_replay: bool = False  # ...so its absence fails, unless the caller says replays are acceptable
    host_data: bytes | None = None
    policy: int | None = None  # the policy the domain was launched with
    allow_debug: bool = False
    vmpl: int | None = None  # the VMPL the report must have been requested at
    allow_migration_agent: bool = False  # MIGRATE_MA lets a migration agent read the guest's memory
    min_tcb: dict[str, int] | None = None  # e.g. {"bootloader": 3, "snp": 8}: the oldest firmware accepted
    id_key_digest: bytes | None = None  # from the ID block the domain was launched with
    author_key_digest: bytes | None = None


Check = certs.ChainCheck  # one pass/fail line, the same for the chain and the report


@dataclass
class Verdict:
    origin: str
    report: reports.Report
    product: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[str]:
        return [c.check_id for c in self.checks if not c.ok]


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


# How many bytes of the chip id a VCEK's hwID holds: all 64, or Turin's first 8. A shorter (or absent)
# hwID would be a prefix of many chips' ids and bind one VCEK to all of them.
HW_ID_BYTES = {"milan": (64,), "genoa": (64,), "turin": (8,)}


def _hw_id_lengths(rep: reports.Report, product: str | None) -> tuple[int, ...]:
    return HW_ID_BYTES.get(product or rep.product() or "", (8, 64))  # a v2 report does not say its product


def binds(cert: certs.Cert, rep: reports.Report, product: str | None = None) -> bool:
    """A VCEK's hwID names this report's chip (all 64 bytes, or Turin's first 8)."""
    hw_id = cert.hw_id() or b""
    return len(hw_id) in _hw_id_lengths(rep, product) and rep.chip_id.startswith(hw_id)


def _chip_id_message(vcek: certs.Cert, rep: reports.Report, product: str | None) -> str:
    hw_id = vcek.hw_id() or b""
    if binds(vcek, rep, product):
        return "VCEK hwID equals the report's chip id"
    if len(hw_id) not in _hw_id_lengths(rep, product):
        return (f"VCEK hwID is {len(hw_id)} bytes, not a whole chip id (64 bytes, Turin 8): "
                "it would stand for every chip it is a prefix of")
    return f"VCEK hwID {hw_id.hex()[:16]}... is another chip than the report's {rep.chip_id.hex()[:16]}..."


def tcb_matches(cert: certs.Cert, rep: reports.Report, product: str | None) -> bool:
    return all(cert.spl(name) == value for name, value in rep.tcb(rep.reported_tcb, product).parts.items())


def select_leaf(pool: list[certs.Cert], rep: reports.Report, product: str | None) -> certs.Cert | None:
    """The certificate that signed this report: the VLEK, or the VCEK for its chip. Among several
    candidates the one whose key verifies the signature (and matches the TCB) wins, so an extra or
    older certificate in the files cannot hide the right one."""
    role = "vlek" if rep.signing_key == "vlek" else "vcek"
    candidates = [c for c in pool if c.role == role and (role == "vlek" or binds(c, rep, product))]
    if len(candidates) > 1:
        signing = [c for c in candidates if isinstance(c.cert.public_key(), certs.ec.EllipticCurvePublicKey)
                   and amd_ecdsa.verify(c.cert.public_key(), rep.signature, rep.signed_bytes)]
        candidates = sorted(signing, key=lambda c: not tcb_matches(c, rep, product)) or candidates
    if candidates:
        return candidates[0]
    lone = [c for c in pool if c.role == role]
    return lone[0] if len(lone) == 1 else None  # another chip's: the checks below say exactly that


def _product_of(leaf: certs.Cert | None) -> str | None:
    if leaf is None:
        return None
    issuer = leaf.cert.issuer.get_attributes_for_oid(certs.x509.NameOID.COMMON_NAME)
    name = (issuer[0].value if issuer else "").lower() + " " + (leaf.product_name() or "").lower()
    return next((p for p in reports.PRODUCTS if p in name), None)


def verify(data: bytes, origin: str, pool: list[certs.Cert], *, expect: Expectations, now: datetime.datetime,
           trust_root: certs.Cert | None = None, product: str | None = None) -> Verdict:
    rep = reports.parse(data, origin)  # BadInputError: not a report at all
    leaf = select_leaf(pool, rep, product)
    product = product or rep.product() or _product_of(leaf)
    verdict = Verdict(origin, rep, product)
    add = lambda check_id, ok, message: verdict.checks.append(Check(check_id, ok, message))  # noqa: E731

    add("report.format", True, f"version {rep.version}, ECDSA P-384/SHA-384, {product or 'product unknown'}")
    reserved = rep.nonzero_reserved()
    if rep.signing_key not in ("vcek", "vlek"):
        reserved.append(f"signing key {rep.signing_key} (neither VCEK nor VLEK)")
    add("report.reserved", not reserved, "reserved fields are zero and the signing key is VCEK or VLEK" if not reserved
        else f"reserved values set: {'; '.join(reserved)}")

    chain = certs.verify_chain(pool, leaf, rep.signing_key if rep.signing_key in ("vcek", "vlek") else "vcek",
                               product, trust_root, now)
    verdict.checks.extend(chain.checks)
    if leaf is not None:
        key = leaf.cert.public_key()
        signed = isinstance(key, certs.ec.EllipticCurvePublicKey) and amd_ecdsa.verify(key, rep.signature, rep.signed_bytes)
        add("report.signature", signed, f"report signature {'verifies' if signed else 'does NOT verify'} with the "
            f"{leaf.role.upper()} ({leaf.source})")
        tcb = rep.tcb(rep.reported_tcb, product).parts
        mismatched = [f"{name} {leaf.spl(name)} != reported {value}" for name, value in tcb.items() if leaf.spl(name) != value]
        add("cert.tcb", not mismatched, f"{leaf.role.upper()} SPLs equal the reported TCB {tcb}" if not mismatched
            else f"{leaf.role.upper()} does not match the reported TCB: {'; '.join(mismatched)}")
        if leaf.role == "vcek":
            add("cert.chip_id", binds(leaf, rep, product), _chip_id_message(leaf, rep, product))
        else:
            add("cert.chip_id", True, "VLEK: signed for the cloud provider, not bound to a chip id")

    if expect.measurement is None:
        why = expect.measurement_source or "give --domain NAME or --expected-measurement HEX"
        add("expect.measurement", False, f"no expected measurement to compare with ({why})")
    else:
        same = _eq(rep.measurement, expect.measurement)
        add("expect.measurement", same, f"measurement {'equals' if same else 'DIFFERS from'} the expected one from "
            f"{expect.measurement_source}" + ("" if same else f": report {rep.measurement.hex()[:24]}..., "
                                              f"expected {expect.measurement.hex()[:24]}..."))
    debug = bool(rep.policy & snp_policy.DEBUG_BIT)
    add("expect.policy_debug", not debug or expect.allow_debug, "DEBUG is clear" if not debug else
        "policy allows DEBUG: the host can read this guest's memory" + (" (allowed by --allow-debug)" if expect.allow_debug else ""))
    structural = [p for p in snp_policy.problems(rep.policy, allow_debug=True)]
    migrate = bool(rep.policy >> 18 & 1) and not expect.allow_migration_agent
    add("expect.policy_flags", not structural and not migrate,
        structural[0].message if structural else "policy allows a migration agent (MIGRATE_MA), which can read guest "
        "memory (--allow-migration-agent to accept)" if migrate else "policy bits are valid; no migration agent")
    if expect.min_tcb:
        low = [f"{which} {name} {parts[name]} < {minimum}" for which, value in (
                   ("reported", rep.reported_tcb), ("current", rep.current_tcb), ("launch", rep.launch_tcb))
               for parts in [rep.tcb(value, product).parts] for name, minimum in expect.min_tcb.items()
               if name in parts and parts[name] < minimum]
        add("expect.min_tcb", not low, "reported, current and launch TCB meet --min-tcb" if not low else
            "TCB below --min-tcb: " + "; ".join(low))
    if expect.policy is not None:
        same = rep.policy == expect.policy
        add("expect.policy", same, f"policy {snp_policy.to_hex(rep.policy)} "
            + ("equals the launched policy" if same else f"differs from the launched {snp_policy.to_hex(expect.policy)}"))
    if expect.report_data is not None:
        wanted = expect.report_data.ljust(64, b"\0")
        same = _eq(rep.report_data, wanted)
        add("expect.report_data", same, "report_data equals the nonce" if same else "report_data is NOT the nonce (replay?)")
    elif not expect.accept_replay:
        add("expect.report_data", False, "no nonce to compare report_data with: an old or copied report would pass "
            "(give --report-data HEX, or --no-nonce to accept that)")
    if expect.host_data is not None:
        same = _eq(rep.host_data, expect.host_data)
        add("expect.host_data", same, "host_data equals the launched value" if same else "host_data differs from the launched value")
    if expect.vmpl is not None:
        add("expect.vmpl", rep.vmpl == expect.vmpl, f"requested at VMPL {rep.vmpl}" +
            ("" if rep.vmpl == expect.vmpl else f", expected VMPL {expect.vmpl}"))
    for check_id, wanted, got in (("expect.id_key_digest", expect.id_key_digest, rep.id_key_digest),
                                  ("expect.author_key_digest", expect.author_key_digest, rep.author_key_digest)):
        if wanted is not None:
            same = _eq(got, wanted)
            add(check_id, same, f"{check_id[7:].replace('_', ' ')} {'equals' if same else 'DIFFERS from'} the launched ID block's")
    return verdict
