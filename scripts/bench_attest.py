"""Attestation benchmark for scripts/bench (issue 6): `attest verify` of 1,000 reports in one process,
certificates cached (read once; each chain link checked once): target >= 500 reports/s.
Reports are signed by a test CA (tests/attest_factory.py), as no hardware is here.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_PER_S = 500
COUNT = 1000


def main() -> int:
    from tests.attest_factory import make_ca

    ca = make_ca()
    with tempfile.TemporaryDirectory(prefix="snpvirt-bench-attest-") as tmp:
        tmp = Path(tmp)
        paths = ca.write(tmp / "ca")
        reports = []
        measurement = bytes(range(48))
        for i in range(COUNT):
            path = tmp / f"r{i:04d}.bin"
            path.write_bytes(ca.report(measurement, report_data=i.to_bytes(64, "little")))
            reports.append(str(path))
        argv = [sys.executable, "-m", "snpvirt", "attest", "verify", "--certs", str(tmp / "ca"), "--trust-root",
                str(paths["ark"]), "--product", "milan", "--now", "2025-06-01T00:00:00Z",
                "--expected-measurement", measurement.hex(), "--no-nonce", "--json"]

        def timed(files: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(argv + files, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            return time.perf_counter() - start

        one = min(timed(reports[:1]) for _ in range(3))
        many = timed(reports)
        per_s = (COUNT - 1) / (many - one)
        ok = per_s >= TARGET_PER_S
        print(f"attest verify: {per_s:,.0f} reports/s over {COUNT} in one process, start-up taken out "
              f"({many * 1000:.0f} ms whole, {one * 1000:.0f} ms for one) (target >= {TARGET_PER_S}/s) "
              f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
