"""`snpvirt attest show|verify|fetch-certs`: read a report, verify it against AMD and what was launched."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from snpvirt.cli.common import connect_option, json_option, sub_app

attest_app = sub_app()


@attest_app.callback()
def attest() -> None:
    """Read attestation reports and verify them against AMD's keys and what snpvirt launched."""


SHOW_EPILOG = """\b
Examples:
  snpvirt attest show report.bin
  snpvirt attest show report.bin --product genoa --json
"""
VERIFY_EPILOG = """\b
Examples:
  snpvirt attest verify report.bin --certs ./certs --domain web-01 -c qemu:///system --report-data $NONCE
  snpvirt attest verify r1.bin r2.bin --vcek vcek.der --chain cert_chain.pem --expected-measurement 6d28...08fa --no-nonce
  snpvirt attest verify report.bin --fetch --domain web-01 --json       # certificates from AMD KDS, cached
Exit 0: every report verified · 1: a check failed (the output says which) · 2: bad input ·
6: KDS unreachable (--fetch) · 9: some of several reports not verified.
"""
FETCH_EPILOG = """\b
Examples:
  snpvirt attest fetch-certs report.bin -o ./certs
  snpvirt attest fetch-certs report.bin --product milan --kds-url http://kds-mirror.example:8080
Downloads are cached (SNPVIRT_CACHE_DIR, default ~/.cache/snpvirt/kds): a fleet fetches each certificate once.
"""

PRODUCT_HELP = "milan, genoa or turin (v2 reports do not say; v3+ do)."


def _read(path: Path, kind: str = "report") -> bytes:
    from snpvirt import fileio

    return fileio.read_input(path, kind)


def _product(value: Optional[str]) -> Optional[str]:
    from snpvirt.errors import BadInputError

    if value is None:
        return None
    if value.lower() not in ("milan", "genoa", "turin"):
        raise BadInputError(f"--product {value!r} is not milan, genoa or turin", "give the CPU generation of the host")
    return value.lower()


@attest_app.command("show", epilog=SHOW_EPILOG)
def show(report_file: Path = typer.Argument(..., metavar="REPORT", help="A 1184-byte report (raw or hex)."),
         product: Optional[str] = typer.Option(None, "--product", metavar="P", help=PRODUCT_HELP),
         json_output: bool = json_option()) -> None:
    """Print every field of an attestation report, with policy, TCB and platform info decoded."""
    from snpvirt import output
    from snpvirt.attest import report as reports

    rep = reports.parse(_read(report_file), str(report_file))
    fields = rep.as_dict(_product(product))
    if json_output:
        output.print_json(output.envelope(True, False, [output.result(str(report_file), report=str(report_file), **fields)]))
        return
    for key, value in fields.items():
        typer.echo(f"{key + ':':<22} {_shown(key, value, rep.version, fields['product'] is not None)}")


def _shown(key: str, value, version: int, product_known: bool) -> str:
    """A report field for people: an unknown product says why and what to do; an absent field is `-`."""
    if key == "product" and value is None:
        return f"unknown (version {version} reports do not say; give --product milan, genoa or turin)"
    if key == "tcb_layout" and not product_known:
        return f"{value} (assumed: the product is unknown, and Turin's layout differs)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "-" if value is None else str(value)


def _min_tcb(text):
    """--min-tcb bl=3,tee=0,snp=8,ucode=115[,fmc=1]"""
    from snpvirt.errors import BadInputError

    names = {"bl": "bootloader", "bootloader": "bootloader", "tee": "tee", "snp": "snp", "ucode": "microcode",
             "microcode": "microcode", "fmc": "fmc"}
    floor = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in names or not value.strip().isdigit():
            raise BadInputError(f"--min-tcb part {part!r} is not NAME=NUMBER", "e.g. --min-tcb bl=3,tee=0,snp=8,ucode=115")
        floor[names[key.strip()]] = int(value)
    return floor


def _expectations(domain, connect, expected_measurement, report_data, host_data, allow_debug, vmpl, no_nonce,
                  allow_migration_agent=False, min_tcb=None):
    import base64

    from snpvirt.errors import BadInputError
    from snpvirt.attest.verify import Expectations

    def hex_arg(value, option, size=None):
        try:
            data = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise BadInputError(f"{option} is not hex", f"check {option}") from None
        if size and len(data) != size or len(data) > 64:
            raise BadInputError(f"{option} must be {size or 'at most 64'} bytes", f"check {option}")
        return data

    measurement, source, policy, launched_host_data, recorded = None, "", None, None, {}
    if expected_measurement is not None:
        measurement, source = hex_arg(expected_measurement, "--expected-measurement", 48), "--expected-measurement"
    if domain is not None:
        from snpvirt.cli.common import manager

        with manager(connect) as m:
            recorded = m.attestation_expectations(domain)
        policy, launched_host_data = recorded["policy"], recorded["host_data"]
        if measurement is None:
            measurement = recorded["measurement"]
            # The metadata is as trustworthy as the libvirt host that holds it; the message says so.
            source = (f"domain {domain}'s metadata on {connect or 'the default URI'} (trusted as that host keeps it; "
                      f"a verifier that does not trust the host passes --expected-measurement from snpvirt measure)"
                      if measurement else recorded["measurement_unknown"])
    host = launched_host_data
    if host_data is not None:
        try:
            host = base64.b64decode(host_data, validate=True)
        except ValueError:
            raise BadInputError("--host-data is not base64", "give the base64 of 32 bytes") from None
    return Expectations(
        measurement=measurement, measurement_source=source,
        report_data=hex_arg(report_data, "--report-data") if report_data else None, accept_replay=no_nonce,
        host_data=host, policy=policy, allow_debug=allow_debug, vmpl=vmpl, allow_migration_agent=allow_migration_agent,
        min_tcb=_min_tcb(min_tcb) if min_tcb else None, id_key_digest=recorded.get("id_key_digest"),
        author_key_digest=recorded.get("author_key_digest"))


@attest_app.command("verify", epilog=VERIFY_EPILOG)
def verify(
    report_files: List[Path] = typer.Argument(..., metavar="REPORT...", help="Reports to verify."),
    certs_dir: List[Path] = typer.Option([], "--certs", metavar="DIR", help="Folder of ARK/ASK/VCEK files (PEM/DER)."),
    vcek: List[Path] = typer.Option([], "--vcek", metavar="FILE", help="VCEK or VLEK certificate."),
    chain: List[Path] = typer.Option([], "--chain", metavar="PEM", help="ASK (or ASVK) and ARK, as KDS cert_chain."),
    product: Optional[str] = typer.Option(None, "--product", metavar="P", help=PRODUCT_HELP),
    trust_root: Optional[Path] = typer.Option(None, "--trust-root", metavar="PEM",
                                              help="Trust this ARK instead of AMD's pinned roots (labs, tests)."),
    domain: Optional[str] = typer.Option(None, "--domain", metavar="NAME", help="Compare with what snpvirt launched."),
    expected_measurement: Optional[str] = typer.Option(None, "--expected-measurement", metavar="HEX"),
    report_data: Optional[str] = typer.Option(None, "--report-data", metavar="HEX", help="The nonce the guest was given."),
    no_nonce: bool = typer.Option(False, "--no-nonce", help="Accept a report without checking a nonce (replays pass)."),
    host_data: Optional[str] = typer.Option(None, "--host-data", metavar="B64", help="Expected HOST_DATA (32 bytes)."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept a policy with DEBUG set."),
    vmpl: Optional[int] = typer.Option(None, "--vmpl", min=0, max=3, metavar="N", help="The VMPL the report must come from."),
    allow_migration_agent: bool = typer.Option(False, "--allow-migration-agent", help="Accept MIGRATE_MA in the policy."),
    min_tcb: Optional[str] = typer.Option(None, "--min-tcb", metavar="bl=N,tee=N,snp=N,ucode=N",
                                          help="Oldest TCB accepted (reported, current and launch)."),
    now: Optional[str] = typer.Option(None, "--now", metavar="ISO8601", help="Check validity at this time."),
    fetch: bool = typer.Option(False, "--fetch", help="Get missing certificates from AMD KDS (cached)."),
    kds_url: Optional[str] = typer.Option(None, "--kds-url", metavar="URL", envvar="SNPVIRT_KDS_URL"),
    connect: Optional[str] = connect_option(),
    json_output: bool = json_option(),
) -> None:
    """Verify reports: AMD's chain, the signature, the VCEK's binding, and the launch's measurement,
    policy, nonce and host data. Every check is listed; any failure means not verified."""
    import datetime

    from snpvirt import output
    from snpvirt.attest import certs
    from snpvirt.attest import verify as verifier
    from snpvirt.errors import BadInputError, SnpvirtError

    when = datetime.datetime.now(datetime.timezone.utc)
    if now is not None:
        try:
            when = datetime.datetime.fromisoformat(now.replace("Z", "+00:00"))
        except ValueError:
            raise BadInputError(f"--now {now!r} is not an ISO 8601 time", "e.g. --now 2026-01-31T12:00:00Z") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
    pool = certs.load_paths([*certs_dir, *vcek, *chain])
    root = certs.load(_read(trust_root, "certificate"), str(trust_root))[0] if trust_root else None
    expect = _expectations(domain, connect, expected_measurement, report_data, host_data, allow_debug, vmpl, no_nonce,
                           allow_migration_agent, min_tcb)
    service = _kds(kds_url, root) if fetch else None
    results = []
    for path in report_files:
        try:
            data = _read(path)
            if service is not None:
                pool += _fetched(service, data, str(path), _product(product), pool)
            verdict = verifier.verify(data, str(path), pool, expect=expect, now=when, trust_root=root,
                                      product=_product(product))
        except SnpvirtError as err:  # this report's own error (unreadable, no certificate, KDS unreachable...)
            results.append(output.result(str(path), False, False, err, report=str(path), verified=False, checks=[]))
            continue
        results.append(output.result(str(path), verdict.verified, False, report=str(path), verified=verdict.verified,
                                     product=verdict.product, measurement=verdict.report.measurement.hex(),
                                     chip_id=verdict.report.chip_id.hex(), failed=verdict.failed(),
                                     checks=[c.as_dict() for c in verdict.checks]))
    all_verified = all(r["verified"] for r in results)
    if json_output:
        items = [{**r, "error": _report_error(r)} if not r["ok"] else r for r in results]
        output.print_json(output.envelope(all_verified, False, items, error=output.batch_error(
            [r["error"] for r in items if not r["ok"]], len(items))))
    else:
        for r in results:  # messages quote certificates and file names: shown, never obeyed by the terminal
            typer.echo(output.printable(f"{'VERIFIED' if r['verified'] else 'NOT VERIFIED'}  {r['report']}"))
            if "error" in r:
                typer.echo("  error: " + output.printable(r['error']['message']))
                typer.echo("  hint: " + output.printable(r['error']['hint']))
            for c in r["checks"]:
                typer.echo(output.printable(f"  {c['status']:<4}  {c['id']:<28} {c['message']}"))
    if not all_verified:
        failed = [r for r in results if not r["verified"]]
        if len(results) == 1 and "error" in failed[0]:
            output.print_error(output.about(failed[0]["report"], failed[0]["error"]["message"]), failed[0]["error"]["hint"])
        else:
            output.print_error(f"{len(failed)} of {len(results)} report(s) NOT verified: "
                               f"{', '.join(r['report'] for r in failed)}", _failure_hint(failed))
        raise typer.Exit(_exit_code(results))


def _exit_code(results: list[dict]) -> int:
    """As for the lifecycle commands: one report, its error's code (6 when KDS is unreachable, 2 for a file
    that is no report, 1 for a failed check); several, 9 (partial) when any was not verified."""
    from snpvirt.errors import ExitCode, exit_code_of

    if len(results) > 1:
        return int(ExitCode.PARTIAL)
    return int(exit_code_of(_report_error(results[0])["kind"]))


def _report_error(result: dict) -> dict:
    """A report's error: the one it raised, or the checks it failed."""
    if "error" in result:
        return result["error"]
    return {"kind": "failure", "message": f"{result['report']}: NOT verified: failed {', '.join(result['failed'])}",
            "hint": _failure_hint([result], "see the failed checks in its result")}


def _failure_hint(failed: list, otherwise: str = "see the failed checks above") -> str:
    """Missing certificates are the usual first failure, and the fix is an option away: say which."""
    missing = {c["id"] for r in failed for c in r.get("checks", []) if c["status"] == "fail"} & {"cert.leaf", "cert.chain"}
    if not missing:
        return otherwise
    return ("give the missing certificates: --certs DIR, --vcek FILE (and --chain PEM), or --fetch for those AMD KDS "
            "serves (all but a VLEK); " + otherwise)


def _kds(kds_url: Optional[str], trust_root=None):
    """The KDS client, cached on disk, saying each retry on stderr (a silent 7 s wait looks like a hang)."""
    from snpvirt import output
    from snpvirt.attest import kds

    return kds.Kds(kds_url or kds.DEFAULT_URL, kds.default_cache(), progress=output.print_warning,
                   trust_root=trust_root)


def _fetched(service, data: bytes, origin: str, product: Optional[str], pool: list) -> list:
    """Certificates KDS has for this report that the pool lacks."""
    from snpvirt.attest import certs
    from snpvirt.attest import report as reports
    from snpvirt.errors import BadInputError
    from snpvirt.attest.verify import binds, tcb_matches

    rep = reports.parse(data, origin)
    product = product or rep.product()
    if product is None:
        raise BadInputError(f"{origin}: a version {rep.version} report does not say its product",
                            "give --product milan, genoa or turin")
    added = []
    signer = "vlek" if rep.signing_key == "vlek" else "vcek"
    intermediate = "asvk" if signer == "vlek" else "ask"
    have = lambda role: any(c.role == role and c.product == product for c in pool)  # noqa: E731
    if not (have("ark") and have(intermediate)):
        added += certs.load(service.cert_chain(product, signer), f"KDS {product} cert_chain")
    # A VCEK is per chip *and* per reported TCB: fetch unless one matches both.
    if signer == "vcek" and not any(c.role == "vcek" and binds(c, rep) and tcb_matches(c, rep, product) for c in pool):
        added += certs.load(service.vcek(rep, product), f"KDS VCEK {rep.chip_id.hex()[:16]}")
    return added


@attest_app.command("fetch-certs", epilog=FETCH_EPILOG)
def fetch_certs(
    report_file: Path = typer.Argument(..., metavar="REPORT", help="The report whose chip and TCB to fetch for."),
    product: Optional[str] = typer.Option(None, "--product", metavar="P", help=PRODUCT_HELP),
    kds_url: Optional[str] = typer.Option(None, "--kds-url", metavar="URL", envvar="SNPVIRT_KDS_URL",
                                          help="A mirror or proxy of AMD KDS."),
    out_dir: Path = typer.Option(Path("snp-certs"), "-o", "--output", metavar="DIR", help="Where to write the files."),
    json_output: bool = json_option(),
) -> None:
    """Get ARK, ASK and the report's VCEK from AMD's key distribution service (cached on disk)."""
    from snpvirt import fileio, output
    from snpvirt.attest import certs
    from snpvirt.attest import report as reports
    from snpvirt.errors import BadInputError

    fileio.output_folder(out_dir, what="-o")  # a link or a file there is refused before any request
    rep = reports.parse(_read(report_file), str(report_file))
    product = _product(product) or rep.product()
    if product is None:
        raise BadInputError(f"{report_file}: a version {rep.version} report does not say its product",
                            "give --product milan, genoa or turin")
    service = _kds(kds_url)
    signer = "vlek" if rep.signing_key == "vlek" else "vcek"
    chain = certs.load(service.cert_chain(product, signer), "cert_chain")
    from cryptography.hazmat.primitives import serialization
    contents = {f"{cert.role}.pem": cert.cert.public_bytes(serialization.Encoding.PEM) for cert in chain}
    if signer == "vcek":
        contents["vcek.der"] = service.vcek(rep, product)
    # Everything is fetched before anything is written: a failed VCEK fetch leaves no half folder.
    changed = fileio.write_files(out_dir, contents, what="-o")
    files = {name.split(".")[0]: str(out_dir / name) for name in contents}
    if json_output:
        output.print_json(output.envelope(True, changed, [output.result(
            str(report_file), True, changed, report=str(report_file), product=product, files=files,
            network_requests=service.fetched)]))
    else:
        for role, path in files.items():
            typer.echo(f"{role:<5} {path}")
