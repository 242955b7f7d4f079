"""`snpvirt apply/define/start/stop/destroy/undefine`: desired state and single verbs, all idempotent."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from snpvirt.cli.common import connect_option, json_option, manager, report, seconds_option, sysroot_option

APPLY_EPILOG = """\b
Examples:
  snpvirt apply examples/web-01.toml --connect qemu:///system
  snpvirt apply specs/*.toml --check            # the plan, after the same gate and conflict checks as the run
  snpvirt apply specs/*.toml --json -c test:///default
  snpvirt apply examples/web-01.toml --set vcpus=8 --check   # --set changes every spec given, before checking
  snpvirt apply specs/*.toml --restart          # and restart those running an older definition, one at a time
Exit 0 all applied · 3 host not ready (nothing changed) · 5 conflict · 9 some specs failed.
"""
DEFINE_EPILOG = """\b
Examples:
  snpvirt define examples/web-01.toml
  snpvirt define web-01.xml --connect qemu:///system     # XML must pass snpvirt validate
  snpvirt define web-01.xml --check                      # what it would do; same exit code as the run
"""
VERB_EPILOG = """\b
Examples:
  snpvirt {verb} web-01
  snpvirt {verb} web-01 db-01 --connect qemu:///system --json
Exit 9 when some of several domains failed.
"""
STOP_EPILOG = """\b
Examples:
  snpvirt stop web-01                      # graceful shutdown, wait up to 60 s
  snpvirt stop web-01 --timeout 20 --force # destroy if still running after 20 s
  snpvirt stop web-01 db-01 --json         # both shut down at once, under one 60 s deadline
Exit 7 when the guest did not shut down in time (without --force); 9 when some of several failed.
"""


def _load_specs(paths: List[Path], allow_debug: bool):
    from snpvirt import api

    return api.load_specs(paths, allow_debug)


def apply(
    spec_files: List[Path] = typer.Argument(..., metavar="SPEC", help="One or more VM specs (TOML)."),
    check: bool = typer.Option(False, "--check", help="Print the plan, change nothing."),
    overrides: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                        help="Override a key of every spec, dotted: --set snp.policy.smt=false. Repeatable."),
    restart: bool = typer.Option(False, "--restart",
                                 help="Restart domains that run an older definition (graceful shutdown, then start; one at a time)."),
    timeout: float = typer.Option(60.0, "--timeout", metavar="S",
                                  help="Seconds to wait for a graceful shutdown (state = \"shutoff\", --restart); 0 or more."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE",
                                             help="Saved domcapabilities: cbitpos/reducedPhysBits for specs without them."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit a policy with DEBUG set."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
    sysroot: Optional[Path] = sysroot_option(),
) -> None:
    """Make each spec's domain exist as specified and run: define, redefine when changed, start.

    The spec's state (running by default, or shutoff: a graceful shutdown) and autostart are converged too.
    A running domain whose spec changed is redefined and reported restart_required; it restarts only with --restart.
    """
    from snpvirt import api
    from snpvirt.errors import BadInputError

    if not timeout >= 0:  # also refuses nan
        raise BadInputError(f"--timeout must be 0 or more seconds, not {timeout:g}", "give the seconds to wait, e.g. --timeout 60")
    result = api.apply(connect, spec_files, check=check, restart=restart, shutdown_timeout_s=timeout, overrides=overrides,
                       allow_debug=allow_debug, host_caps=host_caps, sysroot=sysroot)
    report(result.outcomes, json_output, result.warnings)


def define(
    source: Path = typer.Argument(..., metavar="SPEC|XML", help="A VM spec (TOML) or domain XML."),
    check: bool = typer.Option(False, "--check", help="Print the plan (after the same gate and conflict checks), change nothing."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE", help="Saved domcapabilities."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit a policy with DEBUG set."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
    sysroot: Optional[Path] = sysroot_option(),
) -> None:
    """Define (or redefine) a domain from a spec or XML, without starting it."""
    from snpvirt import fileio

    data = fileio.read_input(source, "xml", "spec or domain XML")
    with manager(connect, host_caps, allow_debug, sysroot) as m:
        if data.lstrip().startswith(b"<"):
            outcomes = [m.define_xml(data, str(source), check=check)]
        else:
            outcomes = m.apply(_load_specs([source], allow_debug), check=check, start=False)
        report(outcomes, json_output, m.warnings)


def _each(names: List[str], action: str, verb) -> list:
    """Run a single-domain verb over several names; each gets its own result (exit 9 when some fail)."""
    from snpvirt.errors import HostNotReadyError, SnpvirtError
    from snpvirt.manager import Outcome

    outcomes = []
    for name in names:
        try:
            outcomes.append(verb(name))
        except HostNotReadyError:
            raise  # the gate refuses the whole call before anything changes
        except SnpvirtError as err:
            outcomes.append(Outcome(name, action).fail(err))
    return outcomes


NAMES = typer.Argument(..., metavar="NAME...", help="One or more domain names.")


def start(names: List[str] = NAMES,
          allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit starting a definition whose policy has DEBUG set."),
          connect: Optional[str] = connect_option(), json_output: bool = json_option(),
          sysroot: Optional[Path] = sysroot_option(),
          host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE", hidden=True,
                                                   help="With --sysroot: the captured host's saved domcapabilities.")) -> None:
    """Start managed domains (after the readiness gate); running ones are left as they are.

    A definition that breaks an SEV-SNP rule, or whose SEV-SNP settings were changed outside snpvirt, is refused (exit 5).
    """
    if host_caps is not None and sysroot is None:
        from snpvirt.errors import BadInputError
        raise BadInputError("start reads --host-caps only as a captured host's domcapabilities, with --sysroot",
                            "drop --host-caps: start checks the connected host")
    with manager(connect, host_caps, allow_debug=allow_debug, sysroot=sysroot) as m:
        report(_each(names, "start", m.start), json_output, m.warnings)


def stop(names: List[str] = NAMES,
         timeout: float = seconds_option(60.0, "Seconds to wait for the guests (all at once) to shut down; 0 or more."),
         force: bool = typer.Option(False, "--force", help="Destroy a domain that is still running after the timeout."),
         connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Shut managed domains down gracefully; with --force, destroy them after the timeout.

    All are asked at once and waited for under one deadline; stderr shows which are still shutting down.
    """
    from snpvirt.errors import BadInputError

    if not timeout >= 0:  # also refuses nan
        raise BadInputError(f"--timeout must be 0 or more seconds, not {timeout:g}", "give the seconds to wait, e.g. --timeout 60")
    with manager(connect) as m:
        waiting = None if json_output else ShutdownProgress()
        report(m.stop_all(names, timeout, force, waiting=waiting), json_output, m.warnings)


class ShutdownProgress:
    """Tells people which guests are still shutting down: when that set changes, and every few seconds."""

    EVERY_S = 5.0

    def __init__(self) -> None:
        self._last: tuple[list[str], float] | None = None

    def __call__(self, names: list[str], seconds_left: float) -> None:
        import time

        from snpvirt import output

        now = time.monotonic()
        if self._last is not None and self._last[0] == names and now - self._last[1] < self.EVERY_S:
            return
        self._last = (names, now)
        output.print_progress(f"waiting for {', '.join(names)} to shut down ({seconds_left:.0f} s left)")


def destroy(names: List[str] = NAMES, connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Power managed domains off at once (like pulling the plug)."""
    with manager(connect) as m:
        report(_each(names, "destroy", m.destroy), json_output, m.warnings)


def undefine(names: List[str] = NAMES, connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Remove stopped managed domains' definitions; absent ones are already done.

    A running domain is refused as a conflict (exit 5): stop it first.
    """
    with manager(connect) as m:
        report(_each(names, "undefine", m.undefine), json_output, m.warnings)


START_EPILOG = VERB_EPILOG.format(verb="start")
DESTROY_EPILOG = VERB_EPILOG.format(verb="destroy")
UNDEFINE_EPILOG = VERB_EPILOG.format(verb="undefine")
