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
    from snpvirt import output
    from snpvirt.host import readiness
    from snpvirt.errors import BadInputError, ExitCode, HostNotReadyError, SnpvirtError

    if host_caps is not None and domcaps_alias is not None:
        raise BadInputError("--domcaps is the old name of --host-caps: give the file once", "use --host-caps FILE")
    host_caps = host_caps or domcaps_alias
    if not sysroot.is_dir():
        raise BadInputError(f"--sysroot {sysroot} is not a directory", "give the folder that holds the captured sys/, proc/, dev/")
    policy, spec_firmware = _policy(policy_arg)
    connection, error = None, None
    if connect is not None or str(sysroot) == "/":
        from snpvirt.libvirt.connection import Connection
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
    from snpvirt.domain import spec as specs
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


show_app = sub_app()
host_app.add_typer(show_app, name="show", help="What the host's SEV firmware reports about itself.")

TCB_EPILOG = """\b
Examples:
  sudo snpvirt host show tcb                    # SNP firmware version and TCB from /dev/sev, PSP versions from sysfs
  snpvirt host show tcb -c qemu:///system --json  # and libvirt's nodesevinfo (cbitpos, guests, chip id)
  snpvirt host show tcb --sysroot ./captured-host
Exit 0: something was read · 3: the host exposes no SEV firmware information here (not root? no SEV?).
"""


@show_app.command("tcb", epilog=TCB_EPILOG)
def show_tcb(
    connect: Optional[str] = typer.Option(None, "--connect", "-c", metavar="URI",
                                          help="Also ask libvirt (virsh nodesevinfo); a remote URI: libvirt only."),
    sysroot: Path = typer.Option(Path("/"), "--sysroot", metavar="DIR",
                                 help="Read sysfs, procfs and /dev below DIR (a captured host)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """The SNP firmware's version and TCB, the PSP firmware versions, and libvirt's SEV information.

    Linux exposes the SNP firmware version and TCB only through SNP_PLATFORM_STATUS on /dev/sev (root), the
    PSP bootloader and TEE versions in the ccp driver's sysfs files (Linux >= 6.4, where the platform allows),
    and libvirt's nodesevinfo no firmware version at all. Each source says why it gave nothing.
    """
    from snpvirt import output
    from snpvirt.host import sevfw
    from snpvirt.host import checks as host
    from snpvirt.errors import BadInputError, HostNotReadyError

    if not sysroot.is_dir():
        raise BadInputError(f"--sysroot {sysroot} is not a directory", "give the folder that holds the captured sys/, proc/, dev/")
    local = None if host.is_remote_uri(connect) else sevfw.read(sysroot)  # a remote host's files are not here
    node, node_error = None, None
    if connect is not None:
        from snpvirt.libvirt.connection import Connection

        with Connection(connect) as conn:  # libvirt refuses nodesevinfo to read-only connections
            try:
                node = sevfw.node_sev_info(conn.sev_info())
            except HostNotReadyError as exc:
                node_error = exc.message
    found = bool(local and local.found) or node is not None
    where = connect if local is None else str(sysroot) if str(sysroot) != "/" else os.uname().nodename
    item = {"name": where, "ok": found, "changed": False, **(local.as_dict() if local else {"sysroot": None}),
            "libvirt": node, "libvirt_error": node_error, "uri": connect}
    error = None if found else HostNotReadyError(
        "this host exposes no SEV firmware information here: " + "; ".join(
            why for why in (item.get("snp_firmware_error"), item.get("psp_error"), node_error) if why),
        "run it as root on the SEV-SNP host itself (SNP_PLATFORM_STATUS needs /dev/sev)"
        + ("" if connect else ", or give -c URI for libvirt's view"))
    if json_output:
        if error is not None:
            item["error"] = output.error_dict(error)  # the envelope's rule: a failed item carries its error
        output.print_json(output.envelope(found, False, [item], error=error))
    else:
        typer.echo(_tcb_text(item))
    if error is not None:
        if not json_output:
            output.print_error(error.message, error.hint)
        raise typer.Exit(int(error.exit_code))


def _tcb_text(item: dict) -> str:
    lines = []
    if item["sysroot"] is not None:
        fw = item["snp_firmware"]
        if item["sysroot"] != "/":
            lines.append(f"captured host: {item['sysroot']}")
        lines.append("SNP firmware (SNP_PLATFORM_STATUS on /dev/sev):")
        if fw is None:
            lines.append(f"  unavailable: {item['snp_firmware_error']}")
        else:
            lines += [f"  version:       {fw['version']} (API {fw['version'].rsplit('.', 1)[0]}, build "
                      f"{fw['version'].rsplit('.', 1)[1]})", f"  state:         {fw['state']}, "
                      f"RMP {'initialized' if fw['rmp_initialized'] else 'not initialized'}, {fw['guest_count']} guest(s)"]
            for which in ("current_tcb", "reported_tcb"):
                tcb = ", ".join(f"{k}={v}" for k, v in fw[which].items())
                lines.append(f"  {which + ':':<14} {tcb}")
            product = item["product"] or "unknown CPU: layout assumed"
            lines.append(f"  tcb layout:    {fw['tcb_layout']} ({product})")
        lines.append("PSP firmware (ccp driver, sysfs):")
        shown = {device: v for device, v in item["psp"].items() if v}
        lines += [f"  {device}: " + ", ".join(f"{k.replace('_version', '')} {v}" for k, v in versions.items())
                  for device, versions in shown.items()] or [f"  unavailable: {item['psp_error']}"]
        lines.append(f"kvm_amd sev_snp: {item['kvm_amd_sev_snp'] or 'unknown (kvm_amd not loaded)'}")
    if item["uri"] is not None:
        lines.append(f"libvirt nodesevinfo ({item['uri']}):")
        node = item["libvirt"]
        if node is None:
            lines.append(f"  unavailable: {item['libvirt_error']}")
        else:
            lines += [f"  {key + ':':<18} {value}" for key, value in node.items()]
            lines.append("  (libvirt reports no firmware version or TCB: run this on the host as root for those)")
    from snpvirt import output

    return "\n".join(output.printable(line) for line in lines)  # sysfs and libvirt text: controls shown escaped
