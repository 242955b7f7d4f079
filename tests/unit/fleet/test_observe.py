"""What observing a host counts: every active SEV-ES or SEV-SNP domain uses a slot, whoever owns it; the
remote firmware verdict; this fleet's domains only. The domain capabilities are a real captured host's."""

from __future__ import annotations

from snpvirt.fleet.fleetfile import HostEntry
from snpvirt.fleet.observe import observe_host
from snpvirt.models import DomainRecord, LibvirtFacts
from tests.conftest import EXAMPLES

DOMCAPS = (EXAMPLES / "captured-host" / "domcaps.xml").read_text()


def domain(name: str, state: str, launch: str = "", owner: str | None = None) -> DomainRecord:
    meta = ("<metadata><snpvirt:domain xmlns:snpvirt='https://snpvirt.dev/xmlns/domain/1' version='1'"
            + (f" fleet='{owner}'" if owner else "") + "/></metadata>") if owner is not None else ""
    xml = f"<domain type='kvm'><name>{name}</name>{meta}{launch}</domain>"
    return DomainRecord(name, "00000000-0000-0000-0000-0000000000" + str(len(name)).zfill(2), state, xml,
                        xml if state == "running" else None)


class RemoteHost:
    """A remote QEMU host as its connection reports it."""

    simulated = False

    def __init__(self, domcaps: str, records: list[DomainRecord]) -> None:
        self._facts = LibvirtFacts("qemu+ssh://root@genoa-01/system", "QEMU", "genoa-01", 11_003_000, 10_000_000, domcaps)
        self._records = records

    def libvirt_facts(self, count_guests: bool = True) -> LibvirtFacts:
        return self._facts

    def domains(self):
        return iter(self._records)

    def free_memory_mib(self) -> int:
        return 65536


SNP = "<launchSecurity type='sev-snp'><policy>0x30000</policy></launchSecurity>"
SEV_ES = "<launchSecurity type='sev'><policy>0x0005</policy></launchSecurity>"
SEV = "<launchSecurity type='sev'><policy>0x0001</policy></launchSecurity>"


def test_every_active_sev_es_and_snp_domain_uses_a_slot_whoever_owns_it():
    records = [domain("ours", "running", SNP, owner="prod"), domain("theirs", "running", SNP, owner="other"),
               domain("es", "running", SEV_ES), domain("plain-sev", "running", SEV), domain("off", "shutoff", SNP),
               domain("vm", "running")]
    view = observe_host(HostEntry("genoa-01", "qemu+ssh://root@genoa-01/system", reserve_memory_mib=4096),
                        RemoteHost(DOMCAPS, records), "prod")
    assert (view.slots_total, view.slots_used, view.slots_free) == (450, 3, 447)
    assert view.memory_free_mib == 65536 - 4096
    assert list(view.domains) == ["ours"] and view.other_fleets == {"theirs": "other"}
    assert view.taken == {"theirs", "es", "plain-sev", "off", "vm"}
    assert view.libvirt_version == "11.3.0" and view.qemu_version == "10.0.0" and view.sev and view.sev_snp


def test_snp_guests_overrides_and_the_remote_firmware_verdict():
    amdsev = DOMCAPS.replace("/obviously/fake/firmware1.fd", "/usr/share/ovmf/OVMF.amdsev.fd")
    view = observe_host(HostEntry("h", "qemu+ssh://root@h/system", snp_guests=16), RemoteHost(amdsev, []), "prod")
    assert (view.slots_total, view.slots_source, view.firmware_snp) == (16, "snp_guests", True)
    assert not [w for w in view.warnings if w["id"] == "capacity.ciphertext_hiding"]
    view = observe_host(HostEntry("h", "qemu+ssh://root@h/system"), RemoteHost(DOMCAPS, []), "prod")
    assert view.firmware_snp is None  # fake names: nothing to tell from here
    assert [w["id"] for w in view.warnings] == ["capacity.ciphertext_hiding"]


def test_free_memory_mib_stands_in_for_the_test_driver_only():
    import pytest

    from snpvirt.errors import BadInputError

    class TestDriver(RemoteHost):
        simulated = True

    entry = HostEntry("sim", "test+unix:///default?socket=/run/x", snp_guests=500, free_memory_mib=512 * 1024,
                      reserve_memory_mib=1024)
    assert observe_host(entry, TestDriver(DOMCAPS, []), "prod").memory_free_mib == 512 * 1024 - 1024
    with pytest.raises(BadInputError, match="real hypervisor"):
        observe_host(entry, RemoteHost(DOMCAPS, []), "prod")
