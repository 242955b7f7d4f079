"""snpvirt as a library: `apply` wired exactly as the CLI wires it, for callers that are not the CLI.

The CLI (cli/) and other front ends (the Ansible module in ansible_collections/snpvirt/snp/) share this
wiring, so they cannot drift apart: a Connection, the refusal of a captured host that does not match,
cbitpos/reducedPhysBits resolved from the spec, then saved domcapabilities, then the connected host,
the readiness gate before the first change, and the Manager. Nothing here prints or imports typer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from snpvirt import fileio
from snpvirt.domain import sevparams
from snpvirt.domain import spec as specs
from snpvirt.errors import BadInputError, SnpvirtError
from snpvirt.host import domcaps, readiness
from snpvirt.libvirt.connection import Connection
from snpvirt.manager import Manager, Outcome, SpecInput
from snpvirt.models import Finding

APPLY_STATES = ("running", "shutoff", "present")  # present: defined as specified, run state left alone


@contextmanager
def open_manager(connect: Optional[str], host_caps: Optional[Path] = None, allow_debug: bool = False,
                 sysroot: Optional[Path] = None) -> Iterator[Manager]:
    """A Manager over a fresh connection, closed afterwards. cbitpos/reducedPhysBits come from the spec,
    then `host_caps`, then the connected host (the same order as render). The gate judges the connected
    host; on libvirt's test driver, the captured host `sysroot` with `host_caps`, or nothing without one."""
    conn = Connection(connect)
    try:
        readiness.check_captured_host(conn, sysroot)  # refused before anything else is read or changed
        sev = SevSources(host_caps, lambda: (conn.domain_capabilities(), f"host {conn.actual_uri}"))
        yield Manager(conn, gate=lambda: readiness.gate_report(conn, sysroot=sysroot, domcaps_file=host_caps),
                      resolve_sev=sev.resolve, allow_debug=allow_debug)
    finally:
        conn.close()


class SevSources:
    """Where cbitpos/reducedPhysBits come from, for render and the manager alike: the spec, then
    --host-caps, then the connected host, which is asked once and only when still needed."""

    def __init__(self, host_caps: Optional[Path], ask_host=None) -> None:
        self.sources = [sevparams.HostCapsSource(read_host_caps(host_caps), f"--host-caps {host_caps}")] if host_caps else []
        self._ask_host = ask_host  # () -> (domcapabilities XML, label), or None without a connection

    def resolve(self, spec):
        complete = any(s.caps.cbitpos is not None and s.caps.reduced_phys_bits is not None for s in self.sources)
        if self._ask_host is not None and not complete and (spec.snp.cbitpos is None or spec.snp.reduced_phys_bits is None):
            xml, label = self._ask_host()
            self.sources.append(sevparams.HostCapsSource(domcaps.parse_domcaps(xml), label))
            self._ask_host = None
        return sevparams.resolve(spec, self.sources)


def read_host_caps(path: Path):
    data = fileio.read_input(path, "domcaps", "cannot read --host-caps")
    return domcaps.parse_domcaps(data, f"--host-caps {path}")


def load_specs(paths: Iterable[Path | str], allow_debug: bool, overrides: Iterable[str] = ()) -> Iterator[SpecInput]:
    """Specs one at a time, as the manager asks for them (it overlaps parsing with libvirt calls).
    `overrides` (KEY=VALUE, as `--set`) change every spec before it is checked; a spec that cannot be
    read or checked is its own failed item, not the call's error."""
    for path in paths:
        try:
            yield SpecInput(str(path), specs.load_spec(path, list(overrides), allow_debug=allow_debug))
        except SnpvirtError as err:
            yield SpecInput(str(path), error=err)


@dataclass
class ApplyResult:
    """What `apply` did (or, with check, would do) per spec, and the host's warnings."""

    outcomes: list[Outcome]
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def changed(self) -> bool:
        return any(o.changed for o in self.outcomes)

    def as_dicts(self) -> list[dict[str, Any]]:
        return [o.as_dict() for o in self.outcomes]


def apply(uri: Optional[str], spec_paths: Iterable[Path | str], *, state: Optional[str] = None, check: bool = False,
          restart: bool = False, shutdown_timeout_s: float = 60.0, overrides: Iterable[str] = (),
          allow_debug: bool = False, host_caps: Optional[Path] = None, sysroot: Optional[Path] = None) -> ApplyResult:
    """`snpvirt apply` as a function: make each spec's domain exist as specified, in its run state.

    `state`: None keeps each spec's own state (running unless it says shutoff); "running" or "shutoff"
    overrides it for every spec; "present" defines (or redefines) without touching the run state.
    `check`: only plan, change nothing. `host_caps`, `sysroot`: as for open_manager. Raises SnpvirtError for what stops the whole call (cannot
    connect, host not ready, bad arguments); a spec that fails is a failed Outcome in the result."""
    if state is not None and state not in APPLY_STATES:
        raise BadInputError(f"state must be one of {', '.join(APPLY_STATES)}, not {state!r}",
                            "running: defined and started; shutoff: defined and shut down; present: defined only")
    if not shutdown_timeout_s >= 0:  # also refuses nan
        raise BadInputError(f"the shutdown timeout must be 0 or more seconds, not {shutdown_timeout_s:g}",
                            "give the seconds to wait for a graceful shutdown, e.g. 60")
    overrides = list(overrides) + ([f"state={state}"] if state in ("running", "shutoff") else [])
    specs.check_assignments(overrides)  # a malformed override is the call's error, found before connecting
    inputs = load_specs(spec_paths, allow_debug, overrides)
    with open_manager(uri, host_caps, allow_debug, sysroot) as m:
        m.shutdown_timeout_s = shutdown_timeout_s
        outcomes = m.apply(inputs, check=check, start=state != "present", restart=restart)
        return ApplyResult(outcomes, list(m.warnings))
