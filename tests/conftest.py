"""Shared test helpers: where the real test data lives, and running the real CLI."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def unreadable_even_for_root() -> str:
    """A file that opening to read fails on with EACCES, root included (write-only for everyone); the
    test skips where this machine has no such file. A permission-denied read as root needs one."""
    path = "/sys/bus/pci/rescan"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        pytest.skip(f"{path} opens here")
    except PermissionError:
        pass
    except OSError:
        pytest.skip(f"no {path} here")
    return path


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory):
    """Per-machine state of snpvirt (the fleet apply lock under $XDG_RUNTIME_DIR/snpvirt) lives in this test
    run's own folder: two test runs on one machine, or a real `fleet apply` beside them, never meet."""
    folder = tmp_path_factory.mktemp("xdg-runtime")
    folder.chmod(0o700)
    previous = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = previous


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, stdin: str | None = None, bare: bool = False,
            env: dict[str, str] | None = None) -> CliRun:
    """Run `python -m snpvirt` as a real subprocess, as a user would.

    bare: as on a machine without the examples' launch files, which is what the goldens record.
    env: variables set (or, with None values, removed) for this run only."""
    argv = [sys.executable, "-m", "snpvirt", *map(str, args)]
    environment = None
    if env is not None or cwd is not None:
        # Outside the checkout, `python -m snpvirt` must still import this checkout's snpvirt.
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        environment = {k: v for k, v in {**os.environ, "PYTHONPATH": pythonpath, **(env or {})}.items() if v is not None}
    proc = subprocess.run(without_example_launch_files(argv) if bare else argv, capture_output=True, text=True,
                          cwd=cwd or ROOT, input=stdin, timeout=60, env=environment)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def example_launch_files() -> list[str]:
    """Firmware, kernel and initrd paths the examples name (the goldens record them as not found)."""
    paths = []
    for example in sorted(EXAMPLES.glob("*.toml")):
        raw = tomllib.loads(example.read_text())
        boot = raw.get("boot", {})
        # a table names a pool volume (examples/ubuntu-cloud.toml), not a file of this machine
        paths += [p for p in (raw.get("firmware"), boot.get("kernel"), boot.get("initrd")) if isinstance(p, str)]
    return paths


# Runs inside a private mount namespace: an empty tmpfs over each folder given before "--", then the command.
_HIDE_AND_RUN = """\
set -eu
while [ "$1" != "--" ]; do mount -t tmpfs -o mode=0755,size=64k snpvirt-bare-machine "$1"; shift; done
shift
exec "$@"
"""


def without_example_launch_files(argv: list[str]) -> list[str]:
    """`argv` as it runs on a machine without the examples' launch files, whatever this machine has.

    Goldens are renders on such a machine ("not found on this machine"); where a file exists here (an
    SNP host with /usr/share/ovmf/OVMF.amdsev.fd), its folder is hidden in a private mount namespace."""
    present = sorted({str(Path(p).parent) for p in example_launch_files() if os.path.lexists(p)})
    if not present:
        return argv
    prefix = _private_mount_namespace()
    if prefix is None:
        pytest.fail(f"{', '.join(present)} exist on this machine and no private mount namespace can hide them "
                    "(needs root or unprivileged user namespaces): the golden renders cannot run as on a bare machine")
    return [*prefix, "sh", "-c", _HIDE_AND_RUN, "sh", *present, "--", *argv]


@functools.cache
def _private_mount_namespace() -> tuple[str, ...] | None:
    """The unshare command that gives a private mount namespace here (as root, or in a user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    prefix = (unshare, *user, "--mount", "--propagation", "private", "--")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix if probe.returncode == 0 else None


def assert_clean_error(run: CliRun, code: int, *fragments: str) -> None:
    """One `snpvirt: error:` line, a `hint:` line, the exit code, and no traceback."""
    assert run.code == code, (run.code, run.stdout, run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("snpvirt: error: ")]
    assert len(errors) == 1, run.stderr
    assert any(line.startswith("hint: ") for line in run.stderr.splitlines()), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
