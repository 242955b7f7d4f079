"""The README's walkthrough works as written: every shell block marked runnable (an HTML comment
`<!-- runnable -->` on the line before its ```sh fence) runs, in order, in one temporary folder, and each
command exits 0 or with the codes its trailing `# exit N or M` comment documents.

The folder holds a link to examples/ (the walkthrough's "from the checkout"), `snpvirt` on PATH runs this
checkout, and LIBVIRT_DEFAULT_URI is libvirt's in-process test driver: a fresh simulated hypervisor per
command, so no block can touch a real libvirt daemon of this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
MARKER = "<!-- runnable -->"
EXIT_COMMENT = re.compile(r"#\s*exit (\d+(?: or \d+)*)")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?\s*$")


@dataclass(frozen=True)
class Command:
    line: int  # in README.md, for the failure message
    text: str
    codes: frozenset[int]


def runnable_blocks(text: str) -> list[list[Command]]:
    """The commands of each marked block, dedented to the fence's indentation (blocks inside list items)."""
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[number + 1]
        assert fence.strip() == "```sh", f"README.md:{number + 1}: {MARKER} must come right before a ```sh fence"
        indent = len(fence) - len(fence.lstrip())
        body, first = [], number + 2
        for inner in lines[first:]:
            if inner.strip() == "```":
                break
            body.append(inner[indent:] if inner[:indent].strip() == "" else inner)
        blocks.append(commands(body, first + 1))
    return blocks


def commands(body: list[str], first_line: int) -> list[Command]:
    """Split a block into commands: one per line, with backslash continuations and heredocs kept whole."""
    found, index = [], 0
    while index < len(body):
        start, line = index, body[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        while parts[-1].endswith("\\") and index < len(body):
            parts.append(body[index])
            index += 1
        heredoc = HEREDOC.search(parts[-1])
        if heredoc:
            while index < len(body):
                parts.append(body[index])
                index += 1
                if parts[-1] == heredoc.group(1):
                    break
        documented = EXIT_COMMENT.search(parts[0])
        codes = frozenset(int(c) for c in re.findall(r"\d+", documented.group(1))) if documented else frozenset({0})
        found.append(Command(first_line + start, "\n".join(parts), codes))
    return found


@pytest.fixture
def walkthrough_dir(tmp_path):
    """A folder like a reader's, with `snpvirt` on PATH running this checkout."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    bindir = tmp_path / ".bin"
    bindir.mkdir()
    shim = bindir / "snpvirt"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m snpvirt "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("_SNPVIRT")}
    env.update(PATH=f"{bindir}:{env['PATH']}", LIBVIRT_DEFAULT_URI="test:///default", HOME=str(tmp_path))
    return tmp_path, env


def test_the_readme_has_runnable_blocks_for_the_walkthrough_and_the_no_hardware_path():
    blocks = runnable_blocks(README.read_text())
    texts = [c.text for block in blocks for c in block]
    assert len(blocks) >= 4
    assert texts[0].startswith("cat > web-01.toml <<'EOF'") and texts[0].endswith("\nEOF")
    assert any("--sysroot examples/captured-host" in t for t in texts)
    assert any(c.codes == {3} for block in blocks for c in block), "the refusal the README shows is checked too"


def test_every_runnable_readme_command_exits_as_documented(walkthrough_dir):
    folder, env = walkthrough_dir
    for block in runnable_blocks(README.read_text()):
        for command in block:
            done = subprocess.run(["bash", "-c", command.text], cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode in command.codes, (
                f"README.md:{command.line}: `{command.text}` exited {done.returncode}, the README documents "
                f"{sorted(command.codes)}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
            assert "Traceback" not in done.stderr, command.text


CAPTURED = ROOT / "examples" / "captured-host"


@pytest.mark.parametrize("copy,source", [
    ("domcaps.xml", "libvirt/domaincaps/qemu_10.0.0-q35.x86_64+amdsev.xml"),
    ("usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json", "libvirt/firmware/60-edk2-ovmf-x64-amdsev.json"),
    ("usr/share/edk2/ovmf/OVMF.amdsev.fd", "measurement/ovmf/ovmf_AmdSev_suffix.bin"),
])
def test_the_captured_host_example_is_the_public_test_data(copy, source):
    """examples/captured-host/README.md says where each file comes from: the copies stay byte-identical."""
    from tests.conftest import vector
    assert (CAPTURED / copy).read_bytes() == vector(source).read_bytes()
