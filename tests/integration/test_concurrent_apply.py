"""Two `snpvirt apply` processes at once on the same spec, against one real libvirtd: both succeed."""

from __future__ import annotations

import json
import subprocess
import sys

import libvirt
import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.daemon
WEB = EXAMPLES / "web-01.toml"
ROUNDS = 10


@pytest.fixture
def held(libvirtd):
    conn = libvirt.open(libvirtd.test_uri)
    yield conn
    _remove_all_but_test(conn)
    conn.close()


def _remove_all_but_test(conn):
    for dom in conn.listAllDomains():
        if dom.name() != "test":
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def test_two_applies_of_the_same_spec_at_once_both_succeed(libvirtd, held):
    """The loser of the create race sees 'already exists with uuid' from libvirt: it looks the domain up
    again and plans against it, instead of failing. Repeated, because the race is won by timing."""
    argv = [sys.executable, "-m", "snpvirt", "apply", str(WEB), "-c", libvirtd.test_uri, "--json"]
    for round_ in range(ROUNDS):
        both = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        runs = [(p, *p.communicate(timeout=60)) for p in both]
        for proc, out, err in runs:
            assert proc.returncode == 0, (round_, out, err)
            doc = json.loads(out)
            assert doc["ok"] is True and doc["results"][0]["state"] == "running", (round_, doc)
        assert sorted(d.name() for d in held.listAllDomains()) == ["test", "web-01"], round_
        actions = sorted(json.loads(out)["results"][0]["action"] for _, out, _ in runs)
        assert actions[0] == "create" and actions[1] in ("create", "unchanged"), actions
        _remove_all_but_test(held)
