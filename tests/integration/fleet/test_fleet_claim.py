"""The fleet's name in a domain's metadata is a claim the single-host manager honours: a spec of one
fleet never takes a domain of another fleet, or of none (the guard when two runs race past placement)."""

from __future__ import annotations

import dataclasses

import pytest

from snpvirt.domain import metadata
from snpvirt.domain import xml as domxml
from snpvirt.manager import SpecInput
from tests.integration.test_manager import make_manager, spec


def owned(fleet):
    item = spec()
    return SpecInput(item.label, dataclasses.replace(item.spec, fleet=fleet))


def test_the_fleet_name_is_recorded_and_read_back(conn):
    assert make_manager(conn).apply([owned("prod")])[0].ok
    assert metadata.read(domxml.parse(conn.lookup("mgr-01").xml)).fleet == "prod"
    assert make_manager(conn).apply([owned("prod")], check=True)[0].action == "unchanged"


@pytest.mark.parametrize("owner, taker", [("other", "prod"), (None, "prod"), ("prod", None)])
def test_a_domain_of_another_owner_is_a_conflict(conn, owner, taker):
    assert make_manager(conn).apply([owned(owner)])[0].ok
    before = conn.lookup("mgr-01").xml
    outcome = make_manager(conn).apply([owned(taker)])[0]
    assert (outcome.ok, outcome.action, outcome.error.kind) == (False, "conflict", "conflict")
    assert conn.lookup("mgr-01").xml == before
