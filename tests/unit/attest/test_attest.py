"""Attestation with real reports and certificates, and a hardware-free round trip with a test CA."""

from __future__ import annotations

import datetime
import functools
import json

import pytest

from snpvirt.attest import certs, verify
from snpvirt.attest import report as reports
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError, ExitCode
from tests.attest_factory import make_ca
from tests.conftest import vector

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
