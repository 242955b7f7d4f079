"""Benchmarks for scripts/bench: render+validate throughput and CLI cold start.

Targets:
  * >= 2,000 domains per second rendered from a parsed spec and fully validated (libvirt's RNG
    schema + SNP rules), in one process (issue 2);
  * `snpvirt --help` within 1.3x the time of `python -c 'import typer'`, measured in the same run (issue 2);
  * `snpvirt host check` well under 1 s: on a ready fake host (captured files + domcaps), and on this
    machine against a real libvirtd started for the benchmark (issue 3).
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
HOST_CHECK_TARGET_S = 1.0


def render_throughput(count: int, batches: int = 5) -> tuple[float, float]:
    """(domains/s from a parsed spec, domains/s from TOML text), each rendered and fully validated.

    Best of `batches` runs: the figure describes the code, not the neighbours on a shared 2-core machine.
    """
    import dataclasses

    from snpvirt import domxml, render, sevparams
    from snpvirt import spec as specs

    text = (ROOT / "examples" / "web-01.toml").read_text()
    base = specs.parse_spec(specs.load_spec_text(text))
    sev = sevparams.resolve(base, [])
    render.render(base, sev)  # warm up: compile the template, load the schema
    vms = [dataclasses.replace(base, name=f"web-{i:05d}") for i in range(count)]

    def from_spec() -> float:
        start = time.perf_counter()
        for vm in vms:
            result = render.render(vm, sev)  # Jinja2, then parse + libvirt RNG schema + SNP rules
        elapsed = time.perf_counter() - start
        assert result.name == vms[-1].name and not [f for f in domxml.check(result.xml) if f.severity == "error"]
        return count / elapsed

    def from_toml() -> float:
        start = time.perf_counter()
        for i in range(count):
            raw = specs.load_spec_text(text)
            raw["name"] = f"web-{i:05d}"
            vm = specs.parse_spec(raw)
            render.render(vm, sevparams.resolve(vm, []))
        return count / (time.perf_counter() - start)

    return max(from_spec() for _ in range(batches)), max(from_toml() for _ in range(batches))


def host_check_times(runs: int) -> list[tuple[str, float]]:
    """Median wall time of `snpvirt host check` (a real process) on a ready fake host and on a real daemon."""
    import tempfile

    from tests.integration.daemon import IsolatedLibvirtd, libvirtd_available
    from tests.unit.fakehost import FakeHost, genoa_domcaps

    snpvirt = [sys.executable, "-m", "snpvirt", "host", "check", "--json"]
    figures = []
    with tempfile.TemporaryDirectory(prefix="snpvirt-bench-") as tmp:
        fake = FakeHost(Path(tmp) / "genoa")
        argv = snpvirt + ["--sysroot", str(fake.root), "--host-caps", str(genoa_domcaps())]
        figures.append(("ready fake Genoa host", median_runtime(argv, runs, expect=0)))
        reason = libvirtd_available()
        if reason:
            print(f"  (no real-daemon figure: {reason})")
            return figures
        with IsolatedLibvirtd(Path(tmp) / "d") as daemon:
            argv = snpvirt + ["--connect", daemon.qemu_uri]
            median_runtime(argv, 1, expect=3)  # libvirtd probes QEMU once (several seconds) on first use
            figures.append(("this machine, real libvirtd (not ready)", median_runtime(argv, runs, expect=3)))
    return figures


def cold_starts(baseline: list[str], ours: list[str], runs: int) -> tuple[float, float]:
    """Fastest of `runs` for each, the two interleaved: a busy moment on the shared machine then hits
    both alike instead of one, and the minimum is the start-up cost itself rather than the noise."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(runs + 2):  # the first round warms the page cache
        for index, argv in enumerate((baseline, ours)):
            start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            times[index].append(time.perf_counter() - start)
    return min(times[0][2:]), min(times[1][2:])


def median_runtime(argv: list[str], runs: int, expect: int = 0) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.run(argv, stdout=subprocess.DEVNULL, cwd=ROOT).returncode
        times.append(time.perf_counter() - start)
        if code != expect:
            raise SystemExit(f"{' '.join(argv)} exited {code}, expected {expect}")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="domains to render per batch, best of 5 (default 2000)")
    parser.add_argument("--runs", type=int, default=21, help="cold starts to time, median taken (default 21)")
    args = parser.parse_args()
    failures = 0

    per_s, from_toml = render_throughput(args.count)
    ok = per_s >= RENDER_TARGET_PER_S
    failures += not ok
    print(f"render+validate: {per_s:,.0f} domains/s, best of 5 batches of {args.count} "
          f"(target >= {RENDER_TARGET_PER_S:,}/s) {'PASS' if ok else 'FAIL'}")
    print(f"  including TOML parsing and spec checks: {from_toml:,.0f} domains/s (no target; for reference)")

    python = sys.executable
    typer_s, help_s = cold_starts([python, "-c", "import typer"], [python, "-m", "snpvirt", "--help"], args.runs)
    ratio = help_s / typer_s
    ok = ratio <= COLD_START_TARGET_RATIO
    failures += not ok
    print(f"cold start (fastest of {args.runs}, interleaved): snpvirt --help {help_s * 1000:.1f} ms vs "
          f"python -c 'import typer' {typer_s * 1000:.1f} ms "
          f"= {ratio:.2f}x (target <= {COLD_START_TARGET_RATIO}x) {'PASS' if ok else 'FAIL'}")

    for label, seconds in host_check_times(max(5, args.runs // 4)):
        ok = seconds < HOST_CHECK_TARGET_S
        failures += not ok
        print(f"host check, {label}: {seconds * 1000:.0f} ms per run, a whole CLI process "
              f"(target < {HOST_CHECK_TARGET_S:.0f} s) {'PASS' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
