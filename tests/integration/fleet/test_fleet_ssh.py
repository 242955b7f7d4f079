"""One fleet host reached over a real SSH transport (a loopback sshd in front of its libvirtd), beside one
reached over its unix socket: the remote path a fleet takes to a real host is the one tested."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import run_cli
from tests.integration.fleet.conftest import write_fleet, write_spec

pytestmark = pytest.mark.daemon


def _ssh_logins(sshd) -> int:
    return Path(sshd.log_path).read_text(errors="replace").count("Accepted publickey for root")


def test_a_fleet_with_one_host_over_ssh_places_applies_and_lists_on_both(hosts, loopback_sshd, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    over_ssh = SimpleNamespace(name="h2", uri=loopback_sshd.libvirt_uri(h2.daemon.socket_path, command=False))
    assert over_ssh.uri.startswith("test+ssh://")
    fleet = write_fleet(tmp_path, [h1, over_ssh], f'[[domains]]\nspec = "{write_spec(tmp_path, "web")}"\ncount = 4\n')
    logins = _ssh_logins(loopback_sshd)

    applied = run_cli("fleet", "apply", str(fleet), "--json", env=loopback_sshd.path_env())
    assert applied.code == 0, applied.stderr
    by_host = {}
    for item in json.loads(applied.stdout)["results"]:
        by_host.setdefault(item["host"], []).append(item["name"])
    assert sorted(len(v) for v in by_host.values()) == [2, 2], by_host
    # What went to h2 went through sshd: the daemon holds it, and sshd logged the logins.
    assert h2.running() == sorted(by_host["h2"])
    assert h1.running() == sorted(by_host["h1"])
    assert _ssh_logins(loopback_sshd) > logins

    listed = run_cli("fleet", "list", str(fleet), "--json", env=loopback_sshd.path_env())
    assert listed.code == 0, listed.stderr
    seen = {(r["host"], r["name"]) for r in json.loads(listed.stdout)["results"]}
    assert seen == {(host, name) for host, names in by_host.items() for name in names}

    again = run_cli("fleet", "plan", str(fleet), "--json", env=loopback_sshd.path_env())
    assert again.code == 0 and {r["action"] for r in json.loads(again.stdout)["results"]} == {"unchanged"}
