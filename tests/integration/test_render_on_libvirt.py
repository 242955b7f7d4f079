"""Rendered documents meet real libvirt: virt-xml-validate, the test driver, and a real libvirtd."""

from __future__ import annotations

import shutil
import subprocess

import libvirt
import pytest

from snpvirt.host import domcaps
from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, GOLDEN, assert_clean_error, run_cli

GOLDENS = sorted(GOLDEN.glob("*.xml"))


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda p: p.name)
def test_golden_passes_virt_xml_validate(golden):
    if shutil.which("virt-xml-validate") is None:
        pytest.skip("virt-xml-validate is not installed (Debian: libvirt-clients)")
    proc = subprocess.run(["virt-xml-validate", str(golden), "domain"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda p: p.name)
def test_golden_defines_and_starts_on_the_test_driver(clean_test_driver, golden):
    dom = clean_test_driver.defineXML(golden.read_text())
    dom.create()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    live = dom.XMLDesc()
    # libvirt kept the SNP launch security and snpvirt's metadata.
    assert "<launchSecurity type='sev-snp'" in live and "https://snpvirt.dev/xmlns/domain/1" in live
    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "https://snpvirt.dev/xmlns/domain/1")
    assert "sha256:" in meta


def test_rendered_with_overrides_starts_on_the_test_driver(clean_test_driver, tmp_path):
    out = tmp_path / "web-02.xml"
    result = run_cli("render", EXAMPLES / "web-01.toml", "--set", "name=web-02", "--set", "vcpus=2",
                     "--set", "snp.policy.smt=false", "-o", out)
    assert result.code == 0, result.stderr
    dom = clean_test_driver.defineXML(out.read_text())
    dom.create()
    assert dom.name() == "web-02" and dom.maxVcpus() == 2 and "<policy>0x00020000</policy>" in dom.XMLDesc()


@pytest.mark.daemon
def test_connect_to_a_real_qemu_host_without_sev_is_not_ready(libvirtd):
    # The real QEMU driver on this machine reports <sev supported='no'/>: snpvirt must not guess cbitpos.
    result = run_cli("render", EXAMPLES / "db-01.toml", "--connect", libvirtd.qemu_uri)
    assert_clean_error(result, ExitCode.NOT_READY, "SEV is not supported")


@pytest.mark.daemon
def test_spec_values_need_no_connection_even_when_one_is_given(libvirtd):
    result = run_cli("render", EXAMPLES / "web-01.toml", "--connect", libvirtd.qemu_uri, bare=True)
    assert result.code == 0 and result.stdout == (GOLDEN / "web-01.xml").read_text()


@pytest.mark.daemon
def test_real_qemu_driver_refuses_snp_here_but_parses_our_xml(libvirtd):
    # The QEMU driver parses the whole document and only then refuses SEV-SNP for lack of support:
    # the refusal names launch security, proving libvirt accepted every other part of the XML.
    # It refuses at define (not at start), so nothing is left defined.
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        if domcaps.parse_domcaps(conn.getDomainCapabilities()).snp_advertised:
            pytest.skip("this host's QEMU supports SEV-SNP: libvirt has nothing to refuse")
        with pytest.raises(libvirt.libvirtError) as info:
            conn.defineXML((GOLDEN / "web-01.xml").read_text())
        assert info.value.get_error_code() == libvirt.VIR_ERR_CONFIG_UNSUPPORTED
        assert "sev-snp" in str(info.value) and "not supported" in str(info.value)
        assert conn.listAllDomains() == []
    finally:
        for dom in conn.listAllDomains():
            dom.undefine()
        conn.close()


@pytest.mark.daemon
def test_golden_starts_on_the_daemons_test_driver(libvirtd):
    conn = libvirt.open(libvirtd.test_uri)  # state lives while this connection is open
    try:
        dom = conn.defineXML((GOLDEN / "db-01.xml").read_text())
        dom.create()
        assert dom.isActive() and dom.name() == "db-01"
    finally:
        conn.close()
