"""Where each domain of the fleet goes: a pure, deterministic function of what was observed.

Rules, in order:
- A domain found on a reachable host stays there (snpvirt never moves a domain). If it must be started,
  its host needs a free SNP slot, or it is left as it is and reported unplaceable.
- A domain found on no reachable host, while a host it could be on is unreachable, is `unknown`:
  creating it elsewhere could make a second copy when that host comes back.
- Any other domain goes to a reachable, ready host that is its pin (if pinned), carries its labels,
  keeps its copies apart on the `spread` label, does not hold its name for another owner, and (to run)
  has a free SNP slot and enough free memory: the one with the most free slots, then the most free
  memory, then the first by name. Placed domains use up their host's slots and memory in file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence


@dataclass(frozen=True)
class HostCapacity:
    name: str
    reachable: bool
    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    slots_free: int | None = None  # SNP guest slots left; None: unknown (then nothing new runs there)
    memory_free_mib: int | None = None  # after the host's reserve; None: unknown
    taken: frozenset[str] = frozenset()  # names held there by domains that are not this fleet's


@dataclass(frozen=True)
class Want:
    name: str
    memory_mib: int
    running: bool = True
    group: int = 0  # copies of one [[domains]] entry share a group: what `spread` keeps apart
    pin: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    spread: str | None = None


@dataclass(frozen=True)
class Found:
    """A domain of this fleet as observed on a reachable host."""

    name: str
    host: str
    active: bool


@dataclass(frozen=True)
class Placement:
    placed: dict[str, str]  # domain -> host, existing and new
    new: frozenset[str]  # the placed domains that do not exist yet
    unknown: dict[str, str]  # domain -> why its place cannot be known
    unplaceable: dict[str, str]  # domain -> why no host takes it
    duplicates: dict[str, tuple[str, ...]]  # domain -> the other hosts it was also found on (left alone)


def place(hosts: Sequence[HostCapacity], wants: Sequence[Want], found: Sequence[Found]) -> Placement:
    by_name = {h.name: h for h in hosts}
    slots = {h.name: h.slots_free for h in hosts}
    memory = {h.name: h.memory_free_mib for h in hosts}
    where: dict[str, list[Found]] = {}
    for f in sorted(found, key=lambda f: (not f.active, f.host)):  # a running copy is the one that counts
        if f.host in by_name and by_name[f.host].reachable:
            where.setdefault(f.name, []).append(f)
    spread_used: dict[tuple[int, str], set[str]] = {}
    placed: dict[str, str] = {}
    unknown: dict[str, str] = {}
    unplaceable: dict[str, str] = {}
    duplicates = {name: tuple(f.host for f in copies[1:]) for name, copies in where.items() if len(copies) > 1}

    def take(want: Want, host: str, start: bool) -> None:
        placed[want.name] = host
        if want.spread and want.spread in by_name[host].labels:
            spread_used.setdefault((want.group, want.spread), set()).add(by_name[host].labels[want.spread])
        if start:
            slots[host] -= 1
            memory[host] -= want.memory_mib

    for want in wants:  # existing domains first: they hold their place before any new domain is placed
        copies = where.get(want.name)
        if not copies:
            continue
        host, start = copies[0].host, want.running and not copies[0].active
        if start and not _fits(want, slots[host], memory[host]):
            unplaceable[want.name] = f"defined on {host}, which has no free SNP slot or memory to start it"
            continue
        take(want, host, start)
    for want in wants:
        if want.name in where:
            continue
        maybe_there = [h.name for h in hosts if not h.reachable and _eligible(want, h)]
        if maybe_there:
            unknown[want.name] = (f"not found on the reachable hosts; it may exist on {', '.join(maybe_there)}, "
                                  "which cannot be reached")
            continue
        candidates, reasons = [], []
        for h in hosts if want.pin is None else [h for h in hosts if h.name == want.pin]:  # a pin: only its host's reason
            why = _refusal(want, h, slots[h.name], memory[h.name], spread_used)
            (reasons.append(f"{h.name}: {why}") if why else candidates.append(h.name))
        if not candidates:
            unplaceable[want.name] = "no host takes it (" + "; ".join(reasons) + ")"
            continue
        best = min(candidates, key=lambda n: (-(slots[n] or 0), -(memory[n] or 0), n))
        take(want, best, want.running)
    new = frozenset(name for name in placed if name not in where)
    return Placement(placed, new, unknown, unplaceable, duplicates)


def _eligible(want: Want, host: HostCapacity) -> bool:
    """Whether the domain could be on this host at all (its pin, its labels)."""
    if want.pin is not None and want.pin != host.name:
        return False
    return all(host.labels.get(k) == v for k, v in want.labels.items())


def _fits(want: Want, slots: int | None, memory: int | None) -> bool:
    return slots is not None and slots >= 1 and memory is not None and memory >= want.memory_mib


def _refusal(want: Want, host: HostCapacity, slots: int | None, memory: int | None,
             spread_used: dict[tuple[int, str], set[str]]) -> str | None:
    """Why this host cannot take a new domain, or None when it can."""
    if want.pin is not None and want.pin != host.name:
        return f"pinned to {want.pin}"
    if not host.reachable:
        return "unreachable"
    if not host.ready:
        return "not ready for SEV-SNP"
    missing = [f"{k}={v}" for k, v in want.labels.items() if host.labels.get(k) != v]
    if missing:
        return "lacks label " + ", ".join(missing)
    if want.name in host.taken:
        return f"another owner's domain is named {want.name} there"
    if want.spread is not None:
        value = host.labels.get(want.spread)
        if value is None:
            return f"has no {want.spread} label to spread on"
        if value in spread_used.get((want.group, want.spread), set()):
            return f"a copy already runs on {want.spread}={value}"
    if not want.running:
        return None
    if slots is None:
        return "SNP capacity unknown (set snp_guests)"
    if slots < 1:
        return "no free SNP slot"
    if memory is None or memory < want.memory_mib:
        return f"not enough free memory ({memory if memory is not None else 'unknown'} MiB free, needs {want.memory_mib})"
    return None
