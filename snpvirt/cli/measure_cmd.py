"""`snpvirt measure` and `snpvirt idblock`: the expected launch digest, and the ID block that pins it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from snpvirt.cli.common import connect_option, json_option
from snpvirt.models import VCPUS_RANGE

MEASURE_EPILOG = """\b
Examples:
  snpvirt measure examples/web-01.toml
  snpvirt measure --firmware OVMF.amdsev.fd --kernel vmlinuz --initrd initrd.img \\
      --cmdline 'console=ttyS0' --vcpus 4 --vcpu-type EPYC-Genoa --json
  snpvirt measure web-01.toml --set firmware=./OVMF.amdsev.fd --set boot.kernel=./vmlinuz \\
      --set boot.initrd=./initrd.img --record web-01 -c qemu+ssh://host/system   # from local copies
  snpvirt measure --firmware /usr/share/edk2/ovmf/OVMF.amdsev.fd --vcpus 1 --vcpu-type host-passthrough \\
      --vcpu-sig 0xa10f11 --record vm1   # an imported domain: its inputs, checked against its definition
Guest features default to 0x1 (upstream KVM); hosts with DebugSwap need --guest-features 0x21.
"""
IDBLOCK_EPILOG = """\b
Examples:
  snpvirt idblock examples/web-01.toml --id-key id.pem --author-key author.pem
  snpvirt idblock --measurement 6d2878...08fa --policy 0x30000 --id-key id.pem --json
Keys are P-384 EC private keys (openssl ecparam -name secp384r1 -genkey -noout -out id.pem).
"""


def _int(value: Optional[str], option: str, bits: int) -> Optional[int]:
    """A hex or decimal number that fits the field it fills (the spec's bounds for the same key)."""
    from snpvirt.errors import BadInputError

    if value is None:
        return None
    try:
        number = int(value, 16) if value.lower().startswith("0x") else int(value)
    except ValueError:
        raise BadInputError(f"{option} {value!r} is not a number", "write it as hex (0x...) or decimal") from None
    if not 0 <= number < 1 << bits:
        raise BadInputError(f"{option} {value} does not fit in {bits} bits", f"give {option} from 0 to {(1 << bits) - 1:#x}")
    return number


def measure(
    spec_file: Optional[Path] = typer.Argument(None, metavar="[SPEC]", help="A VM spec (TOML); or give the files below."),
    overrides: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a spec key. Repeatable."),
    firmware: Optional[str] = typer.Option(None, "--firmware", metavar="FILE", help="The OVMF image (AmdSev build)."),
    kernel: Optional[str] = typer.Option(None, "--kernel", metavar="FILE", help="Kernel: turns kernel hashes on."),
    initrd: Optional[str] = typer.Option(None, "--initrd", metavar="FILE", help="Initrd (with --kernel)."),
    cmdline: Optional[str] = typer.Option(None, "--cmdline", metavar="TEXT", help="Kernel command line (with --kernel)."),
    vcpus: Optional[int] = typer.Option(None, "--vcpus", min=VCPUS_RANGE[0], max=VCPUS_RANGE[1], metavar="N",
                                        help="Number of vCPUs."),
    vcpu_type: Optional[str] = typer.Option(None, "--vcpu-type", metavar="TYPE", help="QEMU CPU model, e.g. EPYC-Genoa."),
    vcpu_sig: Optional[str] = typer.Option(None, "--vcpu-sig", metavar="HEX", help="CPUID signature (host-passthrough)."),
    guest_features: Optional[str] = typer.Option(None, "--guest-features", metavar="HEX", help="VMSA SEV_FEATURES (0x1)."),
    ovmf_hash: Optional[str] = typer.Option(None, "--ovmf-hash", metavar="HEX", help="Precomputed LD after the firmware pages."),
    record: Optional[str] = typer.Option(None, "--record", metavar="NAME",
                                         help="Store the result in this domain's metadata (its launch inputs must match)."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
) -> None:
    """Print the 48-byte SEV-SNP launch measurement an honest guest will report (lowercase hex)."""
    from snpvirt import output
    from snpvirt.launch import inputs as launch
    from snpvirt.launch import measure as m
    from snpvirt.domain import spec as specs
    from snpvirt.errors import BadInputError

    signature_override = _int(vcpu_sig, "--vcpu-sig", 32)  # CPUID Fn0000_0001_EAX
    features_override = _int(guest_features, "--guest-features", 64)  # VMSA SEV_FEATURES
    seed = None
    if ovmf_hash is not None:
        try:
            seed = bytes.fromhex(ovmf_hash)
        except ValueError:
            seed = b""
        if len(seed) != 48:
            raise BadInputError("--ovmf-hash must be 48 bytes of hex (96 digits)", "take it from snpvirt measure --json")
    if spec_file is not None:
        if any(v is not None for v in (firmware, kernel, initrd, cmdline, vcpus, vcpu_type)):
            raise BadInputError("give a SPEC or the launch files (--firmware ...), not both",
                                "change spec values with --set, e.g. --set firmware=./OVMF.amdsev.fd")
        vm = specs.load_spec(spec_file, overrides, allow_debug=True)
        signature = signature_override if signature_override is not None else launch.spec_signature(vm)
        features = features_override if features_override is not None else vm.snp.guest_features
        hashes_on = vm.snp.kernel_hashes
        if hashes_on and vm.boot.unresolved:  # measured without them, the value would be silently wrong
            kind = vm.boot.unresolved[0]
            raise BadInputError(f"boot.{kind} is a pool volume: measure reads the launch files here",
                                f"give a local copy with the same bytes: --set boot.{kind}=./FILE (apply records the "
                                "measurement from the volume itself)")
        firmware, vcpus, vcpu_type = vm.firmware, vm.vcpus, vm.cpu_model
        kernel = vm.boot.kernel if hashes_on else None
        initrd = vm.boot.initrd if hashes_on else None
        cmdline = vm.boot.cmdline if hashes_on else None
    else:
        if record is not None and vcpu_type is None:
            raise BadInputError("--record needs --vcpu-type: the domain's CPU model is checked against it",
                                "for a host-passthrough domain: --vcpu-type host-passthrough --vcpu-sig HEX")
        if firmware is None or vcpus is None or (vcpu_type is None and signature_override is None):
            raise BadInputError("without a SPEC, --firmware, --vcpus and --vcpu-type (or --vcpu-sig) are required",
                                "snpvirt measure --firmware OVMF.amdsev.fd --vcpus 4 --vcpu-type EPYC-Genoa")
        if (initrd is not None or cmdline is not None) and kernel is None:
            raise BadInputError("--initrd and --cmdline need --kernel (they are measured through kernel hashes)",
                                "add --kernel FILE")
        signature = signature_override if signature_override is not None else m.vcpu_signature(vcpu_type)
        features = features_override if features_override is not None else m.DEFAULT_GUEST_FEATURES
    features_source = "--guest-features" if features_override is not None else "spec" if spec_file else "default (upstream KVM)"
    if features_override is None and (spec_file is None or "guest_features" not in vm.source.get("snp", {})) \
            and connect is not None:
        from snpvirt.host import checks as host
        from snpvirt.host import facts as hostfacts
        if not host.is_remote_uri(connect):
            facts = hostfacts.read_local_facts("/")
            derived = launch.host_guest_features(facts.kernel_release, facts.kvm_amd_params.get("debug_swap"))
            if derived is not None:
                features, features_source = derived
    result = launch.measure_files(firmware, vcpus=vcpus, signature=signature, guest_features=features,
                                  kernel=kernel, initrd=initrd, cmdline=cmdline, firmware_ld=seed)
    item = {
        # Named as what it measures: the domain it is recorded in, else the spec, else the firmware.
        "name": record or (str(spec_file) if spec_file is not None else str(firmware)),
        "ok": True,
        "changed": False,
        "measurement": result.value,
        "inputs": {
            **{kind: {"path": path, "sha256": result.digests[kind].sha256, "size": result.digests[kind].size}
               for kind, path in (("firmware", firmware), ("kernel", kernel), ("initrd", initrd)) if kind in result.digests},
            "cmdline": cmdline if kernel is not None else None,
            "kernel_hashes": kernel is not None,
            "vcpus": vcpus, "vcpu_type": vcpu_type, "vcpu_signature": f"{signature:#x}",
            "guest_features": f"{features:#x}", "guest_features_source": features_source,
            "ovmf_hash": result.firmware_ld,
        },
        "page_updates": result.page_updates,
    }
    changed = False
    if record is not None:
        from snpvirt.cli.common import manager
        from snpvirt.domain.launchrecord import LaunchInputs

        with manager(connect) as mgr:
            # Checked against what the domain launches with, whether the inputs came from a spec or options.
            inputs = LaunchInputs.of_spec(vm) if spec_file is not None else \
                LaunchInputs(vcpus, vcpu_type, cmdline, kernel is not None, source="given")
            outcome = mgr.record_measurement(record, inputs, result)
            changed = item["changed"] = outcome.changed
            item["recorded"] = {"domain": record, "changed": changed}
    if json_output:
        output.print_json(output.envelope(True, changed, [item]))
    else:
        typer.echo(result.value)
        if record is not None:
            typer.echo(f"{'recorded in' if changed else 'already recorded in'} {record}", err=True)


def idblock(
    spec_file: Optional[Path] = typer.Argument(None, metavar="[SPEC]", help="A VM spec: measurement and policy from it."),
    measurement: Optional[str] = typer.Option(None, "--measurement", metavar="HEX", help="Expected launch digest (96 hex)."),
    policy: Optional[str] = typer.Option(None, "--policy", metavar="HEX", help="Guest policy (must equal the launch's)."),
    id_key: Optional[Path] = typer.Option(None, "--id-key", metavar="PEM", help="P-384 key that signs the ID block."),
    author_key: Optional[Path] = typer.Option(None, "--author-key", metavar="PEM", help="P-384 key that signs the ID key."),
    family_id: Optional[str] = typer.Option(None, "--family-id", metavar="HEX", help="16 bytes, copied to reports."),
    image_id: Optional[str] = typer.Option(None, "--image-id", metavar="HEX", help="16 bytes, copied to reports."),
    guest_svn: int = typer.Option(0, "--guest-svn", min=0, max=2 ** 32 - 1, metavar="N",
                                  help="Guest security version number."),
    json_output: bool = json_option(),
) -> None:
    """Build the base64 idBlock (96 bytes) and idAuth (4096 bytes) libvirt takes, and the key digests.

    The key digests are in hex, as `attest show` prints a report's ID_KEY_DIGEST and AUTHOR_KEY_DIGEST.
    """
    import base64

    from snpvirt.launch import idblock as ids
    from snpvirt import output
    from snpvirt.launch import inputs as launch
    from snpvirt import policy as snp_policy
    from snpvirt.domain import spec as specs
    from snpvirt.errors import BadInputError

    def hex_bytes(value: Optional[str], size: int, option: str) -> bytes:
        if value is None:
            return bytes(size)
        try:
            data = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            data = b""
        if len(data) != size:
            raise BadInputError(f"{option} must be {size} bytes of hex ({2 * size} digits)", f"check {option}")
        return data

    if spec_file is not None:
        vm = specs.load_spec(spec_file, allow_debug=True)
        expected = launch.expected_measurement(vm)
        if expected.value is None and measurement is None:
            raise BadInputError(f"the spec's measurement is unknown: {expected.reason}",
                                "make the launch files readable here, or give --measurement HEX")
        digest = hex_bytes(measurement, 48, "--measurement") if measurement else bytes.fromhex(expected.value)
        policy_value = snp_policy.parse_hex(policy) if policy else vm.snp.policy
        id_key = id_key or (Path(vm.snp.id_key) if vm.snp.id_key else None)
        author_key = author_key or (Path(vm.snp.author_key_file) if vm.snp.author_key_file else None)
        family = hex_bytes(family_id or vm.snp.family_id, 16, "--family-id")
        image = hex_bytes(image_id or vm.snp.image_id, 16, "--image-id")
        svn = guest_svn or vm.snp.guest_svn
    else:
        if measurement is None:
            raise BadInputError("give a SPEC or --measurement HEX", "snpvirt idblock --measurement HEX --id-key id.pem")
        digest = hex_bytes(measurement, 48, "--measurement")
        policy_value = snp_policy.parse_hex(policy) if policy else snp_policy.DEFAULT_POLICY
        family, image, svn = hex_bytes(family_id, 16, "--family-id"), hex_bytes(image_id, 16, "--image-id"), guest_svn
    if id_key is None:
        raise BadInputError("an ID key is needed to sign the ID block", "give --id-key PEM (P-384), or snp.id_key in the spec")
    problem = next(iter(snp_policy.problems(policy_value, allow_debug=True)), None)
    if problem:
        raise BadInputError(problem.message, problem.hint)
    blocks = ids.build(digest, policy_value, ids.load_private_key(id_key, "ID key"),
                       ids.load_private_key(author_key, "author key") if author_key else None, family, image, svn)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    # The blobs in base64, as libvirt's <idBlock>/<idAuth> take them; the digests in hex, as `attest show`
    # prints the report's ID_KEY_DIGEST and AUTHOR_KEY_DIGEST, so they compare by eye.
    item = {"name": str(spec_file) if spec_file is not None else "idblock", "ok": True, "changed": False,
            "measurement": digest.hex(), "policy": snp_policy.to_hex(policy_value), "id_block": b64(blocks.id_block),
            "id_auth": b64(blocks.id_auth), "id_key_digest": blocks.id_key_digest.hex(),
            "author_key_digest": blocks.author_key_digest.hex() if blocks.author_key_digest else None,
            "author_key": author_key is not None}
    if json_output:
        output.print_json(output.envelope(True, False, [item]))
        return
    for key in ("id_block", "id_auth", "id_key_digest", "author_key_digest"):
        if item[key]:
            typer.echo(f"{key}: {item[key]}")
    typer.echo("libvirt: <idBlock>, <idAuth>" + (" and authorKey='yes'" if author_key else "") +
               " in <launchSecurity type='sev-snp'>; or set snp.id_key in the spec and snpvirt embeds them", err=True)
