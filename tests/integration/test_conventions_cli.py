"""Conventions through the real CLI against a real libvirtd's test driver, whose state outlives one command:
`apply --set` converges like a spec edit, and `snpvirt -c URI COMMAND` reaches the daemon like `COMMAND -c URI`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLES, run_cli

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"


def plan(uri, *extra):
    result = run_cli("-c", uri, "apply", WEB, "--check", "--json", *extra)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)["results"][0]["action"]


def test_apply_set_converges_like_an_edited_spec(libvirtd, held):
    uri = libvirtd.test_uri
    assert plan(uri, "--set", "vcpus=8") == "create"
    applied = run_cli("-c", uri, "apply", WEB, "--set", "vcpus=8", "--json")
    assert applied.code == 0 and json.loads(applied.stdout)["changed"] is True, applied.stderr
    assert held.lookupByName("web-01").info()[3] == 8  # the running domain has the overridden vCPU count
    assert plan(uri, "--set", "vcpus=8") == "unchanged"
    assert plan(uri) == "update"  # without --set the spec on disk asks for 4 again


def test_connect_before_the_command_reaches_the_daemon(libvirtd, held):
    uri = libvirtd.test_uri
    assert run_cli("apply", WEB, "-c", uri).code == 0
    before = run_cli("-c", uri, "list", "--json")
    after = run_cli("list", "--json", "-c", uri)
    names = [[r["name"] for r in json.loads(run.stdout)["results"]] for run in (before, after)]
    assert before.code == after.code == 0 and names == [["web-01"], ["web-01"]]
