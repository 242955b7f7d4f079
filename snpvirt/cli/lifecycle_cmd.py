"""`snpvirt apply/define/start/stop/destroy/undefine`: desired state and single verbs, all idempotent."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from snpvirt.cli.common import connect_option, json_option, manager, report, seconds_option

APPLY_EPILOG = """\b
Examples:
  snpvirt apply examples/web-01.toml --connect qemu:///system
  snpvirt apply specs/*.toml --check            # the plan: create / update / unchanged, with a diff
  snpvirt apply specs/*.toml --json -c test:///default
Exit 0 all applied · 3 host not ready (nothing changed) · 5 conflict · 9 some specs failed.
"""
DEFINE_EPILOG = """\b
Examples:
  snpvirt define examples/web-01.toml
  snpvirt define web-01.xml --connect qemu:///system     # XML must pass snpvirt validate
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
  snpvirt stop web-01 db-01 --json
Exit 7 when the guest did not shut down in time (without --force).
"""


def _load_specs(paths: List[Path], allow_debug: bool):
    """Specs one at a time, as the manager asks for them (it overlaps parsing with libvirt calls)."""
    from snpvirt import spec as specs
    from snpvirt.errors import SnpvirtError
    from snpvirt.manager import SpecInput

    for path in paths:
        try:
            yield SpecInput(str(path), specs.load_spec(path, allow_debug=allow_debug))
        except SnpvirtError as err:
            yield SpecInput(str(path), error=err)


def apply(
    spec_files: List[Path] = typer.Argument(..., metavar="SPEC", help="One or more VM specs (TOML)."),
    check: bool = typer.Option(False, "--check", help="Print the plan, change nothing."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE",
                                             help="Saved domcapabilities: cbitpos/reducedPhysBits for specs without them."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit a policy with DEBUG set."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
) -> None:
    """Make each spec's domain exist as specified and run: define, redefine when changed, start.

    A running domain whose spec changed is redefined and reported restart_required; nothing restarts by itself.
    """
    inputs = _load_specs(spec_files, allow_debug)
    with manager(connect, host_caps, allow_debug) as m:
        outcomes = m.apply(inputs, check=check)
        report(outcomes, json_output, m.warnings)


def define(
    source: Path = typer.Argument(..., metavar="SPEC|XML", help="A VM spec (TOML) or domain XML."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE", help="Saved domcapabilities."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit a policy with DEBUG set."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
) -> None:
    """Define (or redefine) a domain from a spec or XML, without starting it."""
    from snpvirt import fileio

    data = fileio.read_input(source, "xml", "spec or domain XML")
    with manager(connect, host_caps, allow_debug) as m:
        if data.lstrip().startswith(b"<"):
            outcomes = [m.define_xml(data, str(source))]
        else:
            outcomes = m.apply(_load_specs([source], allow_debug), start=False)
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


def start(names: List[str] = NAMES, connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Start managed domains (after the readiness gate); running ones are left as they are."""
    with manager(connect) as m:
        report(_each(names, "start", m.start), json_output, m.warnings)


def stop(names: List[str] = NAMES,
         timeout: float = seconds_option(60.0, "Seconds to wait for each guest to shut down."),
         force: bool = typer.Option(False, "--force", help="Destroy a domain that is still running after the timeout."),
         connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Shut managed domains down gracefully; with --force, destroy them after the timeout."""
    with manager(connect) as m:
        report(_each(names, "stop", lambda name: m.stop(name, timeout, force)), json_output, m.warnings)


def destroy(names: List[str] = NAMES, connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Power managed domains off at once (like pulling the plug)."""
    with manager(connect) as m:
        report(_each(names, "destroy", m.destroy), json_output, m.warnings)


def undefine(names: List[str] = NAMES, connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """Remove stopped managed domains' definitions; absent ones are already done."""
    with manager(connect) as m:
        report(_each(names, "undefine", m.undefine), json_output, m.warnings)


START_EPILOG = VERB_EPILOG.format(verb="start")
DESTROY_EPILOG = VERB_EPILOG.format(verb="destroy")
UNDEFINE_EPILOG = VERB_EPILOG.format(verb="undefine")
