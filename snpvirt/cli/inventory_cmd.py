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
    """List snpvirt-managed domains: state, size, policy, kernel hashes, expected measurement."""
    from snpvirt import output

    with manager(connect) as m:
        rows = m.list(include_inactive=all_domains)
    if json_output:
        output.print_json(output.envelope(True, False, rows))
        return
    table = [(r["name"], r["state"], str(r["vcpus"]), str(r["memory_mib"]),
              f"{r['policy']} {','.join(r['policy_flags'])}".strip() if r["policy"] else "-",
              "yes" if r["kernel_hashes"] else "no", r["expected_measurement"] or "unknown", r["uuid"]) for r in rows]
    typer.echo(output.table(("NAME", "STATE", "VCPUS", "MEMORY_MIB", "POLICY", "KERNEL_HASHES", "MEASUREMENT", "UUID"), table))


def status(name: str = typer.Argument(..., help="Domain name."), connect: Optional[str] = connect_option(),
           json_output: bool = json_option()) -> None:
    """One managed domain in full: state, policy, spec, launch inputs and their digests, timestamps."""
    import json

    from snpvirt import output

    with manager(connect) as m:
        info = m.status(name)
    if json_output:
        output.print_json(output.envelope(True, False, [info]))
        return
    for key in ("name", "uuid", "state", "vcpus", "memory_mib", "policy", "policy_flags", "kernel_hashes",
                "expected_measurement", "origin", "spec_digest", "defined_at", "updated_at", "snpvirt_version"):
        value = info[key]
        shown = ", ".join(value) if isinstance(value, list) else "-" if value is None else \
            ("yes" if value else "no") if isinstance(value, bool) else value
        typer.echo(f"{key + ':':<22} {shown}")
    typer.echo("launch inputs:")
    for key, value in info["launch"].items():
        typer.echo(f"  {key + ':':<20} {json.dumps(value) if isinstance(value, dict) else value}")
    if info["spec"] is not None:
        typer.echo("spec: " + json.dumps(info["spec"], sort_keys=True))
