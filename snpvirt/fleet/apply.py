"""Carry a fleet plan out: each host's domains through its own Manager on its one connection, at most
`parallel_hosts` hosts and `per_host` operations per host at a time (per_host threads per host, each
converging its own share of that host's domains). Once `max_failures` hosts have
failed, no new host is started; the rest are reported not started. `prune` undefines orphans."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from snpvirt.errors import ConnectionFailedError, HostNotReadyError, SnpvirtError
from snpvirt.fleet.fleetfile import DomainEntry, Fleet
from snpvirt.fleet.hosts import HostSession, Progress
from snpvirt.fleet.plan import FAILED, FleetPlan, ManagerFactory, item_of
from snpvirt.manager import Manager, SpecInput

# Plan actions the apply carries out ("unchanged" has nothing to do; "pending": not planned per domain yet).
TO_DO = ("create", "update", "start", "stop", "pending")


class _FailedHosts:
    """Hosts failed so far, shared by the host workers: the --max-failures decision."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def add(self, host: str) -> None:
        with self._lock:
            self.failed.append(host)

    def stop_starting(self) -> bool:
        with self._lock:
            return self.limit is not None and len(self.failed) >= self.limit


def apply_plan(fleet: Fleet, sessions: list[HostSession], plan: FleetPlan, managers: ManagerFactory, *,
               max_failures: int | None = None, prune: bool = False, progress: Progress) -> list[dict[str, Any]]:
    """The plan's items, each with `ok`, those carried out replaced by what was done (in plan order)."""
    entries = {d.name: d for d in fleet.domains}
    work: dict[str, list[dict[str, Any]]] = {}
    for item in plan.items:
        if item["host"] is not None and (item["action"] in TO_DO or (prune and item["action"] == "orphaned")):
            work.setdefault(item["host"], []).append(item)
    failed = _FailedHosts(max_failures)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    hosts = [s for s in sessions if s.name in work]
    if hosts:
        with ThreadPoolExecutor(min(fleet.settings.parallel_hosts, len(hosts)), thread_name_prefix="snpvirt-host") as pool:
            for results in pool.map(lambda s: _host_job(s, work[s.name], entries, managers, fleet.settings.per_host,
                                                        failed, progress), hosts):
                done.update(((r["host"], r["name"]), r) for r in results)
    return [done.get((item["host"], item["name"]), as_result(item)) for item in plan.items]


def _host_job(session: HostSession, items: list[dict[str, Any]], entries: dict[str, DomainEntry],
              managers: ManagerFactory, per_host: int, failed: _FailedHosts, progress: Progress) -> list[dict[str, Any]]:
    if failed.stop_starting():
        progress(session.name, "not started: --max-failures reached")
        why = SnpvirtError(f"not started on {session.name}: {len(failed.failed)} hosts failed already "
                           f"({', '.join(failed.failed)})", "fix those hosts, then run fleet apply again (it converges)")
        return [{**item, "ok": False, "changed": False, "error": _error(why)} for item in items]
    manager = managers(session.entry, session.conn)
    manager.libvirt_workers = 0  # each of the host's `per_host` threads plans and carries out its own share
    converge = [item for item in items if item["action"] != "orphaned"]
    progress(session.name, f"applying {len(converge)} domains" + (f", pruning {len(items) - len(converge)}"
                                                                  if len(converge) < len(items) else ""))
    results = _converge_shares(manager, [entries[item["name"]] for item in converge], session.name, per_host)
    results += [_prune(manager, item, session.name) for item in items if item["action"] == "orphaned"]
    failures = sum(not r["ok"] for r in results)
    progress(session.name, f"done: {len(results) - failures} ok" + (f", {failures} FAILED" if failures else ""))
    if failures:
        failed.add(session.name)
    return results


def _converge_shares(manager: Manager, domains: list[DomainEntry], host: str, per_host: int) -> list[dict[str, Any]]:
    """`per_host` threads, each converging its own consecutive share of the host's domains one at a time.
    A thread that plans and then carries out each domain itself spends less CPU than a planner handing
    plans to workers (no hand-over per domain), and the CPU is what a fleet apply is short of: the hosts'
    daemons and snpvirt share the machine's cores. Consecutive shares keep a spec's copies together, so
    each share renders them once (domain/copies.py)."""
    size = -(-len(domains) // per_host) if domains else 0
    shares = [domains[i:i + size] for i in range(0, len(domains), size)] if size else []
    if len(shares) <= 1:
        return _converge(manager, domains, host)
    with ThreadPoolExecutor(len(shares), thread_name_prefix=f"snpvirt-{host}") as pool:
        return [result for results in pool.map(lambda share: _converge(manager, share, host), shares)
                for result in results]


def _converge(manager: Manager, domains: list[DomainEntry], host: str) -> list[dict[str, Any]]:
    """The single-host apply of this host's specs: it plans each again against what the host holds now."""
    if not domains:
        return []
    try:
        outcomes = manager.apply([SpecInput(d.spec_path, d.spec) for d in domains])
    except SnpvirtError as err:  # the gate refused the host, or its connection broke before anything was done
        action = "not_ready" if isinstance(err, HostNotReadyError) else "failed"
        return [{"name": d.name, "host": host, "action": action, "ok": False, "changed": False, "error": _error(err)}
                for d in domains]
    return [{**item_of(outcome, host), "ok": outcome.ok} for outcome in outcomes]


def _prune(manager: Manager, item: dict[str, Any], host: str) -> dict[str, Any]:
    """An orphan: shut it down gracefully (within the Manager's shutdown timeout), then undefine it."""
    name = item["name"]
    try:
        stopped = manager.stop(name, manager.shutdown_timeout_s, force=False)
        if not stopped.ok:
            raise stopped.error
        manager.undefine(name)
    except SnpvirtError as err:
        return {"name": name, "host": host, "action": "prune", "ok": False, "changed": False, "error": _error(err)}
    return {"name": name, "host": host, "action": "prune", "ok": True, "changed": True, "state": "absent"}


def as_result(item: dict[str, Any]) -> dict[str, Any]:
    """A plan item nothing was done for: unchanged, orphaned (without --prune), or one that cannot converge."""
    result = {**item, "ok": item["action"] not in FAILED}
    if item["action"] in ("unplaceable", "unknown") and "error" not in result:
        result["error"] = _error(blocked(item))
    return result


def blocked(item: dict[str, Any]) -> SnpvirtError:
    """Why a domain cannot converge in this run, as an error a script can act on."""
    if item["action"] == "unknown":
        return ConnectionFailedError(f"{item['name']}: {item['reason']}", "bring that host back, then run again")
    return SnpvirtError(f"{item['name']}: unplaceable: {item['reason']}",
                        "add capacity (hosts, snp_guests, memory), stop other SNP guests, or relax its pin, labels or spread")


def _error(err: SnpvirtError) -> dict[str, str]:
    return {"kind": err.kind, "message": err.message, "hint": err.hint}
