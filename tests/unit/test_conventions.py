"""Conventions people bring from virsh, git and Ansible (issue 11 §4), through the real CLI in subprocesses:
one name per option across commands, global options before or after the command, --set wherever a spec
is read, shell completion, and one table of CPU models for the spec and for `measure`."""

from __future__ import annotations

import json

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, assert_clean_error, run_cli
from tests.unit.fakehost import FakeHost, genoa_domcaps

WEB = EXAMPLES / "web-01.toml"


@pytest.fixture(scope="module")
def ready_host(tmp_path_factory):
    return FakeHost(tmp_path_factory.mktemp("captured") / "ready").root


# --- one name for the saved capabilities file -------------------------------------------------------

# start takes --host-caps too, hidden: only with --sysroot, for a captured host (tests/integration/test_gate_cli.py).
@pytest.mark.parametrize("command", [("render",), ("apply",), ("define",), ("import",), ("host", "check")])
def test_every_command_that_reads_saved_capabilities_calls_the_option_host_caps(command):
    shown = run_cli(*command, "--help")
    assert shown.code == 0 and "--host-caps" in shown.stdout, command
    assert "--domcaps" not in shown.stdout, "the old name stays a hidden alias"


def test_host_check_reads_host_caps_and_still_the_old_domcaps(ready_host):
    for option in ("--host-caps", "--domcaps"):
        result = run_cli("host", "check", "--sysroot", ready_host, option, genoa_domcaps(), "--json")
        doc = json.loads(result.stdout)
        assert result.code == 0 and doc["ready"] is True, (option, result.stderr)
        assert doc["host"]["sysroot"] == str(ready_host)


def test_host_check_refuses_both_names_at_once(ready_host):
    result = run_cli("host", "check", "--sysroot", ready_host, "--host-caps", genoa_domcaps(), "--domcaps", genoa_domcaps())
    assert_clean_error(result, ExitCode.BAD_INPUT, "--domcaps is the old name of --host-caps")


# --- global options before or after the command, as virsh and git users type them ---------------------

def test_no_arguments_prints_the_help_and_exits_0():
    for args in ((), ("host",), ("attest",)):
        result = run_cli(*args)
        assert result.code == 0 and result.stderr == "", (args, result.stderr)
        assert result.stdout.startswith(f"Usage: snpvirt {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND"), result.stdout


@pytest.mark.parametrize("args", [
    ("-c", "test:///default", "host", "check", "--json"),          # virsh -c URI COMMAND
    ("--connect", "test:///default", "host", "check", "--json"),
    ("host", "check", "-c", "test:///default", "--json"),          # COMMAND ... -c URI
    ("-c", "bogus:///nowhere", "host", "check", "--connect", "test:///default", "--json"),  # the command's own wins
])
def test_connect_before_or_after_the_command(args):
    result = run_cli(*args)
    assert json.loads(result.stdout)["host"]["uri"] == "test:///default", result.stderr


def test_connect_before_the_command_reaches_every_command_that_connects():
    listed = run_cli("-c", "test:///default", "list", "--json")
    assert listed.code == 0 and json.loads(listed.stdout)["ok"] is True, listed.stderr
    refused = run_cli("-c", "bogus:///nowhere", "status", "web-01")  # proof the root's URI was the one used
    assert_clean_error(refused, ExitCode.CONNECTION, "bogus:///nowhere")


def test_connect_before_a_command_that_never_connects_is_accepted():
    assert run_cli("-c", "test:///default", "validate", EXAMPLES.parent / "tests/golden/web-01.xml").code == 0


@pytest.mark.parametrize("args", [("--debug", "render", WEB), ("render", WEB, "--debug"),
                                  ("host", "check", "--debug", "--sysroot", "/nonexistent"),
                                  ("--debug", "host", "check", "--sysroot", "/nonexistent")])
def test_debug_before_or_after_the_command(args):
    result = run_cli(*args)
    assert "No such option" not in result.stderr
    assert result.code == (ExitCode.BAD_INPUT if "/nonexistent" in args else 0), result.stderr


def test_render_asks_the_host_named_by_libvirt_default_uri_like_the_lifecycle_commands():
    db = EXAMPLES / "db-01.toml"  # no cbitpos in the spec: render must ask a host or refuse to guess
    unset = run_cli("render", db, env={"LIBVIRT_DEFAULT_URI": None})
    assert_clean_error(unset, ExitCode.BAD_INPUT, "snp.cbitpos is not known")
    # The test driver was asked (its capabilities offer no SEV): the environment named the host, as for virsh.
    from_env = run_cli("render", db, env={"LIBVIRT_DEFAULT_URI": "test:///default"})
    assert_clean_error(from_env, ExitCode.NOT_READY, "host test:///default")
    from_root = run_cli("-c", "test:///default", "render", db, env={"LIBVIRT_DEFAULT_URI": None})
    assert_clean_error(from_root, ExitCode.NOT_READY, "host test:///default")
    # A spec that has its host facts never connects, whatever the environment says.
    assert run_cli("render", WEB, env={"LIBVIRT_DEFAULT_URI": "bogus:///nowhere"}).code == 0


# --- shell completion ----------------------------------------------------------------------------

def completion_shim(tmp_path):
    """A `snpvirt` on PATH that runs this checkout, as the completion scripts call it by name."""
    import os
    import sys

    from tests.conftest import ROOT
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "snpvirt"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m snpvirt "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def completions(words: str, cword: int, instruction: str = "complete_bash") -> list[str]:
    result = run_cli(env={"_SNPVIRT_COMPLETE": instruction, "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert result.code == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o default -F _snpvirt_completion snpvirt"),
                                          ("zsh", "compdef _snpvirt_completion snpvirt"),
                                          ("fish", "complete --command snpvirt")])
def test_completion_prints_a_script_for_each_shell(shell, marker):
    result = run_cli("completion", shell)
    assert result.code == 0 and marker in result.stdout and "_SNPVIRT_COMPLETE" in result.stdout, result.stderr


def test_the_bash_script_parses_and_completes_a_command_in_a_real_bash(tmp_path):
    import shutil
    import subprocess

    script = run_cli("completion", "bash").stdout
    (tmp_path / "snpvirt.bash").write_text(script)
    assert subprocess.run(["bash", "-n", tmp_path / "snpvirt.bash"], capture_output=True).returncode == 0
    # Source it and call its completion function the way bash does on TAB after `snpvirt ap`.
    probe = f'source {tmp_path}/snpvirt.bash; COMP_WORDS=(snpvirt ap); COMP_CWORD=1; _snpvirt_completion snpvirt; ' \
            'printf "%s\\n" "${COMPREPLY[@]}"'
    done = subprocess.run([shutil.which("bash"), "--norc", "-c", probe], capture_output=True, text=True,
                          env=completion_shim(tmp_path), timeout=60)
    assert done.stdout.split() == ["apply"], done.stderr


def test_completion_requests_in_typers_and_clicks_spelling():
    assert completions("snpvirt ap", 1) == ["apply"]
    assert completions("snpvirt ap", 1, "bash_complete") == ["apply"]  # click's order: SHELL_ACTION
    assert set(completions("snpvirt ", 1)) >= {"apply", "render", "host", "completion"}
    assert completions("snpvirt host ch", 2) == ["check"]
    assert "--host-caps" in completions("snpvirt apply --ho", 2)


def test_zsh_and_fish_get_one_line_per_candidate_with_its_help():
    fish = run_cli(env={"_SNPVIRT_COMPLETE": "complete_fish", "_TYPER_COMPLETE_FISH_ACTION": "get-args",
                        "_TYPER_COMPLETE_ARGS": "snpvirt ap"})
    assert fish.code == 0 and fish.stdout.splitlines() == [
        "apply\tMake each spec's domain exist as specified and run: define, redefine when changed, start."], fish.stdout
    zsh = run_cli(env={"_SNPVIRT_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "snpvirt ap"})
    assert zsh.code == 0 and len(zsh.stdout.strip().splitlines()) == 1 and '"apply":"Make each spec' in zsh.stdout


def test_help_and_completion_import_no_command_module():
    """`snpvirt --help` and completing a command name stay as cheap as importing typer (the lazy table)."""
    import subprocess
    import sys

    heavy = ("libvirt", "lxml", "jinja2")
    code = ("import os, sys\nfrom snpvirt.cli.app import run\n"
            "try:\n    run(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"loaded = sorted(m for m in sys.modules if m.startswith('snpvirt.cli.') and m != 'snpvirt.cli.app' "
            f"or m.split('.')[0] in {heavy!r})\n"
            "sys.stderr.write(repr(loaded))\n")
    env = {"_SNPVIRT_COMPLETE": "complete_bash", "COMP_WORDS": "snpvirt ", "COMP_CWORD": "1"}
    import os
    from tests.conftest import ROOT
    for args, extra in ((["--help"], {}), ([], {}), ([], env)):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, **extra}, timeout=60)
        assert done.stderr.strip() == "[]", (args, extra, done.stderr)
        assert "apply" in done.stdout


# --- apply --set, as on render -------------------------------------------------------------------

def test_apply_set_changes_every_spec_given():
    db = EXAMPLES / "db-01.toml"  # leaves cbitpos/reducedPhysBits to the host; the test driver has none
    without = run_cli("apply", WEB, db, "--check", "-c", "test:///default", "--json")
    assert without.code == ExitCode.PARTIAL
    assert [r["ok"] for r in json.loads(without.stdout)["results"]] == [True, False]
    given = run_cli("apply", WEB, db, "--check", "-c", "test:///default", "--json",
                    "--set", "snp.cbitpos=51", "--set", "snp.reduced_phys_bits=1")
    doc = json.loads(given.stdout)
    assert given.code == 0 and [(r["name"], r["ok"], r["action"]) for r in doc["results"]] == [
        ("web-01", True, "create"), ("db-01", True, "create")], given.stderr


def test_apply_set_errors_are_the_same_as_renders():
    for command in ("render", "apply"):
        bad_value = run_cli(command, WEB, "--set", "vcpus=0", "-c", "test:///default")
        assert_clean_error(bad_value, ExitCode.BAD_INPUT, "vcpus: 0 is out of range 1..512")
    # A malformed --set is the call's usage error, found before connecting (the URI is never tried).
    malformed = run_cli("apply", WEB, "--set", "vcpus", "-c", "bogus:///nowhere")
    assert_clean_error(malformed, ExitCode.BAD_INPUT, "--set 'vcpus' is not KEY=VALUE")


# --- one table of CPU models for the spec and for measure ------------------------------------------

def test_a_cpu_model_snpvirt_cannot_measure_is_refused_by_render_and_measure_alike():
    from tests.conftest import vector
    rendered = run_cli("render", WEB, "--set", "cpu_model=EPYC-Milan-v9")
    assert_clean_error(rendered, ExitCode.BAD_INPUT, "cpu_model: 'EPYC-Milan-v9' is not a QEMU EPYC model snpvirt can measure")
    measured = run_cli("measure", "--firmware", vector("measurement/ovmf/ovmf_AmdSev_suffix.bin"), "--vcpus", "4",
                       "--vcpu-type", "EPYC-Milan-v9")
    assert_clean_error(measured, ExitCode.BAD_INPUT, "'EPYC-Milan-v9' is not a QEMU EPYC model snpvirt can measure")
    hints = [next(line for line in run.stderr.splitlines() if line.startswith("hint: ")) for run in (rendered, measured)]
    for hint in hints:
        assert "EPYC-Milan-v3, EPYC-Genoa" in hint and "EPYC-v4" in hint  # the same list, from the same table


@pytest.mark.parametrize("model", ["EPYC-Milan-v3", "EPYC-Genoa-v2", "EPYC-v5", "EPYC-IBPB"])
def test_a_model_in_the_table_renders_with_the_measurement_measure_gives(model):
    from tests.conftest import vector
    firmware = vector("measurement/ovmf/ovmf_AmdSev_suffix.bin")
    rendered = run_cli("render", WEB, "--json", "--set", f"cpu_model={model}", "--set", f"firmware={firmware}",
                       "--set", "snp.kernel_hashes=false")
    expected = json.loads(rendered.stdout)["results"][0]["expected_measurement"]
    measured = run_cli("measure", "--firmware", firmware, "--vcpus", "4", "--vcpu-type", model)
    assert rendered.code == measured.code == 0 and expected and measured.stdout.strip() == expected, rendered.stderr


def test_every_version_of_a_model_measures_like_the_model():
    from snpvirt import measure, spec
    raw = spec.load_spec_file(WEB)
    for model in measure.CPU_MODELS:
        base = model.rsplit("-v", 1)[0] if model != "EPYC-IBPB" else "EPYC"
        assert spec.parse_spec({**raw, "cpu_model": model}).cpu_model == model
        assert measure.vcpu_signature(model) == measure.vcpu_signature(base), model


# --- render warns about paths that do not exist here (rendering for another host stays legitimate) ----

@pytest.fixture
def local_spec(tmp_path):
    """web-01 with every path it names present on this machine."""
    from tests.conftest import vector
    files = {"firmware": str(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin"))}
    for key, name in (("boot.kernel", "vmlinuz"), ("boot.initrd", "initrd.img"), ("disks.0.path", "web-01.qcow2")):
        (tmp_path / name).write_bytes(b"x" * 4096)
        files[key] = str(tmp_path / name)
    return files


def render_with(files, *extra):
    return run_cli("render", WEB, "--json", *[arg for key, path in files.items() for arg in ("--set", f'{key}="{path}"')],
                   *extra)


def test_render_is_quiet_when_every_path_exists(local_spec):
    result = render_with(local_spec)
    doc = json.loads(result.stdout)
    assert result.code == 0 and result.stderr == "" and doc["warnings"] == [] and doc["results"][0]["warnings"] == []
    assert doc["results"][0]["expected_measurement"]


@pytest.mark.parametrize("key,measured", [("firmware", True), ("boot.kernel", True), ("boot.initrd", True),
                                          ("disks.0.path", False)])
def test_render_warns_about_each_path_missing_here_and_still_renders(local_spec, tmp_path, key, measured):
    missing = str(tmp_path / "nowhere" / "file")
    result = render_with({**local_spec, key: missing})
    doc = json.loads(result.stdout)
    assert result.code == 0 and doc["ok"] is True and doc["results"][0]["xml"].startswith("<domain")
    assert [w["id"] for w in doc["warnings"]] == ["path.not_found"] and doc["warnings"] == doc["results"][0]["warnings"]
    warning = doc["warnings"][0]
    assert warning["message"].startswith(f"{key} {missing} does not exist on this machine")
    assert ("expected measurement is recorded as unknown" in warning["message"]) is measured
    assert doc["results"][0]["expected_measurement"] is None if measured else doc["results"][0]["expected_measurement"]
    assert "another host" in warning["hint"]
    lines = result.stderr.splitlines()
    assert lines == [f"snpvirt: warning: {warning['message']}", f"hint: {warning['hint']}"]


# --- host check --policy: a spec file that is not there is a missing file -----------------------------

@pytest.mark.parametrize("value,fragment", [("web-01.toml", "--policy web-01.toml: no such file"),
                                            ("specs/web-01", "--policy specs/web-01: no such file"),
                                            ("examples", "neither a spec file nor a hexadecimal policy"),
                                            ("0xzz", "neither a spec file nor a hexadecimal policy")])
def test_host_check_policy_that_looks_like_a_path_says_the_file_is_missing(tmp_path, value, fragment):
    result = run_cli("host", "check", "--policy", value, "--sysroot", tmp_path, cwd=tmp_path)
    assert_clean_error(result, ExitCode.BAD_INPUT, fragment)


def test_host_check_policy_names_a_folder_as_not_a_file(tmp_path):
    (tmp_path / "specs").mkdir()
    result = run_cli("host", "check", "--policy", "specs/", "--sysroot", tmp_path, cwd=tmp_path)
    assert_clean_error(result, ExitCode.BAD_INPUT, "--policy specs/: not a regular file")
