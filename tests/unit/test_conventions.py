"""Conventions people bring from virsh, git and Ansible (issue 11 §4), through the real CLI in subprocesses:
one name per option across commands, global options before or after the command, --set wherever a spec
is read, shell completion, and one table of CPU models for the spec and for `measure`."""

from __future__ import annotations

import json

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, assert_clean_error, run_cli
from tests.unit.fakehost import FakeHost, genoa_domcaps

WEB = EXAMPLES / "web-01.toml"


@pytest.fixture(scope="module")
def ready_host(tmp_path_factory):
    return FakeHost(tmp_path_factory.mktemp("captured") / "ready").root


# --- one name for the saved capabilities file -------------------------------------------------------

# start takes --host-caps too, hidden: only with --sysroot, for a captured host (tests/integration/test_gate_cli.py).
@pytest.mark.parametrize("command", [("render",), ("apply",), ("define",), ("import",), ("host", "check")])
def test_every_command_that_reads_saved_capabilities_calls_the_option_host_caps(command):
    shown = run_cli(*command, "--help")
    assert shown.code == 0 and "--host-caps" in shown.stdout, command
    assert "--domcaps" not in shown.stdout, "the old name stays a hidden alias"


def test_host_check_reads_host_caps_and_still_the_old_domcaps(ready_host):
    for option in ("--host-caps", "--domcaps"):
        result = run_cli("host", "check", "--sysroot", ready_host, option, genoa_domcaps(), "--json")
        doc = json.loads(result.stdout)
        assert result.code == 0 and doc["ready"] is True, (option, result.stderr)
        assert doc["host"]["sysroot"] == str(ready_host)


def test_host_check_refuses_both_names_at_once(ready_host):
    result = run_cli("host", "check", "--sysroot", ready_host, "--host-caps", genoa_domcaps(), "--domcaps", genoa_domcaps())
    assert_clean_error(result, ExitCode.BAD_INPUT, "--domcaps is the old name of --host-caps")
