"""One JSON envelope everywhere: every command with --json, on success and on failure, prints one document
that docs/envelope.schema.json accepts, with `error` exactly when `ok` is false and an exit code that goes
with the error's kind. `watch --json` is NDJSON: every line an event.

Real subprocesses of the CLI, against a real libvirtd's test driver (lifecycle), captured hosts and guests
(host check, guest check, guest report), a KDS stand-in on loopback and a closed loopback port (attest).
The command list comes from cli/app.py's table and its groups: a new command without a case here fails."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from snpvirt.cli import app as cli_app
from snpvirt.errors import ExitCode, exit_code_of
from tests.attest_factory import make_ca
from tests.conftest import EXAMPLES, GOLDEN, ROOT, run_cli, vector
from tests.unit.fakehost import FakeHost, genoa_domcaps
from tests.unit.test_output_for_people import captured_host
from tests.unit.attest.test_guest import FakeTsmKernel, guest_root
from tests.unit.attest.test_kds import MEASUREMENT, REPORT, serve, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.daemon
SCHEMA = json.loads((ROOT / "docs" / "envelope.schema.json").read_text())
WEB = EXAMPLES / "web-01.toml"
FIRMWARE = vector("measurement/ovmf/ovmf_AmdSev_suffix.bin")
ID_KEY = vector("measurement/idblock-virtee-sev/test_id_key.pem")
EVENT_KEYS = {"time", "uri", "domain", "uuid", "event", "detail"}
NUMERIC_KEYS = {"vcpus", "count", "size", "memory_mib", "network_requests"}  # counts and sizes: never text
WITHOUT_JSON = {("completion",)}  # prints a shell script: no --json option


def leaf_commands() -> set[tuple[str, ...]]:
    """Every runnable command path, from the command table and each group's sub-commands."""
    def walk(command, path):
        subs = getattr(command, "commands", None)
        if subs:
            return {leaf for name, sub in subs.items() for leaf in walk(sub, path + (name,))}
        return {path}
    return {leaf for name in cli_app.COMMANDS for leaf in walk(cli_app.load_command(name), (name,))}


def has_json_option(path: tuple[str, ...]) -> bool:
    command = cli_app.load_command(path[0])
    for name in path[1:]:
        command = command.commands[name]
    return any("--json" in getattr(p, "opts", ()) for p in command.params)


def closed_port() -> str:
    """A loopback URL nothing listens on: connections are refused at once (no network needed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the cases: (command path) -> {"ok": setup -> argv, "fail": setup -> (argv, expected exit code)} ------
# A setup gets a Ctx (the daemon's URI, a held connection, tmp_path, the KDS stand-in) and returns the argv.

class Ctx:
    def __init__(self, uri, conn, tmp_path, kds_url):
        self.uri, self.conn, self.tmp, self.kds_url = uri, conn, tmp_path, kds_url

    def define_web(self, start=False):
        assert run_cli("define", WEB, "-c", self.uri).code == 0
        if start:
            assert run_cli("start", "web-01", "-c", self.uri).code == 0
        return "web-01"

    def image_mirror(self, signed: bool = True) -> str:
        """A fake cloud-images mirror (tests/image_mirror.py) for `image pull`, stopped after the test; its
        volumes go to the daemon's QEMU driver (storage), and are removed after the test too."""
        from contextlib import ExitStack
        from tests import image_mirror

        stack = ExitStack()
        self.cleanups.append(stack.close)
        self.cleanups.append(lambda: _empty_pool(self.qemu_uri))
        key = stack.enter_context(image_mirror.signer())
        files = image_mirror.build_tree(self.tmp / "mirror", key)
        if not signed:
            (self.tmp / "mirror" / image_mirror.RELEASE / "SHA256SUMS.gpg").unlink()
        self.keyring = key.keyring
        return stack.enter_context(image_mirror.serve(self.tmp / "mirror", files)).url

    def image_pull(self, signed: bool = True) -> list:
        return ["image", "pull", "ubuntu:24.04", "-c", self.qemu_uri, "--mirror", self.image_mirror(signed),
                "--keyring", self.keyring]

    def pulled(self) -> str:
        assert run_cli(*self.image_pull(), env={"SNPVIRT_CACHE_DIR": str(self.tmp / "image-cache")}).code == 0
        return self.qemu_uri

    def verify_certs(self) -> Path:
        folder = self.tmp / "certs"
        folder.mkdir(exist_ok=True)
        (folder / "cert_chain.pem").write_bytes(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes())
        (folder / "vcek.der").write_bytes(vector("attestation/virtee-sev/vcek_milan.der").read_bytes())
        return folder


def _empty_pool(uri: str) -> None:
    import libvirt
    conn = libvirt.open(uri)
    try:
        pool = conn.storagePoolLookupByName("default")
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()


def _host_ready(c):
    return ["host", "check", "--sysroot", FakeHost(c.tmp / "host").root, "--host-caps", genoa_domcaps()]


def _guest_report(c):
    root = guest_root(c.tmp / "guest")
    c.kernel = FakeTsmKernel(root, make_ca()).__enter__()  # stopped by the test
    return ["guest", "report", "--sysroot", root, "--report-data", "ab" * 32, "-o", c.tmp / "report.bin"]


def _fleet(c, uri=None, applied=False, typo=False) -> Path:
    """A fleet of one host (the daemon, or `uri`) and one small domain; `applied`: applied once already."""
    (c.tmp / "vm.toml").write_text('name = "fleet-vm"\nmemory_mib = 256\nvcpus = 1\n'
                                   'firmware = "/usr/share/ovmf/OVMF.amdsev.fd"\n[snp]\ncbitpos = 51\nreduced_phys_bits = 1\n')
    path = c.tmp / "fleet.toml"
    path.write_text(f'[fleet]\nname = "envelope"\nconnect_timeout_s = 5\n{"colour = 1" if typo else ""}\n'
                    f'[[hosts]]\nname = "h1"\nuri = "{uri or c.uri}"\nsnp_guests = 4\n\n[[domains]]\nspec = "vm.toml"\n')
    if applied:
        assert run_cli("fleet", "apply", path).code == 0
    return path


def _stale_plan(c) -> list:
    path = _fleet(c)
    assert run_cli("fleet", "plan", path, "-o", c.tmp / "plan.json").code == 0
    assert run_cli("fleet", "apply", path).code == 0  # the hosts change after the plan was made
    return ["fleet", "apply", path, "--plan", c.tmp / "plan.json"]


CASES = {
    ("fleet", "check"): {"ok": lambda c: ["fleet", "check", _fleet(c)],
                         "fail": lambda c: (["fleet", "check", _fleet(c, typo=True)], ExitCode.BAD_INPUT)},
    ("fleet", "plan"): {"ok": lambda c: ["fleet", "plan", _fleet(c)],
                        "fail": lambda c: (["fleet", "plan", _fleet(c, f"test+unix:///default?socket={c.tmp}/absent")],
                                           ExitCode.PARTIAL)},
    ("fleet", "apply"): {"ok": lambda c: ["fleet", "apply", _fleet(c)],
                         "fail": lambda c: (_stale_plan(c), ExitCode.CONFLICT)},
    ("fleet", "list"): {"ok": lambda c: ["fleet", "list", _fleet(c, applied=True)],
                        "fail": lambda c: (["fleet", "list", _fleet(c, f"test+unix:///default?socket={c.tmp}/absent")],
                                           ExitCode.PARTIAL)},
    ("host", "show", "tcb"): {"ok": lambda c: ["host", "show", "tcb", "--sysroot", captured_host(c.tmp / "tcb")],
                              "fail": lambda c: (["host", "show", "tcb", "--sysroot", captured_host(c.tmp / "bare", psp=False)],
                                                 ExitCode.NOT_READY)},
    ("host", "check"): {"ok": _host_ready,
                        "fail": lambda c: (["host", "check", "--sysroot", c.tmp], ExitCode.NOT_READY)},
    ("guest", "check"): {"ok": lambda c: ["guest", "check", "--sysroot", guest_root(c.tmp / "guest")],
                         "fail": lambda c: (["guest", "check", "--sysroot", c.tmp], ExitCode.NOT_READY)},
    ("guest", "report"): {"ok": _guest_report,
                          "fail": lambda c: (["guest", "report", "--report-data", "zz", "-o", c.tmp / "r.bin"],
                                             ExitCode.BAD_INPUT)},
    ("attest", "show"): {"ok": lambda c: ["attest", "show", vector(REPORT)],
                         "fail": lambda c: (["attest", "show", c.tmp / "absent.bin"], ExitCode.BAD_INPUT)},
    ("attest", "verify"): {"ok": lambda c: ["attest", "verify", vector(REPORT), "--certs", c.verify_certs(),
                                            "--expected-measurement", MEASUREMENT, "--no-nonce"],
                           # KDS unreachable: a connection failure, as for fetch-certs
                           "fail": lambda c: (["attest", "verify", vector(REPORT), "--fetch", "--kds-url", closed_port(),
                                               "--product", "milan", "--no-nonce"], ExitCode.CONNECTION)},
    ("attest", "fetch-certs"): {"ok": lambda c: ["attest", "fetch-certs", vector(REPORT), "--product", "milan",
                                                 "--kds-url", c.kds_url, "-o", c.tmp / "fetched"],
                                "fail": lambda c: (["attest", "fetch-certs", vector(REPORT), "--product", "milan",
                                                    "--kds-url", closed_port(), "-o", c.tmp / "fetched"],
                                                   ExitCode.CONNECTION)},
    ("render",): {"ok": lambda c: ["render", WEB],
                  "fail": lambda c: (["render", "typo.toml"], ExitCode.BAD_INPUT)},
    ("validate",): {"ok": lambda c: ["validate", GOLDEN / "web-01.xml"],
                    "fail": lambda c: (["validate", c.tmp / "absent.xml"], ExitCode.BAD_INPUT)},
    ("apply",): {"ok": lambda c: ["apply", WEB, "-c", c.uri],
                 "fail": lambda c: (["apply", "typo.toml", "-c", c.uri], ExitCode.BAD_INPUT)},
    ("define",): {"ok": lambda c: ["define", WEB, "-c", c.uri],
                  "fail": lambda c: (["define", c.tmp / "absent.toml", "-c", c.uri], ExitCode.BAD_INPUT)},
    ("start",): {"ok": lambda c: ["start", c.define_web(), "-c", c.uri],
                 "fail": lambda c: (["start", "nosuch", "-c", c.uri], ExitCode.NOT_FOUND)},
    ("stop",): {"ok": lambda c: ["stop", c.define_web(start=True), "--timeout", "5", "--force", "-c", c.uri],
                "fail": lambda c: (["stop", "test", "-c", c.uri], ExitCode.CONFLICT)},  # another tool's domain
    ("destroy",): {"ok": lambda c: ["destroy", c.define_web(start=True), "-c", c.uri],
                   "fail": lambda c: (["destroy", "test", "-c", c.uri], ExitCode.CONFLICT)},
    ("undefine",): {"ok": lambda c: ["undefine", c.define_web(), "-c", c.uri],
                    "fail": lambda c: (["undefine", "test", "-c", c.uri], ExitCode.CONFLICT)},
    ("list",): {"ok": lambda c: ["list", "--all", "-c", c.uri, "--", c.define_web()][:4],  # web-01 defined first
                "fail": lambda c: (["list", "-c", f"test+unix:///default?socket={c.tmp}/absent"], ExitCode.CONNECTION)},
    ("status",): {"ok": lambda c: ["status", c.define_web(), "-c", c.uri],
                  "fail": lambda c: (["status", "nosuch", "-c", c.uri], ExitCode.NOT_FOUND)},
    ("import",): {"ok": lambda c: ["import", GOLDEN / "web-01.xml", "-c", c.uri],
                  "fail": lambda c: (["import", "nosuch", "-c", c.uri], ExitCode.NOT_FOUND)},
    ("measure",): {"ok": lambda c: ["measure", "--firmware", FIRMWARE, "--vcpus", "1", "--vcpu-type", "EPYC"],
                   "fail": lambda c: (["measure", "--vcpus", "1"], ExitCode.BAD_INPUT)},
    ("idblock",): {"ok": lambda c: ["idblock", "--measurement", "00" * 48, "--id-key", ID_KEY],
                   "fail": lambda c: (["idblock", "--measurement", "00" * 48], ExitCode.BAD_INPUT)},
    ("image", "pull"): {"ok": lambda c: c.image_pull(),
                        "fail": lambda c: (c.image_pull(signed=False), ExitCode.FAILURE)},  # an unsigned SHA256SUMS
    ("image", "list"): {"ok": lambda c: ["image", "list", "-c", c.pulled()],
                        "fail": lambda c: (["image", "list", "--pool", "absent", "-c", c.qemu_uri], ExitCode.NOT_FOUND)},
    ("watch",): "NDJSON",  # test_watch_json_is_one_event_per_line
}


def check_envelope(doc: dict, code: int) -> None:
    """The contract every --json document keeps (the schema, and what a schema cannot say)."""
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert doc["ok"] == (code == 0), f"ok {doc['ok']} with exit code {code}"
    if not doc["ok"]:
        kind = doc["error"]["kind"]
        batch = len(doc["results"]) > 1
        assert code == exit_code_of(kind) or (batch and code == ExitCode.PARTIAL), \
            f"exit {code} does not go with error kind {kind!r}"
    stringly = [(key, value) for key, value in _walk(doc) if key in NUMERIC_KEYS and isinstance(value, str)]
    assert not stringly, f"counts and sizes must be numbers: {stringly}"


def _walk(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def test_every_command_has_a_case():
    commands = leaf_commands()
    assert commands - WITHOUT_JSON == set(CASES), "a command was added or removed: give it a case here"
    assert all(has_json_option(path) for path in CASES) and not any(has_json_option(p) for p in WITHOUT_JSON)


@pytest.fixture
def ctx(libvirtd, held, tmp_path, server):  # noqa: F811
    context = Ctx(libvirtd.test_uri, held, tmp_path, server)
    context.kernel = None
    context.qemu_uri, context.cleanups = libvirtd.qemu_uri, []
    yield context
    if context.kernel is not None:
        context.kernel.__exit__(None, None, None)
    for cleanup in reversed(context.cleanups):
        cleanup()


def run_json(c: Ctx, argv: list) -> tuple[int, dict]:
    result = run_cli(*argv, "--json", env={"SNPVIRT_CACHE_DIR": str(c.tmp / "kds-cache"), "SNPVIRT_KDS_URL": None})
    assert "Traceback" not in result.stderr, result.stderr
    try:
        doc = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"{argv}: stdout is not one JSON document: {result.stdout!r} (stderr {result.stderr!r})")
    return result.code, doc


@pytest.mark.parametrize("path", [p for p, case in CASES.items() if case != "NDJSON"], ids=" ".join)
def test_success_is_an_envelope(path, ctx):
    code, doc = run_json(ctx, CASES[path]["ok"](ctx))
    assert code == 0, doc
    check_envelope(doc, code)
    assert doc["results"], "a success says what it did"


@pytest.mark.parametrize("path", [p for p, case in CASES.items() if case != "NDJSON"], ids=" ".join)
def test_failure_is_an_envelope_with_its_error(path, ctx):
    argv, expected = CASES[path]["fail"](ctx)
    code, doc = run_json(ctx, argv)
    assert code == expected, doc
    check_envelope(doc, code)


def test_an_error_before_the_command_runs_is_an_envelope_too(ctx):
    """Usage errors and errors raised before any result exists, with --json anywhere after the command
    (and after root options such as `-c URI`)."""
    for argv, expected in ((["start", "--no-such-option", "x", "--json"], ExitCode.BAD_INPUT),
                           (["render", "--json", "typo.toml"], ExitCode.BAD_INPUT),
                           (["-c", ctx.uri, "status", "--json", "nosuch"], ExitCode.NOT_FOUND),
                           (["--debug", "host", "check", "--json", "--sysroot", ctx.tmp / "absent"], ExitCode.BAD_INPUT)):
        result = run_cli(*argv)
        assert result.code == expected, result
        check_envelope(json.loads(result.stdout), result.code)


def test_attest_exit_codes_agree_on_an_unreachable_kds(ctx):
    """fetch-certs and verify --fetch: the same connection failure, the same exit 6; a batch exits 9
    with the failure's kind at the top."""
    url = closed_port()
    fetch = run_cli("attest", "fetch-certs", vector(REPORT), "--product", "milan", "--kds-url", url, "-o", ctx.tmp / "c")
    verify = run_cli("attest", "verify", vector(REPORT), "--fetch", "--kds-url", url, "--product", "milan", "--no-nonce",
                     env={"SNPVIRT_CACHE_DIR": str(ctx.tmp / "cache")})
    assert fetch.code == verify.code == ExitCode.CONNECTION, (fetch, verify)
    code, doc = run_json(ctx, ["attest", "verify", vector(REPORT), vector(REPORT), "--fetch", "--kds-url", url,
                               "--product", "milan", "--no-nonce"])
    assert code == ExitCode.PARTIAL and doc["error"]["kind"] == "connection"
    check_envelope(doc, code)


def test_watch_json_is_one_event_per_line(ctx):
    """NDJSON: each line an event with the same keys; a failure leaves stdout empty (the error is on stderr)."""
    watch = subprocess.Popen([sys.executable, "-m", "snpvirt", "watch", "--json", "--count", "2", "--timeout", "30",
                              "-c", ctx.uri], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while watch.poll() is None and time.monotonic() < deadline:  # until the watch has seen two events
            ctx.define_web()
            assert run_cli("undefine", "web-01", "-c", ctx.uri).code == 0
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(set(json.loads(line)) >= EVENT_KEYS for line in lines), out

    failed = run_cli("watch", "--json", "--timeout", "1", "-c", f"test+unix:///default?socket={ctx.tmp}/absent")
    assert failed.code == ExitCode.CONNECTION and failed.stdout == "" and "snpvirt: error:" in failed.stderr
