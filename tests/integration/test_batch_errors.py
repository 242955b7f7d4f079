"""--json on a failed batch: besides each result's own error, one top-level error a script can read
(the first failure's kind when every item failed, `partial` when some succeeded)."""

from __future__ import annotations

import json

import pytest

from snpvirt.errors import ExitCode
from tests.attest_factory import make_ca
from tests.conftest import EXAMPLES, GOLDEN, run_cli

URI = "test:///default"  # each CLI process has its own in-process test driver


def cli_json(*args):
    result = run_cli(*args, "--json")
    return result.code, json.loads(result.stdout)


@pytest.fixture
def bad_spec(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    return path


def test_apply_with_some_specs_failing_is_partial(bad_spec):
    code, doc = cli_json("apply", EXAMPLES / "web-01.toml", bad_spec, "-c", URI)
    assert code == ExitCode.PARTIAL and [r["ok"] for r in doc["results"]] == [True, False]
    assert doc["error"]["kind"] == "partial" and "1 of 2 failed" in doc["error"]["message"]
    assert "malformed TOML" in doc["error"]["message"] and doc["error"]["hint"]
    assert doc["results"][1]["error"]["kind"] == "bad_input", "each result keeps its own error"


def test_apply_with_every_spec_failing_carries_the_first_failure(bad_spec, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text('name = "x"\n')
    code, doc = cli_json("apply", bad_spec, other, "-c", URI)
    assert code == ExitCode.PARTIAL and doc["ok"] is False
    assert doc["error"]["kind"] == "bad_input" and doc["error"]["message"].endswith("(and 1 more)")
    assert doc["error"]["message"].startswith(doc["results"][0]["error"]["message"])


def test_a_single_failed_item_is_the_top_level_error(bad_spec):
    code, doc = cli_json("apply", bad_spec, "-c", URI)
    assert code == ExitCode.BAD_INPUT and doc["error"] == doc["results"][0]["error"]


def test_verbs_on_several_domains(tmp_path):
    code, doc = cli_json("start", "nope-1", "nope-2", "-c", URI)
    assert code == ExitCode.PARTIAL and doc["error"]["kind"] == "not_found"
    code, doc = cli_json("destroy", "test", "nope", "-c", URI)  # the driver's own domain: not managed, a conflict
    assert code == ExitCode.PARTIAL and doc["error"]["kind"] == "conflict"


def test_a_successful_batch_has_no_top_level_error():
    code, doc = cli_json("apply", EXAMPLES / "web-01.toml", "-c", URI)
    assert code == 0 and "error" not in doc


def test_validate(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text((GOLDEN / "web-01.xml").read_text().replace("machine='q35'", "machine='pc'"))
    result = run_cli("validate", GOLDEN / "web-01.xml", broken, "--json")
    doc = json.loads(result.stdout)
    assert result.code == ExitCode.BAD_INPUT and doc["error"]["kind"] == "partial"
    assert "snp.machine_q35" in doc["error"]["message"] and doc["results"][1]["error"]["kind"] == "bad_input"
    only_bad = json.loads(run_cli("validate", broken, "--json").stdout)
    assert only_bad["error"]["kind"] == "bad_input" and only_bad["error"]["message"].startswith(f"{broken}: snp.machine_q35")
    assert "error" not in json.loads(run_cli("validate", GOLDEN / "web-01.xml", "--json").stdout)


def test_attest_verify(tmp_path):
    ca = make_ca()
    paths = ca.write(tmp_path / "ca")
    good, bad = tmp_path / "good.bin", tmp_path / "bad.bin"
    good.write_bytes(ca.report(bytes([1]) * 48))
    bad.write_bytes(ca.report(bytes([2]) * 48))
    common = ["--certs", tmp_path / "ca", "--trust-root", paths["ark"], "--expected-measurement", "01" * 48,
              "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--no-nonce", "--json"]
    result = run_cli("attest", "verify", good, bad, *common)
    doc = json.loads(result.stdout)
    assert result.code == ExitCode.PARTIAL and doc["error"]["kind"] == "partial"  # as every batch command
    assert "bad.bin: NOT verified: failed expect.measurement" in doc["error"]["message"]
    alone = json.loads(run_cli("attest", "verify", bad, *common).stdout)
    assert alone["error"]["kind"] == "failure"
    assert "error" not in json.loads(run_cli("attest", "verify", good, *common).stdout)
