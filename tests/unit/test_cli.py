"""The CLI as users run it: real subprocesses for the contract, in-process runs for the many cases."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snpvirt.cli.app import run
from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, GENOA_DOMCAPS, GOLDEN, ROOT, CliRun, assert_clean_error, run_cli, vector

WEB = str(EXAMPLES / "web-01.toml")
DB = str(EXAMPLES / "db-01.toml")


def invoke(capsys, *args):
    code = run(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_and_help_in_a_real_process():
    from snpvirt import __version__
    assert run_cli("--version").stdout.strip() == f"snpvirt {__version__}"
    for args in (["--help"], ["render", "--help"], ["validate", "--help"]):
        result = run_cli(*args)
        assert result.code == 0 and "Example" in result.stdout, args


def test_render_prints_the_golden():
    result = run_cli("render", WEB, bare=True)  # as on a machine without the example's launch files, like the golden
    assert result.code == ExitCode.OK and result.stdout == (GOLDEN / "web-01.xml").read_text()
    # stderr only warns that the launch files are not here (tests/unit/test_conventions.py has the details).
    assert all(line.startswith(("snpvirt: warning: ", "hint: ")) for line in result.stderr.splitlines())
    assert "snpvirt: warning: firmware /usr/share/ovmf/OVMF.amdsev.fd does not exist on this machine" in result.stderr


def test_render_with_host_caps_and_json():
    result = run_cli("render", DB, "--host-caps", vector(GENOA_DOMCAPS), "--json", bare=True)
    doc = json.loads(result.stdout)
    assert result.code == 0 and doc["ok"] is True and doc["changed"] is False
    item = doc["results"][0]
    assert (item["name"], item["policy"], item["policy_flags"], item["cbitpos"], item["reduced_phys_bits"]) == (
        "db-01", "0x20000", [], 51, 1)
    assert item["xml"] == (GOLDEN / "db-01.xml").read_text()


def test_render_output_file_reports_changes_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "web-01.xml"
    assert run_cli("render", WEB, "-o", target, bare=True).code == 0
    assert target.read_text() == (GOLDEN / "web-01.xml").read_text()
    assert json.loads(run_cli("render", WEB, "-o", target, "--json", bare=True).stdout)["changed"] is False
    doc = json.loads(run_cli("render", WEB, "-o", target, "--set", "vcpus=8", "--json", bare=True).stdout)
    assert doc["changed"] is True and "<vcpu placement='static'>8</vcpu>" in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web-01.xml"], "no temporary files left behind"


OLD_DOCUMENT = "<domain type='kvm'><name>old</name></domain>\n" * 50


def render_to(target, *, shell_setup="", env=None):
    """`snpvirt render WEB -o target` in a real process, after `shell_setup` (e.g. a ulimit) in its shell."""
    argv = ["sh", "-c", shell_setup + '\nexec "$@"', "sh", sys.executable, "-m", "snpvirt", "render", WEB, "-o", str(target)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, **(env or {})})
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


def test_render_output_replaces_the_file_whole_never_edits_it_in_place(tmp_path):
    """A reader that opened the old file still reads the old document whole: the new one is written to a
    new file that is renamed over the name, so no reader ever sees a half-written document."""
    target = tmp_path / "vm.xml"
    target.write_text(OLD_DOCUMENT)
    with open(target, encoding="utf-8") as reader:
        old_inode = os.fstat(reader.fileno()).st_ino
        assert render_to(target).code == 0
        assert reader.read() == OLD_DOCUMENT
    assert os.stat(target).st_ino != old_inode and target.read_text().startswith("<domain type='kvm'>\n  <name>web-01")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.xml"]


def test_a_write_failing_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    """The disk fills up (here: a 1 KiB file-size limit; the document is ~3 KiB) while the new document is written."""
    target = tmp_path / "vm.xml"
    target.write_text("precious")
    result = render_to(target, shell_setup="ulimit -f 2")  # 2 blocks: 1 KiB in dash, 2 KiB in bash
    assert_clean_error(result, ExitCode.BAD_INPUT, f"-o {target}: cannot write")
    assert target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vm.xml"], "the partial temporary file is removed"


def test_the_temporary_file_is_made_beside_the_target(tmp_path):
    """A rename is atomic only within one file system: a temporary file in TMPDIR (another file system
    here) could not be renamed over FILE. The write must not depend on where TMPDIR is."""
    elsewhere = Path(tempfile.mkdtemp(prefix="snpvirt-test-tmpdir-", dir="/dev/shm"))
    try:
        if os.stat(elsewhere).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system as the test's folder here")
        target = tmp_path / "vm.xml"
        target.write_text(OLD_DOCUMENT)
        result = render_to(target, env={"TMPDIR": str(elsewhere)})
        assert result.code == 0, result.stderr
        assert target.read_text().startswith("<domain type='kvm'>\n  <name>web-01")
        assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["vm.xml"]
    finally:
        shutil.rmtree(elsewhere)


def test_bad_input_leaves_an_existing_output_untouched(tmp_path):
    target = tmp_path / "vm.xml"
    target.write_text("precious")
    result = run_cli("render", WEB, "-o", target, "--set", "vcpus=0")
    assert_clean_error(result, ExitCode.BAD_INPUT, "vcpus: 0 is out of range")
    assert target.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["vm.xml"]


@pytest.mark.parametrize("spec_text,fragment", [
    ('name = "a"\nvcpus = = 4\n', "line 2, column"),
    ('name = "web 01"\nmemory_mib = 1024\nvcpus = 1\nfirmware = "/f"\n', "is not a valid domain name"),
    ('name = "a"\nmemroy_mib = 1024\nvcpus = 1\nfirmware = "/f"\n', "unknown key 'memroy_mib'"),
    ('name = "a"\nmemory_mib = 1024\nvcpus = 1\nfirmware = "/f"\n[snp]\npolicy = "0x4030000"\n', "reserved bits"),
    ('name = "a"\nmemory_mib = 1024\nvcpus = 1\nfirmware = "/f"\n[snp]\nkernel_hashes = true\n', "needs boot.kernel"),
    ('name = "a"\nmemory_mib = 1024\nvcpus = 1\nfirmware = "/f"\n[snp]\nhost_data = "AAA*"\n', "not valid base64"),
    ('name = "a"\nmemory_mib = 1024\nvcpus = 1\nfirmware = "/f"\n', "snp.cbitpos is not known"),
    ('name = "a"\nmemory_mib = 1024\nvcpus = 1\nfirmware = "/f"\n[snp]\npolicy = {debug = true}\n', "allows debugging"),
])
def test_bad_specs_in_a_real_process(tmp_path, spec_text, fragment):
    spec = tmp_path / "vm.toml"
    spec.write_text(spec_text)
    result = run_cli("render", spec)
    assert_clean_error(result, ExitCode.BAD_INPUT, fragment)
    assert result.stdout == ""


def test_json_failure_is_one_document(tmp_path):
    result = run_cli("render", tmp_path / "missing.toml", "--json")
    doc = json.loads(result.stdout)
    assert result.code == ExitCode.BAD_INPUT and doc["ok"] is False and doc["results"] == []
    assert doc["error"]["kind"] == "bad_input" and "does not exist" in doc["error"]["message"] and doc["error"]["hint"]


def test_usage_errors_are_one_line_with_exit_2(capsys):
    code, out, err = invoke(capsys, "render", WEB, "--no-such-option")
    assert code == ExitCode.BAD_INPUT and err.startswith("snpvirt: error: No such option") and "hint: see:" in err
    code, out, err = invoke(capsys, "frobnicate")
    assert code == ExitCode.BAD_INPUT and "snpvirt: error:" in err
    code, out, _ = invoke(capsys, "render", "--json")
    assert code == ExitCode.BAD_INPUT and json.loads(out)["error"]["kind"] == "usage"


def test_allow_debug_flag(capsys, tmp_path):
    code, out, _ = invoke(capsys, "render", WEB, "--set", "snp.policy.debug=true", "--allow-debug", "--json")
    assert code == 0 and json.loads(out)["results"][0]["policy"] == "0xb0000"


def test_unreadable_host_caps(capsys, tmp_path):
    code, _, err = invoke(capsys, "render", DB, "--host-caps", tmp_path / "nope.xml")
    assert code == ExitCode.BAD_INPUT and "cannot read --host-caps" in err


def test_validate_exit_codes_and_per_file_rules(tmp_path):
    ok = run_cli("validate", GOLDEN / "web-01.xml", GOLDEN / "db-01.xml")
    assert ok.code == 0 and ok.stdout.count("valid  ") == 2
    bad = run_cli("validate", GOLDEN / "web-01.xml", vector("virt-manager/virt-install-x86_64-launch-security-sev-snp.xml"),
                  tmp_path / "absent.xml", "--json")
    doc = json.loads(bad.stdout)
    assert bad.code == ExitCode.BAD_INPUT and doc["ok"] is False
    assert [r["valid"] for r in doc["results"]] == [True, False, False]
    assert {"snp.policy_bit17", "snp.firmware_stateless"} <= {f["id"] for f in doc["results"][1]["findings"]}
    assert doc["results"][2]["findings"][0]["id"] == "file.read"
    assert "Traceback" not in bad.stderr


def test_validate_human_output_lists_rules_with_hints():
    result = run_cli("validate", vector("virt-manager/virt-install-x86_64-launch-security-sev-snp.xml"))
    assert result.code == ExitCode.BAD_INPUT
    assert "INVALID" in result.stdout and "snp.policy_bit17" in result.stdout and "hint: use 0x20024" in result.stdout
    assert_clean_error(result, ExitCode.BAD_INPUT, "1 of 1 file(s)")


def test_connect_to_a_host_without_sev(capsys):
    # libvirt's in-process test driver reports <sev supported='no'/>: no guessing, a clear error.
    code, _, err = invoke(capsys, "render", DB, "--connect", "test:///default")
    assert code == ExitCode.NOT_READY and "SEV is not supported" in err


def test_connect_failure_is_a_connection_error(capsys, tmp_path):
    code, _, err = invoke(capsys, "render", DB, "--connect", f"qemu+unix:///system?socket={tmp_path}/none.sock")
    assert code == ExitCode.CONNECTION and err.startswith("snpvirt: error: connect: cannot talk to")


def test_python_dash_m_works():
    assert run_cli("render", WEB, bare=True).stdout == (GOLDEN / "web-01.xml").read_text()
