"""Benchmarks for scripts/bench: render+validate throughput and CLI cold start.

Targets (issue 2):
  * >= 2,000 domains per second rendered from a TOML spec and fully validated (libvirt's RNG
    schema + SNP rules), in one process;
  * `snpvirt --help` within 1.3x the time of `python -c 'import typer'`, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RENDER_TARGET_PER_S = 2000
COLD_START_TARGET_RATIO = 1.3


def render_throughput(count: int) -> tuple[float, float]:
    """(domains/s from a parsed spec, domains/s from TOML text), each rendered and fully validated."""
    import dataclasses

    from snpvirt import domxml, render, sevparams
    from snpvirt import spec as specs

    text = (ROOT / "examples" / "web-01.toml").read_text()
    base = specs.parse_spec(specs.load_spec_text(text))
    sev = sevparams.resolve(base, [])
    render.render(base, sev)  # warm up: compile the template, load the schema
    vms = [dataclasses.replace(base, name=f"web-{i:05d}") for i in range(count)]

    start = time.perf_counter()
    for vm in vms:
        result = render.render(vm, sev)  # Jinja2, then parse + libvirt RNG schema + SNP rules
    from_spec = count / (time.perf_counter() - start)
    assert result.name == vms[-1].name and not [f for f in domxml.check(result.xml) if f.severity == "error"]

    start = time.perf_counter()
    for i in range(count):
        raw = specs.load_spec_text(text)
        raw["name"] = f"web-{i:05d}"
        vm = specs.parse_spec(raw)
        render.render(vm, sevparams.resolve(vm, []))
    from_toml = count / (time.perf_counter() - start)
    return from_spec, from_toml


def median_runtime(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="domains to render (default 5000)")
    parser.add_argument("--runs", type=int, default=21, help="cold starts to time, median taken (default 21)")
    args = parser.parse_args()
    failures = 0

    per_s, from_toml = render_throughput(args.count)
    ok = per_s >= RENDER_TARGET_PER_S
    failures += not ok
    print(f"render+validate: {per_s:,.0f} domains/s over {args.count} "
          f"(target >= {RENDER_TARGET_PER_S:,}/s) {'PASS' if ok else 'FAIL'}")
    print(f"  including TOML parsing and spec checks: {from_toml:,.0f} domains/s (no target; for reference)")

    python = sys.executable
    # Interleave nothing fancy: warm the page cache once, then time both the same way.
    median_runtime([python, "-c", "import typer"], 2)
    median_runtime([python, "-m", "snpvirt", "--help"], 2)
    typer_s = median_runtime([python, "-c", "import typer"], args.runs)
    help_s = median_runtime([python, "-m", "snpvirt", "--help"], args.runs)
    ratio = help_s / typer_s
    ok = ratio <= COLD_START_TARGET_RATIO
    failures += not ok
    print(f"cold start: snpvirt --help {help_s * 1000:.1f} ms vs python -c 'import typer' {typer_s * 1000:.1f} ms "
          f"= {ratio:.2f}x (target <= {COLD_START_TARGET_RATIO}x) {'PASS' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
