"""Hostile report and certificate bytes for `attest show` and `attest verify`: real reports and
certificates from tests/data, truncated, bit-flipped, overwritten at the fields the parser reads,
re-encoded as hex; random DER; PEM bundles cut and corrupted."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import vector
from tests.hostile.conftest import SPECIAL_INPUTS, make_special, run_with_special
from tests.hostile.contract import assert_contract, run_in_process

HOSTILE = settings.get_profile("hostile")

# (report, its signer's certificate, the product's ASK+ARK(+ASVK) bundle, a moment inside the signer's validity)
CASES = [
    ("attestation/trustee/test-report.bin", "attestation/trustee/test-vcek.der", "milan", "2023-03-01T00:00:00Z"),
    ("attestation/go-sev-guest/attestation.bin", "attestation/go-sev-guest/vcek_milan.der", "milan", "2022-11-01T00:00:00Z"),
    ("attestation/derived/trustee_e2e_genoa_report.bin", "attestation/derived/trustee_e2e_genoa_vcek.der", "genoa",
     "2025-07-01T00:00:00Z"),
    ("attestation/trustee/test-vlek-report.bin", "attestation/trustee/test-vlek.der", "milan", "2025-01-10T00:00:00Z"),
    ("attestation/virtee-sev/report_milan.hex", "attestation/virtee-sev/vcek_milan.der", "milan", "2023-05-01T00:00:00Z"),
]
# Offsets the parser and the verifier read: version, policy, VMPL and algorithm, TCB, flags, reserved
# words, CPUID family/model, chip id, firmware versions, the signature's R and S.
HOT_OFFSETS = [0x0, 0x4, 0x8, 0xF, 0x30, 0x34, 0x38, 0x48, 0x4C, 0x180, 0x188, 0x189, 0x1A0, 0x1E8, 0x1F8, 0x2A0, 0x2E8, 0x49F]
PRODUCTS = [None, "milan", "genoa", "turin", "MILAN", "\u0130urin"]


def tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 0x80 else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes(
        (size.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


# Random DER: nested SEQUENCE/SET/context tags around INTEGERs, OIDs, strings and times.
random_der = st.recursive(
    st.builds(tlv, st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x17, 0x18, 0x1E]), st.binary(max_size=24)),
    lambda children: st.builds(lambda tag, parts: tlv(tag, b"".join(parts)),
                               st.sampled_from([0x30, 0x31, 0xA0, 0xA3]), st.lists(children, max_size=4)),
    max_leaves=16)

offset = st.one_of(st.sampled_from(HOT_OFFSETS), st.integers(0, 1200))
flips = st.lists(st.one_of(st.tuples(st.just("flip"), st.tuples(offset, st.integers(0, 7))),
                           st.tuples(st.just("overwrite"), st.tuples(offset, st.binary(min_size=1, max_size=16)))),
                 min_size=1, max_size=3)  # the size stays right: these get past the parser, into the verifier
damage = st.lists(st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 1300)),
    st.tuples(st.just("flip"), st.tuples(offset, st.integers(0, 7))),
    st.tuples(st.just("overwrite"), st.tuples(offset, st.binary(min_size=1, max_size=16))),
    st.tuples(st.just("append"), st.binary(max_size=32)),
    st.tuples(st.just("hex"), st.sampled_from(["lower", "upper", "newline", "spaced", "non-ascii"])),
    st.tuples(st.just("replace"), random_der),
), min_size=1, max_size=4)


def damaged(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for op, value in edits:
        if op == "truncate":
            del data[value:]
        elif op == "flip":
            offset, bit = value
            if offset < len(data):
                data[offset] ^= 1 << bit
        elif op == "overwrite":
            offset, chunk = value
            data[offset:offset + len(chunk)] = chunk
        elif op == "append":
            data += value
        elif op == "hex":
            text = bytes(data).hex()
            data = bytearray({"lower": text.encode(), "upper": text.upper().encode(), "newline": (text + "\n").encode(),
                              "spaced": (text[:100] + " " + text[100:]).encode(),
                              "non-ascii": (text[:-1] + "\u0663").encode()}[value])
        elif op == "replace":
            data = bytearray(value)
    return bytes(data)


def chain(product: str) -> Path:
    return vector(f"amd-certs/trustee/{product}_ask_ark_asvk.pem")


def write(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


@HOSTILE
@given(case=st.integers(0, len(CASES) - 1), edits=damage, product=st.sampled_from(PRODUCTS))
@example(case=0, edits=[("truncate", 1183)], product=None)
@example(case=0, edits=[("overwrite", (0x0, b"\x05\x00\x00\x00"))], product=None)  # a v5 report cut at v2's fields
@example(case=4, edits=[("hex", "non-ascii")], product=None)
def test_attest_show_damaged_reports(case, edits, product):
    with tempfile.TemporaryDirectory(prefix="hostile-report-") as folder:
        report = write(folder, "report.bin", damaged(vector(CASES[case][0]).read_bytes(), edits))
        result = run_in_process("attest", "show", report, "--json", *(["--product", product] if product else []))
        assert_contract(result)
        assert result.code in (0, 2), result.describe()


def verify_args(report: Path, signer: Path, bundle: Path, now: str, *extra: str) -> list:
    return ["attest", "verify", report, "--vcek", signer, "--chain", bundle, "--now", now, "--no-nonce", "--json", *extra]


@HOSTILE
@given(case=st.integers(0, len(CASES) - 1), edits=st.one_of(flips, damage), product=st.sampled_from(PRODUCTS),
       measurement=st.sampled_from([None, "00" * 48, "zz", "00" * 49]))
def test_attest_verify_damaged_reports(case, edits, product, measurement):
    report_file, signer, bundle, now = CASES[case]
    with tempfile.TemporaryDirectory(prefix="hostile-verify-") as folder:
        report = write(folder, "report.bin", damaged(vector(report_file).read_bytes(), edits))
        extra = [*(["--product", product] if product else []),
                 *(["--expected-measurement", measurement] if measurement else [])]
        result = run_in_process(*verify_args(report, vector(signer), chain(bundle), now, *extra))
        assert_contract(result)
        assert result.code in (1, 2), result.describe()  # a damaged report never verifies


def test_the_undamaged_reports_verify_through_the_same_path():
    """Without this, a harness where every run fails would pass the tests above."""
    for report_file, signer, bundle, now in CASES:
        measurement = (vector(report_file).read_bytes() if report_file.endswith(".bin")
                       else bytes.fromhex(vector(report_file).read_text().strip()))[0x90:0xC0].hex()
        result = run_in_process(*verify_args(vector(report_file), vector(signer), chain(bundle), now,
                                             "--expected-measurement", measurement, "--allow-debug"))
        doc = assert_contract(result)
        assert result.code == 0 and doc["results"][0]["verified"], result.describe()


def damaged_pem(data: bytes, edits, how: str) -> bytes:
    """A PEM bundle whose first certificate's DER is damaged, or whose text is cut."""
    text = data.decode()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    first = text.index(begin) + len(begin)
    last = text.index(end)
    der = base64.b64decode("".join(text[first:last].split()))
    if how == "der":
        body = base64.encodebytes(damaged(der, edits)).decode()
        return (text[:first] + "\n" + body + text[last:]).encode()
    if how == "cut":
        return text[:first + (len(der) % 700)].encode()
    if how == "bad-base64":
        return (text[:first] + "\n!!!!\u0663\n" + text[last:]).encode("utf-8")
    return (text[:first] + "\n" + text[last:]).encode()  # empty body


@HOSTILE
@given(case=st.integers(0, len(CASES) - 1), edits=st.one_of(flips, damage), which=st.sampled_from(["signer", "bundle", "trust-root"]),
       how=st.sampled_from(["der", "der", "cut", "bad-base64", "empty"]))
@example(case=0, edits=[("replace", b"0\x00")], which="signer", how="der")
@example(case=0, edits=[("flip", (384, 0))], which="signer", how="der")  # the curve OID: UnsupportedAlgorithm, late
def test_attest_verify_damaged_certificates(case, edits, which, how):
    report_file, signer, bundle, now = CASES[case]
    with tempfile.TemporaryDirectory(prefix="hostile-certs-") as folder:
        signer_path, bundle_path, extra = vector(signer), chain(bundle), []
        if which == "signer":
            data = signer_path.read_bytes()
            signer_path = write(folder, signer_path.name,
                                damaged(data, edits) if data.startswith(b"0") else damaged_pem(data, edits, how))
        elif which == "bundle":
            bundle_path = write(folder, "bundle.pem", damaged_pem(bundle_path.read_bytes(), edits, how))
        else:
            extra = ["--trust-root", write(folder, "root.pem", damaged_pem(vector(f"amd-certs/virtee-sev/{bundle}/ark.pem")
                                                                            .read_bytes(), edits, how))]
        result = run_in_process(*verify_args(vector(report_file), signer_path, bundle_path, now, *extra))
        assert_contract(result)


@HOSTILE
@given(blobs=st.lists(random_der, min_size=1, max_size=3), certs_dir=st.booleans())
def test_attest_verify_random_der_certificates(blobs, certs_dir):
    report_file, signer, bundle, now = CASES[0]
    with tempfile.TemporaryDirectory(prefix="hostile-der-") as folder:
        paths = [write(folder, f"cert{i}.der", blob) for i, blob in enumerate(blobs)]
        options = ["--certs", folder] if certs_dir else [a for p in paths for a in ("--vcek", p)]
        result = run_in_process("attest", "verify", vector(report_file), *options, "--chain", chain(bundle),
                                "--now", now, "--no-nonce", "--json")
        assert_contract(result)


# --- files that are not regular files (real processes: these can hang) --------------------------------

@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
@pytest.mark.parametrize("role", ["show", "verify-report", "vcek", "chain", "certs-dir", "trust-root"])
def test_attest_inputs_that_are_not_regular_files(workdir, role, kind):
    path = make_special(kind, workdir / f"attest-{role}", role)
    report_file, signer, bundle, now = CASES[0]
    if role == "show":
        args = ["attest", "show", path, "--json"]
    elif role == "verify-report":
        args = verify_args(path, vector(signer), chain(bundle), now)
    elif role == "certs-dir":
        folder = workdir / f"certs-dir-{kind}"
        folder.mkdir(exist_ok=True)
        if not (folder / "vcek.der").exists() and not (folder / "vcek.der").is_symlink():
            (folder / "vcek.der").symlink_to(path)
        args = ["attest", "verify", vector(report_file), "--certs", folder, "--chain", chain(bundle), "--now", now,
                "--no-nonce", "--json"]
    else:
        option = {"vcek": "--vcek", "chain": "--chain", "trust-root": "--trust-root"}[role]
        args = ["attest", "verify", vector(report_file), "--vcek", vector(signer), "--chain", chain(bundle),
                "--now", now, "--no-nonce", "--json", option, path]
    result = run_with_special(kind, *args)
    assert_contract(result)
    assert result.code in (1, 2), result.describe()


@pytest.mark.parametrize("edits", [[("truncate", 100)], [("overwrite", (0x0, b"\x09"))], [("replace", b"0\x82\x00\x00")]],
                         ids=["truncated", "unknown-version", "random-der"])
@pytest.mark.parametrize("existing", [True, False], ids=["into-a-folder", "new-folder"])
def test_fetch_certs_of_a_damaged_report_writes_nothing(workdir, edits, existing):
    """The report is read before anything is fetched or written: a bad one leaves -o as it was."""
    folder = workdir / f"fetch-{'-'.join(str(e[0]) for e in edits)}-{existing}"
    folder.mkdir()
    report = write(str(folder), "report.bin", damaged(vector(CASES[0][0]).read_bytes(), edits))
    out = folder / "certs"
    if existing:
        out.mkdir()
        (out / "ark.pem").write_bytes(b"precious")
    before = sorted(p.name for p in folder.iterdir()), sorted(p.name for p in out.iterdir()) if existing else None
    result = run_in_process("attest", "fetch-certs", report, "-o", out, "--kds-url", "http://127.0.0.1:9", "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()
    after = sorted(p.name for p in folder.iterdir()), sorted(p.name for p in out.iterdir()) if existing else None
    assert after == before, result.describe()
    if existing:
        assert (out / "ark.pem").read_bytes() == b"precious"
