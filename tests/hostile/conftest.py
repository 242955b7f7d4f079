"""The hostile-input tier: its Hypothesis profile, its marker, and special files to feed the CLI."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.hostile.contract import Run, run_in_process, run_subprocess

# deadline=None: one example is a whole CLI run (and the first one imports lxml, libvirt, ...);
# bounded examples keep the tier within about a minute and a half on two busy cores. More, locally:
# SNPVIRT_HOSTILE_EXAMPLES=2000 pytest -m hostile
settings.register_profile(
    "hostile",
    deadline=None,
    max_examples=int(os.environ.get("SNPVIRT_HOSTILE_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.hostile)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """One folder for the whole tier (Hypothesis examples cannot use function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("hostile")


# Special files every file-taking option is tried with. Each maker returns the path to give.
SPECIAL_INPUTS = ("fifo", "dev-zero", "link-to-dev-zero", "directory", "symlink-loop", "dangling-link",
                  "huge-sparse", "empty")
# Those an unbounded read blocks on or reads forever: only ever given to a real, killable process.
MAY_HANG = {"fifo", "dev-zero", "link-to-dev-zero", "huge-sparse"}


def run_with_special(kind: str, *args, **kwargs) -> Run:
    """A real process for inputs that may hang, the cheaper in-process run for the others."""
    return run_subprocess(*args, **kwargs) if kind in MAY_HANG else run_in_process(*args)


def make_special(kind: str, folder: Path, name: str = "input") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        return Path("/dev/zero")
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-loop":
        path.symlink_to(path.with_name(path.name + "-other"))
        path.with_name(path.name + "-other").symlink_to(path)
    elif kind == "dangling-link":
        path.symlink_to(folder / "nowhere")
    elif kind == "huge-sparse":
        with open(path, "wb") as handle:
            handle.truncate(6 << 30)  # 6 GiB of holes: costs no disk, but reading it whole costs 6 GiB of memory
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(kind)
    return path


# Output targets a failed or refused run must leave exactly as they were.
SPECIAL_OUTPUTS = ("regular", "regular-not-utf8", "fifo", "char-device", "link-to-char-device", "link-to-regular", "directory")


def make_output(kind: str, folder: Path) -> Path:
    """A private device node (never the machine's /dev/full: a buggy writer would replace it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"out-{kind}"
    if kind == "regular":
        path.write_bytes(b"precious <domain/>\n")
    elif kind == "regular-not-utf8":
        path.write_bytes(b"precious \xe9\xff not UTF-8\n")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind in ("char-device", "link-to-char-device"):
        device = folder / "full-device"
        if not device.exists():
            try:
                os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
            except PermissionError:
                pytest.skip("creating a device node needs root")
        if kind == "char-device":
            return device
        path.symlink_to(device)
    elif kind == "link-to-regular":
        target = folder / "link-target.xml"
        target.write_bytes(b"precious target\n")
        path.symlink_to(target)
    elif kind == "directory":
        path.mkdir()
    else:
        raise ValueError(kind)
    return path
