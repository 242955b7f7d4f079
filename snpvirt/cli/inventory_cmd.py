"""`snpvirt list` and `snpvirt status`: what snpvirt manages, from the domains' own metadata."""

from __future__ import annotations

from typing import Optional

import typer

from snpvirt.cli.common import connect_option, json_option, manager

LIST_EPILOG = """\b
Examples:
  snpvirt list                 # running snpvirt-managed domains, fitted to the terminal
  snpvirt list --all --wide    # also shut-off ones, every column in full (UUID, whole measurement)
  snpvirt list --unmanaged     # also the domains snpvirt does not manage (MANAGED: no)
  snpvirt list --all --json -c qemu:///system
"""
STATUS_EPILOG = """\b
Examples:
  snpvirt status web-01
  snpvirt status web-01 --json | jq .launch
"""


def list_domains(all_domains: bool = typer.Option(False, "--all", "-a", help="Include domains that are not running, as virsh list --all."),
                 unmanaged: bool = typer.Option(False, "--unmanaged",
                                                help="Also list the domains snpvirt does not manage (MANAGED: no)."),
                 wide: bool = typer.Option(False, "--wide", "-w",
                                           help="Every column in full (UUID, whole measurement), whatever the width."),
                 connect: Optional[str] = connect_option(), json_output: bool = json_option()) -> None:
    """List snpvirt-managed domains: state, size, policy, kernel hashes, expected measurement.

    A running domain shows what runs (its live definition); what its persistent definition changes after a restart
    is under PENDING_RESTART. On a terminal the table fits its width (or COLUMNS; a pipe gets whole lines): the expected
    measurement is abbreviated, the UUID left out, and narrow terminals lose KERNEL_HASHES, MEMORY_MIB and VCPUS
    first; --wide or --json show everything. Domains snpvirt does not manage are left out, and a line on stderr
    says how many (--unmanaged lists them; --all keeps virsh's meaning, shut-off domains too).
    """
    from snpvirt import output

    with manager(connect) as m:
        rows, hidden = m.inventory(include_inactive=all_domains, include_unmanaged=unmanaged)
    if json_output:
        output.print_json(output.envelope(True, False, [output.result(r["name"], **r) for r in rows], unmanaged_hidden=hidden))
        return
    columns = [c for c in LIST_COLUMNS if (wide or not c.wide_only) and (unmanaged or c.header != "MANAGED")]
    typer.echo(_fitted_table(columns, rows, None if wide else _terminal_width(), wide))
    if hidden:
        typer.echo(f"{hidden} domain{'s' if hidden != 1 else ''} not managed by snpvirt "
                   f"{'are' if hidden != 1 else 'is'} hidden; --unmanaged shows them", err=True)


class _Column:
    def __init__(self, header: str, cell, wide_only: bool = False, drop_rank: int | None = None) -> None:
        self.header, self.cell, self.wide_only = header, cell, wide_only
        self.drop_rank = drop_rank  # dropped first (1, 2, ...) when the terminal is too narrow; None: always kept


def _fitted_table(columns: list, rows: list[dict], width: int | None, wide: bool) -> str:
    """The table within `width` columns: drop the least needed columns, then shorten the last one's cells."""
    from snpvirt import output

    def render(cols) -> str:
        return output.table([c.header for c in cols], [[c.cell(r, wide) for c in cols] for r in rows])

    text = render(columns)
    for rank in sorted({c.drop_rank for c in columns if c.drop_rank is not None}):
        if width is None or _widest(text) <= width:
            break
        columns = [c for c in columns if c.drop_rank != rank]
        text = render(columns)
    if width is None or _widest(text) <= width:
        return text
    last = columns[-1]
    room = max(len(last.header), width - (_widest(render(columns[:-1])) + 2))
    shorten = lambda cell: cell if len(cell) <= room else cell[:room - 1] + "\u2026"  # noqa: E731
    short = _Column(last.header, lambda r, w: shorten(last.cell(r, w)))
    return render(columns[:-1] + [short])


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def _terminal_width() -> int | None:
    """On a terminal, COLUMNS or else its width. None when stdout is not one: a pipe or a file gets whole lines
    whatever COLUMNS says (GNU readline exports COLUMNS into the environment of programs that use it, so a
    script's `snpvirt list | awk` would otherwise change with the window it was started from)."""
    import shutil
    import sys

    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((0, 0)).columns or None


def _managed_text(row: dict) -> str:
    return "yes" if row.get("managed", True) else "no"


MEASUREMENT_SHOWN = 12  # hex digits of the expected measurement a fitted table shows; --wide shows all 96


def _measurement_cell(row: dict, wide: bool) -> str:
    if not row.get("managed", True):
        return "-"  # snpvirt recorded no launch for it: nothing to expect
    text = _measurement_text(row)
    value = row["expected_measurement"]
    return text if wide or not value or len(value) <= MEASUREMENT_SHOWN else value[:MEASUREMENT_SHOWN] + "\u2026"


LIST_COLUMNS = [
    _Column("NAME", lambda r, w: r["name"]),
    _Column("MANAGED", lambda r, w: _managed_text(r)),
    _Column("STATE", lambda r, w: r["state"]),
    _Column("VCPUS", lambda r, w: str(r["vcpus"]), drop_rank=3),
    _Column("MEMORY_MIB", lambda r, w: str(r["memory_mib"]), drop_rank=2),
    _Column("POLICY", lambda r, w: _policy_text(r)),
    _Column("KERNEL_HASHES", lambda r, w: "yes" if r["kernel_hashes"] else "no", drop_rank=1),
    _Column("MEASUREMENT", _measurement_cell),
    _Column("PENDING_RESTART", lambda r, w: _pending_text(r)),
    _Column("UUID", lambda r, w: r["uuid"], wide_only=True),
]


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
    from snpvirt import output
    from snpvirt.domain import inventory

    with manager(connect) as m:
        info = m.status(name)
    info = {**info, "launch": inventory.readable_launch(info["launch"])}
    if json_output:
        output.print_json(output.envelope(True, False, [output.result(info["name"], **info)]))
        return
    for key in ("name", "uuid", "state", "vcpus", "memory_mib", "launch_security", "policy", "policy_flags", "kernel_hashes",
                "expected_measurement", "measurement_stale", "restart_required", "origin", "spec_digest", "defined_at",
                "updated_at", "snpvirt_version"):
        typer.echo(output.printable(f"{key + ':':<22} {_plain(info[key])}"))
    if info["pending"]:
        typer.echo("pending (after a restart; the values above are what runs):")
        _echo_indented([(key, [_plain(value)]) for key, value in info["pending"].items()])
    typer.echo("launch inputs:" if info["launch"] else f"{'launch inputs:':<22} - (none recorded)")
    _echo_indented([(key, _launch_lines(key, value)) for key, value in info["launch"].items()])
    seed = info.get("cloud_init_seed")
    if seed:  # outside the launch inputs: the measurement does not cover it
        typer.echo(output.printable(f"{'cloud-init seed:':<22} {seed.get('pool')}/{seed.get('volume')} "
                                    f"sha256 {seed.get('sha256', 'unknown')} (not measured)"))
    if info["spec"] is not None:
        from snpvirt.domain import metadata

        typer.echo("spec:")  # every key that is set, dotted (snp.policy.smt), sorted
        _echo_indented([(change["key"], [_plain(change["to"])]) for change in metadata.spec_diff({}, info["spec"])])


def _echo_indented(rows: list[tuple[str, list[str]]]) -> None:
    """`  key: value` under a heading, the values in one column; a value's further lines under its first.
    Control characters show escaped: another libvirt client can write anything into the metadata."""
    from snpvirt import output

    width = max([20] + [len(key) + 1 for key, _ in rows])
    for key, lines in rows:
        for i, line in enumerate(lines):
            typer.echo(output.printable(f"  {(key + ':') if i == 0 else '':<{width}} {line}"))


LAUNCH_FILES = ("firmware", "kernel", "initrd")


def _launch_lines(key: str, value) -> list[str]:
    """One recorded launch input as lines for people: a file's path, then its SHA-256 (in full: it is what
    `sha256sum` prints) and size, or why the digest is unknown; the measurement with what it was computed for."""
    if not isinstance(value, dict):
        return [_plain(value)]
    if key in LAUNCH_FILES:
        size = f" ({_size_text(value['size'])})" if str(value.get("size", "")).isdigit() else ""
        digest = value.get("sha256")
        known = digest and digest != "unknown"
        return [f"{value.get('path', '-')}{size}",
                f"sha256 {digest}" if known else f"sha256 unknown ({value.get('reason') or 'not recorded'})"]
    if key == "vcpus":
        return [f"{value.get('count', '?')} x {value.get('model', 'unknown model')}"]
    if key == "measurement":
        head = value.get("value") or f"unknown ({value.get('reason') or 'not recorded'})"
        details = [f"{name.replace('_', ' ')} {value[name]}" for name in ("vcpu_signature", "guest_features", "source")
                   if value.get(name)]
        return [head] + ([", ".join(details)] if details else [])
    return [", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items())]


def _size_text(size: str) -> str:
    n = int(size)
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _plain(value) -> str:
    """A value as a person reads it: lists joined, none as `-`, yes/no for booleans."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(_plain, value)) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    return str(value)
