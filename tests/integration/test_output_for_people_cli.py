"""`list`, `status` and apply results as people read them, through the real CLI: against libvirt's test driver in
the CLI's own process (its `test` domain is one snpvirt does not manage) and a real libvirtd's, whose state
outlives one command."""

from __future__ import annotations

import base64
import json
import re

import libvirt
import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, run_cli, vector
from tests.integration.test_measurement_recorded import files, spec_file  # noqa: F401 (a fixture)

WEB = EXAMPLES / "web-01.toml"
ELLIPSIS = "\u2026"


def test_a_name_held_by_another_domain_is_a_conflict_not_invalid(tmp_path):
    taken = tmp_path / "test.toml"
    taken.write_text(re.sub(r'(?m)^name = .*$', 'name = "test"', WEB.read_text()))  # test:///default's own domain
    result = run_cli("apply", taken, "-c", "test:///default", "--json")
    item = json.loads(result.stdout)["results"][0]
    assert result.code == ExitCode.CONFLICT and item["action"] == "conflict" and item["error"]["kind"] == "conflict"
    human = run_cli("apply", taken, WEB, "-c", "test:///default")
    assert human.code == ExitCode.PARTIAL
    assert re.search(r"(?m)^test\s+conflict\s", human.stdout) and re.search(r"(?m)^web-01\s+create\s", human.stdout)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nvcpus = "four"\n')
    assert json.loads(run_cli("apply", bad, "-c", "test:///default", "--json").stdout)["results"][0]["action"] == "invalid"
