"""`snpvirt validate`: check existing domain XML (e.g. exported from virt-manager) for SEV-SNP."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

EPILOG = """\b
Examples:
  snpvirt validate web-01.xml
  virsh dumpxml web-01 > web-01.xml && snpvirt validate web-01.xml --json
  snpvirt validate /etc/libvirt/qemu/*.xml
"""


def validate(
    xmlfile: List[Path] = typer.Argument(..., metavar="XMLFILE", help="Domain XML files to check."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept a policy with DEBUG set."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Check domain XML against libvirt's schema and snpvirt's SEV-SNP rules.

    Exit 0 when every file is valid (warnings allowed), 2 otherwise; every failing rule is listed.
    """
    from snpvirt import fileio, output
    from snpvirt.domain import xml as domxml
    from snpvirt.errors import ExitCode
    from snpvirt.models import Finding

    results = []
    for path in xmlfile:
        try:
            findings = domxml.check(fileio.read_input(path, "xml"), allow_debug)
        except fileio.InputFileError as err:
            findings = [Finding("file.read", "error", f"cannot read: {err.reason}", err.hint)]
        errors = [f for f in findings if f.severity == "error"]
        results.append(output.result(str(path), not errors, False, file=str(path), valid=not errors,
                                     findings=[f.as_dict() for f in findings]))
        if errors:
            results[-1]["error"] = {"kind": "bad_input", "message": f"{path}: {errors[0].rule_id}: {errors[0].message}"
                                    + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), "hint": errors[0].hint}

    all_valid = all(r["valid"] for r in results)
    if json_output:
        output.print_json(output.envelope(all_valid, False, results, error=output.batch_error(
            [r["error"] for r in results if "error" in r], len(results))))
    else:
        for r in results:
            typer.echo(f"{'valid  ' if r['valid'] else 'INVALID'}  {r['file']}")
            for f in r["findings"]:
                typer.echo(f"  {f['severity']:<7}  {f['id']}: {f['message']}")
                typer.echo(f"  {'':<7}  hint: {f['hint']}")
    if not all_valid:
        bad = sum(not r["valid"] for r in results)
        output.print_error(f"{bad} of {len(results)} file(s) are not valid SEV-SNP domains", "fix the rules listed above")
        raise typer.Exit(int(ExitCode.BAD_INPUT))
