"""An imported domain gets an expected measurement too: `measure --record NAME` with explicit launch files,
checked against what the domain launches with, as a spec is; a mismatch is a conflict that records nothing."""

from __future__ import annotations

import json

import pytest

from snpvirt.domain import spec as specs
from snpvirt.cli.app import run
from snpvirt.libvirt.connection import Connection
from snpvirt.errors import ExitCode
from snpvirt.manager import SpecInput
from tests.conftest import assert_clean_error, run_cli, vector
from tests.integration.test_gate import PLAIN_SNP
from tests.integration.test_manager import make_manager
from tests.integration.test_measurement_recorded import files, spec_file  # noqa: F401 (fixture)
from tests.unit.fakehost import installed_firmware

CMDLINE = "console=ttyS0 root=/dev/vda1"
DERIVED_VECTOR = "fb544c79596018c1"  # snp, EPYC-Genoa, 4 vCPUs, kernel+initrd+cmdline, guest features 0x1


def direct_boot_domain(name: str, files: dict[str, str]) -> bytes:
    """virt-manager's SNP domain as someone edited it by hand for direct boot with kernel hashes: the domain
    the derived measurement vector describes (4 EPYC-Genoa vCPUs, kernel, initrd, cmdline)."""
    text = vector(PLAIN_SNP).read_text()
    for old, new in (("<name>vm1</name>", f"<name>{name}</name>"), ("<vcpu>1</vcpu>", "<vcpu>4</vcpu>"),
                     ('<os firmware="efi">', f'<os>\n    <loader type="rom" stateless="yes">{files["firmware"]}</loader>'
                      f'\n    <kernel>{files["kernel"]}</kernel>\n    <initrd>{files["initrd"]}</initrd>'
                      f'\n    <cmdline>{CMDLINE}</cmdline>'),
                     ('<cpu mode="host-passthrough"/>', '<cpu mode="custom" match="exact">\n    '
                      '<model fallback="forbid">EPYC-Genoa</model>\n  </cpu>'),
                     ('<launchSecurity type="sev-snp">', '<launchSecurity type="sev-snp" kernelHashes="yes">'),
                     ("<policy>0x24</policy>", "<policy>0x30000</policy>")):
        assert old in text, old
        text = text.replace(old, new)
    return text.encode()


@pytest.fixture
def mgr(clean_test_driver):
    with Connection("test:///default") as conn:
        yield make_manager(conn)


@pytest.fixture
def imported(mgr, files, tmp_path):
    outcome = mgr.import_domain(direct_boot_domain("imp-01", files), None, fix=True, check=False, sev=None,
                                firmware=None, installed=installed_firmware(tmp_path / "host"))
    assert outcome.ok and outcome.changed, outcome.error
    assert mgr.status("imp-01")["expected_measurement"] is None, "import records no measurement by itself"
    return "imp-01"


def measure_args(files, **changes):
    """measure's options for the direct-boot domain; a change of None leaves the option out."""
    options = {"--firmware": files["firmware"], "--kernel": files["kernel"], "--initrd": files["initrd"],
               "--cmdline": CMDLINE, "--vcpus": "4", "--vcpu-type": "EPYC-Genoa", "--guest-features": "0x1", **changes}
    return ["measure", *(part for key, value in options.items() if value is not None for part in (key, value))]


def test_an_imported_domain_records_the_measurement_of_its_launch_files(mgr, files, imported, capsys):
    assert run([*measure_args(files), "--record", imported, "-c", "test:///default", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    measured = doc["results"][0]["measurement"]
    assert measured.startswith(DERIVED_VECTOR) and doc["results"][0]["recorded"] == {"domain": imported, "changed": True}
    status = mgr.status(imported)
    assert status["expected_measurement"] == measured and status["origin"] == "import"
    assert run([*measure_args(files), "--record", imported, "-c", "test:///default", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False, "the same inputs again: nothing to record"


@pytest.mark.parametrize("changes,mismatch", [
    ({"--vcpus": "2"}, "vCPUs: domain '4', given '2'"),
    ({"--vcpu-type": "EPYC-Milan"}, "vCPU model: domain 'EPYC-Genoa', given 'EPYC-Milan'"),
    ({"--cmdline": "console=ttyS0"}, f"cmdline: domain '{CMDLINE}', given 'console=ttyS0'"),
    ({"--kernel": None, "--initrd": None, "--cmdline": None}, "kernel hashes: domain True, given False"),
])
def test_inputs_the_imported_domain_does_not_launch_with_are_refused(mgr, files, imported, capsys, changes, mismatch):
    before = mgr.status(imported)["launch"]
    code = run([*measure_args(files, **changes), "--record", imported, "-c", "test:///default"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFLICT and f"{imported} was not launched with the given inputs" in err and mismatch in err, err
    assert mgr.status(imported)["launch"] == before and mgr.status(imported)["expected_measurement"] is None


def test_an_imported_domain_edited_since_is_measured_as_it_now_is(mgr, files, imported, clean_test_driver, capsys):
    """Its definition is its truth: after another tool gives it 2 vCPUs, the recorded value is stale, and
    only a measurement for 2 vCPUs is taken."""
    assert run([*measure_args(files), "--record", imported, "-c", "test:///default"]) == 0
    xml = clean_test_driver.lookupByName(imported).XMLDesc(0)
    clean_test_driver.defineXML(xml.replace("<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>"))
    row = mgr.status(imported)
    assert row["expected_measurement"] is None and row["measurement_stale"] == ["vcpus"]
    assert run([*measure_args(files), "--record", imported, "-c", "test:///default"]) == ExitCode.CONFLICT
    assert run([*measure_args(files, **{"--vcpus": "2"}), "--record", imported, "-c", "test:///default"]) == 0
    measured = capsys.readouterr().out.split()[-1]
    assert mgr.status(imported)["expected_measurement"] == measured and not measured.startswith(DERIVED_VECTOR)


def test_a_host_passthrough_domain_is_recorded_with_its_signature(mgr, files, tmp_path, capsys):
    """virt-manager's SNP domain as it is: host-passthrough, 1 vCPU, firmware chosen by libvirt."""
    imported = mgr.import_domain(vector(PLAIN_SNP).read_bytes(), None, fix=True, check=False, sev=None, firmware=None,
                                 installed=installed_firmware(tmp_path / "host"))
    assert imported.ok, imported.error
    base = ["measure", "--firmware", files["firmware"], "--vcpus", "1", "--vcpu-sig", "0xa10f11", "--record", "vm1",
            "-c", "test:///default"]
    assert run(base) == ExitCode.BAD_INPUT and "--record needs --vcpu-type" in capsys.readouterr().err
    assert run([*base, "--vcpu-type", "host-passthrough", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["results"][0]["measurement"]
    assert mgr.status("vm1")["expected_measurement"] == measured


def test_a_recorded_firmware_digest_refuses_another_firmware(mgr, files, tmp_path, capsys):
    """A domain defined from a spec whose files were readable records their digests: explicit inputs are
    checked against them as well, so a different firmware build is refused even at the same settings."""
    path = spec_file(tmp_path, "imp-02", files)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))])
    other = tmp_path / "other" / "OVMF.amdsev.fd"
    other.parent.mkdir()
    image = bytearray(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin").read_bytes())
    image[0] ^= 0xFF  # another build: same layout, other bytes
    other.write_bytes(bytes(image))
    before = mgr.status("imp-02")["launch"]
    code = run([*measure_args(files, **{"--firmware": str(other)}), "--record", "imp-02", "-c", "test:///default"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFLICT and "firmware sha256: domain '" in err, err
    assert mgr.status("imp-02")["launch"] == before, "nothing recorded"
    assert run([*measure_args(files), "--record", "imp-02", "-c", "test:///default"]) == 0, capsys.readouterr().err


@pytest.mark.daemon
def test_import_then_record_through_the_real_cli(libvirtd, files, tmp_path):
    """The whole path as a user runs it, each step a real process against a real libvirtd's test driver."""
    import libvirt

    held = libvirt.open(libvirtd.test_uri)  # the daemon's test driver keeps state while a client is connected
    try:
        domain = tmp_path / "imp-03.xml"
        domain.write_bytes(direct_boot_domain("imp-03", files))
        uri = ("-c", libvirtd.test_uri)
        assert run_cli("import", domain, "--fix", *uri).code == 0
        recorded = run_cli(*measure_args(files), "--record", "imp-03", *uri, "--json")
        assert recorded.code == 0, recorded.stderr
        measured = json.loads(recorded.stdout)["results"][0]["measurement"]
        status = json.loads(run_cli("status", "imp-03", *uri, "--json").stdout)
        assert status["results"][0]["expected_measurement"] == measured and measured.startswith(DERIVED_VECTOR)
        refused = run_cli(*measure_args(files, **{"--vcpus": "2"}), "--record", "imp-03", *uri)
        assert_clean_error(refused, ExitCode.CONFLICT, "imp-03 was not launched with the given inputs", "vCPUs")
    finally:
        for dom in held.listAllDomains():
            if dom.name() != "test":
                dom.undefine()
        held.close()


# --- what a refused record says, and what list and status count (scripts/mutation reading) -----------------------


def test_a_refused_record_says_whose_inputs_differ_and_what_to_give(mgr, files, imported, tmp_path, capsys):
    code = run([*measure_args(files, **{"--vcpus": "2", "--cmdline": "quiet"}), "--record", imported,
                "-c", "test:///default"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFLICT
    assert "imp-01 was not launched with the given inputs (" in err and "'; " in err, err
    assert "hint: give what imp-01 launches with (snpvirt status imp-01; virsh dumpxml imp-01)" in err
    remote = {"firmware": "/srv/remote/OVMF.amdsev.fd", "kernel": "/srv/remote/vmlinuz", "initrd": "/srv/remote/initrd.img"}
    path = spec_file(tmp_path, "meas-20", remote)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))])
    copies = ["--set", f"firmware={files['firmware']}", "--set", f"boot.kernel={files['kernel']}",
              "--set", f"boot.initrd={files['initrd']}"]
    code = run(["measure", str(path), *copies, "--set", "vcpus=2", "--record", "meas-20", "-c", "test:///default"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFLICT and "meas-20 was not launched with this spec's inputs (" in err, err
    assert "hint: measure with the spec the domain was defined from (snpvirt status NAME shows it)" in err


def test_list_counts_the_domains_it_leaves_out_and_status_says_the_version(mgr, imported, clean_test_driver):
    from snpvirt import __version__

    rows, hidden = mgr.inventory()
    assert imported not in [r["name"] for r in rows], "shut off: only with include_inactive"
    clean_test_driver.defineXML("<domain type='test'><name>other-tool</name><memory>1024</memory>"
                                "<os><type>hvm</type></os></domain>")
    all_rows, all_hidden = mgr.inventory(include_inactive=True)
    assert [r["managed"] for r in all_rows if r["name"] == imported] == [True]
    assert "other-tool" not in [r["name"] for r in all_rows] and all_hidden == hidden + 1
    everything, none_hidden = mgr.inventory(include_inactive=True, include_unmanaged=True)
    assert none_hidden == 0 and [r["managed"] for r in everything if r["name"] == "other-tool"] == [False]
    assert mgr.status(imported)["snpvirt_version"] == __version__
