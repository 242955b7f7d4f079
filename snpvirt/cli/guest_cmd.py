"""`snpvirt guest check|report`: run inside an SEV-SNP guest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from snpvirt.cli.common import json_option, sub_app

guest_app = sub_app()


@guest_app.callback()
def guest() -> None:
    """Inside an SEV-SNP guest: check it can get attestation reports, and get one."""


CHECK_EPILOG = """\b
Examples:
  snpvirt guest check
  snpvirt guest check --json
"""
REPORT_EPILOG = """\b
Examples:
  snpvirt guest report --report-data $(openssl rand -hex 32) -o report.bin --certs-out certs/
  snpvirt guest report --nonce-file nonce.bin --vmpl 0 -o report.bin
  snpvirt guest report --random -o report.bin      # a fresh 64-byte nonce, printed for the verifier
Then, on the host: snpvirt attest verify report.bin --domain NAME --report-data HEX
"""


@guest_app.command("check", epilog=CHECK_EPILOG)
def check(sysroot: Path = typer.Option(Path("/"), "--sysroot", metavar="DIR", hidden=True),
          json_output: bool = json_option()) -> None:
    """Is this an SEV-SNP guest, and can it get attestation reports? A fix for each problem."""
    from snpvirt import output
    from snpvirt.attest import guest
    from snpvirt.errors import ExitCode, HostNotReadyError

    results = guest.check(sysroot)
    blocking = [r for r in results if r.check_id in ("guest.sev_snp", "guest.report_interface") and r.status != "pass"]
    ready = not blocking
    if json_output:
        # Not ready is a failure like any other: a script finds why under the envelope's `error`.
        error = None if ready else HostNotReadyError(
            "not ready to get attestation reports: " + ", ".join(f"{r.check_id} {r.status}" for r in blocking),
            next((r.hint for r in blocking if r.hint), "see the checks that failed"))
        output.print_json(output.envelope(ready, False, [output.check_item(r) for r in results], error=error,
                                          warnings=output.check_warnings(results), ready=ready))
    else:
        for r in results:
            typer.echo(f"{r.status:<4}  {r.check_id:<24} {r.message}")
            if r.hint:
                typer.echo(f"      {'':<24} fix: {r.hint}")
        typer.echo("ready to get attestation reports" if ready else "not ready to get attestation reports")
    if not ready:
        raise typer.Exit(int(ExitCode.NOT_READY))


@guest_app.command("report", epilog=REPORT_EPILOG)
def report(
    report_data: Optional[str] = typer.Option(None, "--report-data", metavar="HEX", help="Up to 64 bytes, e.g. a nonce."),
    nonce_file: Optional[Path] = typer.Option(None, "--nonce-file", metavar="F", help="Read the report data from F."),
    random_nonce: bool = typer.Option(False, "--random", "-r",
                                      help="A fresh random 64-byte nonce as report data, printed in hex (as snpguest -r)."),
    vmpl: Optional[int] = typer.Option(None, "--vmpl", min=0, max=3, metavar="N", help="VMPL of the request (0-3)."),
    output_file: Path = typer.Option(..., "-o", "--output", metavar="FILE", help="Where to write the report."),
    certs_out: Optional[Path] = typer.Option(None, "--certs-out", metavar="DIR",
                                             help="Write the host-supplied certificates (VCEK, ASK, ARK) here."),
    sysroot: Path = typer.Option(Path("/"), "--sysroot", metavar="DIR", hidden=True),
    json_output: bool = json_option(),
) -> None:
    """Ask the SEV-SNP firmware for a signed attestation report carrying the given report data."""
    import hashlib

    from snpvirt import fileio, output
    from snpvirt.attest import guest
    from snpvirt.errors import BadInputError

    if [report_data is not None, nonce_file is not None, random_nonce].count(True) != 1:
        raise BadInputError("give exactly one of --report-data HEX, --nonce-file F or --random",
                            "the verifier's nonce binds the report to this request")
    if random_nonce:
        import secrets

        data = secrets.token_bytes(64)  # the whole REPORT_DATA: nothing for a guesser to predict
    elif report_data is not None:
        try:
            data = bytes.fromhex(report_data.removeprefix("0x"))
        except ValueError:
            raise BadInputError("--report-data is not hex", "give up to 128 hex digits") from None
    else:
        data = fileio.read_input(nonce_file, "nonce", "--nonce-file")
    if len(data) > 64:
        raise BadInputError(f"report data is {len(data)} bytes; at most 64 fit", "hash it first: sha512 is 64 bytes")
    # Refuse a link, device or folder before the firmware is asked: a report is not requested for nothing.
    fileio.output_target(output_file, hint="give -o the path of a regular file")
    if certs_out is not None:
        fileio.output_folder(certs_out, what="--certs-out")
    got = guest.get_report(data, vmpl, sysroot)
    written = {}
    if certs_out is not None and got.certificates:
        fileio.write_files(certs_out, got.certificates, what="--certs-out")  # all of them, or none
        written = {name: str(certs_out / name) for name in got.certificates}
    fileio.write_file(output_file, got.report, hint="give -o the path of a regular file")
    if json_output:
        output.print_json(output.envelope(True, True, [output.result(
            str(output_file), True, True, report=str(output_file), interface=got.interface,
            sha256=hashlib.sha256(got.report).hexdigest(), report_data=data.hex(), random=random_nonce,
            certificates=written)]))
    else:
        typer.echo(f"wrote {output_file} ({len(got.report)} bytes, via {got.interface})"
                   + (f"; certificates: {', '.join(written)}" if written else ""))
        if random_nonce:  # the verifier needs it: snpvirt attest verify REPORT --report-data HEX
            typer.echo(f"report data (random): {data.hex()}")
