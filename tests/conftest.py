"""Shared test helpers: where the real test data lives, and running the real CLI."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = ROOT / "tests" / "golden"
VECTORS = ROOT / "tests" / "data"  # public test data shipped with the repository: see tests/data/README.md
GENOA_DOMCAPS = "libvirt/domaincaps/qemu_10.0.0-q35.x86_64+amdsev.xml"


def vector(relative: str) -> Path:
    """A file from tests/data/. The data ships with the repository, so a missing file is an error, never a skip."""
    path = VECTORS / relative
    if not path.is_file():
        raise FileNotFoundError(f"test data {relative} is missing from {VECTORS} (it ships with the repository: "
                                f"see tests/data/README.md)")
    return path


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> CliRun:
    """Run `python -m snpvirt` as a real subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "snpvirt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, input=stdin, timeout=60)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(run: CliRun, code: int, *fragments: str) -> None:
    """One `snpvirt: error:` line, a `hint:` line, the exit code, and no traceback."""
    assert run.code == code, (run.code, run.stdout, run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("snpvirt: error: ")]
    assert len(errors) == 1, run.stderr
    assert any(line.startswith("hint: ") for line in run.stderr.splitlines()), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
