"""The libvirt boundary: opening connections, typed calls, and libvirt errors translated by code."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Iterator

import libvirt

from snpvirt import fileio, policy
from snpvirt.libvirt import explain
from snpvirt.errors import (BadInputError, ConnectionFailedError, HostNotReadyError, NotFoundError,
                            OperationTimeoutError, SnpvirtError, StartFailedError)
from snpvirt.models import DomainRecord, LibvirtFacts

# libvirt prints every error to stderr by default; snpvirt reports them itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_CONNECTION_CODES = {
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_AUTH_UNAVAILABLE, libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_NO_SUPPORT,
}
_NOT_FOUND_CODES = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_NO_STORAGE_POOL}
_HOST_CODES = {libvirt.VIR_ERR_CONFIG_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_UNSUPPORTED, libvirt.VIR_ERR_INVALID_ARG}
# libvirt's own state names (virDomainState), lowercased: the names `list` and `status` show.
STATE_NAMES = {getattr(libvirt, f"VIR_DOMAIN_{name.upper()}"): name for name in (
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")}
QEMU_LOG_DIR = "/var/log/libvirt/qemu"
_ACTIVE = {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_SHUTDOWN,
           libvirt.VIR_DOMAIN_PMSUSPENDED}  # the states in which a live definition runs
_LIVE_ROOT = re.compile(r"\s*<domain\b[^>]*?\sid=['\"]")  # the root start tag of a running domain's live XML
# How long opening a connection may take. libvirt's own open has no deadline: against a daemon that accepts
# the socket but never answers (stopped, swapping, wedged) it blocks forever, keepalive or not.
DEFAULT_CONNECT_TIMEOUT_S = 30.0
_XML_FETCHERS = 4
_PARALLEL_FROM = 16  # domains; fewer are not worth the threads


def translate(exc: libvirt.libvirtError, action: str, uri: str | None) -> SnpvirtError:
    """One place that turns a libvirt error into snpvirt's error classes, by error code."""
    code = exc.get_error_code()
    detail = (exc.get_error_message() or str(exc)).strip()
    where = uri or "libvirt's default URI"
    # A connection closed by keepalive (its daemon stopped answering) is an internal error of the RPC layer.
    lost = code == libvirt.VIR_ERR_INTERNAL_ERROR and exc.get_error_domain() == libvirt.VIR_FROM_RPC
    if code in _CONNECTION_CODES or lost:
        return ConnectionFailedError(f"{action}: cannot talk to {where}: {detail}",
                                     "check the URI and that libvirtd (or virtqemud) runs: systemctl status libvirtd")
    if code in _NOT_FOUND_CODES:
        return NotFoundError(f"{action}: {detail}", "list what exists with: virsh list --all")
    if code in _HOST_CODES:
        return HostNotReadyError(f"{action}: {detail}", "run on a KVM host with SEV-SNP enabled")
    return SnpvirtError(f"{action}: {detail}", f"libvirt error code {code}; see the libvirt log for more")


def open_within(uri: str | None, readonly: bool, timeout_s: float) -> libvirt.virConnect:
    """libvirt.open under snpvirt's own deadline. The open runs in a daemon thread; past the deadline it is
    abandoned (a connection it opens later is closed at once) and OperationTimeoutError names the URI."""
    outcome: dict[str, object] = {}
    lock = threading.Lock()

    def opener() -> None:
        try:
            conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
        except libvirt.libvirtError as exc:
            conn, error = None, exc
        else:
            error = None
        with lock:
            if outcome.get("abandoned"):
                if conn is not None:
                    _close_quietly(conn)
                return
            outcome.update(conn=conn, error=error)

    thread = threading.Thread(target=opener, name=f"snpvirt-open {uri}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    with lock:
        if "conn" not in outcome:
            outcome["abandoned"] = True
            raise OperationTimeoutError(
                f"connect to {uri or 'the default URI'}: no answer within {timeout_s:g} s",
                "the daemon may be stopped or overloaded: check it on that host (systemctl status libvirtd), "
                "or allow more time (connect_timeout_s in a fleet file)")
    if outcome["error"] is not None:
        raise translate(outcome["error"], "connect", uri) from None
    return outcome["conn"]


def _close_quietly(conn: libvirt.virConnect) -> None:
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


class Connection:
    """A libvirt connection; use as a context manager so it is always closed."""

    def __init__(self, uri: str | None, readonly: bool = False, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 keepalive: tuple[int, int] | None = None) -> None:
        """`timeout_s`: give up opening after this long (OperationTimeoutError, exit 7). `keepalive`:
        (interval seconds, missed answers) after which a remote connection that stopped answering is closed,
        so a call in flight fails instead of waiting forever; it needs libvirt's event loop, started here."""
        self.uri = uri
        self._driver: str | None = None
        self._handles: dict[str, libvirt.virDomain] = {}  # name -> handle, saves a lookup per call
        if keepalive is not None:
            from snpvirt.libvirt import events

            events.start_event_loop()  # before the open: libvirt runs keepalive only with an event loop
        self._conn = open_within(uri, readonly, timeout_s)
        if keepalive is not None:
            try:
                self._conn.setKeepAlive(*keepalive)
            except libvirt.libvirtError:
                pass  # local drivers (test:///, qemu:///system without a daemon hop) have no keepalive

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        _close_quietly(self._conn)  # closing a dead connection is not worth an error

    @property
    def handle(self) -> libvirt.virConnect:
        """The libvirt-python connection, for the boundary's other modules (storage.py)."""
        return self._conn

    @property
    def actual_uri(self) -> str:
        return self._conn.getURI()

    def hostname(self) -> str | None:
        """The host's name as its libvirtd reports it (virConnectGetHostname), or None when it cannot say."""
        return _optional(self._conn.getHostname)

    def domain_capabilities(self) -> str:
        """`virsh domcapabilities` for a q35 KVM guest, the only kind SEV-SNP allows."""
        try:
            return self._conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
        except libvirt.libvirtError as exc:
            raise translate(exc, "read domain capabilities", self.uri) from None

    def sev_info(self) -> dict[str, object]:
        """`virsh nodesevinfo` (virNodeGetSEVInfo): pdh, cert-chain, cpu0-id, cbitpos, reduced-phys-bits,
        max-guests, max-es-guests. A driver or host without SEV is HostNotReadyError, not a broken connection
        (libvirt's test driver answers VIR_ERR_NO_SUPPORT, which elsewhere means the connection cannot do it)."""
        try:
            return dict(self._conn.getSEVInfo(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
                detail = (exc.get_error_message() or str(exc)).strip()
                raise HostNotReadyError(f"{self.uri or 'the default URI'} gives no SEV information: {detail}",
                                        "ask libvirt on an SEV host: virsh -c qemu:///system nodesevinfo") from None
            raise translate(exc, "read the host's SEV information", self.uri) from None

    def libvirt_facts(self, count_guests: bool = True) -> LibvirtFacts:
        """Versions, domain capabilities and SEV-ES/SNP guests in use, each tolerated missing. `count_guests`:
        False for a caller that counts them from the domains it reads anyway (one XML call per domain less)."""
        conn = self._conn
        try:
            driver, lib_version, uri = conn.getType(), conn.getLibVersion(), conn.getURI()
        except libvirt.libvirtError as exc:
            raise translate(exc, "read host facts", self.uri) from None
        hypervisor_version = _optional(conn.getVersion)
        hostname = _optional(conn.getHostname)
        try:
            domcaps_xml, domcaps_error = self.domain_capabilities(), None
        except SnpvirtError as exc:
            domcaps_xml, domcaps_error = None, exc.message
        return LibvirtFacts(uri, driver, hostname, lib_version, hypervisor_version, domcaps_xml, domcaps_error,
                            self._running_es_snp_guests() if count_guests else None)

    def free_memory_mib(self) -> int | None:
        """The host's free memory (all NUMA cells), or None when libvirt cannot say."""
        try:
            free = self._conn.getFreeMemory()
        except libvirt.libvirtError:
            return None
        # libvirt's test driver answers in KiB where real drivers answer in bytes (its cells' freeMem, as is).
        return free // 1024 if self.simulated else free // (1024 * 1024)

    def _running_es_snp_guests(self) -> int | None:
        """SEV-ES and SEV-SNP guests share one ASID pool, so both count."""
        from lxml import etree

        try:
            domains = self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            count = 0
            for dom in domains:
                ls = etree.fromstring(dom.XMLDesc(0).encode()).find("launchSecurity")
                if ls is None:
                    continue
                count += policy.uses_es_asid(ls.get("type"), ls.findtext("policy"))
            return count
        except (libvirt.libvirtError, etree.XMLSyntaxError, ValueError):
            return None


    # --- domains: the hypervisor interface the manager uses ---------------------------------------

    @property
    def driver(self) -> str:
        if self._driver is None:
            self._driver = self._conn.getType()
        return self._driver

    @property
    def simulated(self) -> bool:
        """libvirt's test driver: a simulated hypervisor, where the SEV-SNP readiness gate means nothing."""
        return self.driver == "TEST"

    def _record(self, dom: libvirt.virDomain, state: int | None = None) -> DomainRecord:
        """The domain's persistent definition, and for an active one its live definition too (they differ
        after a redefinition, until it restarts)."""
        name = dom.name()  # each call releases and retakes the GIL: once is enough
        self._handles[name] = dom
        if state is None:
            state = dom.state()[0]
        return DomainRecord(name, dom.UUIDString(), STATE_NAMES.get(state, "nostate"),
                            dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), dom.XMLDesc(0) if state in _ACTIVE else None)

    def domains(self) -> Iterator[DomainRecord]:
        """Every domain with its state and XML, in libvirt's order: one stats call for all states, then the
        XML calls from a few threads (libvirt's client pipelines them on the one connection: a third of the
        time for 1,000), yielded as they arrive so the caller works while the rest are on their way."""
        try:
            stats = self._conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            if len(stats) < _PARALLEL_FROM:
                yield from (self._record(dom, values.get("state.state")) for dom, values in stats)
                return
            with ThreadPoolExecutor(_XML_FETCHERS, thread_name_prefix="snpvirt-xml") as pool:
                yield from pool.map(lambda item: self._record(item[0], item[1].get("state.state")), stats)
        except libvirt.libvirtError as exc:
            raise translate(exc, "list domains", self.uri) from None

    def domain_names(self) -> set[str]:
        try:
            return {dom.name() for dom in self._conn.listAllDomains()}
        except libvirt.libvirtError as exc:
            raise translate(exc, "list domains", self.uri) from None

    def persistent_domains(self) -> dict[str, str]:
        """Name -> UUID of the domains libvirt holds a persistent definition of (not the transient ones, which
        vanish at their first shutdown, nor the ones gone). One call: a handle's name and UUID are local."""
        try:
            return {dom.name(): dom.UUIDString()
                    for dom in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)}
        except libvirt.libvirtError as exc:
            raise translate(exc, "list persistent domains", self.uri) from None

    def lookup(self, name: str) -> DomainRecord | None:
        try:
            return self._record(self._conn.lookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(exc, f"look up {name}", self.uri) from None

    def _handle(self, name: str) -> libvirt.virDomain:
        dom = self._handles.get(name)
        if dom is None:
            try:
                dom = self._handles[name] = self._conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                raise translate(exc, f"look up {name}", self.uri) from None
        return dom

    def define(self, xml: str) -> DomainRecord:
        try:
            return self._record(self._conn.defineXML(xml), libvirt.VIR_DOMAIN_SHUTOFF)
        except libvirt.libvirtError as exc:
            raise translate(exc, "define", self.uri) from None

    def state(self, name: str) -> str:
        try:
            return STATE_NAMES.get(self._handle(name).state()[0], "nostate")
        except libvirt.libvirtError as exc:
            raise translate(exc, f"state of {name}", self.uri) from None

    def live_xml(self, name: str) -> str | None:
        """What runs now (None when the domain is not active): one call, for the check after a start. libvirt
        gives an active domain's live XML its run id (`<domain … id='7'>`) and an inactive one's XML none, so
        the document itself says which it is, without a second round trip (isActive) to the host."""
        try:
            xml = self._handle(name).XMLDesc(0)
            return xml if _LIVE_ROOT.match(xml) else None
        except libvirt.libvirtError as exc:
            raise translate(exc, f"read the running definition of {name}", self.uri) from None

    def start(self, name: str) -> None:
        try:
            self._handle(name).create()
        except libvirt.libvirtError as exc:
            raise self._start_failed(name, exc) from None

    def start_definition(self, name: str, xml: str) -> None:
        """Start the defined domain `name` on exactly `xml`, in one call. libvirt's createXML, given a document
        with the domain's own name and UUID, makes it the live definition and keeps the persistent one (put
        back at shutdown): what another client defines between the caller's check of `xml` and this call
        cannot run instead. Not for a domain that may have a managed-save image (createXML boots afresh and
        leaves the image for a later start): the caller uses it only for a domain it has just created. When
        another client undefined it in between, createXML makes a transient domain of `xml`: the caller looks
        afterwards, once for all it started, for those no longer defined (persistent_domains)."""
        try:
            self._handles[name] = self._conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise self._start_failed(name, exc) from None

    def _start_failed(self, name: str, exc: libvirt.libvirtError) -> StartFailedError:
        detail = (exc.get_error_message() or str(exc)).strip()
        log = self._qemu_log_tail(name)
        hint = explain.explain(detail, log) or f"libvirt error code {exc.get_error_code()}; see the QEMU log of {name}"
        return StartFailedError(f"start {name}: {detail}", hint)

    def shutdown(self, name: str) -> None:
        self._call(name, "shut down", lambda dom: dom.shutdown())

    def destroy(self, name: str) -> None:
        self._call(name, "destroy", lambda dom: dom.destroy())

    def undefine(self, name: str) -> None:
        self._call(name, "undefine", lambda dom: dom.undefine())
        self._handles.pop(name, None)

    def autostart(self, name: str) -> bool:
        """libvirt's own autostart flag: whether the host starts this domain when libvirtd starts."""
        try:
            return bool(self._handle(name).autostart())
        except libvirt.libvirtError as exc:
            raise translate(exc, f"read the autostart flag of {name}", self.uri) from None

    def set_autostart(self, name: str, on: bool) -> None:
        self._call(name, "set the autostart flag of", lambda dom: dom.setAutostart(int(on)))

    def set_metadata(self, name: str, element_xml: str, namespace: str) -> None:
        """Replace snpvirt's metadata element in the persistent definition (and the live one if running)."""
        def update(dom: libvirt.virDomain) -> None:
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element_xml, "snpvirt", namespace, flags)
        self._call(name, "update the metadata of", update)

    def _call(self, name: str, action: str, call) -> None:
        try:
            call(self._handle(name))
        except libvirt.libvirtError as exc:
            raise translate(exc, f"{action} {name}", self.uri) from None

    def _qemu_log_tail(self, name: str, lines: int = 20) -> str:
        """The end of QEMU's log, when the host is this machine (SNP causes often appear only there)."""
        from urllib.parse import urlsplit

        if self.driver != "QEMU" or urlsplit(self.actual_uri).netloc:
            return ""
        try:
            tail = fileio.read_tail(f"{QEMU_LOG_DIR}/{name}.log", "log", 64 * 1024)
        except BadInputError:
            return ""
        return "".join(tail.decode("utf-8", "replace").splitlines(keepends=True)[-lines:])


def _optional(call):
    try:
        return call()
    except libvirt.libvirtError:
        return None
