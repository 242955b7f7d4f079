"""`snpvirt list` and `snpvirt status`: what snpvirt manages, from the domains' own metadata."""

from __future__ import annotations

from typing import Optional

import typer

from snpvirt.cli.common import connect_option, json_option, manager

LIST_EPILOG = """\b
Examples:
  snpvirt list                 # running snpvirt-managed domains
  snpvirt list --all --json -c qemu:///system
"""
STATUS_EPILOG = """\b
Examples:
  snpvirt status web-01
  snpvirt status web-01 --json | jq .launch
"""


def list_domains(all_domains: bool = typer.Option(False, "--all", "-a", help="Include domains that are not running."),
                 connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """List snpvirt-managed domains: state, size, policy, kernel hashes, expected measurement.

    A running domain shows what runs (its live definition); what its persistent definition changes after a restart
    is under PENDING_RESTART.
    """
    from snpvirt import output

    with manager(connect) as m:
        rows = m.list(include_inactive=all_domains)
    if json_output:
        output.print_json(output.envelope(True, False, [output.result(r["name"], **r) for r in rows]))
        return
    table = [(r["name"], r["state"], str(r["vcpus"]), str(r["memory_mib"]), _policy_text(r),
              "yes" if r["kernel_hashes"] else "no", _measurement_text(r), _pending_text(r), r["uuid"]) for r in rows]
    typer.echo(output.table(("NAME", "STATE", "VCPUS", "MEMORY_MIB", "POLICY", "KERNEL_HASHES", "MEASUREMENT",
                             "PENDING_RESTART", "UUID"), table))


def _policy_text(row: dict) -> str:
    """`none` when the domain runs without SEV-SNP launch security: never a policy it does not have."""
    if row["launch_security"] != "sev-snp":
        return "none" if row["launch_security"] is None else f"none ({row['launch_security']})"
    return f"{row['policy']} {','.join(row['policy_flags'])}".strip() if row["policy"] else "invalid"


def _measurement_text(row: dict) -> str:
    if row["measurement_stale"]:
        return "stale (" + ",".join(row["measurement_stale"]) + " changed)"
    return row["expected_measurement"] or "unknown"


def _pending_text(row: dict) -> str:
    """What the persistent definition changes once the domain restarts (the live values are shown)."""
    if not row["restart_required"]:
        return "-"
    shown = {k: v for k, v in row["pending"].items() if k not in ("policy_flags", "measurement_stale")}
    return ",".join(f"{k}={_pending_value(v)}" for k, v in shown.items()) or "yes"


def _pending_value(value) -> str:
    return "none" if value is None else str(value)


def status(name: str = typer.Argument(..., help="Domain name."), connect: Optional[str] = connect_option(),
           json_output: bool = json_option()) -> None:
    """One managed domain in full: state, policy, spec, launch inputs and their digests, timestamps."""
    import json

    from snpvirt import output

    with manager(connect) as m:
        info = m.status(name)
    if json_output:
        output.print_json(output.envelope(True, False, [output.result(info["name"], **info)]))
        return
    for key in ("name", "uuid", "state", "vcpus", "memory_mib", "launch_security", "policy", "policy_flags", "kernel_hashes",
                "expected_measurement", "measurement_stale", "restart_required", "origin", "spec_digest", "defined_at",
                "updated_at", "snpvirt_version"):
        value = info[key]
        shown = ", ".join(value) if isinstance(value, list) else "-" if value is None else \
            ("yes" if value else "no") if isinstance(value, bool) else value
        typer.echo(f"{key + ':':<22} {shown}")
    if info["pending"]:
        typer.echo("pending (after a restart; the values above are what runs):")
        for key, value in info["pending"].items():
            typer.echo(f"  {key + ':':<20} {json.dumps(value)}")
    typer.echo("launch inputs:")
    for key, value in info["launch"].items():
        typer.echo(f"  {key + ':':<20} {json.dumps(value) if isinstance(value, dict) else value}")
    if info["spec"] is not None:
        typer.echo("spec: " + json.dumps(info["spec"], sort_keys=True))
