"""The CLI as users run it: real subprocesses for the contract, in-process runs for the many cases."""

import json

import pytest

from snpvirt.cli.app import run
from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, GENOA_DOMCAPS, GOLDEN, assert_clean_error, run_cli, vector

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


def test_render_prints_the_golden(capsys):
    code, out, err = invoke(capsys, "render", WEB)
    assert code == ExitCode.OK and out == (GOLDEN / "web-01.xml").read_text() and err == ""


def test_render_with_host_caps_and_json(capsys):
    code, out, _ = invoke(capsys, "render", DB, "--host-caps", vector(GENOA_DOMCAPS), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["changed"] is False
    item = doc["results"][0]
    assert (item["name"], item["policy"], item["policy_flags"], item["cbitpos"], item["reduced_phys_bits"]) == (
        "db-01", "0x20000", [], 51, 1)
    assert item["xml"] == (GOLDEN / "db-01.xml").read_text()


def test_render_output_file_is_written_atomically_and_reports_changes(tmp_path, capsys):
    target = tmp_path / "web-01.xml"
    assert invoke(capsys, "render", WEB, "-o", target)[0] == 0
    assert target.read_text() == (GOLDEN / "web-01.xml").read_text()
    code, out, _ = invoke(capsys, "render", WEB, "-o", target, "--json")
    assert json.loads(out)["changed"] is False
    code, out, _ = invoke(capsys, "render", WEB, "-o", target, "--set", "vcpus=8", "--json")
    assert json.loads(out)["changed"] is True and "<vcpu placement='static'>8</vcpu>" in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web-01.xml"], "no temporary files left behind"


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
    assert run_cli("render", WEB).stdout == (GOLDEN / "web-01.xml").read_text()
