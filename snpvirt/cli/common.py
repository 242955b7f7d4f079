"""What the lifecycle commands share: the connection and manager, and printing item results."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

CONNECT_HELP = "libvirt URI (default: LIBVIRT_DEFAULT_URI, then libvirt's default, as virsh)."


def sub_app() -> typer.Typer:
    """A command group (snpvirt host|guest|attest ...), configured like the root."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


def connect_option() -> Optional[str]:
    return typer.Option(None, "--connect", "-c", metavar="URI", help=CONNECT_HELP)


def json_option() -> bool:
    return typer.Option(False, "--json", help="Print one JSON document.")


def sysroot_option() -> Optional[Path]:
    # Hidden: a captured host's files stand in for the host only on libvirt's test driver (tests, demos).
    return typer.Option(None, "--sysroot", metavar="DIR", hidden=True,
                        help="With libvirt's test driver: the readiness gate checks this captured host "
                             "(sys/, proc/, dev/ below DIR) and --host-caps as its domcapabilities.")
MAX_WAIT_S = 7 * 24 * 3600  # a week: far beyond any shutdown or watch, far below a timer's overflow


def seconds_option(default: Optional[float], help_text: str) -> Optional[float]:
    """--timeout S: 0 to a week, and a number (a NaN deadline passes at once: stop --force would destroy)."""
    def finite(value: Optional[float]) -> Optional[float]:
        if value is not None and value != value:
            raise typer.BadParameter("nan is not a number of seconds")
        return value
    return typer.Option(default, "--timeout", min=0, max=MAX_WAIT_S, metavar="S", help=help_text, callback=finite)


def manager(connect: Optional[str], host_caps: Optional[Path] = None, allow_debug: bool = False,
            sysroot: Optional[Path] = None):
    """A Manager over a fresh connection, closed afterwards (a context manager): snpvirt.api.open_manager,
    the wiring the CLI shares with snpvirt's other front ends."""
    from snpvirt import api

    return api.open_manager(connect, host_caps, allow_debug, sysroot)


def exit_code(outcomes: list) -> int:
    """One item: its own code. Several: 0, or 9 (partial) when any failed."""
    from snpvirt.errors import ExitCode

    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return 0
    if len(outcomes) == 1:
        return int(failed[0].error.exit_code)
    return int(ExitCode.PARTIAL)


def report(outcomes: list, json_output: bool, warnings: list = ()) -> None:
    """Print results (a table, or the JSON envelope), then exit with the right code."""
    from snpvirt import output

    code = exit_code(outcomes)
    for warning in warnings:
        output.print_warning(warning.message, warning.hint)
    if json_output:
        results = [o.as_dict() for o in outcomes]
        error = output.batch_error([r["error"] for r in results if "error" in r], len(results))
        output.print_json(output.envelope(all(o.ok for o in outcomes), any(o.changed for o in outcomes), results,
                                          error=error, warnings=[w.as_dict() for w in warnings]))
    else:
        rows = [(o.name, o.action, o.state or "-", _result_text(o)) for o in outcomes]
        typer.echo(output.table(("NAME", "ACTION", "STATE", "RESULT"), rows))
        for o in outcomes:
            for change in o.details.get("diff", []):
                typer.echo(f"  {o.name}: {change['key']}: {change['from']!r} -> {change['to']!r}")
            if o.details.get("restarted"):
                typer.echo(f"  {o.name}: restarted on its new definition")
            elif o.details.get("restart_required") and not o.details.get("will_restart"):
                typer.echo(f"  {o.name}: running with the old definition; restart it to apply: "
                           f"snpvirt apply SPEC --restart (or snpvirt stop {o.name} && snpvirt start {o.name})")
        failed = [o for o in outcomes if not o.ok]
        for o in failed:
            output.print_error(output.about(o.name, o.error.message), o.error.hint)
    if code:
        raise typer.Exit(code)


def _result_text(outcome) -> str:
    if not outcome.ok:
        defined = outcome.details.get("defined")
        return "FAILED" + (" (defined, not started)" if defined and outcome.details.get("started") is False else "")
    if outcome.details.get("planned"):
        steps = [outcome.action] if outcome.action != "unchanged" else []
        steps += ["set autostart"] * any(c["key"] == "autostart" for c in outcome.details.get("diff", []))
        steps += [step for step, key in (("start", "will_start"), ("shut down", "will_stop"), ("restart", "will_restart"))
                  if outcome.details.get(key)]
        return "would " + " and ".join(steps) if steps else "no change"
    if outcome.details.get("restarted"):
        return "restarted"
    return "changed" if outcome.changed else "unchanged"


def read_host_caps(path: Path):
    from snpvirt import api

    return api.read_host_caps(path)
