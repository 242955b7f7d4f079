"""`import` keeps no firmware that is not an SEV-SNP build, takes only a real --firmware, and diffs only the
changes. Through the real CLI on libvirt's test driver, judging a captured host (--sysroot, --host-caps):
its QEMU firmware descriptors, never this machine's, decide what an SEV-SNP build is."""

from __future__ import annotations

import json

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import assert_clean_error, run_cli, vector
from tests.integration.test_gate import LEGACY_SEV, PLAIN_SNP
from tests.integration.test_manager import make_manager
from tests.unit.fakehost import AMDSEV_OVMF, SEV_ONLY_DESCRIPTOR, SNP_FIRMWARE, FakeHost, genoa_domcaps

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd"  # what virt-manager's SEV domain loads: no descriptor here names it
SEV_ONLY = "/usr/share/OVMF/OVMF.sev.fd"  # named by the captured descriptor without amd-sev-snp
UNKNOWN = "/opt/ovmf/custom.fd"  # a file here that no descriptor names


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A ready Milan host whose SNP descriptor names SNP_FIRMWARE, plus an SEV-only descriptor and its file."""
    fake = FakeHost(tmp_path_factory.mktemp("captured"))
    fake.write("usr/share/qemu/firmware/45-ovmf-sev-stateless.json", vector(SEV_ONLY_DESCRIPTOR).read_bytes())
    for path in (SEV_ONLY, UNKNOWN):
        fake.write(path, vector(AMDSEV_OVMF).read_bytes())
    (fake.root / "opt/ovmf/a-folder.fd").mkdir()
    return fake.root


def import_on(host, *args):
    return run_cli("import", *map(str, args), "-c", "test:///default", "--sysroot", host, "--host-caps", genoa_domcaps())


def with_loader(tmp_path, source: str, old: str, new: str):
    text = vector(source).read_text()
    assert old in text
    path = tmp_path / "domain.xml"
    path.write_text(text.replace(old, new))
    return path


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# --- a firmware the domain keeps -----------------------------------------------------------------------


def test_virt_manager_sev_domain_keeps_no_firmware_unknown_as_snp(host):
    result = import_on(host, vector(LEGACY_SEV), "--fix")
    assert_clean_error(result, ExitCode.BAD_INPUT, f"firmware {OVMF_CODE} is not known here as an SEV-SNP build",
                       "linux2020 was not imported")
    assert f"hint: pass --firmware PATH of an SEV-SNP build, e.g. --firmware {SNP_FIRMWARE}" in result.stderr
    as_json = import_on(host, vector(LEGACY_SEV), "--fix", "--check", "--json")
    doc = json.loads(as_json.stdout)
    assert as_json.code == ExitCode.BAD_INPUT and doc["error"]["kind"] == "bad_input", "the plan ends as the run"


def test_a_firmware_whose_descriptor_offers_no_snp_is_refused(host, tmp_path):
    domain = with_loader(tmp_path, LEGACY_SEV, OVMF_CODE, SEV_ONLY)
    result = import_on(host, domain, "--fix")
    assert_clean_error(result, ExitCode.BAD_INPUT, f"firmware {SEV_ONLY} is not an SEV-SNP build",
                       "45-ovmf-sev-stateless.json does not offer amd-sev-snp")


def test_without_fix_a_valid_domain_with_a_non_snp_rom_is_refused_too(host, tmp_path):
    domain = with_loader(tmp_path, PLAIN_SNP, '<os firmware="efi">\n', f'<os>\n    <loader type="rom" stateless="yes">'
                         f'{SEV_ONLY}</loader>\n')
    domain.write_text(domain.read_text().replace("<policy>0x24</policy>", "<policy>0x30000</policy>"))
    result = import_on(host, domain)
    assert_clean_error(result, ExitCode.BAD_INPUT, f"firmware {SEV_ONLY} is not an SEV-SNP build")
    assert "hint: run again with --fix and --firmware PATH" in result.stderr


@pytest.mark.parametrize("firmware", ["/srv/other-host/OVMF.amdsev.fd", SNP_FIRMWARE],
                         ids=["AmdSev build by name, not here", "named by an SNP descriptor"])
def test_a_firmware_known_as_snp_is_kept(host, tmp_path, firmware):
    domain = with_loader(tmp_path, LEGACY_SEV, OVMF_CODE, firmware)
    result = import_on(host, domain, "--fix", "--json")
    doc = json.loads(result.stdout)
    assert result.code == 0 and doc["ok"] and doc["changed"], result.stderr
    assert not doc.get("warnings")


def test_virt_manager_sev_domain_with_an_snp_firmware_is_imported(host):
    result = import_on(host, vector(LEGACY_SEV), "--fix", "--firmware", SNP_FIRMWARE, "--print-diff", "--json")
    doc = json.loads(result.stdout)
    assert result.code == 0 and doc["ok"] and not doc.get("warnings"), result.stderr
    diff = changed_lines(doc["results"][0]["xml_diff"])
    assert f'-    <loader readonly="yes" type="pflash">{OVMF_CODE}</loader>' in diff
    assert f'+    <loader type="rom" stateless="yes">{SNP_FIRMWARE}</loader>' in diff


# --- --firmware ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("firmware,message", [
    ("relative.fd", "--firmware relative.fd must be an absolute path"),
    ("/nonexistent/OVMF.amdsev.fd", "--firmware /nonexistent/OVMF.amdsev.fd does not exist on this machine"),
    ("/opt/ovmf/a-folder.fd", "--firmware /opt/ovmf/a-folder.fd is not a regular file"),
    (SEV_ONLY, f"--firmware {SEV_ONLY} is not an SEV-SNP build"),
])
def test_a_bad_firmware_option_is_one_clear_error(host, firmware, message):
    result = import_on(host, vector(LEGACY_SEV), "--fix", "--firmware", firmware)
    assert_clean_error(result, ExitCode.BAD_INPUT, message)
    assert "schema" not in result.stderr and "fix:" not in result.stdout, "refused before anything else is said"


def test_a_firmware_option_no_descriptor_names_is_taken_with_a_warning(host):
    result = import_on(host, vector(LEGACY_SEV), "--fix", "--firmware", UNKNOWN, "--json")
    doc = json.loads(result.stdout)
    assert result.code == 0 and doc["ok"], result.stderr
    assert [w["id"] for w in doc["warnings"]] == ["firmware.unknown_build"]


# --- --print-diff --------------------------------------------------------------------------------------

SNP_CHANGES = ['+    <loader stateless="yes"/>', "-    <policy>0x24</policy>", "+    <policy>0x20024</policy>"]


@pytest.mark.parametrize("quote", ['"', "'"], ids=["as virt-install writes it", "single quotes, as libvirt writes"])
def test_print_diff_shows_only_the_real_changes(host, tmp_path, quote):
    domain = tmp_path / "vm1.xml"
    domain.write_text(vector(PLAIN_SNP).read_text().replace('"', quote))
    result = import_on(host, domain, "--fix", "--check", "--print-diff")
    assert result.code == 0, result.stderr
    assert changed_lines(result.stdout) == SNP_CHANGES


def test_print_diff_of_a_domain_libvirt_holds_shows_only_the_real_changes(clean_test_driver):
    from snpvirt.connection import Connection

    clean_test_driver.defineXML(vector(PLAIN_SNP).read_text())
    with Connection("test:///default") as conn:
        record = conn.lookup("vm1")
        assert "type='sev-snp'" in record.xml, "libvirt writes single quotes: the original differs in every line"
        plan = make_manager(conn).import_domain(record.xml.encode(), record, fix=True, check=True, sev=None,
                                                firmware=None)
    libvirt_policy = [line.replace("0x24<", "0x00000024<") for line in SNP_CHANGES]  # libvirt writes 8 digits
    assert plan.ok and changed_lines(plan.details["xml_diff"]) == libvirt_policy
