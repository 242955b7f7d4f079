"""`snpvirt render`: a TOML spec -> checked SEV-SNP domain XML, or the equivalent QEMU command line."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from snpvirt.cli.common import storage_connect_option

EPILOG = """\b
Examples:
  snpvirt render examples/web-01.toml
  snpvirt render examples/db-01.toml --host-caps domcaps.xml -o db-01.xml
  snpvirt render examples/web-01.toml --set vcpus=8 --set snp.policy.smt=false --json
  snpvirt render spec.toml --connect qemu:///system -o vm.xml && virsh define vm.xml
  snpvirt render examples/web-01.toml --format qemu              # the qemu-system-x86_64 line, as Ubuntu's guide
  snpvirt render vm.toml --format qemu --seed vm-cidata.iso       # [cloud_init]: the seed written beside it
  snpvirt render vm.toml --format qemu -c test+unix:///default?socket=S --storage-connect qemu+unix:///system?socket=S
"""


class Format(str, Enum):
    xml = "xml"
    qemu = "qemu"

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
                                               "--host-caps lack them, and for the paths of the spec's pool volumes "
                                               "(default: LIBVIRT_DEFAULT_URI when set)."),
    storage_connect: Optional[str] = storage_connect_option(),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Permit a policy with DEBUG set (test guests only)."),
    fmt: Format = typer.Option(Format.xml, "--format", help="xml: libvirt domain XML. qemu: the equivalent "
                               "qemu-system-x86_64 command line, one option per line (the XML is checked all the same)."),
    seed_file: Optional[Path] = typer.Option(None, "--seed", metavar="FILE",
                                             help="With --format qemu and [cloud_init]: write the NoCloud seed (ISO) to "
                                                  "FILE, atomically, and attach it read-only on the command line."),
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
    if seed_file is not None:
        if fmt is not Format.qemu:
            from snpvirt.errors import BadInputError
            raise BadInputError("--seed goes with --format qemu", "apply stores the seed as a pool volume; "
                                "for the QEMU command line add --format qemu")
        fileio.output_target(seed_file, what="--seed", hint=OUTPUT_HINT, follow_symlink=True)
    vm = specs.load_spec(spec, overrides, allow_debug)
    # Like the lifecycle commands and virsh, LIBVIRT_DEFAULT_URI names the host; libvirt's own default is not
    # asked unbidden, so render keeps working (and refusing to guess) on a machine without a daemon.
    connect = connect or os.environ.get("LIBVIRT_DEFAULT_URI") or None
    sev = SevSources(host_caps, (lambda: (_domain_capabilities(connect), f"host {connect}")) if connect else None)
    pools_uri = storage_connect or connect
    pooled = _from_pools(vm, pools_uri, storage_connect and connect) if pools_uri else None  # resolved on that host
    local_paths = localfiles.missing_paths(vm)  # before: a volume's path is the host's, its digest the pool's
    if pooled is not None:
        vm = pooled.spec
    record = launch.record(vm, pooled.plan.digests if pooled else None)  # expected measurement (and ID blocks)
    seed = _seed(vm)
    params = sev.resolve(vm)
    result = renderer.render(vm, params, allow_debug, launch=record, seed_sha256=seed.sha256 if seed else None)
    text = result.xml
    if fmt is Format.qemu:  # built before anything is written: a spec it cannot express writes nothing
        seed_path = str(seed_file.resolve()) if seed and seed_file else pooled.seed_path if pooled else None
        text = _qemu_text(vm, params, record, pooled.paths if pooled else {}, seed_path)

    changed = False
    if seed is not None and seed_file is not None:
        changed = fileio.write_file(seed_file, seed.image, what="--seed", hint=OUTPUT_HINT, follow_symlink=True)
    if output_file is not None:
        changed = fileio.write_file(output_file, text.encode(), hint=OUTPUT_HINT, follow_symlink=True) or changed
    warnings = local_paths + tuple(result.warnings)  # a path missing here: for another host?
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
            "format": fmt.value,
            "seed_sha256": seed.sha256 if seed else None,
            "warnings": [w.as_dict() for w in warnings],
        }
        if output_file is None:
            item["xml" if fmt is Format.xml else "qemu_command"] = text
        output.print_json(output.envelope(True, changed, [item], warnings=[w.as_dict() for w in warnings]))
    elif output_file is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"{'wrote' if changed else 'unchanged'} {output_file} ({result.name}, policy {policy.to_hex(result.policy)})")


def _seed(vm):
    """The cloud-init seed of a spec with [cloud_init]: its digest goes into the metadata, its bytes to --seed."""
    if vm.cloud_init is None:
        return None
    from snpvirt.image import seed

    return seed.build(vm.cloud_init, vm.name)


def _qemu_text(vm, params, record, volume_paths: dict, seed_path: Optional[str]) -> str:
    from snpvirt.domain import qemu

    blocks = record.id_blocks
    lines = qemu.command(vm, params, volume_paths, seed_path,
                         id_block=blocks.id_block if blocks else None, id_auth=blocks.id_auth if blocks else None)
    return qemu.shell_text(lines)


class _Pooled:
    """A spec's pool volumes as the host holds them: boot paths and digests, disk paths, the stored seed's path."""

    def __init__(self, spec, plan, paths: dict, seed_path: Optional[str]) -> None:
        self.spec, self.plan, self.paths, self.seed_path = spec, plan, paths, seed_path


def _from_pools(vm, connect: str, domains_uri: Optional[str] = None) -> Optional[_Pooled]:
    """Only reads: what apply would find (render changes no pool). With `domains_uri` (--storage-connect beside
    --connect), `connect` must reach the same host, as apply checks."""
    from snpvirt.image import cache
    from snpvirt.models import VolumeRef
    from snpvirt.orchestration import volumes

    if not volumes.needs_storage(vm):
        return None
    with _pools(connect, domains_uri) as store:
        resolved, plan = volumes.prepare(vm, store, cache.verified_path)
        paths = {}
        for disk in resolved.disks:
            info = store.volume(disk.pool, disk.volume) if disk.volume_ref else None
            if info is not None:
                paths[disk.volume_ref] = info.path
        seed_path = None
        if resolved.cloud_init is not None and plan.seed_action == "unchanged":  # the pool holds this very seed
            ref = VolumeRef(resolved.cloud_init.pool, resolved.cloud_init.volume_name(resolved.name))
            seed_path = store.volume(ref.pool, ref.volume).path
    return _Pooled(resolved, plan, paths, seed_path)


def _pools(uri: str, domains_uri: Optional[str]):
    from snpvirt.libvirt import storage
    from snpvirt.libvirt.connection import Connection

    if domains_uri is None:
        return storage.connect(uri)
    with Connection(domains_uri) as domains:  # asked only for its host name
        return storage.connect_beside(uri, domains)


def _domain_capabilities(uri: str) -> str:
    from snpvirt.libvirt.connection import Connection

    with Connection(uri) as conn:  # libvirt refuses domcapabilities to read-only connections
        return conn.domain_capabilities()
