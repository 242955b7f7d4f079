"""Reach every host of a fleet at once: one connection per host, opened under the fleet's deadline
(the opener enforces it), then observed. A host that cannot be reached or read is recorded with why;
the others go on. The connections stay open for the plan and the apply, and are closed by close_all."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from snpvirt.errors import SnpvirtError
from snpvirt.fleet.fleetfile import Fleet, HostEntry, identity_unchecked
from snpvirt.fleet.observe import HostView, observe_host, unreachable

Progress = Callable[[str, str], None]  # (host, what happens now)


@dataclass
class HostSession:
    entry: HostEntry
    view: HostView
    conn: Any | None = None  # None when the host was not reached

    @property
    def name(self) -> str:
        return self.entry.name


def reach_all(fleet: Fleet, opener: Callable[[HostEntry], Any], progress: Progress) -> list[HostSession]:
    """Open and observe every host, `parallel_hosts` at a time; sessions in the fleet file's order."""
    with ThreadPoolExecutor(min(fleet.settings.parallel_hosts, len(fleet.hosts)), thread_name_prefix="snpvirt-fleet") as pool:
        return list(pool.map(lambda entry: _reach(entry, fleet.name, opener, progress), fleet.hosts))


def _reach(entry: HostEntry, fleet: str, opener: Callable[[HostEntry], Any], progress: Progress) -> HostSession:
    session = _open_and_observe(entry, fleet, opener, progress)
    unchecked = identity_unchecked(entry.uri)
    if unchecked:
        session.view.warnings.append({"id": "uri.no_verify", "severity": "warning", "message":
                                      f"{entry.name}: its uri says {unchecked}: libvirt does not check who answers (TLS "
                                      "certificate, SSH host key), so anyone between here and it can pose as it",
                                      "hint": f"drop {unchecked.partition('=')[0]} from the uri of {entry.name}; trust its "
                                              "CA certificate or its SSH host key instead"})
    return session


def _open_and_observe(entry: HostEntry, fleet: str, opener: Callable[[HostEntry], Any], progress: Progress) -> HostSession:
    progress(entry.name, "connecting")
    try:
        conn = opener(entry)
    except SnpvirtError as err:
        progress(entry.name, f"unreachable: {err.message}")
        return HostSession(entry, unreachable(entry, err))
    try:
        progress(entry.name, "reading")
        view = observe_host(entry, conn, fleet)
    except SnpvirtError as err:
        _close(conn)
        progress(entry.name, f"unreachable: {err.message}")
        return HostSession(entry, unreachable(entry, err))
    progress(entry.name, f"{len(view.domains)} domains of this fleet, {_free(view)}")
    return HostSession(entry, view, conn)


def _free(view: HostView) -> str:
    slots = "unknown" if view.slots_free is None else view.slots_free
    return f"{slots} SNP slots free, {view.memory_free_mib if view.memory_free_mib is not None else 'unknown'} MiB free"


def close_all(sessions: list[HostSession]) -> None:
    for session in sessions:
        if session.conn is not None:
            _close(session.conn)
            session.conn = None


def _close(conn: Any) -> None:
    try:
        conn.close()
    except SnpvirtError:
        pass
