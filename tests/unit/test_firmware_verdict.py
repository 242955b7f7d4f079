"""Which firmware file import takes as an SEV-SNP build: captured QEMU descriptors first, then the AmdSev name."""

import pytest

from snpvirt.errors import BadInputError
from snpvirt.firmware import InstalledFirmware
from tests.unit.fakehost import SNP_FIRMWARE, captured_descriptors, installed_firmware


@pytest.mark.parametrize("path,snp,reason", [
    (SNP_FIRMWARE, True, "60-edk2-ovmf-x64-amdsev.json offers amd-sev-snp"),
    ("/usr/share/edk2/ovmf/../ovmf/OVMF.amdsev.fd", True, "60-edk2-ovmf-x64-amdsev.json offers amd-sev-snp"),
    ("/usr/share/OVMF/OVMF.sev.fd", False, "45-ovmf-sev-stateless.json does not offer amd-sev-snp"),
    ("/srv/other/OVMF_AMDSEV.fd", True, "named as OVMF's AmdSev build"),
    ("/usr/share/OVMF/OVMF_CODE.fd", None, "no firmware descriptor here names it"),
])
def test_descriptors_then_the_amdsev_name_decide(path, snp, reason):
    verdict = captured_descriptors().verdict(path)
    assert verdict.snp is snp and reason in verdict.reason


def test_a_descriptor_saying_no_snp_wins_over_an_amdsev_name(tmp_path):
    installed = installed_firmware(tmp_path)
    (tmp_path / "etc/qemu/firmware").mkdir(parents=True)
    # /etc overrides the same-named /usr/share descriptor, as in QEMU: here with the SNP feature removed.
    source = (tmp_path / "usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json").read_text()
    (tmp_path / "etc/qemu/firmware/60-edk2-ovmf-x64-amdsev.json").write_text(source.replace('"amd-sev-snp",', ""))
    assert installed.verdict(SNP_FIRMWARE).snp is True
    assert InstalledFirmware.read(tmp_path).verdict(SNP_FIRMWARE).snp is False


def test_for_another_host_a_firmware_option_is_not_looked_for_here():
    warnings = captured_descriptors().check_option("/srv/other/custom.fd")
    assert [w.rule_id for w in warnings] == ["firmware.unchecked", "firmware.unknown_build"]
    assert captured_descriptors().check_option(SNP_FIRMWARE) == []
    with pytest.raises(BadInputError, match="is not an SEV-SNP build"):
        captured_descriptors().check_option("/usr/share/OVMF/OVMF.sev.fd")
