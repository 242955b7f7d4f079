"""`per_host` is a bound, not a hint: a fleet apply never has more than `per_host` libvirt operations in
flight on one host. Each host's connection is wrapped by a recorder that counts the calls in flight on
it; each call waits until one more than `per_host` calls are in flight (or a short while passes), so
an excess shows up whatever the scheduling, and the test asserts counts, not times."""

from __future__ import annotations

import threading
from typing import Any

from snpvirt.api import manager_over
from snpvirt.fleet.apply import apply_plan
from snpvirt.fleet.fleetfile import load_fleet
from snpvirt.fleet.hosts import close_all, reach_all
from snpvirt.fleet.plan import make_plan
from snpvirt.libvirt.connection import Connection
from tests.integration.fleet.conftest import write_fleet, write_spec

PER_HOST = 2
# The libvirt operations of a Hypervisor (orchestration/base.py) that change or read a domain.
OPERATIONS = ("lookup", "define", "state", "start", "start_definition", "live_xml", "persistent_domains", "shutdown",
              "destroy", "undefine", "autostart", "set_autostart", "set_metadata")
CROWD_WAIT_S = 0.05  # how long a call waits for company: widens the window, never asserted on


class InFlight:
    """A host's connection, counting the operations in flight on it at once (the most ever seen)."""

    def __init__(self, conn: Connection, limit: int) -> None:
        self._conn, self._limit = conn, limit
        self._changed = threading.Condition()
        self.now = self.most = self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        return self._counted(attr) if name in OPERATIONS else attr

    def _counted(self, call):
        def counted(*args, **kwargs):
            with self._changed:
                self.now += 1
                self.calls += 1
                self.most = max(self.most, self.now)
                self._changed.notify_all()
                # Wait for one call too many to join; with the bound kept it never comes.
                self._changed.wait_for(lambda: self.now > self._limit, CROWD_WAIT_S)
            try:
                return call(*args, **kwargs)
            finally:
                with self._changed:
                    self.now -= 1
        return counted


def test_fleet_apply_keeps_at_most_per_host_operations_in_flight_on_each_host(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    path = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{write_spec(tmp_path, "db", 128)}"\ncount = 16\n',
                       slots=16, settings=f"per_host = {PER_HOST}\n")
    fleet = load_fleet(path)
    recorders: dict[str, InFlight] = {}

    def managers(entry, conn):
        recorders[entry.name] = InFlight(conn, PER_HOST)
        return manager_over(recorders[entry.name])

    sessions = reach_all(fleet, lambda entry: Connection(entry.uri, timeout_s=5), lambda _host, _what: None)
    try:
        plan = make_plan(fleet, sessions, managers, lambda _host, _what: None, per_domain=False)
        results = apply_plan(fleet, sessions, plan, managers, progress=lambda _host, _what: None)
    finally:
        close_all(sessions)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert len(h1.running()) == len(h2.running()) == 8
    for name, recorder in recorders.items():
        assert recorder.calls >= 16, (name, recorder.calls)  # a define and a start per domain went through it
        assert recorder.most <= PER_HOST, f"{name}: {recorder.most} libvirt operations at once, per_host is {PER_HOST}"
        assert recorder.most == PER_HOST, f"{name}: the operations never overlapped: per_host was not used"
