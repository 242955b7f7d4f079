"""The fleet's plan: placement over what was observed, then each host's part planned by the single-host
Manager in check mode (the same code its apply runs). Changes nothing.

Per domain: create / update (+ restart_required) / start / stop / unchanged on its host; unplaceable
(and why); unknown (it may be on an unreachable host); orphaned (this fleet's, no longer in the file);
duplicate (found on a second host). The fingerprint covers the observed state the plan was made from
(hosts reached, SNP slots, every domain's host, state and definition) and the plan itself; free memory
is left out, it moves all the time. `apply --plan` refuses when it no longer matches.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from snpvirt.errors import HostNotReadyError, SnpvirtError
from snpvirt.fleet import placement
from snpvirt.fleet.fleetfile import DomainEntry, Fleet, HostEntry
from snpvirt.fleet.hosts import HostSession, Progress
from snpvirt.manager import Manager, Outcome, SpecInput
from snpvirt.models import DomainRecord

ManagerFactory = Callable[[HostEntry, Any], Manager]  # a host and its connection -> its Manager (gate, SEV sources)
FAILED = ("conflict", "invalid", "not_ready", "failed", "unplaceable", "unknown")  # actions that leave a domain unconverged


@dataclass
class FleetPlan:
    fleet: str
    items: list[dict[str, Any]]  # one per domain (and per orphan / duplicate), in file order
    fingerprint: str
    warnings: list[dict[str, str]] = field(default_factory=list)

    def on_host(self, host: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item.get("host") == host]

    def as_dict(self) -> dict[str, Any]:
        return {"fleet": self.fleet, "fingerprint": self.fingerprint, "items": self.items}


def capacities(sessions: list[HostSession]) -> list[placement.HostCapacity]:
    return [placement.HostCapacity(s.name, s.view.reachable, s.view.ready, dict(s.entry.labels), s.view.slots_free,
                                   s.view.memory_free_mib, frozenset(s.view.taken)) for s in sessions]


def wants(fleet: Fleet) -> list[placement.Want]:
    return [placement.Want(d.name, d.spec.memory_mib, d.running, d.group, d.pin, dict(d.labels), d.spread)
            for d in fleet.domains]


def found(sessions: list[HostSession]) -> list[placement.Found]:
    return [placement.Found(d.name, s.name, d.active) for s in sessions for d in s.view.domains.values()]


def make_plan(fleet: Fleet, sessions: list[HostSession], managers: ManagerFactory, progress: Progress,
              per_domain: bool = True) -> FleetPlan:
    """`per_domain`: ask each host's Manager what it would do with each placed domain (the plan people and
    `--plan` read). Without it, a placed domain is `pending`: apply plans it once, as it carries it out."""
    placed = placement.place(capacities(sessions), wants(fleet), found(sessions))
    by_host: dict[str, list[DomainEntry]] = {}
    for domain in fleet.domains:
        if domain.name in placed.placed:
            by_host.setdefault(placed.placed[domain.name], []).append(domain)
    reached = [s for s in sessions if s.conn is not None]
    with ThreadPoolExecutor(max(1, min(fleet.settings.parallel_hosts, len(reached) or 1)),
                            thread_name_prefix="snpvirt-plan") as pool:
        planned = dict(zip([s.name for s in reached], pool.map(
            lambda s: _plan_host(s, by_host.get(s.name, []), managers, progress) if per_domain else
            ({d.name: _item(d.name, s.name, "pending") for d in by_host.get(s.name, [])}, []), reached)))
    items: list[dict[str, Any]] = []
    warnings = [w for s in sessions for w in s.view.warnings]
    for domain in fleet.domains:
        name = domain.name
        if name in placed.placed:
            items.append(planned[placed.placed[name]][0][name])
        elif name in placed.unknown:
            items.append(_item(name, None, "unknown", reason=placed.unknown[name]))
        else:
            items.append(_item(name, None, "unplaceable", reason=placed.unplaceable[name]))
    wanted = {d.name for d in fleet.domains}
    for s in reached:
        items += [_item(d.name, s.name, "orphaned", state=d.state) for d in s.view.domains.values() if d.name not in wanted]
        warnings += planned[s.name][1]
    for name, others in placed.duplicates.items():  # an orphan's copies are each listed as orphaned already
        if name in placed.placed:
            items += [_item(name, host, "duplicate", reason=f"also defined on {placed.placed[name]}; "
                            "snpvirt leaves this copy alone") for host in others]
    return FleetPlan(fleet.name, items, fingerprint(sessions, items, fleet), _unique(warnings))


def _plan_host(session: HostSession, domains: list[DomainEntry], managers: ManagerFactory,
               progress: Progress) -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
    """The Manager's plan for this host's domains: name -> item, and its warnings."""
    if not domains:
        return {}, []
    progress(session.name, f"planning {len(domains)} domains")
    manager = managers(session.entry, AsObserved(session.conn, session.view.records))
    try:
        outcomes = manager.apply([SpecInput(d.spec_path, d.spec) for d in domains], check=True)
    except HostNotReadyError as err:
        return {d.name: _item(d.name, session.name, "not_ready", error=err) for d in domains}, []
    except SnpvirtError as err:  # the connection broke while planning
        return {d.name: _item(d.name, session.name, "failed", error=err) for d in domains}, []
    return ({o.name: item_of(o, session.name) for o in outcomes},
            [{**w.as_dict(), "message": f"{session.name}: {w.message}"} for w in manager.warnings
             if w.rule_id != "gate.simulated"])  # the host's view says that already


class AsObserved:
    """A host's connection whose look-ups are answered from what was observed a moment ago: the plan is made
    on exactly the state the fingerprint covers, without asking libvirt about every domain again (the
    apply asks: it plans each domain again against what the host holds then)."""

    def __init__(self, conn: Any, records: dict[str, DomainRecord]) -> None:
        self._conn = conn
        self._records = records

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def domain_names(self) -> set[str]:
        return set(self._records)

    def lookup(self, name: str) -> DomainRecord | None:
        return self._records.get(name)


def item_of(outcome: Outcome, host: str) -> dict[str, Any]:
    """A Manager outcome as a fleet item: one action word for what will happen to the domain."""
    d = outcome.details
    action = outcome.action
    if outcome.ok and action == "unchanged":
        action = "start" if d.get("will_start") else "stop" if d.get("will_stop") else (
            "update" if outcome.changed else "unchanged")
    return _item(outcome.name, host, action, error=outcome.error, changed=outcome.changed, state=outcome.state,
                 restart_required=bool(d.get("restart_required")), will_start=bool(d.get("will_start")),
                 will_stop=bool(d.get("will_stop")), diff=d.get("diff", []))


def _item(name: str, host: str | None, action: str, error: SnpvirtError | None = None, changed: bool = False,
          **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "host": host, "action": action, "changed": changed, **fields}
    if error is not None:
        item["error"] = {"kind": error.kind, "message": error.message, "hint": error.hint}
    return item


def fingerprint(sessions: list[HostSession], items: list[dict[str, Any]], fleet: Fleet) -> str:
    observed = [{"host": s.name, "reachable": s.view.reachable, "slots_total": s.view.slots_total,
                 "slots_used": s.view.slots_used, "taken": sorted(s.view.taken),
                 "domains": sorted([d.name, d.state, d.row.get("uuid"), d.row.get("restart_required")]
                                   for d in s.view.domains.values())} for s in sessions]
    planned = [{k: item.get(k) for k in ("name", "host", "action", "restart_required", "will_start", "will_stop", "diff")}
               for item in items]
    # What the reviewed plan would create or update: a spec edited since (a domain to create has no diff
    # to show it) is not the plan that was reviewed.
    wanted = [{"name": d.name, "source": d.spec.source, "state": d.spec.state, "pin": d.pin, "labels": d.labels,
               "spread": d.spread} for d in fleet.domains]
    text = json.dumps({"observed": observed, "planned": planned, "wanted": wanted}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _unique(warnings: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, out = set(), []
    for w in warnings:
        key = (w.get("id"), w["message"])
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out
