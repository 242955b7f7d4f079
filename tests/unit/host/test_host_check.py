"""Host readiness over fake sysroots: ready Milan and Genoa hosts, and one variant per broken fact."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from snpvirt.host import readiness
from snpvirt.host import checks as host
from snpvirt.cli.app import app, run
from snpvirt.errors import BadInputError, ExitCode
from snpvirt.libvirt.connection import Connection
from snpvirt.models import HostSevCaps, LibvirtFacts
from tests.unit.fakehost import MILAN, RYZEN, FakeHost, cpuid_sample, edited_domcaps, genoa_domcaps
from tests.conftest import EXAMPLES, unreadable_even_for_root, vector

LIBVIRT_ONLY = {"libvirt.version", "qemu.version", "capacity.snp_guests"}  # need a live connection


@pytest.fixture
def milan(tmp_path):
    return FakeHost(tmp_path / "milan")


def assess(fake, domcaps=None, **kwargs):
    return readiness.assess(None, sysroot=str(fake.root), domcaps_file=domcaps or genoa_domcaps(), **kwargs)


def statuses(report):
    return {c.check_id: c.status for c in report.checks}


def test_ready_genoa_host(milan):
    report = assess(milan)
    assert report.ready, report.summary
    assert {i for i, s in statuses(report).items() if s != "pass"} == LIBVIRT_ONLY
    assert report.by_id("cpu.cbitpos").facts == {"cbitpos": 51, "phys_addr_reduction": 5, "vmpls": 4}
    assert report.by_id("asid.snp").facts["snp_asids"] == 127
    assert report.by_id("firmware.snp").facts["firmware"] == "/usr/share/edk2/ovmf/OVMF.amdsev.fd"
    assert report.by_id("libvirt.version").message == "no libvirt connection (--sysroot without --connect)"
    assert report.by_id("asid.snp").status == "pass"


def test_ready_milan_host(milan, tmp_path):
    caps = edited_domcaps(tmp_path, "milan.xml", ("EPYC-Genoa", "EPYC-Milan"))
    assert assess(milan, caps).ready


def test_the_cpuid_device_is_read_at_the_leaf_offset(milan):
    from snpvirt.host import facts as hostfacts
    facts = hostfacts.read_local_facts(milan.root)
    assert facts.cpuid_vendor == "AuthenticAMD" and facts.cpuid_sev == cpuid_sample(MILAN)


def broken(fake, tmp_path, name):
    """Apply one broken fact; return the domcaps file to use."""
    domcaps = genoa_domcaps()
    if name == "cpu.vendor":
        fake.set_cpuid(cpuid_sample(MILAN), vendor="GenuineIntel")
    elif name == "cpu.sev":
        eax, ebx, ecx, edx = cpuid_sample(MILAN)
        fake.set_cpuid((eax & ~0b10, ebx, ecx, edx))
    elif name == "cpu.sev_es":
        eax, ebx, ecx, edx = cpuid_sample(MILAN)
        fake.set_cpuid((eax & ~0b1000, ebx, ecx, edx))
    elif name == "cpu.sev_snp":
        fake.set_cpuid(cpuid_sample(RYZEN))
    elif name == "cpu.cbitpos":
        domcaps = edited_domcaps(tmp_path, "cbit.xml", ("<cbitpos>51</cbitpos>", "<cbitpos>47</cbitpos>"))
    elif name == "asid.snp":
        eax, ebx, ecx, _ = cpuid_sample(MILAN)
        fake.set_cpuid((eax, ebx, ecx, 1))
    elif name == "kvm.dev":
        fake.remove("dev/kvm")
    elif name in ("kvm_amd.sev", "kvm_amd.sev_snp"):
        fake.write(f"sys/module/kvm_amd/parameters/{name.split('.')[1]}", "N\n")
    elif name == "psp.dev_sev":
        fake.remove("dev/sev")
    elif name == "kernel.iommu":
        fake.write("proc/cmdline", "root=/dev/sda1 iommu=pt\n")
    elif name == "domcaps.sev_snp":
        domcaps = vector("virt-manager/kvm-x86_64-domcaps-amd-sev.xml")
    elif name == "firmware.snp":
        fake.remove("usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json")
        fake.write("usr/share/qemu/firmware/45-ovmf-sev-stateless.json",
                   vector("libvirt/firmware/45-ovmf-sev-stateless.json").read_text())
    return domcaps


HINTS = {
    "cpu.vendor": "AMD EPYC", "cpu.sev": "BIOS", "cpu.sev_es": "BIOS", "cpu.sev_snp": "SEV-SNP Support",
    "cpu.cbitpos": "restart libvirtd", "asid.snp": "SEV-ES ASID Space Limit", "kvm.dev": "modprobe kvm_amd",
    "kvm_amd.sev": "options kvm_amd sev=1", "kvm_amd.sev_snp": "options kvm_amd sev=1 sev_es=1 sev_snp=1",
    "psp.dev_sev": "modprobe ccp", "kernel.iommu": "remove iommu=pt", "domcaps.sev_snp": "libvirt >= 10.5",
    "firmware.snp": "OVMF.amdsev.fd",
}


@pytest.mark.parametrize("check_id", sorted(HINTS))
def test_each_broken_fact_fails_exactly_its_check(milan, tmp_path, check_id):
    report = assess(milan, broken(milan, tmp_path, check_id))
    assert not report.ready
    assert report.failed() == [check_id], report.summary
    assert HINTS[check_id] in report.by_id(check_id).hint
    assert check_id in report.summary


def test_children_of_a_failed_check_are_skipped(milan, tmp_path):
    report = assess(milan, broken(milan, tmp_path, "cpu.sev"))
    assert [statuses(report)[i] for i in ("cpu.sev_es", "cpu.sev_snp", "cpu.cbitpos", "asid.snp")] == ["skip"] * 4
    assert report.by_id("cpu.sev_snp").message == "cpu.sev failed"
    assert report.by_id("asid.snp").message == "cpu.sev failed", "a grandchild names the root cause"


def test_kvm_amd_not_loaded(milan):
    milan.remove("sys/module/kvm_amd")
    report = assess(milan)
    assert report.failed() == ["kvm_amd.sev"] and "modprobe kvm_amd" in report.by_id("kvm_amd.sev").hint
    assert statuses(report)["kvm_amd.sev_snp"] == "skip"


def test_sev_es_off_while_snp_on_is_a_warning(milan):
    milan.write("sys/module/kvm_amd/parameters/sev_es", "N\n")
    report = assess(milan)
    assert report.ready and statuses(report)["kvm_amd.sev_es"] == "warn"


@pytest.mark.parametrize("cmdline", ["amd_iommu=off", "amd_iommu=pgtbl_v2", "amd_iommu=force_isolation,pgtbl_v2"])
def test_iommu_modes_snp_cannot_use(milan, cmdline):
    milan.write("proc/cmdline", f"root=/dev/sda1 {cmdline} quiet\n")
    report = assess(milan)
    assert report.failed() == ["kernel.iommu"] and cmdline in report.by_id("kernel.iommu").message


def test_iommu_arguments_after_the_init_separator_do_not_count(milan):
    milan.write("proc/cmdline", "root=/dev/sda1 -- iommu=pt\n")
    assert assess(milan).ready


def test_no_active_iommu(milan):
    milan.remove("sys/class/iommu/ivhd0")
    report = assess(milan)
    assert report.failed() == ["kernel.iommu"] and "BIOS" in report.by_id("kernel.iommu").hint


def test_old_kernel_is_a_warning_with_an_snp_backport_and_a_failure_without(milan):
    milan.write("proc/sys/kernel/osrelease", "6.8.0-ubuntu\n")
    report = assess(milan)
    assert report.ready and statuses(report)["kernel.version"] == "warn"
    milan.remove("sys/module/kvm_amd/parameters/sev_snp")
    report = assess(milan)
    assert report.failed() == ["kvm_amd.sev_snp", "kernel.version"]
    assert "no 'sev_snp' parameter" in report.by_id("kvm_amd.sev_snp").message


def test_dev_sev_not_usable_by_the_qemu_user_is_a_warning(milan):
    (milan.root / "dev/sev").chmod(0o600)
    report = assess(milan)
    assert report.ready and statuses(report)["psp.dev_sev"] == "warn"
    assert "libvirt-qemu" in report.by_id("psp.dev_sev").message


def test_without_the_cpuid_device_cpuinfo_flags_are_used_and_said(milan):
    milan.remove("dev/cpu/0/cpuid")
    report = assess(milan)
    sev_snp = report.by_id("cpu.sev_snp")
    assert sev_snp.status == "pass" and "/proc/cpuinfo" in sev_snp.message and "modprobe cpuid" in sev_snp.hint
    assert statuses(report)["cpu.cbitpos"] == "skip" and statuses(report)["asid.snp"] == "skip"


def test_domcaps_without_sev(milan):
    report = assess(milan, vector("virt-manager/kvm-x86_64-domcaps-latest.xml"))
    assert report.failed() == ["domcaps.sev", "domcaps.sev_snp"]


def test_without_domcaps_the_host_is_not_ready(milan):
    report = readiness.assess(None, sysroot=str(milan.root))
    assert not report.ready and report.failed() == []
    assert "domcaps.sev_snp could not be checked" in report.summary


@pytest.mark.parametrize("descriptor,expected", [
    ({"device": "flash", "mode": "split", "executable": {"filename": "/usr/share/edk2/ovmf/OVMF.amdsev.fd"}},
     "must be ROM or stateless flash"),
    ({"device": "memory", "filename": "/usr/share/edk2/ovmf/missing.fd"}, "does not exist"),
])
def test_firmware_descriptor_problems(milan, descriptor, expected):
    doc = {"features": ["amd-sev-snp"], "mapping": descriptor}
    milan.write("usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json", json.dumps(doc))
    report = assess(milan)
    assert report.failed() == ["firmware.snp"] and expected in report.by_id("firmware.snp").message


def test_etc_descriptor_overrides_usr_share(milan):
    milan.write("etc/qemu/firmware/60-edk2-ovmf-x64-amdsev.json", "{}")
    assert assess(milan).failed() == ["firmware.snp"]


def test_the_specs_firmware_is_what_counts_when_given(milan):
    report = assess(milan, spec_firmware="/usr/share/ovmf/OVMF.amdsev.fd")
    assert report.failed() == ["firmware.snp"] and "does not exist" in report.by_id("firmware.snp").message
    assert assess(milan, spec_firmware=milan.firmware).ready


def test_spec_firmware_with_sev_metadata_passes_without_a_descriptor(milan):
    milan.remove("usr/share/qemu/firmware")
    milan.write("/srv/fw/OVMF.fd", vector("measurement/ovmf/ovmf_OvmfX64_suffix.bin").read_bytes())
    report = assess(milan, spec_firmware="/srv/fw/OVMF.fd")
    assert report.ready and report.by_id("firmware.snp").facts == {"firmware": "/srv/fw/OVMF.fd", "kernel_hashes": False}
    milan.write("/srv/fw/OVMF.fd", b"\0" * 8192)
    report = assess(milan, spec_firmware="/srv/fw/OVMF.fd")
    assert report.failed() == ["firmware.snp"] and "no OVMF GUIDed footer table" in report.by_id("firmware.snp").message


@pytest.mark.parametrize("policy,check_id,status", [
    (0x30000, "policy.smt", "pass"), (0x20000, "policy.smt", "fail"),
    (0xB0000, "policy.debug", "warn"), (0x30000, "policy.debug", "pass"),
    (0x70000, "policy.bits", "warn"), (0x24, "policy.bits", "fail"), (0x30000, "policy.bits", "pass"),
])
def test_policy_checks(milan, policy, check_id, status):
    report = assess(milan, policy=policy)
    assert statuses(report)[check_id] == status, report.by_id(check_id)


def test_policy_smt_off_is_fine_when_host_smt_is_off(milan):
    milan.write("sys/devices/system/cpu/smt/active", "0\n")
    assert statuses(assess(milan, policy=0x20000))["policy.smt"] == "pass"


def test_capacity_uses_running_guests_against_max_es_guests():
    caps = HostSevCaps(True, True, 51, 1, 59, 2)
    def facts(running):
        return LibvirtFacts("qemu:///system", "QEMU", "h", 11_003_000, 10_000_002, None, None, running)
    for running, status in ((1, "pass"), (2, "warn")):
        report = host.run_checks(host.HostInputs(local=None, local_skip="remote", libvirt=facts(running), domcaps=caps,
                                                 domcaps_source="test"))
        assert report.by_id("capacity.snp_guests").status == status
        assert report.by_id("libvirt.version").facts == {"version": "11.3.0"}
        assert report.by_id("qemu.version").facts == {"version": "10.0.2"}


def test_remote_uri_skips_local_files(milan):
    assert host.is_remote_uri("qemu+ssh://root@h/system") and host.is_remote_uri("qemu+tls://h/system")
    assert not host.is_remote_uri("qemu:///system") and not host.is_remote_uri("qemu+unix:///system?socket=/x")
    report = readiness.assess(None, uri="qemu+ssh://root@h/system", connection_error="no libvirt connection (x)")
    cpu = report.by_id("cpu.vendor")
    assert cpu.status == "skip" and cpu.message.startswith("remote host (qemu+ssh://root@h/system)")
    assert report.host["remote"] is True and not report.ready


# --- the CLI, through Typer's CliRunner and through snpvirt's own entry point -----------------------

def test_cli_human_and_json_for_a_ready_host(milan):
    runner = CliRunner()
    args = ["host", "check", "--sysroot", str(milan.root), "--host-caps", str(genoa_domcaps())]
    human = runner.invoke(app, args)
    assert human.exit_code == 0, human.output
    assert "pass  cpu.sev_snp" in human.output and human.output.rstrip().endswith("ready for SEV-SNP guests")
    data = runner.invoke(app, args + ["--json"])
    doc = json.loads(data.output)
    assert data.exit_code == 0 and doc["ready"] is True and doc["ok"] is True
    assert {c["name"] for c in doc["results"]} >= set(HINTS) and all(
        set(c) == {"name", "ok", "changed", "status", "message", "hint", "facts"} for c in doc["results"])


def test_cli_not_ready_shows_fixes_and_exits_3(milan, tmp_path):
    domcaps = broken(milan, tmp_path, "kernel.iommu")
    result = CliRunner().invoke(app, ["host", "check", "--sysroot", str(milan.root), "--host-caps", str(domcaps)])
    assert result.exit_code == ExitCode.NOT_READY
    assert "fail  kernel.iommu" in result.output and "fix: remove iommu=pt" in result.output
    doc = json.loads(CliRunner().invoke(app, ["host", "check", "--sysroot", str(milan.root), "--host-caps", str(domcaps),
                                              "--json"]).output)
    assert doc["ready"] is False and [c["name"] for c in doc["results"] if c["status"] == "fail"] == ["kernel.iommu"]
    assert doc["error"]["kind"] == "not_ready" and [c["name"] for c in doc["results"] if not c["ok"]] == ["kernel.iommu"]


def test_cli_policy_from_a_spec(milan, capsys):
    code = run(["host", "check", "--sysroot", str(milan.root), "--host-caps", str(genoa_domcaps()),
                "--policy", str(EXAMPLES / "db-01.toml"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in doc["results"]}
    # db-01 forbids SMT while the fake host runs with SMT; its firmware path is not in the fake host.
    assert code == ExitCode.NOT_READY and checks["policy.smt"]["status"] == "fail"


@pytest.mark.parametrize("args,fragment", [
    (["--policy", "0xzz"], "--policy '0xzz' is neither a spec file nor a hexadecimal policy"),
    (["--sysroot", "/nonexistent"], "is not a directory"),
    (["--host-caps", "/nonexistent.xml", "--sysroot", "/"], "cannot read --host-caps"),
    (["--domcaps", "/nonexistent.xml", "--sysroot", "/"], "cannot read --host-caps"),  # the old name, still read
])
def test_cli_bad_arguments_exit_2(capsys, args, fragment):
    code = run(["host", "check", *args])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT and err.startswith("snpvirt: error: ") and fragment in err and "\nhint: " in err


def test_old_libvirt_and_qemu_fail_with_the_minimum_named():
    caps = HostSevCaps(True, True, 51, 1, 59, 450)
    facts = LibvirtFacts("qemu:///system", "QEMU", "h", 9_000_000, 8_002_000, None, None, 0)
    report = host.run_checks(host.HostInputs(local=None, local_skip="remote", libvirt=facts, domcaps=caps,
                                             domcaps_source="test"))
    assert report.failed() == ["libvirt.version", "qemu.version"]
    assert report.by_id("libvirt.version").message == "libvirt 9.0.0 (SEV-SNP needs >= 10.5.0)"
    assert report.by_id("qemu.version").message == "QEMU 8.2.0 (SEV-SNP needs >= 9.1.0)"


def test_a_domcaps_number_in_other_digits_is_absent_not_a_crash():
    """str.isdigit() accepts '²'; int() does not: a crafted --host-caps must not crash the parser."""
    from snpvirt.host import domcaps

    caps = domcaps.parse_domcaps("<domainCapabilities><features><sev supported='yes'><cbitpos>²</cbitpos>"
                                 "<reducedPhysBits>1</reducedPhysBits></sev></features></domainCapabilities>")
    assert caps.cbitpos is None and caps.reduced_phys_bits == 1


# --- what readiness.assess hands the checks: a connection's facts, its domcaps, or why they are missing ---

class CapturedConnection:
    """A libvirt connection as readiness sees it (anything with libvirt_facts()): facts captured on a
    Genoa host, libvirt 11.3 and QEMU 10.0, with its real domain capabilities."""

    def __init__(self, **changes):
        self.facts = LibvirtFacts(**{"uri": "qemu:///system", "driver": "QEMU", "hostname": "genoa-01",
                                     "lib_version": 11_003_000, "hypervisor_version": 10_000_000,
                                     "domcaps_xml": genoa_domcaps().read_text(), "running_es_snp_guests": 0, **changes})

    def libvirt_facts(self):
        return self.facts


def test_a_connections_facts_and_domain_capabilities_are_what_is_checked(milan):
    report = readiness.assess(CapturedConnection(), sysroot=str(milan.root))
    assert report.ready, report.summary
    assert report.by_id("domcaps.sev_snp").message == "qemu:///system: <launchSecurity> lists sev-snp"
    assert report.by_id("domcaps.sev").facts["source"] == "qemu:///system"
    assert report.by_id("libvirt.version").message == "libvirt 11.3.0"
    assert report.by_id("capacity.snp_guests").status == "pass"
    assert report.host == {"hostname": "genoa-01", "uri": "qemu:///system", "libvirt_error": None, "remote": False,
                           "sysroot": str(milan.root), "kernel": "6.12.0-snp-amd64",
                           "cpu": "AMD EPYC 7713P 64-Core Processor"}


def test_a_domcaps_file_wins_over_the_connections(milan, tmp_path):
    no_snp = vector("virt-manager/kvm-x86_64-domcaps-amd-sev.xml")
    report = readiness.assess(CapturedConnection(), sysroot=str(milan.root), domcaps_file=no_snp)
    assert report.by_id("domcaps.sev_snp").message == f"--host-caps {no_snp}: <launchSecurity> does not list sev-snp"


def test_domain_capabilities_libvirt_could_not_give_leave_the_host_not_ready(milan):
    connection = CapturedConnection(domcaps_xml=None, domcaps_error="QEMU binary not found")
    report = readiness.assess(connection, sysroot=str(milan.root))
    assert not report.ready and report.failed() == []
    assert report.by_id("domcaps.sev_snp").message == "domain capabilities unavailable: QEMU binary not found"
    assert report.summary == ("not ready: domcaps.sev_snp could not be checked "
                              "(domain capabilities unavailable: QEMU binary not found)")


def test_malformed_domain_capabilities_name_where_they_came_from(milan, tmp_path):
    with pytest.raises(BadInputError, match=r"^qemu:///system: not well-formed XML"):
        readiness.assess(CapturedConnection(domcaps_xml="<domainCapabilities>"), sysroot=str(milan.root))
    broken = tmp_path / "domcaps.xml"
    broken.write_text("<domainCapabilities>")
    with pytest.raises(BadInputError, match=f"^--host-caps {broken}: not well-formed XML"):
        readiness.assess(None, sysroot=str(milan.root), domcaps_file=broken)


def test_an_unreadable_domcaps_file_is_bad_input_with_how_to_save_one(milan, tmp_path):
    with pytest.raises(BadInputError) as error:
        readiness.assess(None, sysroot=str(milan.root), domcaps_file=tmp_path / "missing.xml")
    assert (error.value.message, error.value.hint) == (
        f"cannot read --host-caps {tmp_path / 'missing.xml'}: does not exist",
        "check the path")


def test_a_failed_connection_is_the_reason_for_every_libvirt_check(milan):
    report = readiness.assess(None, uri="qemu:///system", connection_error="cannot connect to qemu:///system",
                              sysroot=str(milan.root))
    for check_id in ("libvirt.version", "qemu.version", "domcaps.sev_snp"):
        assert report.by_id(check_id).message == "no libvirt connection", check_id
    assert report.host["libvirt_error"] == "cannot connect to qemu:///system" and report.host["uri"] == "qemu:///system"
    remote = readiness.assess(None, uri="qemu+ssh://root@h/system", connection_error="no route to host")
    assert remote.host["hostname"] is None, "a remote host that could not be reached has no name here"


def test_without_a_connection_or_domcaps_the_message_says_what_to_give(milan):
    report = readiness.assess(None, sysroot=str(milan.root))
    assert report.by_id("domcaps.sev_snp").message == "no domain capabilities: give --connect URI or --host-caps FILE"
    assert report.host["hostname"] is None, "a captured sysroot is not this machine"


def test_this_machine_is_assessed_by_default_and_named():
    import platform
    report = readiness.assess(None)
    assert report.host["sysroot"] == "/" and report.host["hostname"] == platform.node()
    assert report.by_id("libvirt.version").message == "no libvirt connection"


def test_a_remote_host_reports_no_local_facts():
    report = readiness.assess(CapturedConnection(uri="qemu+ssh://root@genoa-01/system"))
    assert report.host == {"hostname": "genoa-01", "uri": "qemu+ssh://root@genoa-01/system", "libvirt_error": None,
                           "remote": True, "sysroot": None, "kernel": None, "cpu": None}
    assert report.by_id("cpu.vendor").message == ("remote host (qemu+ssh://root@genoa-01/system): "
                                                   "only what libvirt reports is checked")
    assert report.ready, report.summary


def test_an_unreadable_smt_state_says_which_file(milan):
    milan.remove("sys/devices/system/cpu/smt/active")
    report = assess(milan, policy=0x30000)
    assert report.by_id("policy.smt").message == "/sys/devices/system/cpu/smt/active does not exist"



# --- the lifecycle gate's host (readiness.gate_report): a captured one only for libvirt's test driver ---

class CapturedHypervisor(CapturedConnection):
    """The captured Genoa host's libvirt as the gate sees a real hypervisor: not a simulation, qemu:///system."""

    simulated = False
    actual_uri = "qemu:///system"


def test_the_gate_judges_a_real_hypervisor_by_what_it_reports():
    report = readiness.gate_report(CapturedHypervisor())
    assert (report.host["uri"], report.host["sysroot"]) == ("qemu:///system", "/"), "this host's own files"
    assert report.by_id("libvirt.version").message == "libvirt 11.3.0"
    assert report.by_id("domcaps.sev_snp").message == "qemu:///system: <launchSecurity> lists sev-snp"


def test_the_gate_judges_the_captured_host_given_for_libvirts_test_driver(milan):
    with Connection("test:///default") as conn:
        assert readiness.gate_report(conn) is None, "no captured host: a simulation has no host to judge"
        report = readiness.gate_report(conn, sysroot=milan.root, domcaps_file=genoa_domcaps())
        assert report.ready, report.summary
        assert (report.host["uri"], report.host["sysroot"]) == ("test:///default", str(milan.root))
        assert report.by_id("domcaps.sev").facts["source"] == f"--host-caps {genoa_domcaps()}"
        assert report.by_id("libvirt.version").message.startswith("libvirt "), "the test driver's libvirt, connected"
        own = readiness.gate_report(conn, sysroot=milan.root)
        assert "domcaps.sev_snp" in own.failed(), "without --host-caps the test driver's domcaps speak: no SEV"


def test_a_captured_host_is_refused_for_a_real_hypervisor_and_must_be_a_folder(milan, tmp_path):
    with pytest.raises(BadInputError) as real:
        readiness.gate_report(CapturedHypervisor(), sysroot=milan.root, domcaps_file=genoa_domcaps())
    assert (real.value.message, real.value.hint) == (
        "--sysroot describes a captured host; qemu:///system is a real hypervisor, and the readiness gate checks "
        "that host's own facts", "drop --sysroot (it is for libvirt's test driver, e.g. --connect test:///default)")
    with Connection("test:///default") as conn, pytest.raises(BadInputError) as missing:
        readiness.gate_report(conn, sysroot=tmp_path / "missing")
    assert (missing.value.message, missing.value.hint) == (
        f"--sysroot {tmp_path / 'missing'} is not a directory", "give the folder that holds the captured sys/, proc/, dev/")

# --- every check's words, for a ready host and for each broken fact: what an operator acts on ---------

KVM_AMD_FIX = ("add 'options kvm_amd sev=1 sev_es=1 sev_snp=1' to /etc/modprobe.d/kvm-amd.conf, then reload kvm_amd "
               "(modprobe -r kvm_amd; modprobe kvm_amd) or reboot; if it stays N see dmesg | grep -i sev (BIOS, ASIDs, "
               "firmware >= 1.51)")
FIRMWARE = "/usr/share/edk2/ovmf/OVMF.amdsev.fd"
DESCRIPTOR = "/usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json"
READY_MILAN = [
    ("cpu.vendor", "pass", "AuthenticAMD AMD EPYC 7713P 64-Core Processor", "",
     {"vendor": "AuthenticAMD", "model": "AMD EPYC 7713P 64-Core Processor"}),
    ("cpu.sev", "pass", "CPUID 0x8000001F EAX bit 1 is 1", "", {"eax": "0x101fd3f"}),
    ("cpu.sev_es", "pass", "CPUID 0x8000001F EAX bit 3 is 1", "", {"eax": "0x101fd3f"}),
    ("cpu.sev_snp", "pass", "CPUID 0x8000001F EAX bit 4 is 1", "", {"eax": "0x101fd3f"}),
    ("cpu.cbitpos", "pass", "C-bit 51, host physical-address reduction 5; libvirt agrees", "",
     {"cbitpos": 51, "phys_addr_reduction": 5, "vmpls": 4}),
    ("asid.snp", "pass", "127 ASIDs for SEV-ES/SNP guests (1..127)", "", {"snp_asids": 127, "min_sev_asid": 128, "max_asid": 509}),
    ("kvm.dev", "pass", "/dev/kvm present", "", {}),
    ("kvm_amd.sev", "pass", "sev = Y", "", {"value": "Y"}),
    ("kvm_amd.sev_es", "pass", "sev_es = Y", "", {"value": "Y"}),
    ("kvm_amd.sev_snp", "pass", "sev_snp = Y", "", {"value": "Y"}),
    ("psp.dev_sev", "pass", "/dev/sev present, read-write for QEMU user libvirt-qemu", "",
     {"mode": "0660", "uid": 0, "gid": 106, "qemu_user": "libvirt-qemu"}),
    ("kernel.version", "pass", "6.12.0-snp-amd64 (>= 6.11)", "", {"release": "6.12.0-snp-amd64"}),
    ("kernel.iommu", "pass", "IOMMU active (ivhd0), no passthrough or v2 page table", "", {"units": ["ivhd0"]}),
    ("libvirt.version", "pass", "libvirt 11.3.0", "", {"version": "11.3.0"}),
    ("qemu.version", "pass", "QEMU 10.0.0", "", {"version": "10.0.0"}),
    ("domcaps.sev", "pass", "SEV supported: cbitpos 51, reducedPhysBits 1, maxGuests 59, maxESGuests 450", "",
     {"cbitpos": 51, "reduced_phys_bits": 1, "max_guests": 59, "max_es_guests": 450, "source": "qemu:///system"}),
    ("domcaps.sev_snp", "pass", "qemu:///system: <launchSecurity> lists sev-snp", "", {"source": "qemu:///system"}),
    ("firmware.snp", "pass", f"{FIRMWARE} (descriptor {DESCRIPTOR})", "",
     {"descriptor": DESCRIPTOR, "firmware": FIRMWARE, "kernel_hashes": True}),
    ("capacity.snp_guests", "pass", "0 of 450 SEV-ES/SNP guests running, 450 free", "",
     {"running": 0, "max_es_guests": 450, "free": 450}),
    ("policy.smt", "pass", "SMT active on the host; policy allows it", "", {"smt_active": True}),
    ("policy.debug", "pass", "DEBUG is clear", "", {}),
    ("policy.bits", "pass", "policy 0x30000 uses only bits every SNP kernel accepts", "", {}),
]


def as_rows(report):
    return [(c.check_id, c.status, c.message, c.hint, c.facts) for c in report.checks]


def test_a_ready_host_reports_every_check_word_for_word(milan):
    report = readiness.assess(CapturedConnection(), sysroot=str(milan.root), policy=0x30000)
    assert as_rows(report) == READY_MILAN
    assert (report.ready, report.summary) == (True, "ready for SEV-SNP guests")


BROKEN_SAYS = {
    "asid.snp": ("no ASIDs for SEV-ES/SNP guests (minimum SEV non-ES ASID is 1)",
                 "BIOS: raise 'SEV-ES ASID Space Limit' / 'Minimum SEV non-ES ASID' (e.g. to 100)",
                 {"snp_asids": 0, "min_sev_asid": 1, "max_asid": 509}),
    "cpu.cbitpos": ("C-bit 51, host physical-address reduction 5, but libvirt reports cbitpos 47",
                    "libvirt's cached QEMU capabilities are stale: restart libvirtd (or virtqemud) to re-probe",
                    {"cbitpos": 51, "phys_addr_reduction": 5, "vmpls": 4}),
    "cpu.sev": ("CPUID 0x8000001F EAX bit 1 is 0", "enable SME and SEV in the BIOS (SMEE, 'SEV Control')", {"eax": "0x101fd3d"}),
    "cpu.sev_es": ("CPUID 0x8000001F EAX bit 3 is 0", "enable SEV-ES in the BIOS", {"eax": "0x101fd37"}),
    "cpu.sev_snp": ("CPUID 0x8000001F EAX bit 4 is 0", "needs EPYC 7003 (Milan) or newer; BIOS: enable 'SEV-SNP Support' "
                    "and 'SNP Memory Coverage'", {"eax": "0x1780f"}),
    "cpu.vendor": ("GenuineIntel AMD EPYC 7713P 64-Core Processor", "SEV-SNP needs an AMD EPYC 7003 (Milan) or newer CPU",
                   {"vendor": "GenuineIntel", "model": "AMD EPYC 7713P 64-Core Processor"}),
    "firmware.snp": ("no QEMU firmware descriptor offers amd-sev-snp (descriptors: 45-ovmf-sev-stateless.json)",
                     "install an OVMF AmdSev build with its descriptor (Fedora: edk2-ovmf's OVMF.amdsev.fd; Ubuntu: ovmf), "
                     "or name an OVMF.amdsev.fd as the spec's firmware",
                     {"descriptors": ["/usr/share/qemu/firmware/45-ovmf-sev-stateless.json"]}),
    "kernel.iommu": ("kernel command line has iommu=pt: SNP needs the IOMMU on, translated, with v1 page tables",
                     "remove iommu=pt from GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot",
                     {"arguments": ["iommu=pt"]}),
    "kvm.dev": ("/dev/kvm absent", "enable SVM (AMD-V) in the BIOS and load kvm_amd: modprobe kvm_amd", {}),
    "kvm_amd.sev": ("sev = N", KVM_AMD_FIX, {"value": "N"}),
    "kvm_amd.sev_snp": ("sev_snp = N", KVM_AMD_FIX, {"value": "N"}),
    "psp.dev_sev": ("/dev/sev is absent", "load the PSP driver (modprobe ccp) and check dmesg | grep -i 'sev' for "
                    "firmware init errors", {}),
}


@pytest.mark.parametrize("check_id", sorted(BROKEN_SAYS))
def test_each_broken_fact_is_reported_word_for_word(milan, tmp_path, check_id):
    report = assess(milan, broken(milan, tmp_path, check_id))
    check = report.by_id(check_id)
    assert (check.status, check.message, check.hint, check.facts) == ("fail", *BROKEN_SAYS[check_id])
    assert report.summary == f"not ready: 1 check(s) failed: {check_id}"


def test_domcaps_without_snp_says_which_source_and_what_it_needs(milan):
    source = vector("virt-manager/kvm-x86_64-domcaps-amd-sev.xml")
    check = assess(milan, source).by_id("domcaps.sev_snp")
    assert (check.message, check.hint, check.facts) == (
        f"--host-caps {source}: <launchSecurity> does not list sev-snp",
        "needs libvirt >= 10.5, QEMU >= 9.1 and kvm_amd sev_snp=Y; restart libvirtd after fixing them",
        {"source": f"--host-caps {source}"})


# --- each check's other branches, word for word ----------------------------------------------------

def _w(path, text):
    return lambda fake: fake.write(path, text)


def _rm(path):
    return lambda fake: fake.remove(path)


def _all(*edits):
    def edit(fake):
        for one in edits:
            one(fake)
    return edit


def _dev_sev(uid, gid, mode):
    def edit(fake):
        os.chown(fake.root / "dev/sev", uid, gid)
        (fake.root / "dev/sev").chmod(mode)
    return edit


NO_SEV = vector("virt-manager/kvm-x86_64-domcaps-latest.xml")
# case: (check, how the host differs from the ready Milan one, what else assess() gets)
BRANCHES = {
    'kernel 6.11 exactly': ("kernel.version", _w("proc/sys/kernel/osrelease", "6.11.0\n"), {}),
    'kernel 6.10 with SNP backport': ("kernel.version", _w("proc/sys/kernel/osrelease", "6.10.5-vendor\n"), {}),
    'kernel 5.15 without SNP': ("kernel.version",
                                _all(_w("proc/sys/kernel/osrelease", "5.15.0\n"), _rm("sys/module/kvm_amd/parameters/sev_snp")),
                                {}),
    'kernel release unparseable': ("kernel.version", _w("proc/sys/kernel/osrelease", "weird\n"), {}),
    'kernel release unreadable': ("kernel.version", _rm("proc/sys/kernel/osrelease"), {}),
    'psp: QEMU user unknown': ("psp.dev_sev", _w("etc/passwd", "root:x:0:0::/root:/bin/sh\n"), {}),
    'psp: owner read-write': ("psp.dev_sev", _dev_sev(64055, 0, 0o600), {}),
    'psp: world read-write': ("psp.dev_sev", _dev_sev(0, 0, 0o606), {}),
    'psp: group read only': ("psp.dev_sev", _dev_sev(0, 106, 0o640), {}),
    'psp: owner without write': ("psp.dev_sev", _dev_sev(64055, 0, 0o400), {}),
    'iommu off and v2': ("kernel.iommu", _w("proc/cmdline", "root=/dev/sda1 amd_iommu=off amd_iommu=pgtbl_v2\n"), {}),
    'iommu v1 is fine': ("kernel.iommu", _w("proc/cmdline", "root=/dev/sda1 amd_iommu=pgtbl_v1\n"), {}),
    'no iommu unit': ("kernel.iommu", _rm("sys/class/iommu/ivhd0"), {}),
    'cmdline unreadable': ("kernel.iommu", _rm("proc/cmdline"), {}),
    'smt active, policy forbids': ("policy.smt", None, {"policy": 0x20000}),
    'smt off, policy forbids': ("policy.smt", _w("sys/devices/system/cpu/smt/active", "0\n"), {"policy": 0x20000}),
    'smt off, policy allows': ("policy.smt", _w("sys/devices/system/cpu/smt/active", "0\n"), {"policy": 0x30000}),
    'no cpuid: cbitpos': ("cpu.cbitpos", _rm("dev/cpu/0/cpuid"), {}),
    'no cpuid: asid': ("asid.snp",
                       _all(_rm("dev/cpu/0/cpuid"), _w("proc/cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: sev sev_es sev_snp\n")),
                       {}),
    "cbitpos without libvirt's": ("cpu.cbitpos", None, {"domcaps_file": None}),
    'vendor unknown': ("cpu.vendor", _all(_rm("dev/cpu/0/cpuid"), _w("proc/cpuinfo", "processor\t: 0\n")), {}),
    'vendor from cpuinfo': ("cpu.vendor", _rm("dev/cpu/0/cpuid"), {}),
    'debug allowed': ("policy.debug", None, {"policy": 0xB0000}),
    'policy bit 17 clear': ("policy.bits", None, {"policy": 0x24}),
    'policy with new bits': ("policy.bits", None, {"policy": 0x70000}),
    'policy ok': ("policy.bits", None, {"policy": 0x30000}),
    'sev_snp flag absent in cpuinfo': ("cpu.sev_snp",
                                       _all(_rm("dev/cpu/0/cpuid"), _w("proc/cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: sev sev_es\n")),
                                       {}),
    'cpuinfo unreadable too': ("cpu.sev",
                               _all(_rm("dev/cpu/0/cpuid"), _w("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n")),
                               {}),
    'kvm_amd not loaded': ("kvm_amd.sev", _rm("sys/module/kvm_amd"), {}),
    'sev_es off while snp on': ("kvm_amd.sev_es", _w("sys/module/kvm_amd/parameters/sev_es", "N\n"), {}),
    'sev_es 1': ("kvm_amd.sev_es", _w("sys/module/kvm_amd/parameters/sev_es", "1\n"), {}),
    'sev_es off, snp off': ("kvm_amd.sev_es",
                            _all(_w("sys/module/kvm_amd/parameters/sev_es", "N\n"), _w("sys/module/kvm_amd/parameters/sev_snp", "N\n")),
                            {}),
    'no sev_snp parameter': ("kvm_amd.sev_snp", _rm("sys/module/kvm_amd/parameters/sev_snp"), {}),
    'spec firmware is fine': ("firmware.snp", None, {"spec_firmware": FIRMWARE}),
    'spec firmware missing': ("firmware.snp", None, {"spec_firmware": "/srv/none.fd"}),
    'descriptor file missing': ("firmware.snp", _rm(FIRMWARE), {}),
    'domcaps no sev': ("domcaps.sev", None, {"domcaps_file": NO_SEV}),
    'capacity full': ("capacity.snp_guests",
                      None,
                      {"conn": CapturedConnection(running_es_snp_guests=450), "domcaps_file": None}),
    'capacity unknown': ("capacity.snp_guests", None, {}),
    'qemu other driver': ("qemu.version", None, {"conn": CapturedConnection(driver="Test"), "domcaps_file": None}),
    'qemu 9.1 exactly': ("qemu.version",
                         None,
                         {"conn": CapturedConnection(hypervisor_version=9_001_000), "domcaps_file": None}),
    'libvirt 10.5 exactly': ("libvirt.version",
                             None,
                             {"conn": CapturedConnection(lib_version=10_005_000), "domcaps_file": None}),
    'libvirt 10.4.9': ("libvirt.version",
                       None,
                       {"conn": CapturedConnection(lib_version=10_004_009), "domcaps_file": None}),
    # What an operator reads when a fact is read another way or not at all (issue 10's surviving mutants).
    'vendor unknown, cpuinfo unreadable': ("cpu.vendor", _all(_rm("dev/cpu/0/cpuid"), _rm("proc/cpuinfo")), {}),
    'vendor from cpuid, no model name': ("cpu.vendor", _w("proc/cpuinfo", "vendor_id\t: AuthenticAMD\nflags\t\t: sev\n"), {}),
    'sev_snp flag present in cpuinfo': ("cpu.sev_snp", _rm("dev/cpu/0/cpuid"), {}),
    'sev_es off, snp 1': ("kvm_amd.sev_es",
                          _all(_w("sys/module/kvm_amd/parameters/sev_es", "N\n"), _w("sys/module/kvm_amd/parameters/sev_snp", "1\n")),
                          {}),
    'kernel 6.10 with SNP backport as 1': ("kernel.version",
                                           _all(_w("proc/sys/kernel/osrelease", "6.10.5-vendor\n"),
                                                _w("sys/module/kvm_amd/parameters/sev_snp", "1\n")),
                                           {}),
    # Each way to read-write is looked at alone: an execute bit next to it changes nothing.
    'psp: owner read-write, others execute': ("psp.dev_sev", _dev_sev(64055, 0, 0o601), {}),
    'psp: group read-write, others execute': ("psp.dev_sev", _dev_sev(0, 106, 0o061), {}),
    'psp: world read-write-execute': ("psp.dev_sev", _dev_sev(0, 0, 0o007), {}),
    # The kernel reads amd_iommu= as a comma list: pgtbl_v2 counts wherever it is, whatever its neighbours.
    'iommu v2 after an option with =': ("kernel.iommu", _w("proc/cmdline", "root=/dev/sda1 amd_iommu=x=y,pgtbl_v2\n"), {}),
    'iommu v2 before an option with =': ("kernel.iommu", _w("proc/cmdline", "root=/dev/sda1 amd_iommu=pgtbl_v2,x=y\n"), {}),
    'two iommu units': ("kernel.iommu", lambda fake: (fake.root / "sys/class/iommu/ivhd1").mkdir(), {}),
    'policy with two new bits': ("policy.bits", None, {"policy": 0x270000}),
}
BRANCH_SAYS = {  # (status, message, hint, facts)
    'kernel 6.11 exactly': ('pass', '6.11.0 (>= 6.11)', '', {'release': '6.11.0'}),
    'kernel 6.10 with SNP backport': ('warn',
                                      '6.10.5-vendor is older than 6.11 but kvm_amd reports SNP (a backport)',
                                      'keep QEMU and this kernel in lock-step: use the QEMU your kernel vendor pairs with it',
                                      {'release': '6.10.5-vendor'}),
    'kernel 5.15 without SNP': ('fail',
                                '5.15.0 is older than 6.11 (no upstream SEV-SNP host support)',
                                'install a kernel >= 6.11 (Debian 12: linux-image-amd64 from bookworm-backports)',
                                {'release': '5.15.0'}),
    'kernel release unparseable': ('skip', "cannot parse 'weird'", '', {}),
    'kernel release unreadable': ('skip', '/proc/sys/kernel/osrelease does not exist', '', {}),
    'psp: QEMU user unknown': ('pass',
                               '/dev/sev present (QEMU user unknown here; libvirt grants it access)',
                               '',
                               {'mode': '0660', 'uid': 0, 'gid': 106, 'qemu_user': None}),
    'psp: owner read-write': ('pass',
                              '/dev/sev present, read-write for QEMU user libvirt-qemu',
                              '',
                              {'mode': '0600', 'uid': 64055, 'gid': 0, 'qemu_user': 'libvirt-qemu'}),
    'psp: world read-write': ('pass',
                              '/dev/sev present, read-write for QEMU user libvirt-qemu',
                              '',
                              {'mode': '0606', 'uid': 0, 'gid': 0, 'qemu_user': 'libvirt-qemu'}),
    'psp: group read only': ('warn',
                             '/dev/sev (0640) is not read-write for QEMU user libvirt-qemu',
                             'libvirt normally grants it per domain; if QEMU cannot open it: chgrp kvm /dev/sev; chmod 0660 /dev/sev (udev rule: KERNEL=="sev", GROUP="kvm", MODE="0660")',
                             {'mode': '0640', 'uid': 0, 'gid': 106, 'qemu_user': 'libvirt-qemu'}),
    'psp: owner without write': ('warn',
                                 '/dev/sev (0400) is not read-write for QEMU user libvirt-qemu',
                                 'libvirt normally grants it per domain; if QEMU cannot open it: chgrp kvm /dev/sev; chmod 0660 /dev/sev (udev rule: KERNEL=="sev", GROUP="kvm", MODE="0660")',
                                 {'mode': '0400', 'uid': 64055, 'gid': 0, 'qemu_user': 'libvirt-qemu'}),
    'iommu off and v2': ('fail',
                         'kernel command line has amd_iommu=off amd_iommu=pgtbl_v2: SNP needs the IOMMU on, translated, with v1 page tables',
                         'remove amd_iommu=off amd_iommu=pgtbl_v2 from GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot',
                         {'arguments': ['amd_iommu=off', 'amd_iommu=pgtbl_v2']}),
    'iommu v1 is fine': ('pass', 'IOMMU active (ivhd0), no passthrough or v2 page table', '', {'units': ['ivhd0']}),
    'no iommu unit': ('fail',
                      'no IOMMU is active (/sys/class/iommu is empty)',
                      'enable the IOMMU in the BIOS (AMD-Vi / IOMMU: Enabled) and reboot',
                      {'units': []}),
    'cmdline unreadable': ('skip', '/proc/cmdline does not exist', '', {}),
    'smt active, policy forbids': ('fail',
                                   'policy 0x20000 forbids SMT but host SMT is active',
                                   'set snp.policy.smt = true, or disable SMT (BIOS, or: echo off > /sys/devices/system/cpu/smt/control)',
                                   {'smt_active': True}),
    'smt off, policy forbids': ('pass', 'SMT off on the host; policy forbids it', '', {'smt_active': False}),
    'smt off, policy allows': ('pass', 'SMT off on the host; policy allows it', '', {'smt_active': False}),
    'no cpuid: cbitpos': ('skip', 'needs CPUID: /dev/cpu/0/cpuid is absent', 'modprobe cpuid', {}),
    'no cpuid: asid': ('skip', 'needs CPUID: /dev/cpu/0/cpuid is absent', 'modprobe cpuid', {}),
    "cbitpos without libvirt's": ('pass', 'C-bit 51, host physical-address reduction 5 (no libvirt cbitpos to compare)', '', {'cbitpos': 51, 'phys_addr_reduction': 5, 'vmpls': 4}),
    'vendor unknown': ('skip', 'CPU vendor unknown', '', {}),
    'vendor from cpuinfo': ('pass',
                            'AuthenticAMD AMD EPYC 7713P 64-Core Processor',
                            '',
                            {'vendor': 'AuthenticAMD', 'model': 'AMD EPYC 7713P 64-Core Processor'}),
    'debug allowed': ('warn',
                      'policy 0xb0000 allows debugging: the host can read guest memory',
                      'clear snp.policy.debug for any guest with real data',
                      {}),
    'policy bit 17 clear': ('fail',
                            'policy 0x24 has bit 17 clear; SEV-SNP requires it set (KVM rejects the launch with -EINVAL)',
                            'use 0x20024 (bit 17 added), e.g. 0x30000 for SMT allowed',
                            {}),
    'policy with new bits': ('warn',
                             'policy sets migrate_ma (0x40000), which KVM before the 2025 policy extensions rejects (SNP_LAUNCH_START -EINVAL)',
                             'make sure the host kernel accepts these bits, or clear them',
                             {'bits': ['migrate_ma']}),
    'policy ok': ('pass', 'policy 0x30000 uses only bits every SNP kernel accepts', '', {}),
    'sev_snp flag absent in cpuinfo': ('fail',
                                       "cpuinfo flag 'sev_snp' absent (/dev/cpu/0/cpuid is absent; from /proc/cpuinfo flags instead)",
                                       "needs EPYC 7003 (Milan) or newer; BIOS: enable 'SEV-SNP Support' and 'SNP Memory Coverage' (or modprobe cpuid to read CPUID directly)",
                                       {'source': '/proc/cpuinfo'}),
    'cpuinfo unreadable too': ('skip', 'cannot read CPUID or /proc/cpuinfo (/dev/cpu/0/cpuid is absent)', '', {}),
    'kvm_amd not loaded': ('fail', 'kvm_amd is not loaded', 'modprobe kvm_amd', {}),
    'sev_es off while snp on': ('warn',
                                'sev_es = N: SEV-ES guests unavailable while SNP is on',
                                'nothing to do for SNP guests; SEV-ES guests need firmware without the CVE-2025-48514 change',
                                {'value': 'N'}),
    'sev_es 1': ('pass', 'sev_es = 1', '', {'value': '1'}),
    'sev_es off, snp off': ('fail',
                            'sev_es = N',
                            "add 'options kvm_amd sev=1 sev_es=1 sev_snp=1' to /etc/modprobe.d/kvm-amd.conf, then reload kvm_amd (modprobe -r kvm_amd; modprobe kvm_amd) or reboot; if it stays N see dmesg | grep -i sev (BIOS, ASIDs, firmware >= 1.51)",
                            {'value': 'N'}),
    'no sev_snp parameter': ('fail',
                             "kvm_amd has no 'sev_snp' parameter: this kernel lacks SEV-SNP host support",
                             'install a kernel >= 6.11 with CONFIG_KVM_AMD_SEV=y',
                             {}),
    'spec firmware is fine': ('pass',
                              "/usr/share/edk2/ovmf/OVMF.amdsev.fd (the spec's firmware; carries OVMF SEV metadata)",
                              '',
                              {'firmware': '/usr/share/edk2/ovmf/OVMF.amdsev.fd', 'kernel_hashes': True}),
    'spec firmware missing': ('fail',
                              "the spec's firmware /srv/none.fd: /srv/none.fd does not exist",
                              "point the spec's firmware at an SEV-capable OVMF: the AmdSev build, e.g. OVMF.amdsev.fd",
                              {'firmware': '/srv/none.fd'}),
    'descriptor file missing': ('fail',
                                'descriptor /usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json names /usr/share/edk2/ovmf/OVMF.amdsev.fd: /usr/share/edk2/ovmf/OVMF.amdsev.fd does not exist',
                                'install the firmware package that provides it (Fedora: edk2-ovmf; Ubuntu: ovmf)',
                                {'descriptor': '/usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json', 'firmware': '/usr/share/edk2/ovmf/OVMF.amdsev.fd'}),
    'domcaps no sev': ('fail',
                       f"--host-caps {NO_SEV}: <sev supported='no'>",
                       'libvirt found no usable SEV in QEMU/KVM: fix the failed CPU/kvm_amd/psp checks, then restart libvirtd so it probes QEMU again',
                       {'cbitpos': None, 'reduced_phys_bits': None, 'max_guests': None, 'max_es_guests': None, 'source': f'--host-caps {NO_SEV}'}),
    'capacity full': ('warn',
                      'no free SEV-ES/SNP ASIDs: 450 of 450 in use',
                      'stop an SEV-ES/SNP guest, or raise the SEV-ES ASID limit in the BIOS',
                      {'running': 450, 'max_es_guests': 450, 'free': 0}),
    'capacity unknown': ('skip', 'needs maxESGuests and the running domains from a libvirt connection', '', {}),
    'qemu other driver': ('skip', "the connection's driver is Test, not QEMU", '', {}),
    'qemu 9.1 exactly': ('pass', 'QEMU 9.1.0', '', {'version': '9.1.0'}),
    'libvirt 10.5 exactly': ('pass', 'libvirt 10.5.0', '', {'version': '10.5.0'}),
    'libvirt 10.4.9': ('fail',
                       'libvirt 10.4.9 (SEV-SNP needs >= 10.5.0)',
                       'install libvirt >= 10.5 (Debian 12: bookworm-backports; Ubuntu >= 25.04)',
                       {'version': '10.4.9'}),
    'vendor unknown, cpuinfo unreadable': ('skip', '/proc/cpuinfo does not exist', '', {}),
    'vendor from cpuid, no model name': ('pass', 'AuthenticAMD', '', {'vendor': 'AuthenticAMD', 'model': ''}),
    'sev_snp flag present in cpuinfo': ('pass',
                                        "cpuinfo flag 'sev_snp' present (/dev/cpu/0/cpuid is absent; from /proc/cpuinfo flags instead)",
                                        'modprobe cpuid to read CPUID directly',
                                        {'source': '/proc/cpuinfo'}),
    'sev_es off, snp 1': ('warn',
                          'sev_es = N: SEV-ES guests unavailable while SNP is on',
                          'nothing to do for SNP guests; SEV-ES guests need firmware without the CVE-2025-48514 change',
                          {'value': 'N'}),
    'kernel 6.10 with SNP backport as 1': ('warn',
                                           '6.10.5-vendor is older than 6.11 but kvm_amd reports SNP (a backport)',
                                           'keep QEMU and this kernel in lock-step: use the QEMU your kernel vendor pairs with it',
                                           {'release': '6.10.5-vendor'}),
    'psp: owner read-write, others execute': ('pass',
                                              '/dev/sev present, read-write for QEMU user libvirt-qemu',
                                              '',
                                              {'mode': '0601', 'uid': 64055, 'gid': 0, 'qemu_user': 'libvirt-qemu'}),
    'psp: group read-write, others execute': ('pass',
                                              '/dev/sev present, read-write for QEMU user libvirt-qemu',
                                              '',
                                              {'mode': '0061', 'uid': 0, 'gid': 106, 'qemu_user': 'libvirt-qemu'}),
    'psp: world read-write-execute': ('pass',
                                      '/dev/sev present, read-write for QEMU user libvirt-qemu',
                                      '',
                                      {'mode': '0007', 'uid': 0, 'gid': 0, 'qemu_user': 'libvirt-qemu'}),
    'iommu v2 after an option with =': ('fail',
                                        'kernel command line has amd_iommu=x=y,pgtbl_v2: SNP needs the IOMMU on, translated, with v1 page tables',
                                        'remove amd_iommu=x=y,pgtbl_v2 from GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot',
                                        {'arguments': ['amd_iommu=x=y,pgtbl_v2']}),
    'iommu v2 before an option with =': ('fail',
                                         'kernel command line has amd_iommu=pgtbl_v2,x=y: SNP needs the IOMMU on, translated, with v1 page tables',
                                         'remove amd_iommu=pgtbl_v2,x=y from GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot',
                                         {'arguments': ['amd_iommu=pgtbl_v2,x=y']}),
    'two iommu units': ('pass', 'IOMMU active (ivhd0, ivhd1), no passthrough or v2 page table', '', {'units': ['ivhd0', 'ivhd1']}),
    'policy with two new bits': ('warn',
                                 'policy sets migrate_ma, cxl_allow (0x240000), which KVM before the 2025 policy extensions rejects (SNP_LAUNCH_START -EINVAL)',
                                 'make sure the host kernel accepts these bits, or clear them',
                                 {'bits': ['migrate_ma', 'cxl_allow']}),
}


@pytest.mark.parametrize("case", list(BRANCHES))
def test_each_branch_of_each_check_says_what_it_found(tmp_path, case):
    check_id, edit, inputs = BRANCHES[case]
    fake = FakeHost(tmp_path / "host")
    if edit:
        edit(fake)
    inputs = {"domcaps_file": genoa_domcaps(), **inputs}
    check = readiness.assess(inputs.pop("conn", None), sysroot=str(fake.root), **inputs).by_id(check_id)
    assert (check.status, check.message, check.hint, check.facts) == BRANCH_SAYS[case]


DESCRIPTOR_FILE = "usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json"


def _descriptor(mapping, features=("amd-sev-snp",)):
    return _w(DESCRIPTOR_FILE, json.dumps({"features": list(features), "mapping": mapping}))


def _two_descriptors_without_snp(fake):
    fake.remove(DESCRIPTOR_FILE)
    for name, file in (("10-a.json", "/x.fd"), ("20-b.json", "/y.fd")):
        fake.write(f"usr/share/qemu/firmware/{name}", json.dumps({"features": [], "mapping": {"device": "memory",
                                                                                                 "filename": file}}))


FIRMWARE_HINT = ("install an OVMF AmdSev build with its descriptor (Fedora: edk2-ovmf's OVMF.amdsev.fd; Ubuntu: ovmf), "
                 "or name an OVMF.amdsev.fd as the spec's firmware")
FIRMWARE_BRANCHES = {
    "a kernel mapping": (_descriptor({"device": "kernel", "executable": {"filename": FIRMWARE}}),
                         ("fail", f"/{DESCRIPTOR_FILE} offers amd-sev-snp but maps it as kernel (no mode): SNP firmware "
                                  "must be ROM or stateless flash",
                          'use a descriptor with "device": "memory" or flash "mode": "stateless"',
                          {"descriptor": f"/{DESCRIPTOR_FILE}"})),
    "no descriptors": (_rm("usr/share/qemu/firmware"),
                       ("fail", "no QEMU firmware descriptor offers amd-sev-snp (descriptors: none)", FIRMWARE_HINT,
                        {"descriptors": []})),
    "two descriptors without snp": (_two_descriptors_without_snp,
                                    ("fail", "no QEMU firmware descriptor offers amd-sev-snp (descriptors: 10-a.json, "
                                             "20-b.json)", FIRMWARE_HINT,
                                     {"descriptors": ["/usr/share/qemu/firmware/10-a.json",
                                                      "/usr/share/qemu/firmware/20-b.json"]})),
}


@pytest.mark.parametrize("case", list(FIRMWARE_BRANCHES))
def test_each_firmware_descriptor_problem_is_named(tmp_path, case):
    edit, says = FIRMWARE_BRANCHES[case]
    fake = FakeHost(tmp_path / "host")
    edit(fake)
    check = assess(fake).by_id("firmware.snp")
    assert (check.status, check.message, check.hint, check.facts) == says


def test_a_descriptor_that_names_no_file_says_so(tmp_path):
    fake = FakeHost(tmp_path / "host")
    _descriptor({"device": "memory"})(fake)
    check = assess(fake).by_id("firmware.snp")
    assert check.status == "fail" and check.message.endswith(": the descriptor names no file")
    assert (check.hint, check.facts) == ("install the firmware package that provides it (Fedora: edk2-ovmf; Ubuntu: ovmf)",
                                         {"descriptor": f"/{DESCRIPTOR_FILE}", "firmware": None})


@pytest.mark.parametrize("uri,remote", [
    ("qemu:///system", False), ("qemu+unix:///system?socket=/run/x.sock", False), (None, False), ("", False),
    ("qemu://genoa-01/system", True), ("qemu+ssh:///system", True), ("qemu+tcp:///system", True),
    ("qemu+tls:///system", True), ("qemu+libssh:///system", True), ("qemu+ssh://root@genoa-01/system", True),
])
def test_what_counts_as_a_remote_host(uri, remote):
    """A remote host's readiness must never be read from this machine's files."""
    assert host.is_remote_uri(uri) is remote


def test_a_check_below_one_that_could_not_run_says_so(milan):
    milan.remove("dev/cpu/0/cpuid")
    milan.write("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n")
    report = assess(milan)
    assert report.by_id("cpu.sev").status == "skip"
    assert report.by_id("cpu.sev_es").message == "cpu.sev could not be checked"


def test_the_summary_lists_warnings_and_failures(milan, tmp_path):
    milan.write("proc/sys/kernel/osrelease", "6.8.0\n")
    (milan.root / "dev/sev").chmod(0o600)
    assert assess(milan).summary == "ready for SEV-SNP guests (warnings: psp.dev_sev, kernel.version)"
    milan.write("proc/cmdline", "root=/dev/sda1 iommu=pt\n")
    milan.remove("dev/kvm")
    assert assess(milan).summary == "not ready: 2 check(s) failed: kvm.dev, kernel.iommu"


def test_a_debug_policy_warns_once_and_is_no_policy_bits_failure(milan):
    """--allow-debug guests are the user's call: policy.debug warns, policy.bits must not fail the gate too."""
    report = assess(milan, policy=0xB0000)
    assert (report.by_id("policy.debug").status, report.by_id("policy.bits").status) == ("warn", "pass")
    assert report.ready


def test_without_a_connection_or_domcaps_each_libvirt_check_is_skipped_and_says_why(milan):
    report = readiness.assess(None, sysroot=str(milan.root))
    rows = {c.check_id: (c.status, c.message) for c in report.checks}
    assert rows["libvirt.version"] == rows["qemu.version"] == ("skip", "no libvirt connection (--sysroot without --connect)")
    assert rows["domcaps.sev"] == rows["domcaps.sev_snp"] == (
        "skip", "no domain capabilities: give --connect URI or --host-caps FILE")


def test_a_remote_host_skips_the_smt_check_with_the_reason():
    report = readiness.assess(CapturedConnection(uri="qemu+ssh://root@genoa-01/system"), policy=0x20000)
    check = report.by_id("policy.smt")
    assert (check.status, check.message) == ("skip", "remote host (qemu+ssh://root@genoa-01/system): only what libvirt "
                                                      "reports is checked")


def test_qemu_running_as_root_can_open_any_dev_sev(milan):
    milan.write("etc/passwd", "root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:0:0::/var/lib/libvirt:/usr/sbin/nologin\n")
    os.chown(milan.root / "dev/sev", 64055, 64055)
    (milan.root / "dev/sev").chmod(0o600)
    assert assess(milan).by_id("psp.dev_sev").status == "pass"


def test_an_old_qemu_says_what_to_install():
    facts = CapturedConnection(hypervisor_version=9_000_002).libvirt_facts()
    check = host.run_checks(host.HostInputs(local=None, local_skip="remote", libvirt=facts)).by_id("qemu.version")
    assert (check.status, check.message, check.hint) == (
        "fail", "QEMU 9.0.2 (SEV-SNP needs >= 9.1.0)", "install QEMU >= 9.1 (Debian 12: qemu-system-x86 from bookworm-backports)")


def test_a_kvm_amd_parameter_that_cannot_be_read_is_skipped_with_why_not_failed(milan):
    """Permission denied is not 'this kernel lacks SEV-SNP': the check says it could not look, and how to."""
    param = milan.root / "sys/module/kvm_amd/parameters/sev_snp"
    param.unlink()
    param.symlink_to(unreadable_even_for_root())
    report = assess(milan)
    check = report.by_id("kvm_amd.sev_snp")
    assert (check.status, check.message, check.hint, check.facts) == (
        "skip", "/sys/module/kvm_amd/parameters/sev_snp permission denied (run as root)", "", {})
    assert report.failed() == []


def test_facts_without_a_recorded_reason_still_say_what_is_missing():
    """read_local_facts records why each fact it could not read is missing; facts built any other way may
    lack the reason: each check then says what it lacks in its own words (never 'None', never a crash)."""
    from snpvirt.host.facts import LocalFacts

    local = LocalFacts(sysroot="/captured", cpuinfo_vendor="AuthenticAMD", kvm_amd_loaded=True,
                       cpuinfo_flags=frozenset({"sev", "sev_es", "sev_snp"}))
    rows = {c.check_id: (c.status, c.message, c.hint)
            for c in host.run_checks(host.HostInputs(local=local, policy=0x30000)).checks}
    from_flags = "(cpuid device unusable; from /proc/cpuinfo flags instead)"
    assert rows["cpu.sev"] == ("pass", f"cpuinfo flag 'sev' present {from_flags}", "modprobe cpuid to read CPUID directly")
    assert rows["cpu.cbitpos"] == rows["asid.snp"] == ("skip", "needs CPUID: unavailable", "modprobe cpuid")
    assert rows["kvm_amd.sev"] == ("fail", "kvm_amd has no 'sev' parameter: this kernel lacks SEV-SNP host support",
                                   "install a kernel >= 6.11 with CONFIG_KVM_AMD_SEV=y")
    assert rows["kernel.iommu"] == ("skip", "/proc/cmdline unreadable", "")
    assert rows["policy.smt"] == ("skip", "SMT state unknown", "")
