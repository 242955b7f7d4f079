"""`snpvirt host check`: can this host (or a captured one) launch SEV-SNP guests, and what to fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from snpvirt.cli.common import sub_app

host_app = sub_app()

@host_app.callback()
def host() -> None:
    """Host readiness for SEV-SNP guests."""


CHECK_EPILOG = """\b
Examples:
  snpvirt host check
  snpvirt host check --connect qemu:///system --policy 0x30000 --json
  snpvirt host check --policy examples/web-01.toml
  snpvirt host check --sysroot ./captured-host --host-caps ./captured-host/domcaps.xml
  snpvirt host check --connect qemu+ssh://root@host/system     # remote: libvirt facts only
Exit 0: ready (warnings allowed) · 3: not ready · 2: bad arguments.
"""


@host_app.command("check", epilog=CHECK_EPILOG)
def check(
    connect: Optional[str] = typer.Option(None, "--connect", "-c", metavar="URI",
                                          help="libvirt URI (default: LIBVIRT_DEFAULT_URI, then libvirt's default)."),
    sysroot: Path = typer.Option(Path("/"), "--sysroot", metavar="DIR",
                                 help="Read sysfs, procfs, /dev and firmware files below DIR (a captured host)."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE",
                                             help="A saved `virsh domcapabilities` instead of asking libvirt."),
    # The name this option had before it took the one render/apply/define/import/start use; kept for scripts.
    domcaps_alias: Optional[Path] = typer.Option(None, "--domcaps", metavar="FILE", hidden=True),
    policy_arg: Optional[str] = typer.Option(None, "--policy", metavar="HEX|SPEC",
                                             help="Also check a guest policy (hex, or a spec file's policy and firmware)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Check every fact an SEV-SNP launch depends on, with a fix for each problem."""
    from snpvirt import output, readiness
    from snpvirt.errors import BadInputError, ExitCode, HostNotReadyError, SnpvirtError

    if host_caps is not None and domcaps_alias is not None:
        raise BadInputError("--domcaps is the old name of --host-caps: give the file once", "use --host-caps FILE")
    host_caps = host_caps or domcaps_alias
    if not sysroot.is_dir():
        raise BadInputError(f"--sysroot {sysroot} is not a directory", "give the folder that holds the captured sys/, proc/, dev/")
    policy, spec_firmware = _policy(policy_arg)
    connection, error = None, None
    if connect is not None or str(sysroot) == "/":
        from snpvirt.connection import Connection
        try:
            connection = Connection(connect)
        except SnpvirtError as exc:
            error = exc.message
    try:
        report = readiness.assess(connection, uri=connect, connection_error=error, sysroot=str(sysroot),
                                  domcaps_file=host_caps, policy=policy, spec_firmware=spec_firmware)
    finally:
        if connection is not None:
            connection.close()

    if json_output:
        # Not ready is a failure like any other: a script finds why under the envelope's `error`.
        error = None if report.ready else HostNotReadyError(report.summary, next(
            (c.hint for c in report.checks if c.status == "fail" and c.hint), "see the checks that failed or were skipped"))
        output.print_json(output.envelope(report.ready, False, [output.check_item(c) for c in report.checks],
                                          error=error, warnings=output.check_warnings(report.checks), ready=report.ready, host=report.host, summary=report.summary))
    else:
        typer.echo(_human(report))
    if not report.ready:
        raise typer.Exit(int(ExitCode.NOT_READY))


def _policy(value: str | None) -> tuple[int | None, str | None]:
    """--policy is a hex value, or a spec file whose policy and firmware are checked."""
    if value is None:
        return None, None
    from snpvirt import policy as snp_policy
    from snpvirt import spec as specs
    from snpvirt.errors import BadInputError

    if Path(value).is_file():
        vm = specs.load_spec(value, allow_debug=True)  # host check reports DEBUG as a warning instead
        return vm.snp.policy, vm.firmware
    if value.endswith(".toml") or "/" in value:  # meant as a spec file: say what is wrong with the file
        what = "not a regular file" if os.path.lexists(value) else "no such file"
        raise BadInputError(f"--policy {value}: {what}",
                            "check the path, or write the spec first (examples/ has specs to copy)")
    try:
        return snp_policy.parse_hex(value), None
    except BadInputError:
        raise BadInputError(f"--policy {value!r} is neither a spec file nor a hexadecimal policy",
                            "give a policy such as 0x30000, or the path of a spec file") from None


def _human(report) -> str:
    width = max(len(c.check_id) for c in report.checks)
    where = report.host.get("uri") or f"libvirt not connected: {report.host.get('libvirt_error') or 'no URI'}"
    lines = [f"host {report.host.get('hostname') or '(unknown)'} · {where}", ""]
    for c in report.checks:
        lines.append(f"{c.status:<4}  {c.check_id:<{width}}  {c.message}")
        if c.hint and c.status in ("fail", "warn"):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.hint}")
    lines += ["", report.summary]
    return "\n".join(lines)
