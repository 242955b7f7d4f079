"""`list`, `status` and apply results as people read them, through the real CLI: against libvirt's test driver in
the CLI's own process (its `test` domain is one snpvirt does not manage) and a real libvirtd's, whose state
outlives one command."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, ROOT, CliRun, assert_clean_error, run_cli, vector
from tests.integration.test_measurement_recorded import files, spec_file  # noqa: F401 (a fixture)

WEB = EXAMPLES / "web-01.toml"
ELLIPSIS = "\u2026"


def test_a_name_held_by_another_domain_is_a_conflict_not_invalid(tmp_path):
    taken = tmp_path / "test.toml"
    taken.write_text(re.sub(r'(?m)^name = .*$', 'name = "test"', WEB.read_text()))  # test:///default's own domain
    result = run_cli("apply", taken, "-c", "test:///default", "--json")
    item = json.loads(result.stdout)["results"][0]
    assert result.code == ExitCode.CONFLICT and item["action"] == "conflict" and item["error"]["kind"] == "conflict"
    human = run_cli("apply", taken, WEB, "-c", "test:///default")
    assert human.code == ExitCode.PARTIAL
    assert re.search(r"(?m)^test\s+conflict\s", human.stdout) and re.search(r"(?m)^web-01\s+create\s", human.stdout)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nvcpus = "four"\n')
    assert json.loads(run_cli("apply", bad, "-c", "test:///default", "--json").stdout)["results"][0]["action"] == "invalid"


def test_list_says_what_it_hides_and_unmanaged_shows_it_marked():
    hidden = run_cli("list", "-c", "test:///default")
    assert hidden.code == 0 and "test" not in hidden.stdout.split()
    assert hidden.stderr.strip() == "1 domain not managed by snpvirt is hidden; --unmanaged shows them"
    doc = json.loads(run_cli("list", "-c", "test:///default", "--json").stdout)
    assert doc["results"] == [] and doc["unmanaged_hidden"] == 1
    shown = run_cli("list", "--unmanaged", "-c", "test:///default")
    assert shown.stderr == "" and shown.stdout.splitlines()[0].split()[:3] == ["NAME", "MANAGED", "STATE"]
    assert re.search(r"(?m)^test\s+no\s+running\s", shown.stdout)
    row = json.loads(run_cli("list", "--unmanaged", "-c", "test:///default", "--json").stdout)["results"][0]
    assert row["name"] == "test" and row["managed"] is False and row["expected_measurement"] is None


def run_on_terminal(*args: str, columns: int, env: dict[str, str] | None = None) -> CliRun:
    """The CLI with its stdout on a pseudo-terminal `columns` wide, as in a person's terminal window."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | (env or {})
    proc = subprocess.Popen([sys.executable, "-m", "snpvirt", *map(str, args)], stdout=slave, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=ROOT, env=environment)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(master)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=10)
    return CliRun(code, b"".join(chunks).decode().replace("\r\n", "\n"), stderr)


@pytest.mark.daemon
def test_list_fits_the_terminal_and_wide_shows_everything(libvirtd, held, files, tmp_path):  # noqa: F811
    uri = libvirtd.test_uri
    assert run_cli("apply", spec_file(tmp_path, "fit-01", files), "-c", uri).code == 0
    measurement = json.loads(run_cli("list", "-c", uri, "--json").stdout)["results"][0]["expected_measurement"]
    assert len(measurement) == 96

    # A pipe gets whole lines, whatever COLUMNS says (readline exports it into programs' environments).
    piped = run_cli("list", "-c", uri, env={"COLUMNS": "40"})
    assert measurement[:12] + ELLIPSIS in piped.stdout and measurement not in piped.stdout
    assert "UUID" not in piped.stdout and "KERNEL_HASHES" in piped.stdout and "MEMORY_MIB" in piped.stdout

    narrow = run_on_terminal("list", "-c", uri, columns=80)
    assert narrow.code == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
    assert narrow.stdout.split()[:2] == ["NAME", "STATE"] and "KERNEL_HASHES" not in narrow.stdout
    assert measurement[:12] + ELLIPSIS in narrow.stdout
    roomy = run_on_terminal("list", "-c", uri, columns=200)
    assert "KERNEL_HASHES" in roomy.stdout and "UUID" not in roomy.stdout  # room, but the UUID needs --wide
    told = run_on_terminal("list", "-c", uri, columns=200, env={"COLUMNS": "60"})  # COLUMNS wins on a terminal
    assert max(len(line) for line in told.stdout.splitlines()) <= 60 and "MEMORY_MIB" not in told.stdout

    wide = run_on_terminal("list", "--wide", "-c", uri, columns=80)
    uuid = held.lookupByName("fit-01").UUIDString()
    assert measurement in wide.stdout and uuid in wide.stdout and "KERNEL_HASHES" in wide.stdout
    assert wide.stderr.strip() == "1 domain not managed by snpvirt is hidden; --unmanaged shows them"


@pytest.mark.daemon
def test_status_prints_launch_inputs_as_lines(libvirtd, held, files, tmp_path):  # noqa: F811
    uri = libvirtd.test_uri
    path = spec_file(tmp_path, "lines-01", files, id_key=vector("measurement/idblock-virtee-sev/test_id_key.pem"))
    assert run_cli("apply", path, "-c", uri).code == 0
    doc = json.loads(run_cli("status", "lines-01", "-c", uri, "--json").stdout)["results"][0]
    launch = doc["launch"]
    text = run_cli("status", "lines-01", "-c", uri).stdout
    assert "{" not in text and "None" not in text, text  # no raw JSON, no Python
    lines = text.splitlines()
    firmware = lines.index(next(line for line in lines if line.startswith("  firmware:")))
    assert lines[firmware].split()[1] == files["firmware"]
    assert lines[firmware + 1].split() == ["sha256", launch["firmware"]["sha256"]]
    assert re.search(rf"(?m)^  vcpus:\s+4 x EPYC-Genoa$", text)
    assert re.search(rf"(?m)^  measurement:\s+{launch['measurement']['value']}$", text)
    # The ID key digest in hex, as attest show prints a report's; the metadata keeps its base64.
    digest = launch["id_block"]["id_key_digest"]
    stored = held.lookupByName("lines-01").XMLDesc(0)
    assert len(digest) == 96 and base64.b64encode(bytes.fromhex(digest)).decode() in stored
    assert f"id key digest {digest}" in text
    assert re.search(r"(?m)^  snp\.cbitpos:\s+51$", text) and re.search(r"(?m)^  boot\.cmdline:\s+console=ttyS0", text)


@pytest.mark.daemon
def test_host_show_tcb_through_a_qemu_driver_without_sev_says_so(libvirtd, tmp_path):
    empty = tmp_path / "host"
    empty.mkdir()  # a captured host with nothing: only libvirt could answer
    result = run_cli("host", "show", "tcb", "--sysroot", empty, "-c", libvirtd.qemu_uri)
    assert_clean_error(result, ExitCode.NOT_READY, "no SEV firmware information")
    assert "gives no SEV information" in result.stdout and "-c URI" not in result.stderr
    doc = json.loads(run_cli("host", "show", "tcb", "--sysroot", empty, "-c", libvirtd.qemu_uri, "--json").stdout)
    assert doc["error"]["kind"] == "not_ready" and doc["results"][0]["libvirt"] is None
