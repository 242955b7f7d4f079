"""Issue 9 §8: `--json` prints valid UTF-8 whatever the file names are.

A name with bytes that are not UTF-8 reaches Python as lone surrogates; printed raw they made the
JSON document undecodable. Real files with such names, through the real CLI, decoded strictly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES, ROOT

NOT_UTF8 = b"\xe9\xff"


def run_json(*args: bytes | str, encoding: str | None = None) -> tuple[int, dict, bytes]:
    """Run the CLI; stdout must decode as strict UTF-8 and parse as exactly one JSON document."""
    env = {**os.environ, "LC_ALL": "C.UTF-8"}  # stdout then writes lone surrogates back as raw bytes
    if encoding:
        env["PYTHONIOENCODING"] = encoding
    proc = subprocess.run([sys.executable, "-m", "snpvirt", *args, "--json"], capture_output=True, cwd=ROOT,
                          env=env, timeout=60)
    text = proc.stdout.decode("utf-8")  # strict: raises on any invalid byte
    return proc.returncode, json.loads(text), proc.stderr


@pytest.fixture
def odd_spec(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), NOT_UTF8 + b".toml")
    shutil.copyfile(EXAMPLES / "web-01.toml", path)
    return path


def test_a_spec_named_with_bytes_that_are_not_utf8(odd_spec):
    code, doc, _ = run_json(b"render", odd_spec)
    assert code == 0 and doc["results"][0]["spec"].endswith("\ufffd\ufffd.toml")


def test_an_error_naming_such_a_file(odd_spec, tmp_path):
    with open(odd_spec, "wb") as handle:
        handle.write(b"vcpus = = 4\n")  # malformed TOML: the message names the file
    code, doc, stderr = run_json(b"render", odd_spec, b"-o", os.path.join(os.fsencode(tmp_path), NOT_UTF8 + b".xml"))
    assert code == 2 and doc["ok"] is False and "\ufffd\ufffd.toml" in doc["error"]["message"]
    assert b"Traceback" not in stderr


def test_validate_and_measure_name_such_files(tmp_path):
    folder = os.fsencode(tmp_path)
    xml = os.path.join(folder, NOT_UTF8 + b".xml")
    with open(xml, "wb") as handle:
        handle.write(b"<domain/>")
    code, doc, _ = run_json(b"validate", xml)
    assert code == 2 and doc["results"][0]["file"].endswith("\ufffd\ufffd.xml")
    code, doc, _ = run_json(b"measure", b"--firmware", os.path.join(folder, NOT_UTF8 + b".fd"), b"--vcpus", b"1",
                            b"--vcpu-type", b"EPYC-v4")
    assert code == 2 and "\ufffd\ufffd.fd" in doc["error"]["message"]


def test_utf8_even_when_the_locale_gives_stdout_another_encoding(tmp_path):
    spec = tmp_path / "café.toml"
    shutil.copyfile(EXAMPLES / "web-01.toml", spec)
    code, doc, _ = run_json("render", str(spec), encoding="latin-1")
    assert code == 0 and doc["results"][0]["spec"] == str(spec)
