"""`snpvirt import`: bring a hand-written or virt-manager domain under snpvirt's management."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from snpvirt.cli.common import connect_option, json_option, manager, read_host_caps, report, sysroot_option

IMPORT_EPILOG = """\b
Examples:
  snpvirt import vm.xml                          # report the SEV-SNP rules it breaks
  snpvirt import vm.xml --fix --print-diff       # add what is missing, show the change, define it
  snpvirt import web-01 --fix -c qemu:///system  # a domain that already exists in libvirt
  snpvirt import vm.xml --fix --check            # show what --fix would do, change nothing
  snpvirt import vm.xml --fix --firmware /usr/share/edk2/ovmf/OVMF.amdsev.fd   # replace a non-SNP firmware
--fix adds only launch security (policy 0x30000), stateless firmware without NVRAM, policy bit 17 and
snpvirt's metadata; everything else stays as it was. A firmware path the domain keeps must be an SEV-SNP
build (a QEMU firmware descriptor offers amd-sev-snp for it, or it is OVMF's AmdSev build by name).
"""


def import_domain(
    source: str = typer.Argument(..., metavar="XMLFILE|NAME", help="Domain XML file, or the name of a libvirt domain."),
    fix: bool = typer.Option(False, "--fix", help="Add what SEV-SNP needs and is missing."),
    print_diff: bool = typer.Option(False, "--print-diff", help="Show the change as a unified diff."),
    check: bool = typer.Option(False, "--check", help="Report (and diff) only; define nothing."),
    firmware: Optional[str] = typer.Option(None, "--firmware", metavar="PATH",
                                           help="SEV-SNP firmware to load as ROM: an absolute path, e.g. "
                                                "/usr/share/ovmf/OVMF.amdsev.fd."),
    host_caps: Optional[Path] = typer.Option(None, "--host-caps", metavar="FILE",
                                             help="Saved domcapabilities: cbitpos/reducedPhysBits for added launch security."),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
    sysroot: Optional[Path] = sysroot_option(),
) -> None:
    """Check a domain against the SEV-SNP rules and, with --fix, bring it under management."""
    import os

    from snpvirt import domcaps, fileio, sevparams
    from snpvirt.errors import BadInputError, NotFoundError, SnpvirtError
    from snpvirt.firmware import InstalledFirmware
    from snpvirt.host import is_remote_uri

    with manager(connect, host_caps, sysroot=sysroot) as m:
        path = Path(source)
        record = None
        if path.is_file() or (("/" in source or source.endswith(".xml")) and os.path.lexists(source)):
            xml = fileio.read_input(path, "xml", "domain XML")  # a device or FIFO is refused, not read
        elif "/" in source or source.endswith(".xml"):
            raise BadInputError(f"{source} does not exist", "give an XML file or the name of a libvirt domain")
        else:
            record = m.hv.lookup(source)
            if record is None:
                raise NotFoundError(f"no file or domain named {source}", "list domains with: virsh list --all")
            xml = record.xml.encode()
        sev = None
        if fix:
            caps = read_host_caps(host_caps) if host_caps else None
            if caps is None:
                try:
                    caps = domcaps.parse_domcaps(m.hv.domain_capabilities())
                except SnpvirtError:
                    caps = None
            if caps is not None and caps.sev_supported and caps.cbitpos is not None and caps.reduced_phys_bits is not None:
                sev = sevparams.SevParams(caps.cbitpos, caps.reduced_phys_bits, "host")
        # Which firmware is an SEV-SNP build: this host's descriptors (a captured host's with --sysroot), as
        # `host check` reads them; for a remote URI this machine's files say nothing about that host's.
        installed = InstalledFirmware.read(sysroot or Path("/"), files_here=not is_remote_uri(m.hv.actual_uri))
        outcome = m.import_domain(xml, record, fix, check, sev, firmware, installed)
        if not json_output:
            for change in outcome.details.get("changes", []):
                typer.echo(f"fix: {change}")
            for finding in outcome.details.get("remaining", []):
                typer.echo(f"{finding['severity']}: {finding['id']}: {finding['message']}\n  hint: {finding['hint']}")
            if print_diff and outcome.details.get("xml_diff"):
                typer.echo(outcome.details["xml_diff"], nl=False)
        if not print_diff:
            outcome.details.pop("xml_diff", None)
        report([outcome], json_output, m.warnings)
