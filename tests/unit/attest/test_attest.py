"""Attestation with real reports and certificates, and a hardware-free round trip with a test CA."""

from __future__ import annotations

import datetime
import functools
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from snpvirt.attest import certs, verify
from snpvirt.attest import report as reports
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError, ExitCode
from tests.attest_factory import _cert, leaf_cert, make_ca
from tests.conftest import VECTORS, vector

UTC = datetime.timezone.utc


def replayable(measurement, source, **kwargs):
    """Expectations for published or fabricated reports, whose nonce is not ours to check."""
    kwargs.setdefault("accept_replay", True)
    return verify.Expectations(measurement, source, **kwargs)


def expected_entries():
    return [pytest.param(e, id=e["name"]) for e in json.loads(vector("attestation/expected-fields.json").read_text())]


def chain_for(entry):
    product = entry["chain"].split("/")[0].lower()
    return certs.load_paths([vector(f"amd-certs/trustee/{product}_ask_ark_asvk.pem")])


def pinned_now(entry):
    """Inside the signer certificate's validity (the AWS VLEK expired 2025-12-10)."""
    return datetime.datetime.fromisoformat(entry["signer_cert"]["not_before"]) + datetime.timedelta(days=30)


@pytest.mark.parametrize("entry", expected_entries())
def test_every_field_of_the_real_reports(entry):
    fields = reports.parse(vector(entry["report_file"]).read_bytes()).as_dict()
    for key, value in entry["fields"].items():
        got = fields[key]
        if key == "signing_key":
            assert got == reports.SIGNING_KEYS[value]
        elif key.endswith("_tcb"):
            assert {k: got[k] for k in value if k != "raw"} == {k: v for k, v in value.items() if k != "raw"}
            assert int(got["raw"], 16) == int(value["raw"], 16)
        elif isinstance(value, dict):
            assert {k: got[k] for k in value} == value, key
        else:
            assert got == value, key


@pytest.mark.parametrize("entry", expected_entries())
def test_every_real_report_verifies_with_its_certificates(entry):
    pool = certs.load_paths([vector(entry["signer_cert_file"])]) + chain_for(entry)
    verdict = verify.verify(vector(entry["report_file"]).read_bytes(), entry["name"], pool,
                            expect=replayable(bytes.fromhex(entry["fields"]["measurement"]), "expected-fields.json",
                                                       allow_debug=True), now=pinned_now(entry))
    assert verdict.verified, verdict.failed()
    assert {"cert.ark_pinned", "report.signature", "cert.tcb", "cert.chip_id"} <= {c.check_id for c in verdict.checks}


def milan_case():
    entry = next(e for e in json.loads(vector("attestation/expected-fields.json").read_text()) if e["name"] == "virtee-sev/milan")
    data = vector(entry["report_file"]).read_bytes()
    pool = certs.load_paths([vector(entry["signer_cert_file"]), vector("attestation/virtee-sev/cert_chain_milan.pem")])
    return entry, data, pool


def test_flipping_any_byte_of_the_signed_area_breaks_verification():
    entry, data, pool = milan_case()
    expect = replayable(bytes.fromhex(entry["fields"]["measurement"]), "test")
    now = pinned_now(entry)
    for offset in range(0x2A0):
        tampered = bytearray(data)
        tampered[offset] ^= 0x80
        try:
            verdict = verify.verify(bytes(tampered), "tampered", pool, expect=expect, now=now)
        except BadInputError:
            continue  # version or algorithm no longer valid: refused as not a report
        assert not verdict.verified, offset
        assert "report.signature" in verdict.failed(), offset


def test_a_flipped_signature_byte_and_a_flipped_vcek_byte_fail():
    entry, data, pool = milan_case()
    expect = replayable(bytes.fromhex(entry["fields"]["measurement"]), "test")
    tampered = bytearray(data)
    tampered[0x2A0] ^= 1
    assert "report.signature" in verify.verify(bytes(tampered), "t", pool, expect=expect, now=pinned_now(entry)).failed()
    der = bytearray(vector("attestation/virtee-sev/vcek_milan.der").read_bytes())
    der[40] ^= 0xFF
    broken = certs.load(bytes(der), "vcek-flipped") + [c for c in pool if c.role != "vcek"]
    assert not verify.verify(data, "r", broken, expect=expect, now=pinned_now(entry)).verified


def test_a_vcek_from_another_chip_fails():
    entry, data, pool = milan_case()
    other = certs.load_paths([vector("attestation/go-sev-guest/vcek_milan.der")])
    verdict = verify.verify(data, "r", other + [c for c in pool if c.role != "vcek"],
                            expect=replayable(bytes.fromhex(entry["fields"]["measurement"]), "t"), now=pinned_now(entry))
    assert {"cert.chip_id", "report.signature", "cert.tcb"} <= set(verdict.failed())


@pytest.mark.parametrize("name", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_deliberately_invalid_vceks_fail_with_a_clear_reason(name):
    data = vector("attestation/trustee/test-report.bin").read_bytes()
    pool = certs.load_paths([vector(f"attestation/trustee/{name}")]) + certs.load_paths(
        [vector("amd-certs/trustee/milan_ask_ark_asvk.pem")])
    leaf = next(c for c in pool if c.role == "vcek")
    assert leaf.hw_id() == bytes(range(64)), "raw and OCTET STRING forms of hwID both read"
    verdict = verify.verify(data, "r", pool, expect=replayable(bytes(48), "t"),
                            now=datetime.datetime(2026, 1, 1, tzinfo=UTC), product="milan")
    message = next(c.message for c in verdict.checks if c.check_id == "cert.vcek_signed_by_ask")
    assert not verdict.verified and "is NOT signed by SEV-Milan" in message


def test_reported_tcb_not_current_tcb_is_compared():
    entry = next(e for e in json.loads(vector("attestation/expected-fields.json").read_text()) if e["name"] == "trustee/milan-vcek")
    data = bytearray(vector(entry["report_file"]).read_bytes())
    assert data[0x3F] != data[0x187], "this report's current microcode differs from the reported one"
    pool = certs.load_paths([vector(entry["signer_cert_file"])]) + chain_for(entry)
    data[0x180] ^= 1  # reported TCB boot loader: now disagrees with the VCEK (and breaks the signature)
    verdict = verify.verify(bytes(data), "r", pool, expect=replayable(bytes(48), "t"), now=pinned_now(entry))
    assert "cert.tcb" in verdict.failed()


def test_cross_generation_chains_do_not_verify():
    genoa = next(e for e in json.loads(vector("attestation/expected-fields.json").read_text()) if e["name"] == "trustee-azure/genoa")
    pool = certs.load_paths([vector(genoa["signer_cert_file"])]) + certs.load_paths([vector("amd-certs/trustee/milan_ask_ark_asvk.pem")])
    verdict = verify.verify(vector(genoa["report_file"]).read_bytes(), "r", pool,
                            expect=replayable(bytes.fromhex(genoa["fields"]["measurement"]), "t"),
                            now=pinned_now(genoa), product="milan")
    assert not verdict.verified


def test_the_expired_vlek_fails_at_todays_date():
    vlek = next(e for e in json.loads(vector("attestation/expected-fields.json").read_text()) if e["name"] == "trustee/milan-vlek-aws")
    pool = certs.load_paths([vector(vlek["signer_cert_file"])]) + chain_for(vlek)
    data = vector(vlek["report_file"]).read_bytes()
    expect = replayable(bytes.fromhex(vlek["fields"]["measurement"]), "t")
    late = verify.verify(data, "r", pool, expect=expect, now=datetime.datetime(2026, 11, 26, tzinfo=UTC))
    assert late.failed() == ["cert.validity.vlek"]
    assert "cert.asvk_signed_by_ark" in {c.check_id for c in late.checks}, "a VLEK chains through the ASVK"


def test_pinned_roots_match_the_published_arks():
    for product in ("milan", "genoa", "turin"):
        (ark,) = [c for c in certs.load_paths([vector(f"amd-certs/virtee-sev/{product}/ark.pem")])]
        assert ark.product == product and ark.spki_sha256() == certs.PINNED_ARK_SPKI[product]


def test_turin_vcek_binds_with_eight_bytes_of_chip_id():
    (vcek,) = certs.load_paths([vector("attestation/virtee-sev/vcek_turin.der")])
    assert vcek.hw_id().hex() == "1e550a8ee5cf9f4d" and vcek.spl("fmc") is not None
    raw = bytearray(vector("attestation/derived/trustee_e2e_genoa_report.bin").read_bytes())
    raw[0x1A0:0x1E0] = bytes.fromhex("1e550a8ee5cf9f4d") + bytes(56)
    raw[0x188] = 0x1A
    rep = reports.parse(bytes(raw))
    assert rep.product() == "turin" and verify.select_leaf([vcek], rep, "turin") is vcek
    assert set(rep.tcb(rep.reported_tcb, "turin").parts) == {"fmc", "bootloader", "tee", "snp", "microcode"}


# --- a test CA instead of AMD: the round trip ------------------------------------------------------

def test_without_a_nonce_a_report_is_not_verified():
    entry, data, pool = milan_case()
    strict = verify.Expectations(bytes.fromhex(entry["fields"]["measurement"]), "t")
    verdict = verify.verify(data, "r", pool, expect=strict, now=pinned_now(entry))
    assert verdict.failed() == ["expect.report_data"] and "--no-nonce" in verdict.checks[-1].message


def test_round_trip_with_a_test_ca(tmp_path):
    ca = make_ca()
    paths = ca.write(tmp_path / "ca")
    pool = certs.load_paths(list(paths.values()))
    root = certs.load(paths["ark"].read_bytes(), "ark")[0]
    now = datetime.datetime(2025, 6, 1, tzinfo=UTC)
    nonce = bytes(range(32))
    good = ca.report(bytes([9]) * 48, report_data=nonce.ljust(64, b"\0"))
    expect = replayable(bytes([9]) * 48, "test", report_data=nonce)
    assert verify.verify(good, "good", pool, expect=expect, now=now, trust_root=root, product="milan").verified
    untrusted = verify.verify(good, "good", pool, expect=expect, now=now, product="milan")
    assert untrusted.failed() == ["cert.ark_pinned"], "without --trust-root only AMD's roots are trusted"
    tampered = bytearray(good)
    tampered[0x90] ^= 1
    assert not verify.verify(bytes(tampered), "t", pool, expect=expect, now=now, trust_root=root, product="milan").verified
    replay = replayable(bytes([9]) * 48, "test", report_data=b"another nonce")
    assert verify.verify(good, "r", pool, expect=replay, now=now, trust_root=root, product="milan").failed() == ["expect.report_data"]


def test_debug_policy_fails_unless_allowed():
    ca = make_ca()
    pool = [certs.Cert(c, n) for c, n in ((ca.ark, "ark"), (ca.ask, "ask"), (ca.vcek, "vcek"))]
    data = ca.report(bytes(48), policy=0xB0000)
    now = datetime.datetime(2025, 6, 1, tzinfo=UTC)
    strict = verify.verify(data, "r", pool, expect=replayable(bytes(48), "t"), now=now, trust_root=pool[0], product="milan")
    assert strict.failed() == ["expect.policy_debug"]
    relaxed = verify.verify(data, "r", pool, expect=replayable(bytes(48), "t", allow_debug=True), now=now,
                            trust_root=pool[0], product="milan")
    assert relaxed.verified


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_verify_several_reports_one_document(tmp_path, capsys):
    ca = make_ca()
    paths = ca.write(tmp_path / "ca")
    good, bad = tmp_path / "good.bin", tmp_path / "bad.bin"
    good.write_bytes(ca.report(bytes([1]) * 48))
    bad.write_bytes(ca.report(bytes([2]) * 48))
    code = run(["attest", "verify", str(good), str(bad), "--certs", str(tmp_path / "ca"), "--trust-root", str(paths["ark"]),
                "--expected-measurement", "01" * 48, "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--no-nonce", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == ExitCode.PARTIAL and doc["ok"] is False and doc["error"]["kind"] == "partial"  # one of two failed
    assert [(r["verified"], r["failed"]) for r in doc["results"]] == [(True, []), (False, ["expect.measurement"])]


def test_cli_bad_input_is_exit_2(tmp_path, capsys):
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 100)
    assert run(["attest", "verify", str(short), "--expected-measurement", "00" * 48]) == ExitCode.BAD_INPUT
    assert "not an SEV-SNP attestation report" in capsys.readouterr().err
    assert run(["attest", "show", str(vector("attestation/virtee-sev/vcek_milan.der"))]) == ExitCode.BAD_INPUT
    assert "a PEM/DER certificate" in capsys.readouterr().err
    wrong_version = bytearray(vector("attestation/derived/virtee_report_milan.bin").read_bytes())
    wrong_version[0] = 9
    path = tmp_path / "v9.bin"
    path.write_bytes(bytes(wrong_version))
    assert run(["attest", "show", str(path)]) == ExitCode.BAD_INPUT
    assert "unknown report version 9" in capsys.readouterr().err


def test_cli_show_json_and_hex_input(capsys):
    assert run(["attest", "show", str(vector("attestation/virtee-sev/report_milan.hex")), "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["results"][0]
    assert item["measurement"].startswith("7a1e5c266c0108db") and item["reported_tcb"]["microcode"] == 115


def test_vmpl_and_id_key_digest_expectations():
    ca = make_ca()
    pool = [certs.Cert(c, n) for c, n in ((ca.ark, "ark"), (ca.ask, "ask"), (ca.vcek, "vcek"))]
    data = ca.report(bytes(48))
    now = datetime.datetime(2025, 6, 1, tzinfo=UTC)
    expect = replayable(bytes(48), "t", vmpl=1, id_key_digest=b"\x01" * 48)
    verdict = verify.verify(data, "r", pool, expect=expect, now=now, trust_root=pool[0], product="milan")
    assert verdict.failed() == ["expect.vmpl", "expect.id_key_digest"]


def test_an_extra_untrusted_root_among_the_files_changes_nothing():
    entry, data, pool = milan_case()
    impostor = make_ca()  # its ARK is also called ARK-Milan
    extra = [certs.Cert(impostor.ark, "impostor-ark"), certs.Cert(impostor.ask, "impostor-ask")]
    verdict = verify.verify(data, "r", extra + pool, expect=replayable(bytes.fromhex(entry["fields"]["measurement"]), "t"),
                            now=pinned_now(entry))
    assert verdict.verified, verdict.failed()
    forged = impostor.report(bytes.fromhex(entry["fields"]["measurement"]))
    forged_pool = extra + [certs.Cert(impostor.vcek, "impostor-vcek")] + [c for c in pool if c.role != "vcek"]
    result = verify.verify(forged, "f", forged_pool, expect=replayable(bytes.fromhex(entry["fields"]["measurement"]), "t"),
                           now=pinned_now(entry), product="milan")
    assert not result.verified, "a report signed by a look-alike CA is never verified without --trust-root"
    assert "cert.vcek_signed_by_ask" in result.failed() or "cert.ark_pinned" in result.failed()


def test_the_right_vcek_wins_among_several():
    entry, data, pool = milan_case()
    other = certs.load_paths([vector("attestation/go-sev-guest/vcek_milan.der")])
    decoy = make_ca(chip_id=bytes.fromhex(entry["fields"]["chip_id"]))  # same chip id, wrong key
    crowd = other + [certs.Cert(decoy.vcek, "decoy")] + pool
    verdict = verify.verify(data, "r", crowd, expect=replayable(bytes.fromhex(entry["fields"]["measurement"]), "t"),
                            now=pinned_now(entry))
    assert verdict.verified, verdict.failed()


def test_a_raw_hwid_that_looks_wrapped_stays_raw():
    ca = make_ca(chip_id=bytes([0x04, 0x3E]) + bytes(62))
    assert certs.Cert(ca.vcek, "v").hw_id() == bytes([0x04, 0x3E]) + bytes(62)


def test_migration_agent_and_tcb_floor():
    ca = make_ca()
    pool = [certs.Cert(c, n) for c, n in ((ca.ark, "ark"), (ca.ask, "ask"), (ca.vcek, "vcek"))]
    now = datetime.datetime(2025, 6, 1, tzinfo=UTC)
    migratable = ca.report(bytes(48), policy=0x70000)
    verdict = verify.verify(migratable, "r", pool, expect=replayable(bytes(48), "t"), now=now, trust_root=pool[0], product="milan")
    assert verdict.failed() == ["expect.policy_flags"] and "MIGRATE_MA" in verdict.checks[-1].message
    assert verify.verify(migratable, "r", pool, expect=replayable(bytes(48), "t", allow_migration_agent=True), now=now,
                         trust_root=pool[0], product="milan").verified
    old = ca.report(bytes(48))  # TCB bl 3, snp 8, ucode 115
    floor = replayable(bytes(48), "t", min_tcb={"snp": 9, "microcode": 100})
    verdict = verify.verify(old, "r", pool, expect=floor, now=now, trust_root=pool[0], product="milan")
    assert verdict.failed() == ["expect.min_tcb"] and "reported snp 8 < 9" in verdict.checks[-1].message


def test_cli_min_tcb_parsing(capsys):
    assert run(["attest", "verify", str(vector("attestation/derived/virtee_report_milan.bin")), "--min-tcb", "bl=x"]) == 2
    assert "NAME=NUMBER" in capsys.readouterr().err


# --- each safety check, proven by a report that only it refuses --------------------------------------

NOW = datetime.datetime(2025, 6, 1, tzinfo=UTC)


def verify_with(ca, data, product="milan", **expect):
    """Verify a test-CA report with the CA's ARK as trust root: every check but the one under test passes."""
    pool = [certs.Cert(c, n) for c, n in ((ca.ark, "ark"), (ca.ask, "ask"), (ca.vcek, "vcek"))]
    return verify.verify(data, "r", pool, expect=replayable(bytes(48), "t", **expect), now=NOW, trust_root=pool[0],
                         product=product)


@functools.cache
def shared_ca():
    """One intact CA for the tests that only vary the report (RSA keys take a while to make)."""
    return make_ca()


def test_the_test_ca_report_passes_every_check():
    assert verify_with(shared_ca(), shared_ca().report()).verified


@pytest.mark.parametrize("role", ["ark", "ask", "vcek"])
def test_an_expired_certificate_anywhere_in_the_chain_fails(role):
    ca = make_ca(expired=(role,))
    verdict = verify_with(ca, ca.report())
    assert verdict.failed() == [f"cert.validity.{role}"]
    assert "expired 2024-01-31" in next(c.message for c in verdict.checks if c.check_id == f"cert.validity.{role}")


def test_a_root_that_is_not_self_signed_fails_even_as_trust_root():
    ca = make_ca(ark_self_signed=False)
    verdict = verify_with(ca, ca.report())
    assert verdict.failed() == ["cert.ark_self_signed"]


CHIP = bytes(range(64))


@pytest.mark.parametrize("hw_id", [None, b"", CHIP[:1], CHIP[:7], CHIP[:9], CHIP[:32], CHIP[:63]],
                         ids=["absent", "empty", "1", "7", "9", "32", "63"])
def test_a_vcek_whose_hwid_is_not_a_whole_chip_id_binds_to_no_chip(hw_id):
    """Each of these hwIDs is a prefix of the report's chip id: accepted, the VCEK would bind to every
    chip whose id starts with it."""
    ca = make_ca(chip_id=CHIP, hw_id=hw_id)
    verdict = verify_with(ca, ca.report())
    assert verdict.failed() == ["cert.chip_id"]
    assert "not a whole chip id" in next(c.message for c in verdict.checks if c.check_id == "cert.chip_id")


def test_eight_bytes_of_chip_id_are_a_turin_hwid_only():
    ca = make_ca(chip_id=CHIP, hw_id=CHIP[:8])
    assert verify_with(ca, ca.report(), product="milan").failed() == ["cert.chip_id"]
    rep = reports.parse(ca.report())
    assert verify.binds(certs.Cert(ca.vcek, "v"), rep, "turin") and not verify.binds(certs.Cert(ca.vcek, "v"), rep, "genoa")
    whole = make_ca(chip_id=CHIP)
    assert not verify.binds(certs.Cert(whole.vcek, "v"), reports.parse(whole.report()), "turin")


# Every must-be-zero part of the signed area (signer info bits 31:5 included), for report versions 2, 3 and 5.
RESERVED = [(2, 0x48, b"\x20"), (2, 0x4B, b"\x80"), (2, 0x4C, b"\x01"), (2, 0x4F, b"\x01"), (2, 0x188, b"\x19"),
            (2, 0x19F, b"\x01"), (3, 0x18B, b"\x01"), (3, 0x19F, b"\x01"), (2, 0x1EB, b"\x01"), (2, 0x1EF, b"\x01"),
            (2, 0x1F8, b"\x01"), (3, 0x200, b"\x01"), (2, 0x29F, b"\x01"), (5, 0x208, b"\x01"), (5, 0x29F, b"\x01"),
            (2, 0x48, b"\x08")]  # the last: signing key 2, a reserved value


@pytest.mark.parametrize("version, offset, value", RESERVED, ids=[f"v{v}-{o:#x}-{b.hex()}" for v, o, b in RESERVED])
def test_a_signed_report_with_a_reserved_field_set_fails(version, offset, value):
    ca = shared_ca()
    verdict = verify_with(ca, ca.report(version=version, patch={offset: value}))
    assert verdict.failed() == ["report.reserved"]


@pytest.mark.parametrize("version, offset", [(3, 0x188), (3, 0x18A), (5, 0x1F8), (5, 0x207)],
                         ids=["v3-cpuid-family", "v3-cpuid-stepping", "v5-launch-mit-vector", "v5-current-mit-vector"])
def test_fields_a_later_version_defines_are_not_reserved(version, offset):
    ca = shared_ca()
    assert verify_with(ca, ca.report(version=version, patch={offset: b"\x01"})).verified


def test_a_reserved_byte_of_a_real_report_is_refused():
    entry, data, pool = milan_case()
    for offset in (0x4C, 0x190, 0x1EB, 0x1EF, 0x200, 0x29F):
        tampered = bytearray(data)
        tampered[offset] = 1
        verdict = verify.verify(bytes(tampered), "t", pool, expect=replayable(bytes.fromhex(entry["fields"]["measurement"]),
                                                                            "t"), now=pinned_now(entry))
        assert "report.reserved" in verdict.failed(), hex(offset)


@pytest.mark.parametrize("which", ["current_tcb", "launch_tcb"])
def test_min_tcb_holds_for_the_current_and_the_launch_tcb_too(which):
    """The VCEK is for the reported TCB; a guest launched on older firmware (launch), or a firmware
    rolled back below the floor since (current), is below --min-tcb all the same."""
    ca = shared_ca()  # TCB bl 3, tee 0, snp 8, ucode 115
    data = ca.report(**{which: {"snp": 7}})
    verdict = verify_with(ca, data, min_tcb={"snp": 8})
    assert verdict.failed() == ["expect.min_tcb"]
    message = next(c.message for c in verdict.checks if c.check_id == "expect.min_tcb")
    assert f"{which.split('_')[0]} snp 7 < 8" in message and "reported" not in message


def test_min_tcb_accepts_a_tcb_exactly_at_the_floor():
    ca = shared_ca()
    assert verify_with(ca, ca.report(), min_tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}).verified
    for name, one_more in (("bootloader", 4), ("tee", 1), ("snp", 9), ("microcode", 116)):
        assert verify_with(ca, ca.report(), min_tcb={name: one_more}).failed() == ["expect.min_tcb"], name


def test_cli_min_tcb_at_its_boundary(tmp_path, capsys):
    ca = shared_ca()
    paths = ca.write(tmp_path / "ca")
    (tmp_path / "r.bin").write_bytes(ca.report())
    base = ["attest", "verify", str(tmp_path / "r.bin"), "--certs", str(tmp_path / "ca"), "--trust-root", str(paths["ark"]),
            "--expected-measurement", "00" * 48, "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--no-nonce"]
    assert run(base + ["--min-tcb", "bl=3,tee=0,snp=8,ucode=115"]) == 0
    assert run(base + ["--min-tcb", "ucode=116"]) == ExitCode.FAILURE
    assert "reported microcode 115 < 116" in capsys.readouterr().out


# --- the verdict, word for word: what an auditor reads is what was checked ---------------------------

MEASUREMENT = bytes(range(48))
NONCE = b"nonce from the verifier".ljust(64, b"\0")
LAUNCHED = dict(report_data=NONCE, policy=0x30000, host_data=b"\x11" * 32, id_key_digest=b"\x22" * 48,
                author_key_digest=b"\x33" * 48)
CHAIN = [  # the test CA's chain under --trust-root, as every verdict below reports it
    ("cert.ark_pinned", True, "ARK is the --trust-root ark.pem (AMD's pin replaced)"),
    ("cert.ark_self_signed", True, "ARK-Milan signed by ARK-Milan (RSA-PSS, SHA-384, salt 48)"),
    ("cert.ask_signed_by_ark", True, "SEV-Milan signed by ARK-Milan (RSA-PSS, SHA-384, salt 48)"),
    ("cert.vcek_signed_by_ask", True, "SEV-VCEK signed by SEV-Milan (RSA-PSS, SHA-384, salt 48)"),
    ("cert.vcek_key", True, "SEV-VCEK key is EC P-384"),
    ("cert.validity.ark", True, "ARK-Milan valid 2024-01-01 .. 2033-12-29"),
    ("cert.validity.ask", True, "SEV-Milan valid 2024-01-01 .. 2033-12-29"),
    ("cert.validity.vcek", True, "SEV-VCEK valid 2024-01-01 .. 2033-12-29"),
]
REPORT_CHECKS = [
    ("report.signature", True, "report signature verifies with the VCEK (vcek.pem)"),
    ("cert.tcb", True, "VCEK SPLs equal the reported TCB {'bootloader': 3, 'tee': 0, 'snp': 8, 'microcode': 115}"),
    ("cert.chip_id", True, "VCEK hwID equals the report's chip id"),
]
FORMAT = [("report.format", True, "version 2, ECDSA P-384/SHA-384, milan"),
          ("report.reserved", True, "reserved fields are zero and the signing key is VCEK or VLEK")]


def named_pool(ca, *extra):
    return [certs.Cert(c, n) for c, n in ((ca.ark, "ark.pem"), (ca.ask, "ask.pem"), (ca.vcek, "vcek.pem"), *extra)]


def verdict_of(data, pool=None, product="milan", **expect):
    ca = shared_ca()
    pool = pool or named_pool(ca)
    verdict = verify.verify(data, "r.bin", pool, expect=verify.Expectations(**expect), now=NOW, trust_root=pool[0],
                            product=product)
    return [(c.check_id, c.ok, c.message) for c in verdict.checks]


def every_expectation(**changes):
    return {"measurement": MEASUREMENT, "measurement_source": "domain web-01", "report_data": b"nonce from the verifier",
            "host_data": b"\x11" * 32, "policy": 0x30000, "vmpl": 0, "id_key_digest": b"\x22" * 48,
            "author_key_digest": b"\x33" * 48, "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            **changes}


def test_a_report_that_meets_every_expectation_says_so_check_by_check():
    data = shared_ca().report(MEASUREMENT, **LAUNCHED)
    assert verdict_of(data, **every_expectation()) == FORMAT + CHAIN + REPORT_CHECKS + [
        ("expect.measurement", True, "measurement equals the expected one from domain web-01"),
        ("expect.policy_debug", True, "DEBUG is clear"),
        ("expect.policy_flags", True, "policy bits are valid; no migration agent"),
        ("expect.min_tcb", True, "reported, current and launch TCB meet --min-tcb"),
        ("expect.policy", True, "policy 0x30000 equals the launched policy"),
        ("expect.report_data", True, "report_data equals the nonce"),
        ("expect.host_data", True, "host_data equals the launched value"),
        ("expect.vmpl", True, "requested at VMPL 0"),
        ("expect.id_key_digest", True, "id key digest equals the launched ID block's"),
        ("expect.author_key_digest", True, "author key digest equals the launched ID block's"),
    ]


def test_a_report_that_meets_no_expectation_says_why_for_each():
    data = shared_ca().report(bytes(48), report_data=b"an old nonce".ljust(64, b"\0"), policy=0xF0000, host_data=bytes(32),
                              id_key_digest=bytes(48), author_key_digest=bytes(48))
    assert verdict_of(data, **every_expectation(vmpl=1, min_tcb={"snp": 9})) == FORMAT + CHAIN + REPORT_CHECKS + [
        ("expect.measurement", False, "measurement DIFFERS from the expected one from domain web-01: "
                                      "report 000000000000000000000000..., expected 000102030405060708090a0b..."),
        ("expect.policy_debug", False, "policy allows DEBUG: the host can read this guest's memory"),
        ("expect.policy_flags", False, "policy allows a migration agent (MIGRATE_MA), which can read guest memory "
                                       "(--allow-migration-agent to accept)"),
        ("expect.min_tcb", False, "TCB below --min-tcb: reported snp 8 < 9; current snp 8 < 9; launch snp 8 < 9"),
        ("expect.policy", False, "policy 0xf0000 differs from the launched 0x30000"),
        ("expect.report_data", False, "report_data is NOT the nonce (replay?)"),
        ("expect.host_data", False, "host_data differs from the launched value"),
        ("expect.vmpl", False, "requested at VMPL 0, expected VMPL 1"),
        ("expect.id_key_digest", False, "id key digest DIFFERS from the launched ID block's"),
        ("expect.author_key_digest", False, "author key digest DIFFERS from the launched ID block's"),
    ]


def expect_checks(data, **expect):
    return [c for c in verdict_of(data, **expect) if c[0].startswith("expect.")]


def test_what_was_not_given_fails_and_says_what_to_give():
    data = shared_ca().report()
    assert expect_checks(data) == [
        ("expect.measurement", False, "no expected measurement to compare with "
                                      "(give --domain NAME or --expected-measurement HEX)"),
        ("expect.policy_debug", True, "DEBUG is clear"),
        ("expect.policy_flags", True, "policy bits are valid; no migration agent"),
        ("expect.report_data", False, "no nonce to compare report_data with: an old or copied report would pass "
                                      "(give --report-data HEX, or --no-nonce to accept that)"),
    ]
    unknown = expect_checks(data, measurement_source="domain web-01 has no recorded measurement", accept_replay=True)
    assert unknown[0] == ("expect.measurement", False,
                          "no expected measurement to compare with (domain web-01 has no recorded measurement)")
    assert [c[0] for c in unknown] == ["expect.measurement", "expect.policy_debug", "expect.policy_flags"]


def test_what_the_caller_accepts_passes_and_says_so():
    data = shared_ca().report(policy=0xF0000)
    checks = expect_checks(data, measurement=bytes(48), measurement_source="t", accept_replay=True, allow_debug=True,
                           allow_migration_agent=True)
    assert checks[1:] == [
        ("expect.policy_debug", True, "policy allows DEBUG: the host can read this guest's memory (allowed by --allow-debug)"),
        ("expect.policy_flags", True, "policy bits are valid; no migration agent"),
    ]


def test_a_policy_snp_cannot_launch_is_named_in_the_flags_check():
    checks = expect_checks(shared_ca().report(policy=0x10000), measurement=bytes(48), measurement_source="t",
                           accept_replay=True)
    assert checks[2] == ("expect.policy_flags", False, "policy 0x10000 has bit 17 clear; SEV-SNP requires it set "
                                                       "(KVM rejects the launch with -EINVAL)")


def test_a_nonce_is_compared_padded_to_64_bytes():
    data = shared_ca().report(report_data=b"short".ljust(64, b"\0"))
    assert ("expect.report_data", True, "report_data equals the nonce") in verdict_of(data, report_data=b"short")
    assert ("expect.report_data", False, "report_data is NOT the nonce (replay?)") in verdict_of(data, report_data=b"shorT")


def test_a_report_signed_by_a_vcek_for_another_tcb_or_chip_says_which():
    ca = shared_ca()
    stale = certs.Cert(leaf_cert(ca, tcb={"snp": 7, "microcode": 100}), "old-vcek.pem")
    pool = named_pool(ca)[:2] + [stale]
    checks = {c[0]: c for c in verdict_of(ca.report(), pool)}
    assert checks["cert.tcb"] == ("cert.tcb", False, "VCEK does not match the reported TCB: snp 7 != reported 8; "
                                                     "microcode 100 != reported 115")
    other_chip = certs.Cert(leaf_cert(ca, hw_id=bytes(range(1, 65))), "other-chip.pem")
    checks = {c[0]: c for c in verdict_of(ca.report(), named_pool(ca)[:2] + [other_chip])}
    assert checks["cert.chip_id"] == ("cert.chip_id", False, "VCEK hwID 0102030405060708... is another chip than "
                                                             "the report's 0001020304050607...")
    no_hw_id = certs.Cert(leaf_cert(ca, hw_id=None), "no-hwid.pem")
    checks = {c[0]: c for c in verdict_of(ca.report(), named_pool(ca)[:2] + [no_hw_id])}
    assert checks["cert.chip_id"] == ("cert.chip_id", False, "VCEK hwID is 0 bytes, not a whole chip id (64 bytes, "
                                                             "Turin 8): it would stand for every chip it is a prefix of")


def test_an_eight_byte_hwid_is_refused_by_name_when_the_product_is_not_turin():
    ca = make_ca(chip_id=CHIP, hw_id=CHIP[:8])
    checks = {c[0]: c for c in verdict_of(ca.report(), named_pool(ca))}
    assert checks["cert.chip_id"][1:] == (False, "VCEK hwID is 8 bytes, not a whole chip id (64 bytes, Turin 8): "
                                                 "it would stand for every chip it is a prefix of")


def test_a_report_whose_signature_does_not_verify_says_with_which_key():
    data = bytearray(shared_ca().report())
    data[0x90] ^= 1  # the measurement, after signing
    checks = {c[0]: c for c in verdict_of(bytes(data))}
    assert checks["report.signature"] == ("report.signature", False,
                                          "report signature does NOT verify with the VCEK (vcek.pem)")


def test_without_a_vcek_the_verdict_fails_on_the_missing_leaf_only_once():
    ca = shared_ca()
    checks = verdict_of(ca.report(), named_pool(ca)[:2], measurement=bytes(48), measurement_source="t", accept_replay=True)
    assert checks[:3] == FORMAT + [("cert.leaf", False, "no VCEK certificate for this report (give --certs DIR or --vcek FILE, or --fetch to get it from AMD KDS)")]
    assert [c[0] for c in checks[3:]] == ["expect.measurement", "expect.policy_debug", "expect.policy_flags"]


def test_a_reserved_signing_key_is_named():
    checks = {c[0]: c for c in verdict_of(shared_ca().report(patch={0x48: b"\x08"}))}
    assert checks["report.reserved"] == ("report.reserved", False,
                                         "reserved values set: signing key reserved(2) (neither VCEK nor VLEK)")


def test_not_a_report_is_bad_input_naming_the_file():
    with pytest.raises(BadInputError, match=r"^r\.bin: not an SEV-SNP attestation report"):
        verdict_of(b"\0" * 100)


def v3_report(ca, family=0x19, model=0x01, **kwargs):
    return ca.report(version=3, patch={0x188: bytes([family]), 0x189: bytes([model])}, **kwargs)


def test_the_product_comes_from_the_caller_then_the_report_then_the_vcek():
    ca = shared_ca()
    pool = named_pool(ca)
    run = lambda data, product: verify.verify(data, "r.bin", pool, expect=replayable(bytes(48), "t"), now=NOW,  # noqa: E731
                                              trust_root=pool[0], product=product)
    given = run(ca.report(), "milan")
    assert (given.origin, given.product, given.verified) == ("r.bin", "milan", True)
    assert run(v3_report(ca), None).product == "milan"  # CPUID family 0x19, model 0x01
    from_vcek = run(ca.report(), None)  # v2: the report does not say; the VCEK's issuer SEV-Milan does
    assert (from_vcek.product, from_vcek.checks[0].message) == ("milan", "version 2, ECDSA P-384/SHA-384, milan")
    assert run(ca.report(), None).verified
    nameless = certs.Cert(leaf_cert(ca, issuer="SEV-Unknown", product="Mystery"), "v")
    unknown = verify.verify(ca.report(), "r.bin", pool[:2] + [nameless], expect=replayable(bytes(48), "t"), now=NOW,
                            trust_root=pool[0])
    assert (unknown.product, unknown.checks[0].message) == (None, "version 2, ECDSA P-384/SHA-384, product unknown")
    orphan = verify.verify(ca.report(), "r.bin", pool[:2], expect=replayable(bytes(48), "t"), now=NOW, trust_root=pool[0])
    assert orphan.product is None and "cert.leaf" in orphan.failed()


def test_a_vcek_names_its_product_in_its_own_extension_too():
    ca = shared_ca()
    plain_issuer = certs.Cert(leaf_cert(ca, issuer="SEV-VCEK-Issuer", product="Genoa"), "v")
    assert verify._product_of(plain_issuer) == "genoa"


def test_which_hwid_lengths_bind_depends_on_what_is_known_of_the_product():
    ca = make_ca(chip_id=CHIP, hw_id=CHIP[:8])
    turin_style = certs.Cert(ca.vcek, "v")
    assert verify.binds(turin_style, reports.parse(ca.report()), None), "a v2 report does not say it is not a Turin"
    assert not verify.binds(turin_style, reports.parse(v3_report(ca)), None), "a v3 Milan report says so"
    assert verify.binds(turin_style, reports.parse(v3_report(ca, family=0x1A)), None)


def test_among_certificates_for_the_same_key_the_one_for_the_reported_tcb_wins():
    """KDS issues a VCEK per TCB; with an older one listed first, the one that matches the report is used."""
    ca = shared_ca()
    stale = certs.Cert(leaf_cert(ca, tcb={"snp": 7}), "old-vcek.pem")
    current = certs.Cert(ca.vcek, "vcek.pem")
    rep = reports.parse(ca.report())
    assert verify.select_leaf([stale, current], rep, "milan") is current
    assert verify.select_leaf([current, stale], rep, "milan") is current


def test_two_vleks_the_one_whose_key_signed_wins_and_a_vlek_is_never_taken_for_a_vcek():
    ca = shared_ca()
    vlek_report = reports.parse(ca.report(patch={0x48: b"\x04"}))  # signing key 1: VLEK
    right = certs.Cert(leaf_cert(ca, cn="SEV-VLEK", issuer="SEV-VLEK-Milan", hw_id=None), "vlek.pem")
    other = certs.Cert(leaf_cert(ca, cn="SEV-VLEK", issuer="SEV-VLEK-Milan", hw_id=None,
                                 key=make_ca().vcek_key), "other-vlek.pem")
    assert verify.select_leaf([other, right], vlek_report, "milan") is right
    # A VLEK that (wrongly) carries the chip id stays a VLEK: a VCEK report takes the VCEK.
    chip_vlek = certs.Cert(leaf_cert(ca, cn="SEV-VLEK", issuer="SEV-VLEK-Milan"), "chip-vlek.pem")
    vcek = certs.Cert(ca.vcek, "vcek.pem")
    assert verify.select_leaf([chip_vlek, vcek], reports.parse(ca.report()), "milan") is vcek


def test_only_other_chips_vceks_leave_no_leaf():
    ca = shared_ca()
    others = [certs.Cert(leaf_cert(ca, hw_id=bytes([n]) * 64), f"chip{n}.pem") for n in (1, 2)]
    assert verify.select_leaf(others, reports.parse(ca.report()), "milan") is None
    assert verify.select_leaf(others[:1], reports.parse(ca.report()), "milan") is others[0]


# --- the certificate chain, link by link --------------------------------------------------------------

def chain_checks(pool, leaf, *, product="milan", trust_root=None, now=NOW, signer="vcek"):
    chain = certs.verify_chain(pool, leaf, signer, product, trust_root, now)
    return {c.check_id: (c.ok, c.message) for c in chain.checks}


def test_the_chain_names_the_certificates_it_chose():
    ca = shared_ca()
    pool = named_pool(ca)
    chain = certs.verify_chain(pool, pool[2], "vcek", "milan", pool[0], NOW)
    assert (chain.ark, chain.intermediate, chain.leaf, chain.ok) == (pool[0], pool[1], pool[2], True)


def test_a_leaf_signed_with_pkcs1_v15_is_not_signed_by_the_ask():
    ca = shared_ca()
    pool = named_pool(ca)[:2] + [certs.Cert(leaf_cert(ca, pss=False), "v15.pem")]
    assert chain_checks(pool, pool[2], trust_root=pool[0])["cert.vcek_signed_by_ask"] == (
        False, "SEV-VCEK is not signed with RSASSA-PSS")


def test_an_intermediate_without_an_rsa_key_signs_nothing():
    ca = shared_ca()
    ec_key = make_ca().vcek_key
    ec_ask = certs.Cert(_cert("SEV-Milan", "ARK-Milan", ec_key.public_key(), ca.ark_key), "ec-ask.pem")
    vcek = certs.Cert(leaf_cert(ca, signer=ec_key), "vcek.pem")
    pool = [named_pool(ca)[0], ec_ask, vcek]
    checks = chain_checks(pool, vcek, trust_root=pool[0])
    assert checks["cert.ask_signed_by_ark"][0] is True
    assert checks["cert.vcek_signed_by_ask"] == (False, "SEV-Milan does not hold an RSA key")


@pytest.mark.parametrize("curve,kind", [(certs.ec.SECP256R1(), "ec"), (None, "rsa")])
def test_a_leaf_key_that_is_not_p384_is_named(curve, kind):
    ca = shared_ca()
    key = certs.ec.generate_private_key(curve) if kind == "ec" else shared_ca().ask_key
    pool = named_pool(ca)[:2] + [certs.Cert(leaf_cert(ca, key=key), "odd.pem")]
    assert chain_checks(pool, pool[2], trust_root=pool[0])["cert.vcek_key"] == (False, "SEV-VCEK key is not EC P-384")


def test_validity_holds_from_its_first_to_its_last_second():
    ca = shared_ca()
    pool = named_pool(ca)
    first, last = ca.ark.not_valid_before_utc, ca.ark.not_valid_after_utc
    for now in (first, last):
        assert certs.verify_chain(pool, pool[2], "vcek", "milan", pool[0], now).ok, now
    early = chain_checks(pool, pool[2], trust_root=pool[0], now=first - datetime.timedelta(seconds=1))
    assert early["cert.validity.ark"] == (False, "ARK-Milan is not valid before 2024-01-01T00:00:00+00:00")
    late = chain_checks(pool, pool[2], trust_root=pool[0], now=last + datetime.timedelta(seconds=1))
    assert late["cert.validity.vcek"] == (False, "SEV-VCEK expired 2033-12-29T00:00:00+00:00")


@pytest.mark.parametrize("keep,product,signer,message", [
    ((1, 2), "milan", "vcek", "no ARK for milan among the certificates given"),
    ((0, 2), "milan", "vcek", "no ASK for milan among the certificates given"),
    ((0, 2), None, "vcek", "no ASK among the certificates given"),
    ((0, 1, 2), "milan", "vlek", "no ASVK for milan among the certificates given"),
])
def test_a_missing_link_is_named(keep, product, signer, message):
    pool = named_pool(shared_ca())
    chain = certs.verify_chain([pool[i] for i in keep], pool[2], signer, product, None, NOW)
    hint = " (give --certs DIR or --chain PEM, or --fetch to get ARK and ASK from AMD KDS)"
    assert [(c.check_id, c.ok, c.message) for c in chain.checks] == [("cert.chain", False, message + hint)]


def test_an_ask_from_another_ca_is_named_as_not_signed_by_the_ark():
    ca, stranger = make_ca(), make_ca()  # both fresh: shared_ca() may hold keys the pool hands out again
    genoa_ask = next(c for c in certs.load_paths([vector("amd-certs/trustee/genoa_ask_ark_asvk.pem")]) if c.role == "ask")
    pool = [certs.Cert(ca.ark, "ark.pem"), genoa_ask, certs.Cert(stranger.ask, "other-ask.pem"), certs.Cert(ca.vcek, "vcek.pem")]
    checks = chain_checks(pool, pool[3], trust_root=pool[0])  # the Genoa ASK is no candidate for a Milan chain
    assert checks["cert.ask_signed_by_ark"] == (False, "SEV-Milan (other-ask.pem) is NOT signed by ARK-Milan (ark.pem)")


def test_without_trust_root_a_test_ark_is_named_as_not_amds():
    ca = shared_ca()
    pool = named_pool(ca)
    reordered = [pool[1], pool[0], pool[2]]  # the ASK first: the root is still the ARK
    checks = chain_checks(reordered, pool[2])
    assert checks["cert.ark_pinned"] == (False, "ARK-Milan public key is not AMD's root key for any product")
    assert checks["cert.ark_self_signed"][0] and checks["cert.ask_signed_by_ark"][0]


def test_amds_own_milan_root_is_found_among_other_generations_certificates():
    entry, data, pool = milan_case()
    others = certs.load_paths([vector("amd-certs/trustee/genoa_ask_ark_asvk.pem"),
                               vector("amd-certs/trustee/turin_ask_ark_asvk.pem")])
    leaf = next(c for c in pool if c.role == "vcek")
    checks = chain_checks(others + pool, leaf, now=pinned_now(entry))
    assert checks["cert.ark_pinned"] == (True, "ARK-Milan public key matches AMD's pinned milan root")
    assert all(ok for ok, _ in checks.values()), checks


def test_what_a_certificate_says_about_itself():
    (vcek,) = certs.load_paths([vector("attestation/virtee-sev/vcek_milan.der")])
    ark = next(c for c in certs.load_paths([vector("amd-certs/virtee-sev/milan/ark.pem")]))
    assert (vcek.product_name(), vcek.spl("snp") is not None) == ("Milan-B0", True)
    assert (ark.product_name(), ark.spl("snp"), ark.hw_id()) == (None, None, None)


def cert_with(extension_suffix, value):
    ca = shared_ca()
    return certs.Cert(_cert("SEV-VCEK", "SEV-Milan", ca.vcek_key.public_key(), ca.ask_key,
                            [(f"{certs.AMD_OID}.{extension_suffix}", value)]), "crafted")


@pytest.mark.parametrize("value,name", [
    (b"\x16\x08Genoa-B0", "Genoa-B0"),
    (b"\x16\x03Turin", "Tur"),              # the length byte decides where the name ends
    (b"\x16\x00", ""),
    (b"\x16\x02\xffA", "\ufffdA"),          # not ASCII: replaced, never an exception
    (b"\x0c\x08Genoa-B0", None),            # a UTF8String, not AMD's IA5String
    (b"\x16", None),
])
def test_the_product_name_extension_is_an_ia5_string(value, name):
    assert cert_with("2", value).product_name() == name


@pytest.mark.parametrize("value,spl", [
    (b"\x02\x01\x08", 8), (b"\x02\x02\x00\xd5", 213),
    (b"\x02\x01\xd5", -43),                 # as DER says: a VCEK without the leading zero does not match 213
    (b"\x04\x01\x08", None), (b"\x02\x02\x08", None), (b"\x02", None), (b"\x02\x00", None),
])
def test_an_spl_is_a_der_integer(value, spl):
    assert cert_with(certs.SPL_OIDS["snp"], value).spl("snp") == spl


@pytest.mark.parametrize("value,hw_id", [
    (b"\x04\x08" + bytes(range(8)), bytes(range(8))),      # Turin's 8 bytes in an OCTET STRING
    (b"\x04\x40" + bytes(range(64)), bytes(range(64))),
    (b"\x04\x08" + bytes(range(9)), b"\x04\x08" + bytes(range(9))),  # not exactly wrapped: raw
])
def test_a_hwid_is_read_raw_or_unwrapped(value, hw_id):
    assert cert_with("4", value).hw_id() == hw_id


def test_certificates_are_loaded_from_files_by_extension_and_keep_their_path(tmp_path):
    ca = shared_ca()
    paths = ca.write(tmp_path / "ca")
    (tmp_path / "ca" / "ark.pem").rename(tmp_path / "ca" / "ark.CRT")
    (tmp_path / "ca" / "ask.pem").rename(tmp_path / "ca" / "ask.cer")
    (tmp_path / "ca" / "notes.txt").write_text("not a certificate")
    loaded = certs.load_paths([tmp_path / "ca"])
    assert sorted((c.role, Path(c.source).name) for c in loaded) == [("ark", "ark.CRT"), ("ask", "ask.cer"),
                                                                      ("vcek", "vcek.pem")]
    assert certs.load_paths([paths["vcek"]])[0].source == str(paths["vcek"])
    der = vector("attestation/virtee-sev/vcek_milan.der")
    assert certs.load_paths([der])[0].source == str(der)


def test_unreadable_or_not_certificates_are_bad_input_with_a_hint(tmp_path):
    (tmp_path / "gone.pem").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BadInputError) as missing:
        certs.load_paths([tmp_path])
    assert (missing.value.message, missing.value.hint) == (
        f"certificate {tmp_path / 'gone.pem'}: does not exist", "check the path")
    with pytest.raises(BadInputError) as garbage:
        certs.load(b"not a certificate", "x.der")
    assert garbage.value.message.startswith("x.der: not an X.509 certificate (")
    assert garbage.value.hint == "give PEM or DER certificates (ARK, ASK, VCEK), e.g. from snpvirt attest fetch-certs"


def test_a_certificate_damaged_past_its_outer_layer_is_refused_when_loaded():
    """cryptography parses a certificate's key lazily: a VCEK whose key names an unknown curve loads, and
    would raise mid-verification (a traceback after a report was half checked) unless load() parses it all."""
    der = vector("attestation/virtee-sev/vcek_milan.der").read_bytes()
    secp384r1 = bytes.fromhex("06052b81040022")  # the OID 1.3.132.0.34, once in the VCEK: its key's curve
    assert der.count(secp384r1) == 1
    damaged = der.replace(secp384r1, bytes.fromhex("06052b8104007f"))  # 1.3.132.0.127: no such curve
    with pytest.raises(BadInputError) as error:
        certs.load(damaged, "vcek.der")
    assert error.value.message.startswith("vcek.der: not an X.509 certificate (") and "1.3.132.0.127" in error.value.message


def test_cli_json_gives_every_check_a_status(tmp_path, capsys):
    ca = shared_ca()
    paths = ca.write(tmp_path / "ca")
    (tmp_path / "r.bin").write_bytes(ca.report())
    code = run(["attest", "verify", str(tmp_path / "r.bin"), "--certs", str(tmp_path / "ca"), "--trust-root",
                str(paths["ark"]), "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--no-nonce", "--json"])
    checks = json.loads(capsys.readouterr().out)["results"][0]["checks"]
    assert code == ExitCode.FAILURE
    assert checks[0] == {"id": "report.format", "status": "pass", "message": "version 2, ECDSA P-384/SHA-384, milan"}
    assert {"id": "expect.measurement", "status": "fail", "message": "no expected measurement to compare with "
            "(give --domain NAME or --expected-measurement HEX)"} in checks


# --- products, layouts and leaf choice --------------------------------------------------------------

TURIN_CHIP = bytes(range(8)) + bytes(56)


def turin_ca():
    return make_ca(product="Turin", chip_id=TURIN_CHIP, hw_id=TURIN_CHIP[:8])


def turin_report(ca, **kwargs):
    return ca.report(version=3, patch={0x188: b"\x1a", 0x189: b"\x02"}, **kwargs)  # CPUID family 0x1A: Turin


def test_a_turin_report_is_read_in_turins_tcb_layout():
    ca = turin_ca()
    pool = named_pool(ca)
    verdict = verify.verify(turin_report(ca), "r.bin", pool, expect=replayable(bytes(48), "t", min_tcb={"fmc": 2}),
                            now=NOW, trust_root=pool[0])
    checks = {c.check_id: (c.ok, c.message) for c in verdict.checks}
    assert verdict.product == "turin"
    assert checks["cert.tcb"] == (True, "VCEK SPLs equal the reported TCB "
                                        "{'fmc': 1, 'bootloader': 3, 'tee': 0, 'snp': 8, 'microcode': 115}")
    assert checks["expect.min_tcb"] == (False, "TCB below --min-tcb: reported fmc 1 < 2; current fmc 1 < 2; launch fmc 1 < 2")
    assert verdict.failed() == ["expect.min_tcb"]


def test_among_turin_vceks_for_one_key_the_one_for_the_reported_tcb_wins():
    ca = turin_ca()
    stale = certs.Cert(leaf_cert(ca, issuer="SEV-Turin", product="Turin", tcb={"fmc": 0}, hw_id=TURIN_CHIP[:8]), "old.pem")
    current = certs.Cert(ca.vcek, "vcek.pem")
    assert verify.select_leaf([stale, current], reports.parse(ca.report()), "turin") is current


def test_a_vcek_that_does_not_name_a_whole_milan_chip_is_never_the_leaf_even_if_its_key_signed():
    ca = shared_ca()
    prefix_only = certs.Cert(leaf_cert(ca, hw_id=ca.chip_id[:8]), "prefix.pem")  # the key that signed the report
    whole = certs.Cert(leaf_cert(ca, key=make_ca().vcek_key), "whole.pem")       # the chip's id, another key
    rep = reports.parse(ca.report())
    assert verify.select_leaf([prefix_only, whole], rep, "milan") is whole
    pool = named_pool(ca)[:2] + [prefix_only, whole]
    verdict = verify.verify(ca.report(), "r.bin", pool, expect=replayable(bytes(48), "t"), now=NOW, trust_root=pool[0],
                            product="milan")
    assert verdict.failed() == ["report.signature"]


def test_several_reserved_values_are_all_named():
    checks = {c[0]: c for c in verdict_of(shared_ca().report(patch={0x4C: b"\x01", 0x1EB: b"\x01"}))}
    assert checks["report.reserved"] == ("report.reserved", False,
                                         "reserved values set: bytes 0x4c..0x4f; bytes 0x1eb..0x1eb")


def test_a_reserved_signing_key_is_checked_as_a_vcek_chain():
    checks = {c[0] for c in verdict_of(shared_ca().report(patch={0x48: b"\x08"}))}
    assert {"cert.vcek_signed_by_ask", "cert.vcek_key"} <= checks


def test_the_given_product_picks_the_root_among_every_generations_certificates():
    entry, data, pool = milan_case()
    others = certs.load_paths([vector("amd-certs/trustee/genoa_ask_ark_asvk.pem"),
                               vector("amd-certs/trustee/turin_ask_ark_asvk.pem")])
    verdict = verify.verify(data, "r", others + pool, expect=replayable(bytes.fromhex(entry["fields"]["measurement"]), "t"),
                            now=pinned_now(entry), product="milan")
    assert verdict.verified, verdict.failed()


def test_a_vlek_says_it_is_bound_to_the_provider_not_a_chip():
    vlek = next(e for e in json.loads(vector("attestation/expected-fields.json").read_text()) if e["name"] == "trustee/milan-vlek-aws")
    pool = certs.load_paths([vector(vlek["signer_cert_file"])]) + chain_for(vlek)
    verdict = verify.verify(vector(vlek["report_file"]).read_bytes(), "r", pool,
                            expect=replayable(bytes.fromhex(vlek["fields"]["measurement"]), "t"), now=pinned_now(vlek))
    assert verdict.verified, verdict.failed()
    assert next(c.message for c in verdict.checks if c.check_id == "cert.chip_id") == (
        "VLEK: signed for the cloud provider, not bound to a chip id")


def test_another_chips_vcek_of_unknown_product_is_named_not_a_crash():
    ca = shared_ca()
    stranger = certs.Cert(leaf_cert(ca, issuer="SEV-Unknown", product="Mystery", hw_id=bytes(range(1, 65))), "v")
    verdict = verify.verify(ca.report(), "r.bin", named_pool(ca)[:2] + [stranger], expect=replayable(bytes(48), "t"),
                            now=NOW, trust_root=named_pool(ca)[0])
    assert verdict.product is None
    assert next(c.message for c in verdict.checks if c.check_id == "cert.chip_id").startswith("VCEK hwID 0102030405060708...")


def test_the_product_is_read_from_the_issuer_first_and_from_a_nameless_issuer_not_at_all():
    ca = shared_ca()
    assert verify._product_of(certs.Cert(leaf_cert(ca, issuer="SEV-Genoa", product="Mystery"), "v")) == "genoa"
    nameless = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "SEV-VCEK")]))
                .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Advanced Micro Devices")]))
                .public_key(ca.vcek_key.public_key()).serial_number(1)
                .not_valid_before(datetime.datetime(2024, 1, 1)).not_valid_after(datetime.datetime(2034, 1, 1))
                .sign(ca.ask_key, hashes.SHA384()))
    assert verify._product_of(certs.Cert(nameless, "v")) is None
