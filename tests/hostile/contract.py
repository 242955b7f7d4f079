"""The contract every snpvirt run keeps, whatever its input, and the two ways the tier runs the CLI.

A run keeps the contract when: it ends within a few seconds; no traceback and no "internal error"
(an unexpected exception, which the top-level handler turns into one line); the exit code is one
DESIGN.md documents; stderr holds only `snpvirt: error:`/`snpvirt: warning:` lines each followed by
its `hint:` line (exactly one error for bad input); with `--json`, stdout is exactly one strict UTF-8
JSON document with the envelope's keys, and `error{kind, message, hint}` when `ok` is false.

In-process runs (`run_in_process`) go through the same `snpvirt.cli.app.run` as `python -m snpvirt`,
inside typer's CliRunner isolation (bytes on stdout/stderr), with a SIGALRM deadline: cheap enough for
Hypothesis to call hundreds of times. Real subprocesses (`run_subprocess`) are for what can hang or
eat memory (FIFOs, /dev/zero, huge files): a hard timeout and an address-space limit, so a bug fails
the test instead of hanging CI or exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import event
from hypothesis.control import currently_in_test_context
from typer.testing import CliRunner

from snpvirt.cli.app import run
from tests.conftest import ROOT

EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 9}  # DESIGN.md "Exit codes"
SUBPROCESS_TIMEOUT_S = 10
IN_PROCESS_DEADLINE_S = 10  # as long as a subprocess gets: a busy CI machine is not a hang
ADDRESS_SPACE_LIMIT = 1 << 30  # a real run needs ~100 MiB; reading /dev/zero whole dies here, quickly
ENVELOPE_KEYS = {"ok", "changed", "results"}
ERROR_KEYS = {"kind", "message", "hint"}
STDERR_PREFIXES = ("snpvirt: error: ", "snpvirt: warning: ", "hint: ")


@dataclass
class Run:
    argv: tuple[str, ...]
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def json_mode(self) -> bool:
        return "--json" in self.argv

    def describe(self) -> str:
        shown = " ".join(a if len(a) <= 80 else a[:77] + "..." for a in self.argv)
        return f"snpvirt {shown}\nexit {self.code}\nstdout: {self.stdout[:1500]!r}\nstderr: {self.stderr[:1500]!r}"


class Hung(BaseException):
    """Raised by the in-process deadline. Not an Exception: snpvirt's handler must not swallow it."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_in_process(*args: str | os.PathLike, deadline_s: float = IN_PROCESS_DEADLINE_S, env: dict | None = None) -> Run:
    """`snpvirt ARGS` through the real entry point, in this process (CliRunner's isolated streams)."""
    argv = tuple(os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args)
    with CliRunner().isolation(env=env) as (stdout, stderr, _):
        try:
            with _deadline(deadline_s):
                code = run(list(argv))
        except Hung as hung:
            pytest.fail(f"hang: snpvirt {' '.join(argv)[:300]}: {hung}")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return Run(argv, code, stdout.getvalue(), stderr.getvalue())


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_subprocess(*args: str | os.PathLike | bytes, cwd: Path | None = None, env: dict | None = None,
                   timeout_s: float = SUBPROCESS_TIMEOUT_S) -> Run:
    """`python -m snpvirt ARGS` as a real process, killed (and the test failed) after `timeout_s`."""
    argv = [os.fsencode(a) if isinstance(a, os.PathLike) else a for a in args]
    full_env = {**os.environ, "SNPVIRT_CACHE_DIR": os.environ.get("SNPVIRT_CACHE_DIR", "/nonexistent-snpvirt-cache"),
                **(env or {})}
    try:
        proc = subprocess.run([sys.executable, "-m", "snpvirt", *argv], capture_output=True, cwd=cwd or ROOT,
                              env=full_env, stdin=subprocess.DEVNULL, timeout=timeout_s, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: snpvirt {' '.join(map(os.fsdecode, argv))[:300]} did not end within {timeout_s} s")
    shown = tuple(os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv)
    return Run(shown, proc.returncode, proc.stdout, proc.stderr)


def assert_contract(result: Run) -> dict | None:
    """Check everything a run promises whatever its input; return the JSON document (with --json)."""
    if currently_in_test_context():
        event(f"exit {result.code}")  # --hypothesis-show-statistics: how many examples got how far
    context = result.describe()
    stderr = result.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in result.stderr + result.stdout, context
    assert "internal error" not in stderr, context
    assert result.code in EXIT_CODES, context
    _assert_stderr_lines(stderr, result.code, result.json_mode, context)
    if result.json_mode:
        return assert_one_json_document(result)
    return None


def _assert_stderr_lines(stderr: str, code: int, json_mode: bool, context: str) -> None:
    lines = stderr.splitlines()
    assert all(line.startswith(STDERR_PREFIXES) for line in lines), context
    for i, line in enumerate(lines):
        if line.startswith(("snpvirt: error: ", "snpvirt: warning: ")):
            assert i + 1 < len(lines) and lines[i + 1].startswith("hint: "), context
    errors = [line for line in lines if line.startswith("snpvirt: error: ")]
    if code == 2:
        # Bad input: exactly one error line (with --json the document carries it; stderr may repeat it).
        assert len(errors) <= 1 if json_mode else len(errors) == 1, context
    if code == 0:
        assert not errors, context


def assert_one_json_document(result: Run) -> dict:
    context = result.describe()
    try:
        text = result.stdout.decode("utf-8")  # strict: a surrogate-escaped file name must not leak out
    except UnicodeDecodeError as exc:
        pytest.fail(f"--json output is not UTF-8 ({exc})\n{context}")
    try:
        doc = json.loads(text)  # one document: trailing data is an error
    except ValueError as exc:
        pytest.fail(f"--json output is not one JSON document ({exc})\n{context}")
    assert isinstance(doc, dict) and ENVELOPE_KEYS <= doc.keys(), context
    assert isinstance(doc["ok"], bool) and isinstance(doc["changed"], bool) and isinstance(doc["results"], list), context
    assert doc["ok"] == (result.code == 0), context
    if not doc["ok"]:
        error = doc.get("error")
        assert isinstance(error, dict) and ERROR_KEYS <= error.keys(), context
        assert all(isinstance(error[k], str) and error[k] for k in ERROR_KEYS), context
    return doc


# --- "nothing half-written" ------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """An output target as it was: kind, inode, bytes; and what else its folder held."""

    path: Path
    lstat: tuple | None
    content: bytes | None
    folder: frozenset[str]

    @classmethod
    def of(cls, path: Path) -> Snapshot:
        try:
            st = os.lstat(path)
            key = (stat.S_IFMT(st.st_mode), st.st_ino, st.st_mode, st.st_size)
        except FileNotFoundError:
            st, key = None, None
        content = path.read_bytes() if st is not None and stat.S_ISREG(st.st_mode) else None
        folder = frozenset(os.listdir(path.parent)) if path.parent.is_dir() else frozenset()
        return cls(path, key, content, folder)

    def assert_unchanged(self, result: Run) -> None:
        after = Snapshot.of(self.path)
        context = result.describe()
        assert after.lstat == self.lstat, f"{self.path} was replaced or changed kind\n{context}"
        assert after.content == self.content, f"{self.path} changed on a failed run\n{context}"
        assert after.folder == self.folder, f"left behind beside {self.path}: {sorted(after.folder ^ self.folder)}\n{context}"
