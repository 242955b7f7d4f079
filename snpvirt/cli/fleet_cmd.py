"""`snpvirt fleet check|plan|apply|list FLEET`: many libvirt hosts, one desired state (snpvirt/fleet/)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Optional

import typer

from snpvirt.cli.common import json_option, sub_app

fleet_app = sub_app()


@fleet_app.callback()
def fleet() -> None:
    """Many libvirt hosts, one desired state: check, plan, apply and list a fleet of SEV-SNP domains."""


FLEET_ARG = typer.Argument(..., metavar="FLEET", help="The fleet file (TOML): [fleet], [[hosts]], [[domains]].")
CHECK_EPILOG = """\b
Examples:
  snpvirt fleet check examples/fleet.toml
  snpvirt fleet check examples/fleet.toml --json | jq '.results[] | {name, slots_free}'
Exit 0 every host reachable and ready · 9 some are not · 2 bad fleet file.
"""
PLAN_EPILOG = """\b
Examples:
  snpvirt fleet plan examples/fleet.toml
  snpvirt fleet plan examples/fleet.toml -o plan.json     # then: snpvirt fleet apply examples/fleet.toml --plan plan.json
Exit 0 everything can converge · 9 some domains are unplaceable, unknown or in conflict, or a host is unreachable.
"""
APPLY_EPILOG = """\b
Examples:
  snpvirt fleet apply examples/fleet.toml
  snpvirt fleet apply examples/fleet.toml --plan plan.json   # refused (exit 5) if the hosts changed since
  snpvirt fleet apply examples/fleet.toml --max-failures 1 --prune --json
Exit 0 converged · 5 stale --plan, or another apply of this fleet runs here · 9 some domains or hosts failed
(run again: it converges).
"""
LIST_EPILOG = """\b
Examples:
  snpvirt fleet list examples/fleet.toml
  snpvirt fleet list examples/fleet.toml --json | jq '.results[] | select(.duplicate)'
Exit 0 · 9 some hosts were unreachable (their domains are not listed).
"""


class _Progress:
    """The live per-host progress line on stderr (nothing with --json): one line per step of each host."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._lock = threading.Lock()

    def __call__(self, host: str, message: str) -> None:
        if self.quiet:
            return
        from snpvirt import output

        with self._lock:
            output.print_progress(f"{host}: {message}")


def _load(fleet_file: Path):
    from snpvirt.fleet.fleetfile import load_fleet

    return load_fleet(fleet_file)


def _opener(fleet):
    from snpvirt.libvirt.connection import Connection

    settings = fleet.settings
    return lambda host: Connection(host.uri, timeout_s=settings.connect_timeout_s,
                                   keepalive=(settings.keepalive_interval_s, settings.keepalive_count))


def _manager_for(host, conn):
    """A host's single-host Manager, wired like `snpvirt apply`: its own gate (on libvirt's test driver,
    off unless the host names a captured host: sysroot, host_caps), and cbitpos/reducedPhysBits from
    the spec, then host_caps, then that host."""
    from snpvirt.api import manager_over

    sysroot, host_caps = (Path(p) if p else None for p in (host.sysroot, host.host_caps))
    return manager_over(conn, host_caps, sysroot=sysroot)


def _reach(fleet, progress):
    from snpvirt.fleet.hosts import reach_all

    return reach_all(fleet, _opener(fleet), progress)


def _host_result(view) -> dict[str, Any]:
    from snpvirt import output
    from snpvirt.errors import HostNotReadyError

    error = view.error
    if error is None and not view.ready:
        failed = [c.check_id for c in view.checks if c.status == "fail"]
        error = HostNotReadyError(f"{view.name} is not ready for SEV-SNP: {', '.join(failed) or 'see its checks'} failed",
                                  f"see the fixes: snpvirt host check --connect {view.uri}")
    return output.result(view.name, error is None, False, error, uri=view.uri, reachable=view.reachable, ready=view.ready,
                         simulated=view.simulated, labels=view.labels, libvirt_version=view.libvirt_version,
                         qemu_version=view.qemu_version, sev=view.sev, sev_snp=view.sev_snp, firmware=view.firmware,
                         firmware_snp=view.firmware_snp,
                         slots_total=view.slots_total, slots_used=view.slots_used, slots_free=view.slots_free,
                         slots_source=view.slots_source, memory_free_mib=view.memory_free_mib,
                         domains=len(view.domains), checks=[c.as_dict() for c in view.checks])


def _envelope(results: list[dict[str, Any]], hosts: list[dict[str, Any]], warnings: list[dict[str, str]],
              **extra: Any) -> dict[str, Any]:
    """The command's JSON document: failed domains and unreachable hosts make it a partial failure (exit 9)."""
    from snpvirt import output

    failures = [r for r in results + hosts if not r["ok"]]
    error = output.batch_error([r["error"] for r in failures], len(results) + len(hosts))
    if failures and error["kind"] != "partial":  # every item failed: still a fleet, still partial (exit 9)
        error = {**error, "kind": "partial"}
    return output.envelope(not failures, any(r["changed"] for r in results), results, error=error, warnings=warnings,
                           hosts=hosts, **extra)


def _finish(json_output: bool, results: list[dict[str, Any]], hosts: list[dict[str, Any]], warnings: list[dict[str, str]],
            table: tuple[tuple[str, ...], list[tuple]], **extra: Any) -> None:
    """Print (the envelope, or the table, warnings and failures) and exit: 0, or 9 when anything failed."""
    from snpvirt import output
    from snpvirt.errors import ExitCode

    document = _envelope(results, hosts, warnings, **extra)
    failures = [r for r in results + hosts if not r["ok"]]
    if json_output:
        output.print_json(document)
    else:
        typer.echo(output.table(*table))
        for w in warnings:
            output.print_warning(w["message"], w.get("hint", ""))
        for r in failures:
            output.print_error(output.about(r["name"], r["error"]["message"]), r["error"]["hint"])
    if failures:
        raise typer.Exit(int(ExitCode.PARTIAL))


def _host_rows(sessions) -> list[dict[str, Any]]:
    """Per host, for plan/apply/list: reached or not (and why)."""
    from snpvirt import output

    return [output.result(s.name, s.view.reachable, False, s.view.error, uri=s.view.uri, reachable=s.view.reachable,
                          slots_free=s.view.slots_free, memory_free_mib=s.view.memory_free_mib) for s in sessions]


@fleet_app.command("check", epilog=CHECK_EPILOG)
def check(fleet_file: Path = FLEET_ARG, json_output: bool = json_option()) -> None:
    """Every host, in parallel under the deadline: reachable (or why not), readiness, SNP slots and free memory."""
    from snpvirt.fleet.hosts import close_all

    fleet = _load(fleet_file)
    sessions = _reach(fleet, _Progress(json_output))
    close_all(sessions)
    results = [_host_result(s.view) for s in sessions]
    rows = [(r["name"], "yes" if r["reachable"] else "NO", _ready_text(r), r["libvirt_version"] or "-",
             r["qemu_version"] or "-", _yes(r["sev"]), _yes(r["sev_snp"]), _yes(r["firmware_snp"]), _slots(r),
             _mib(r["memory_free_mib"]),
             str(r["domains"]) if r["reachable"] else "-") for r in results]
    headers = ("HOST", "REACHABLE", "READY", "LIBVIRT", "QEMU", "SEV", "SNP", "SNP FIRMWARE", "SLOTS FREE/TOTAL",
               "MEM FREE", "DOMAINS")
    _finish(json_output, results, [], [w for s in sessions for w in s.view.warnings], (headers, rows), fleet=fleet.name)


def _ready_text(r: dict[str, Any]) -> str:
    if not r["reachable"]:
        return "-"
    return ("yes (simulated)" if r["simulated"] else "yes") if r["ready"] else "NO"


def _yes(flag: Optional[bool]) -> str:
    return "-" if flag is None else "yes" if flag else "no"


def _slots(r: dict[str, Any]) -> str:
    return "-" if r["slots_total"] is None else f"{r['slots_free']}/{r['slots_total']}"


def _mib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value} MiB"


def _planned(fleet, progress, per_domain: bool = True):
    from snpvirt.fleet.plan import make_plan

    sessions = _reach(fleet, progress)
    return sessions, make_plan(fleet, sessions, _manager_for, progress, per_domain)


def _plan_rows(results: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple]]:
    rows = [(r["host"] or "-", r["name"], r["action"], r.get("state") or "-", _note(r)) for r in results]
    return ("HOST", "NAME", "ACTION", "STATE", "NOTE"), rows


def _note(r: dict[str, Any]) -> str:
    if r.get("reason"):
        return r["reason"]
    if r.get("restart_required"):
        return "restart required (running the old definition)"
    if not r["ok"]:
        return "FAILED"
    return ""


@fleet_app.command("plan", epilog=PLAN_EPILOG)
def plan(fleet_file: Path = FLEET_ARG,
         output_file: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE",
                                                    help="Also write the plan (JSON, with its fingerprint) for apply --plan."),
         json_output: bool = json_option()) -> None:
    """The whole plan, changing nothing: per host what is created, updated, started, stopped; what cannot be placed."""
    import json

    from snpvirt import fileio
    from snpvirt.fleet.apply import as_result
    from snpvirt.fleet.hosts import close_all

    fleet = _load(fleet_file)
    if output_file is not None:
        fileio.output_target(output_file)  # a bad -o is refused before any host is asked
    sessions, made = _planned(fleet, _Progress(json_output))
    close_all(sessions)
    results = [as_result(item) for item in made.items]  # changed: would change, as apply --check says
    hosts = _host_rows(sessions)
    if output_file is not None:  # the document --json prints: apply --plan takes either
        document = _envelope(results, hosts, made.warnings, fleet=fleet.name, fingerprint=made.fingerprint)
        fileio.write_file(output_file, (json.dumps(document, indent=2) + "\n").encode(), hint="give -o a file path")
    _finish(json_output, results, hosts, made.warnings, _plan_rows(results), fleet=fleet.name, fingerprint=made.fingerprint)


def _planned_fingerprint(plan_file: Path, fleet_name: str) -> str:
    import json

    from snpvirt import fileio
    from snpvirt.errors import BadInputError

    try:
        document = json.loads(fileio.read_text(plan_file, "plan", "--plan"))
    except (ValueError, RecursionError):  # RecursionError: nested past the limit
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("fingerprint"), str):
        raise BadInputError(f"--plan {plan_file}: not a fleet plan (no fingerprint)",
                            "write one with: snpvirt fleet plan FLEET -o plan.json")
    if document.get("fleet") != fleet_name:
        raise BadInputError(f"--plan {plan_file} is a plan of fleet {document.get('fleet')!r}, not {fleet_name!r}",
                            "give the plan made from this fleet file")
    return document["fingerprint"]


@fleet_app.command("apply", epilog=APPLY_EPILOG)
def apply(fleet_file: Path = FLEET_ARG,
          plan_file: Optional[Path] = typer.Option(None, "--plan", metavar="FILE",
                                                   help="Apply only if the hosts still match this plan (fleet plan -o)."),
          max_failures: Optional[int] = typer.Option(None, "--max-failures", min=1, metavar="N",
                                                     help="Start no new host once N hosts have failed."),
          prune: bool = typer.Option(False, "--prune", help="Shut down and undefine this fleet's domains that are no longer in the file."),
          json_output: bool = json_option()) -> None:
    """Carry the plan out with the single-host manager, host by host in parallel; a rerun converges."""
    from snpvirt.errors import ConflictError
    from snpvirt.fleet.apply import apply_plan
    from snpvirt.fleet.hosts import close_all
    from snpvirt.fleet.lock import fleet_lock

    fleet = _load(fleet_file)
    expected = _planned_fingerprint(plan_file, fleet.name) if plan_file is not None else None
    progress = _Progress(json_output)
    with fleet_lock(fleet.name):
        # Without --plan, each domain is planned once, by its host's apply; with it, the plan is made
        # again in full, to compare its fingerprint with the one reviewed.
        sessions, made = _planned(fleet, progress, per_domain=expected is not None)
        try:
            if expected is not None and made.fingerprint != expected:
                raise ConflictError(f"the hosts of fleet {fleet.name} changed since {plan_file} was made; nothing was changed",
                                    f"make and review a new plan: snpvirt fleet plan {fleet_file} -o {plan_file}")
            results = apply_plan(fleet, sessions, made, _manager_for, max_failures=max_failures, prune=prune,
                                 progress=progress)
        finally:
            close_all(sessions)
    _finish(json_output, results, _host_rows(sessions), made.warnings, _plan_rows(results), fleet=fleet.name)


@fleet_app.command("list", epilog=LIST_EPILOG)
def list_domains(fleet_file: Path = FLEET_ARG, json_output: bool = json_option()) -> None:
    """Every domain of the fleet on every reachable host; unreachable hosts named, duplicates flagged."""
    from snpvirt.fleet.hosts import close_all

    fleet = _load(fleet_file)
    sessions = _reach(fleet, _Progress(json_output))
    close_all(sessions)
    rows = sorted((d.row for s in sessions for d in s.view.domains.values()), key=lambda r: (r["name"], r["host"]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["name"]] = counts.get(row["name"], 0) + 1
    from snpvirt import output

    results = [output.result(r["name"], True, False, None, **r, duplicate=counts[r["name"]] > 1) for r in rows]
    warnings = [{"id": "fleet.duplicate", "severity": "warning", "message": f"{name} is defined on {n} hosts",
                 "hint": "undefine the extra copies by hand (snpvirt -c URI undefine NAME): snpvirt never does"}
                for name, n in counts.items() if n > 1]
    table_rows = [(r["host"], r["name"], r["state"], r.get("policy") or "-", _measurement(r),
                   "DUPLICATE" if r["duplicate"] else "") for r in results]
    headers = ("HOST", "NAME", "STATE", "POLICY", "EXPECTED MEASUREMENT", "NOTE")
    _finish(json_output, results, [h for h in _host_rows(sessions) if not h["ok"]], warnings, (headers, table_rows),
            fleet=fleet.name, unreachable=[s.name for s in sessions if not s.view.reachable])


def _measurement(row: dict[str, Any]) -> str:
    value = row.get("expected_measurement")
    return (value[:16] + "…") if isinstance(value, str) and len(value) > 16 else (value or "-")
