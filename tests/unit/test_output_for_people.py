"""What people read, through the real CLI: reports, ID block digests, missing certificates, errors about files."""

from __future__ import annotations

import base64
import json
import os

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import assert_clean_error, run_cli, vector

V2_REPORT = "attestation/trustee/test-report.bin"  # a version 2 report: it does not say its product
IDBLOCK = "measurement/idblock-virtee-sev"


def field(text: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key + ":"))


def test_attest_show_says_why_the_product_is_unknown_and_what_to_give():
    shown = run_cli("attest", "show", vector(V2_REPORT))
    assert shown.code == 0 and "None" not in shown.stdout
    assert field(shown.stdout, "product") == "unknown (version 2 reports do not say; give --product milan, genoa or turin)"
    assert "assumed" in field(shown.stdout, "tcb_layout")
    assert field(shown.stdout, "launch_mit_vector") == "-"  # a v5 field, absent from v2
    given = run_cli("attest", "show", vector(V2_REPORT), "--product", "milan")
    assert field(given.stdout, "product") == "milan" and field(given.stdout, "tcb_layout") == "milan-genoa"
    doc = json.loads(run_cli("attest", "show", vector(V2_REPORT), "--json").stdout)
    assert doc["results"][0]["product"] is None  # scripts get null, not a sentence


@pytest.mark.parametrize("command", [("attest", "show"), ("attest", "verify", "--no-nonce"), ("attest", "fetch-certs")],
                         ids=["show", "verify", "fetch-certs"])
def test_an_error_about_a_file_names_it_once(tmp_path, command):
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(vector(V2_REPORT).read_bytes()[:100])
    result = run_cli(*command[:2], trunc, *command[2:])
    assert_clean_error(result, ExitCode.BAD_INPUT, "not an SEV-SNP attestation report")
    error = next(line for line in result.stderr.splitlines() if line.startswith("snpvirt: error: "))
    assert error.count("trunc.bin") == 1, error


def test_idblock_digests_are_hex_as_attest_show_prints_them():
    keys = ("--id-key", vector(f"{IDBLOCK}/test_id_key.pem"), "--author-key", vector(f"{IDBLOCK}/test_auth_key.pem"))
    result = run_cli("idblock", "--measurement", "00" * 48, *keys, "--json")
    item = json.loads(result.stdout)["results"][0]
    assert result.code == 0
    for key in ("id_key_digest", "author_key_digest"):
        assert len(item[key]) == 96 and bytes.fromhex(item[key])  # SHA-384, in hex like the report's fields
    assert len(base64.b64decode(item["id_block"], validate=True)) == 96  # libvirt takes the blobs in base64
    assert len(base64.b64decode(item["id_auth"], validate=True)) == 4096
    text = run_cli("idblock", "--measurement", "00" * 48, *keys).stdout
    assert field(text, "id_key_digest") == item["id_key_digest"]
    assert field(text, "author_key_digest") == item["author_key_digest"]


def test_a_missing_vcek_says_which_options_give_it():
    result = run_cli("attest", "verify", vector(V2_REPORT), "--no-nonce")
    assert_clean_error(result, ExitCode.FAILURE, "NOT verified")
    leaf = next(line for line in result.stdout.splitlines() if "cert.leaf" in line)
    assert "no VCEK certificate" in leaf and all(option in leaf for option in ("--certs DIR", "--vcek FILE", "--fetch"))
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert all(option in hint for option in ("--certs DIR", "--vcek FILE", "--fetch"))
    doc = json.loads(run_cli("attest", "verify", vector(V2_REPORT), "--no-nonce", "--json").stdout)
    assert "--fetch" in doc["error"]["hint"]


def test_a_missing_chain_says_which_options_give_it():
    result = run_cli("attest", "verify", vector(V2_REPORT), "--vcek", vector("attestation/trustee/test-vcek.der"),
                     "--no-nonce")
    chain = next(line for line in result.stdout.splitlines() if "cert.chain" in line)
    assert "no ARK" in chain and all(option in chain for option in ("--certs DIR", "--chain PEM", "--fetch"))


def test_guest_report_random_sends_a_fresh_64_byte_nonce_and_prints_it(tmp_path):
    from tests.attest_factory import make_ca
    from tests.unit.test_guest import FakeTsmKernel, guest_root

    root = guest_root(tmp_path / "guest")
    nonces = []
    with FakeTsmKernel(root, make_ca()) as kernel:
        for name in ("r1.bin", "r2.bin"):
            result = run_cli("guest", "report", "--random", "--sysroot", root, "-o", tmp_path / name, "--json")
            assert result.code == 0, result.stderr
            item = json.loads(result.stdout)["results"][0]
            nonces.append(item["report_data"])
            assert item["random"] is True and (tmp_path / name).read_bytes()[0x50:0x90].hex() == item["report_data"]
        text = run_cli("guest", "report", "-r", "--sysroot", root, "-o", tmp_path / "r3.bin")
    printed = field(text.stdout, "report data (random)")
    assert text.code == 0 and (tmp_path / "r3.bin").read_bytes()[0x50:0x90].hex() == printed
    assert [len(bytes.fromhex(n)) for n in nonces + [printed]] == [64, 64, 64]  # the whole REPORT_DATA
    assert len({*nonces, printed}) == 3, "each request gets its own nonce"
    assert [seen[1].hex() for seen in kernel.seen] == [*nonces, printed]


@pytest.mark.parametrize("other", [("--report-data", "00"), ("--nonce-file", "nonce.bin")], ids=["report-data", "nonce-file"])
def test_guest_report_random_excludes_another_nonce(tmp_path, other):
    from tests.unit.test_guest import guest_root

    (tmp_path / "nonce.bin").write_bytes(b"n")
    result = run_cli("guest", "report", "--random", other[0], tmp_path / other[1] if other[0] == "--nonce-file" else other[1],
                     "--sysroot", guest_root(tmp_path / "guest"), "-o", tmp_path / "r.bin")
    assert_clean_error(result, ExitCode.BAD_INPUT, "exactly one of --report-data HEX, --nonce-file F or --random")
    assert not (tmp_path / "r.bin").exists()
