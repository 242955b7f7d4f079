"""`snpvirt render`: a TOML spec -> checked SEV-SNP domain XML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

EPILOG = """\b
Examples:
  snpvirt render examples/web-01.toml
  snpvirt render examples/db-01.toml --host-caps domcaps.xml -o db-01.xml
  snpvirt render examples/web-01.toml --set vcpus=8 --set snp.policy.smt=false --json
  snpvirt render spec.toml --connect qemu:///system -o vm.xml && virsh define vm.xml
"""

OUTPUT_HINT = "give -o the path of a regular file (a link to one is followed), or - for stdout"


def render(
    spec: Path = typer.Argument(..., metavar="SPEC", help="The VM spec (TOML)."),
    output_file: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE",
                                               help="Write the XML to FILE, atomically (a symlink is followed to "
                                                    "its file); without -o, or with -o -, to stdout."),
    overrides: List[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                        help="Override a spec key, dotted: --set snp.policy.smt=false. Repeatable."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE",
                                             help="A saved `virsh domcapabilities` document: source of cbitpos/reducedPhysBits."),
    connect: Optional[str] = typer.Option(None, "--connect", "-c", metavar="URI",
                                          help="Ask this libvirt host for cbitpos/reducedPhysBits when the spec and "
                                               "--host-caps lack them (default: LIBVIRT_DEFAULT_URI when set)."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit a policy with DEBUG set (test guests only)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Render SPEC to libvirt domain XML, checked by libvirt's schema and snpvirt's SNP rules."""
    from snpvirt import fileio, output, policy
    from snpvirt.domain import localfiles
    from snpvirt.launch import inputs as launch
    from snpvirt.domain import render as renderer
    from snpvirt.domain import spec as specs
    from snpvirt.api import SevSources

    if output_file is not None and str(output_file) == "-":
        output_file = None
    if output_file is not None:  # a device, FIFO or folder is refused before any work
        fileio.output_target(output_file, hint=OUTPUT_HINT, follow_symlink=True)
    vm = specs.load_spec(spec, overrides, allow_debug)
    # Like the lifecycle commands and virsh, LIBVIRT_DEFAULT_URI names the host; libvirt's own default is not
    # asked unbidden, so render keeps working (and refusing to guess) on a machine without a daemon.
    connect = connect or os.environ.get("LIBVIRT_DEFAULT_URI") or None
    sev = SevSources(host_caps, (lambda: (_domain_capabilities(connect), f"host {connect}")) if connect else None)
    record = launch.record(vm)  # expected measurement (and ID blocks) from the files readable here
    result = renderer.render(vm, sev.resolve(vm), allow_debug, launch=record)

    changed = False
    if output_file is not None:
        changed = fileio.write_file(output_file, result.xml.encode(), hint=OUTPUT_HINT, follow_symlink=True)
    warnings = localfiles.missing_paths(vm) + tuple(result.warnings)  # a path missing here: for another host?
    for warning in warnings:
        output.print_warning(warning.message, warning.hint)
    if json_output:
        item = {
            "name": result.name,
            "ok": True,
            "changed": changed,
            "spec": str(spec),
            "output": str(output_file) if output_file else None,
            "policy": policy.to_hex(result.policy),
            "policy_flags": policy.set_flag_names(result.policy),
            "kernel_hashes": vm.snp.kernel_hashes,
            "expected_measurement": record.expected.value,
            "measurement_unknown_reason": record.expected.reason,
            "cbitpos": result.cbitpos,
            "reduced_phys_bits": result.reduced_phys_bits,
            "sev_params_source": result.sev_params_source,
            "warnings": [w.as_dict() for w in warnings],
        }
        if output_file is None:
            item["xml"] = result.xml
        output.print_json(output.envelope(True, changed, [item], warnings=[w.as_dict() for w in warnings]))
    elif output_file is None:
        typer.echo(result.xml, nl=False)
    else:
        typer.echo(f"{'wrote' if changed else 'unchanged'} {output_file} ({result.name}, policy {policy.to_hex(result.policy)})")


def _domain_capabilities(uri: str) -> str:
    from snpvirt.libvirt.connection import Connection

    with Connection(uri) as conn:  # libvirt refuses domcapabilities to read-only connections
        return conn.domain_capabilities()
