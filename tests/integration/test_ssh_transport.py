"""The CLI over libvirt's real SSH transport: ssh to a loopback sshd, nc to an isolated libvirtd's socket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, assert_clean_error, run_cli
from tests.integration.sshd import LoopbackSshd, sshd_available

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"


def _logins(sshd: LoopbackSshd) -> int:
    return Path(sshd.log_path).read_text(errors="replace").count("Accepted publickey for root")


def test_apply_and_list_over_ssh_reach_the_daemon_behind_it(ssh_libvirtd, held):
    before = _logins(ssh_libvirtd.sshd)
    applied = run_cli("apply", WEB, "-c", ssh_libvirtd.uri, "--json")
    assert applied.code == 0, applied.stderr
    assert json.loads(applied.stdout)["results"][0]["state"] == "running"
    listed = run_cli("list", "-c", ssh_libvirtd.uri, "--json")
    assert listed.code == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)["results"]] == ["web-01"]
    # The same domain seen through the daemon's own unix socket: both runs reached that daemon, over SSH.
    assert held.lookupByName("web-01").isActive()
    assert _logins(ssh_libvirtd.sshd) == before + 2


def test_a_stopped_sshd_is_a_connection_error(libvirtd, tmp_path):
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    with LoopbackSshd(tmp_path / "sshd") as sshd:
        uri = sshd.libvirt_uri(libvirtd.socket_path)
        assert run_cli("list", "-c", uri).code == 0  # the URI works while the server runs
    down = run_cli("list", "-c", uri)
    assert_clean_error(down, ExitCode.CONNECTION, "cannot talk to")
    assert len(down.stderr.strip().splitlines()) == 2, down.stderr  # the error line and its hint, nothing of ssh's
