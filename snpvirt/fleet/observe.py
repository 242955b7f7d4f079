"""What each host of a fleet is like now: reachable or not (and why), the readiness checks a remote
connection can judge, SNP capacity and free memory, and the fleet's domains on it.

SNP capacity is libvirt's <sev><maxESGuests> (SNP guests share the SEV-ES ASID range; there is no
SNP-specific count) minus every active SEV-ES or SEV-SNP domain on the host, snpvirt's or not; a
host's `snp_guests` overrides maxESGuests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

from lxml import etree

from snpvirt import fileio, policy
from snpvirt.domain import inventory, metadata
from snpvirt.domain import xml as domxml
from snpvirt.errors import BadInputError, SnpvirtError
from snpvirt.fleet.fleetfile import HostEntry
from snpvirt.host import domcaps as domcaps_parser
from snpvirt.host import readiness
from snpvirt.host.firmware import SNP_BUILD_NAME_PART
from snpvirt.models import CheckResult, DomainRecord, LibvirtFacts

ACTIVE_STATES = {"running", "blocked", "paused", "shutdown", "pmsuspended"}
CIPHERTEXT_HIDING = ("SNP capacity is libvirt's maxESGuests; with Linux 6.18's kvm_amd.ciphertext_hiding_asids "
                     "the ES range is split and fewer SNP guests fit")


class HostConnection(Protocol):
    """What observing a host needs of its connection (snpvirt/libvirt/connection.py's Connection)."""

    simulated: bool

    def libvirt_facts(self, count_guests: bool = True) -> LibvirtFacts: ...
    def domains(self) -> Iterable[DomainRecord]: ...
    def free_memory_mib(self) -> int | None: ...


@dataclass
class FleetDomain:
    """A domain of this fleet found on a host: its `list` row (state, policy, expected measurement...)."""

    name: str
    host: str
    state: str
    row: dict[str, Any]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass
class HostView:
    name: str
    uri: str
    labels: dict[str, str] = field(default_factory=dict)
    reachable: bool = False
    error: SnpvirtError | None = None  # why it could not be reached or read
    simulated: bool = False  # libvirt's test driver: the readiness gate does not apply
    ready: bool = False
    checks: tuple[CheckResult, ...] = ()
    libvirt_version: str | None = None
    qemu_version: str | None = None
    sev: bool | None = None
    sev_snp: bool | None = None
    firmware: list[str] = field(default_factory=list)  # the loaders libvirt offers (domcaps <os><loader><value>)
    firmware_snp: bool | None = None  # judged here, or by an AmdSev build among those loaders; None: cannot tell
    slots_total: int | None = None
    slots_source: str | None = None  # "domcaps maxESGuests" | "snp_guests"
    slots_used: int = 0  # active SEV-ES/SNP domains, whoever owns them
    memory_free_mib: int | None = None  # after reserve_memory_mib
    domains: dict[str, FleetDomain] = field(default_factory=dict)  # this fleet's
    records: dict[str, DomainRecord] = field(default_factory=dict)  # every domain as read: what the plan is made on
    taken: set[str] = field(default_factory=set)  # names of domains that are not this fleet's
    other_fleets: dict[str, str] = field(default_factory=dict)  # name -> the fleet that owns it
    warnings: list[dict[str, str]] = field(default_factory=list)

    @property
    def slots_free(self) -> int | None:
        return None if self.slots_total is None else max(self.slots_total - self.slots_used, 0)


def unreachable(entry: HostEntry, error: SnpvirtError) -> HostView:
    return HostView(entry.name, entry.uri, dict(entry.labels), reachable=False, error=error)


def observe_host(entry: HostEntry, conn: HostConnection, fleet: str) -> HostView:
    """Read one host. A connection that breaks meanwhile raises SnpvirtError (the caller records it)."""
    view = HostView(entry.name, entry.uri, dict(entry.labels), reachable=True, simulated=conn.simulated)
    _refuse_stand_ins(entry, conn)
    for record in conn.domains():
        _take_domain(view, record, fleet)
    # The guests in use are counted above, from the domains already read, not once more by the connection.
    facts = dataclasses.replace(conn.libvirt_facts(count_guests=False), running_es_snp_guests=view.slots_used)
    caps = _caps(entry, facts)
    view.firmware = _loaders(entry, facts)
    view.libvirt_version = _version(facts.lib_version)
    view.qemu_version = _version(facts.hypervisor_version) if facts.driver == "QEMU" else None
    view.sev = caps.sev_supported if caps else None
    view.sev_snp = caps.snp_advertised if caps else None
    _judge(view, entry, facts)
    _capacity(view, entry, caps)
    free = conn.free_memory_mib() if entry.free_memory_mib is None else entry.free_memory_mib
    view.memory_free_mib = None if free is None else max(free - entry.reserve_memory_mib, 0)
    return view


def _refuse_stand_ins(entry: HostEntry, conn: HostConnection) -> None:
    """A captured host (sysroot) and free_memory_mib stand in only for libvirt's test driver."""
    readiness.check_captured_host(conn, Path(entry.sysroot) if entry.sysroot else None)
    if entry.free_memory_mib is not None and not conn.simulated:
        raise BadInputError(f"{entry.name}: free_memory_mib stands in for libvirt's test driver; {entry.uri} is a real "
                            "hypervisor, whose free memory counts", f"drop free_memory_mib from host {entry.name}")


def _judge(view: HostView, entry: HostEntry, facts: LibvirtFacts) -> None:
    """The readiness checks, and whether new domains may go to this host."""
    if entry.sysroot:  # a captured host stands in for the test driver, as --sysroot does for snpvirt apply
        report = readiness.assess(_Facts(facts), sysroot=entry.sysroot,
                                  domcaps_file=Path(entry.host_caps) if entry.host_caps else None)
    elif not view.simulated:  # a remote host: what libvirt reports (this machine's files are not the host's)
        report = readiness.assess(_Facts(facts), uri=facts.uri)
    else:  # the test driver alone: no host to judge (this machine's files would say nothing about it)
        report = None
    view.checks = report.checks if report else ()
    view.firmware_snp = _firmware_snp(view.checks, view.firmware)
    view.ready = report.ready if report else True
    if report is None:
        view.warnings.append({"id": "gate.simulated", "severity": "warning", "message":
                              f"{entry.name}: libvirt's test driver is a simulated hypervisor: the SEV-SNP readiness gate does not apply",
                              "hint": "use a qemu:// URI for real guests"})


def _caps(entry: HostEntry, facts: LibvirtFacts) -> Any:
    """The domain capabilities SNP capacity is read from: the captured host's (test driver), or libvirt's."""
    if entry.host_caps:
        return domcaps_parser.parse_domcaps(fileio.read_input(entry.host_caps, "domcaps", "host_caps"), entry.host_caps)
    return domcaps_parser.parse_domcaps(facts.domcaps_xml, facts.uri) if facts.domcaps_xml else None


def _loaders(entry: HostEntry, facts: LibvirtFacts) -> list[str]:
    xml = fileio.read_input(entry.host_caps, "domcaps", "host_caps") if entry.host_caps else facts.domcaps_xml
    if not xml:
        return []
    try:
        root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)
    except etree.XMLSyntaxError:
        return []
    return [v.strip() for v in root.xpath("os/loader/value/text()")]


def _firmware_snp(checks: tuple[CheckResult, ...], loaders: list[str]) -> bool | None:
    """The firmware check where this machine could judge it (a local host); remotely, whether libvirt offers a
    loader named as OVMF's AmdSev build (descriptors on a remote host cannot be read through libvirt)."""
    check = next((c for c in checks if c.check_id == "firmware.snp"), None)
    if check is not None and check.status in ("pass", "fail"):
        return check.status == "pass"
    return True if any(SNP_BUILD_NAME_PART in path.lower() for path in loaders) else None


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def _capacity(view: HostView, entry: HostEntry, caps: Any) -> None:
    if entry.snp_guests is not None:
        view.slots_total, view.slots_source = entry.snp_guests, "snp_guests"
    elif caps is not None and caps.max_es_guests is not None:
        view.slots_total, view.slots_source = caps.max_es_guests, "domcaps maxESGuests"
        view.warnings.append({"id": "capacity.ciphertext_hiding", "severity": "warning",
                              "message": f"{entry.name}: {CIPHERTEXT_HIDING}",
                              "hint": f"if kvm_amd.ciphertext_hiding_asids is set on {entry.name}, "
                                      "set snp_guests for it in the fleet file"})


def _take_domain(view: HostView, record: DomainRecord, fleet: str) -> None:
    view.records[record.name] = record
    definition = record.live_xml if record.live_xml is not None else record.xml
    try:
        root = domxml.parse(record.xml)
        uses_asid = record.state in ACTIVE_STATES and _es_or_snp(domxml.parse(definition))
    except etree.XMLSyntaxError:
        view.taken.add(record.name)
        return
    view.slots_used += uses_asid
    info = metadata.read(root)
    if info is not None and info.fleet == fleet:
        view.domains[record.name] = FleetDomain(record.name, view.name, record.state,
                                                {**inventory.row(record, root, info), "host": view.name})
        return
    view.taken.add(record.name)
    if info is not None and info.fleet:
        view.other_fleets[record.name] = info.fleet


def _es_or_snp(root: etree._Element) -> bool:
    """SEV-SNP, or SEV with the ES policy bit: both take an ASID from the SEV-ES range."""
    ls = root.find("launchSecurity")
    if ls is None:
        return False
    try:
        return policy.uses_es_asid(ls.get("type"), ls.findtext("policy"))
    except ValueError:
        return False


def _version(number: int | None) -> str | None:
    if number is None:
        return None
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


class _Facts:
    """The facts already read, for readiness.assess (which asks for them once more otherwise)."""

    def __init__(self, facts: LibvirtFacts) -> None:
        self._facts = facts

    def libvirt_facts(self) -> LibvirtFacts:
        return self._facts

