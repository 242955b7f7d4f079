"""Desired state for SEV-SNP domains, over any hypervisor object (never libvirt itself).

Verbs are idempotent, a plan (`apply --check`) is computed by the same code that applies it, a
domain snpvirt does not manage is never overwritten, nothing restarts implicitly, and the host's
readiness is checked before the first change (on libvirt's simulated test driver only with a captured host's facts).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import threading
import time
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Protocol

from lxml import etree

from snpvirt.domain import drift, importer, inventory, launchrecord, metadata, render
from snpvirt.domain import xml as domxml
from snpvirt.launch import inputs as launch
from snpvirt.domain import rules as snp_rules
from snpvirt.domain import spec as specs
from snpvirt.errors import (BadInputError, ConflictError, HostNotReadyError, NotFoundError,
                            OperationTimeoutError, SnpvirtError)
from snpvirt.host.firmware import InstalledFirmware
from snpvirt.models import DomainRecord, Finding, HostReport, Stamp, VmSpec
from snpvirt.domain.sevparams import SevParams

ACTIVE_STATES = {"running", "blocked", "paused", "shutdown", "pmsuspended"}


class Hypervisor(Protocol):
    uri: str | None
    simulated: bool

    def domain_names(self) -> set[str]: ...
    def domains(self) -> Iterable[DomainRecord]: ...
    def lookup(self, name: str) -> DomainRecord | None: ...
    def define(self, xml: str) -> DomainRecord: ...
    def state(self, name: str) -> str: ...
    def start(self, name: str) -> None: ...
    def shutdown(self, name: str) -> None: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def autostart(self, name: str) -> bool: ...
    def set_autostart(self, name: str, on: bool) -> None: ...
    def set_metadata(self, name: str, element_xml: str, namespace: str) -> None: ...


@dataclass
class Outcome:
    """The result of one item (spec, domain): what was done, and the error if it failed."""

    name: str
    action: str
    ok: bool = True
    changed: bool = False
    state: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: SnpvirtError | None = None

    def fail(self, error: SnpvirtError) -> Outcome:
        self.ok, self.error = False, error
        return self

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "ok": self.ok, "changed": self.changed, "action": self.action, "state": self.state,
               **self.details}
        if self.error is not None:
            out["error"] = {"kind": self.error.kind, "message": self.error.message, "hint": self.error.hint}
        return out


@dataclass
class SpecInput:
    """A spec as given on the command line: parsed, or the error that parsing raised."""

    label: str
    spec: VmSpec | None = None
    error: SnpvirtError | None = None


@dataclass
class _Plan:
    spec: VmSpec
    action: str  # create | update | unchanged
    existing: DomainRecord | None
    start: bool  # the spec wants it running and it is not
    diff: list[dict[str, Any]] = field(default_factory=list)
    xml: str | None = None
    asked_snp: dict[str, Any] | None = None  # the SNP projection of `xml`, from the parse that checked it
    restart_required: bool = False  # the running domain's live definition differs from the desired one
    restart: bool = False  # apply --restart: shut it down and start it again on the desired definition
    stop: bool = False  # the spec wants it shut off and it is active
    autostart: bool | None = None  # the autostart flag to set; None: it is as the spec wants (or the spec is silent)

    def run_state_diff(self) -> list[dict[str, Any]]:
        """The run-state changes, in the diff's form (keys without a `definition.` prefix)."""
        changes = []
        if self.autostart is not None:
            changes.append({"key": "autostart", "from": not self.autostart, "to": self.autostart})
        if self.stop:
            changes.append({"key": "state", "from": self.existing.state, "to": "shutoff"})
        return changes


class _DefinedMeanwhile(ConflictError):
    """A create lost a race: another client defined the same name between our look-up and our define."""


RACE_RETRIES = 3  # re-plans after losing a create race; each one sees the domain the other client made
# Threads carrying out plans. libvirt's remote protocol keeps several calls in flight on one connection
# (libvirt-python releases the GIL in each call), so the define / XMLDesc / create round trips of several
# domains overlap. A worker also waits for the GIL between its calls (the main thread renders meanwhile),
# so 8 keep a daemon's 5 request slots per client (max_client_requests) busy; more wait in the socket.
LIBVIRT_WORKERS = 8
# Plans handed to the workers and not yet carried out. Without a bound the main thread renders every spec
# first, holding the GIL, while the workers wait for it between their calls and the daemon idles; then
# the libvirt work follows as a long tail. Two per worker keeps each one fed and the tail short.
LOOKAHEAD = 2 * LIBVIRT_WORKERS


def _snp_errors(definition: str | etree._Element, allow_debug: bool) -> list[Finding]:
    """The SNP rules a definition breaks, decided on the parsed document with every rule. Never on its
    text: a comment or another tool's <metadata> child can contain anything, libvirt keeps both."""
    try:
        root = domxml.parse(definition) if isinstance(definition, str) else definition
    except etree.XMLSyntaxError as exc:
        return [Finding("xml.well_formed", "error", f"the definition is not well-formed XML ({exc})",
                        "redefine it from its spec: snpvirt apply SPEC")]
    return [f for f in snp_rules.check_rules(root, allow_debug) if f.severity == "error"]


def _keep_identity(spec: VmSpec, uuid: str, existing: etree._Element) -> VmSpec:
    """A redefinition keeps the domain's identity: its UUID, and the MAC address libvirt gave each interface
    the spec leaves without one (a new MAC after every update would change the guest's network identity)."""
    macs = [interface.find("mac").get("address") if interface.find("mac") is not None else None
            for interface in existing.iterfind("devices/interface")]
    networks = tuple(dataclasses.replace(net, mac=macs[i]) if net.mac is None and i < len(macs) and macs[i] else net
                     for i, net in enumerate(spec.networks))
    return dataclasses.replace(spec, uuid=uuid, networks=networks)


def _drift_text(changes: list[dict[str, Any]]) -> str:
    shown = "; ".join(f"{c['key']}: {c['from']!r}, snpvirt defined {c['to']!r}" for c in changes[:3])
    return shown + (f" (and {len(changes) - 3} more)" if len(changes) > 3 else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def is_active(state: str | None) -> bool:
    return state in ACTIVE_STATES


class Manager:
    def __init__(self, hv: Hypervisor, *, gate: Callable[[], HostReport | None], resolve_sev: Callable[[VmSpec], SevParams],
                 allow_debug: bool = False, clock: Callable[[], str] = utc_now) -> None:
        self.hv = hv
        self._gate = gate
        self._resolve_sev = resolve_sev
        self.allow_debug = allow_debug
        self.clock = clock
        self.warnings: list[Finding] = []
        self._ready = False
        self._not_ready: tuple[str, str] | None = None  # the gate's refusal, given again to every later caller
        self._gate_lock = threading.Lock()  # the gate runs once, whichever thread asks first
        self.shutdown_timeout_s = 60.0  # how long apply waits for a graceful shutdown (state = "shutoff", --restart)
        self._restarting = threading.Lock()  # --restart: one domain of this host at a time

    # --- the readiness gate ----------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Fail closed before the first change. The gate has no report only for a simulated hypervisor
        (libvirt's test driver without a captured host's facts): then say that the gate does not apply."""
        with self._gate_lock:
            if self._ready:
                return
            if self._not_ready is None:
                report = self._gate()
                if report is None and self.hv.simulated:
                    self.warnings.append(Finding("gate.simulated", "warning",
                                                 "libvirt's test driver is a simulated hypervisor: the SEV-SNP readiness gate does not apply",
                                                 "use a qemu:// URI for real guests"))
                    self._ready = True
                    return
                if report is not None and report.ready:
                    self._ready = True
                    return
                # A real hypervisor without a report is never waved through.
                self._not_ready = ("host not ready for SEV-SNP, nothing was changed: "
                                   + (report.summary if report else "no host facts to check"),
                                   f"see the fixes: snpvirt host check --connect {self.hv.uri or '<uri>'}")
            raise HostNotReadyError(*self._not_ready)

    # --- managed domains -------------------------------------------------------------------------

    def _managed(self, name: str) -> tuple[DomainRecord, metadata.ManagedInfo]:
        record = self.hv.lookup(name)
        if record is None:
            raise NotFoundError(f"no domain named {name} on {self.hv.uri or 'the default URI'}", "list them with: snpvirt list --all")
        info = metadata.read(domxml.parse(record.xml))
        if info is None:
            raise ConflictError(f"domain {name} is not managed by snpvirt", f"bring it under management first: snpvirt import {name}")
        return record, info

    def _refuse_to_start(self, record: DomainRecord) -> None:
        """Never start a definition that would not launch as the SEV-SNP guest snpvirt defined: it must pass
        every SNP rule, and its SNP settings must still be the recorded spec's (it may have been edited since)."""
        root = domxml.parse(record.xml)
        errors = _snp_errors(root, self.allow_debug)
        if errors:
            raise ConflictError(f"{record.name}'s definition breaks {errors[0].rule_id} ({errors[0].message}); "
                                "snpvirt does not start it",
                                f"restore it: snpvirt apply SPEC, or snpvirt import {record.name} --fix"
                                + (", or pass --allow-debug for a throw-away test guest"
                                   if errors[0].rule_id == "snp.policy_debug" else ""))
        drifted = self._drift_from_recorded_spec(root)
        if drifted:
            raise ConflictError(f"{record.name}'s SEV-SNP settings were changed outside snpvirt ({_drift_text(drifted)}); "
                                "snpvirt does not start it",
                                f"restore them from the spec: snpvirt apply SPEC (snpvirt status {record.name} shows it)")

    def _drift_from_recorded_spec(self, root: etree._Element) -> list[dict[str, Any]]:
        """The SNP settings in which a definition differs from what its recorded spec renders. Only for domains
        defined from a spec: an imported or hand-written document has no spec to compare with."""
        info = metadata.read(root)
        if info is None or info.origin != "spec" or info.xml_digest is not None or info.spec is None:
            return []
        try:
            spec = specs.parse_spec(info.spec, allow_debug=True)  # the debug bit is the rules' to judge
        except SnpvirtError as err:
            return [{"key": "(recorded spec)", "from": err.message, "to": "a spec snpvirt can read"}]
        desired = self._desired_projection(spec, root, launch_record=None)
        return [c for c in drift.differences(desired, drift.project(root)) if drift.is_snp_setting(c["key"])]

    def _desired_projection(self, spec: VmSpec, existing: etree._Element,
                            launch_record: launch.LaunchRecord | None) -> dict[str, Any]:
        """What the spec renders, in the canonical projection. cbitpos/reducedPhysBits that the spec leaves to
        the host are the host's to fill in: taken from the existing definition, or left out of the comparison,
        so nothing asks the host here. Signed ID blocks need the launch record; without it they are left out."""
        ls = existing.find("launchSecurity")
        host = lambda tag: _int_or_none(ls.findtext(tag)) if ls is not None else None  # noqa: E731
        cbitpos = spec.snp.cbitpos if spec.snp.cbitpos is not None else host("cbitpos")
        reduced = spec.snp.reduced_phys_bits if spec.snp.reduced_phys_bits is not None else host("reducedPhysBits")
        sev = SevParams(cbitpos if cbitpos is not None else 0, reduced if reduced is not None else 0, "comparison")
        projection = drift.project(domxml.parse(render.render_xml(spec, sev, None, launch_record)))
        left_out = {"launch_security.cbitpos": cbitpos is None, "launch_security.reducedPhysBits": reduced is None,
                    "launch_security.idBlock": spec.snp.id_key and launch_record is None,
                    "launch_security.idAuth": spec.snp.id_key and launch_record is None}
        return {key: value for key, value in projection.items() if not left_out.get(key)}

    def _restart_required(self, record: DomainRecord, persistent: etree._Element) -> bool:
        """An active domain whose live definition differs from `persistent`: it runs the old one."""
        return is_active(record.state) and self._runs_otherwise(record, drift.project(persistent))

    @staticmethod
    def _runs_otherwise(record: DomainRecord, desired: dict[str, Any]) -> bool:
        """Whether an active domain's live definition differs from `desired` (restart required)."""
        if record.live_xml is None:
            return False
        return bool(drift.differences(desired, drift.project(domxml.parse(record.live_xml))))

    def _define_checked(self, xml: str, previous: DomainRecord | None,
                        asked_snp: dict[str, Any] | None = None) -> DomainRecord:
        """Define, then check libvirt's own view of it: every SNP setting it was given kept, so every SNP rule
        holds. A failed check rolls back: an update puts the previous definition back (never an undefine,
        which would delete the user's domain); a new domain is removed. `asked_snp`: the SNP projection of
        `xml` when the caller has it already (render parsed the document)."""
        if asked_snp is None:
            asked_snp = drift.project(domxml.parse(xml), snp_only=True)
        try:
            record = self.hv.define(xml)
        except SnpvirtError:
            name = domxml.parse(xml).findtext("name")
            if previous is None and self.hv.lookup(name) is not None:
                raise _DefinedMeanwhile(f"domain {name} was defined by another client at the same time",
                                        "run the command again: it will see that domain") from None
            raise
        problem = self._not_kept(asked_snp, record.xml)
        if problem is not None:
            if previous is None:
                self.hv.undefine(record.name)
            else:
                self.hv.define(previous.xml)
            message, hint = problem
            raise SnpvirtError(f"libvirt's definition of {record.name} {message}; the change was rolled back", hint)
        return record

    @staticmethod
    def _not_kept(asked_snp: dict[str, Any], stored_xml: str) -> tuple[str, str] | None:
        """(message, hint) when libvirt's stored definition lost or changed an SEV-SNP setting it was given.

        Every document defined here passed every SNP rule first (render, define_xml and import check it),
        and every rule reads only parts that the SNP projection holds (domain type, machine, firmware,
        NVRAM, SMM, kernel, launch security with all its attributes and children). So equal projections
        mean the stored definition passes the rules too, without running them (or the schema) again."""
        try:
            stored = domxml.parse(stored_xml)
        except etree.XMLSyntaxError as exc:
            return f"is not well-formed XML ({exc})", "see the libvirt log of this host"
        lost = drift.differences(asked_snp, drift.project(stored, snp_only=True))
        if lost:
            return (f"does not keep what it was given ({_drift_text(lost)})",
                    "this libvirt does not keep these SEV-SNP settings: use libvirt >= 10.5 on this host")
        return None

    # --- apply / define from specs -----------------------------------------------------------------

    def _plan(self, spec: VmSpec, existing_names: set[str]) -> _Plan:
        existing = self.hv.lookup(spec.name) if spec.name in existing_names else None
        now = self.clock()
        if existing is None:  # libvirt defines a new domain without autostart: only `true` is a change
            return self._with_xml(_Plan(spec, "create", None, spec.state == "running",
                                        autostart=True if spec.autostart else None), now, now)
        root = domxml.parse(existing.xml)
        info = metadata.read(root)
        if info is None:
            raise ConflictError(f"a domain named {spec.name} exists and is not managed by snpvirt; it is left untouched",
                                f"choose another name, or bring it under management: snpvirt import {spec.name}")
        if spec.uuid is not None and spec.uuid != existing.uuid:
            raise ConflictError(f"domain {spec.name} exists with UUID {existing.uuid}, the spec says {spec.uuid}",
                                "remove uuid from the spec or fix it; snpvirt never replaces another domain")
        spec = _keep_identity(spec, existing.uuid, root)
        # Desired state is what the spec renders compared with what libvirt holds, not the digest snpvirt
        # wrote earlier: another tool may have redefined the domain since, metadata and all.
        record = self._id_block_record(spec)
        desired = self._desired_projection(spec, root, record)
        drifted = drift.differences(desired, drift.project(root))
        broken = _snp_errors(root, self.allow_debug)
        same_spec = info.digest == "sha256:" + hashlib.sha256(render.spec_json(spec).encode()).hexdigest()
        diff = metadata.spec_diff(info.spec, spec.source) if not same_spec else \
            [{**c, "key": f"definition.{c['key']}"} for c in drifted]
        if broken:  # edited outside snpvirt so that it no longer launches as SEV-SNP: the spec puts it back
            diff.append({"key": "(definition)", "from": f"breaks {broken[0].rule_id}", "to": "as the spec renders it"})
        action = "unchanged" if same_spec and not drifted and not broken else "update"
        active = is_active(existing.state)
        wants_running = spec.state == "running"
        plan = _Plan(spec, action, existing, wants_running and not active, diff,
                     restart_required=active and self._runs_otherwise(existing, desired),
                     stop=active and not wants_running, autostart=self._autostart_change(spec))
        if action == "unchanged":
            return plan
        return self._with_xml(plan, info.defined_at or now, now, record)

    def _autostart_change(self, spec: VmSpec) -> bool | None:
        """The autostart flag to set on an existing domain, or None (the spec is silent, or it is set so)."""
        if spec.autostart is None or self.hv.autostart(spec.name) == spec.autostart:
            return None
        return spec.autostart

    @staticmethod
    def _id_block_record(spec: VmSpec) -> launch.LaunchRecord | None:
        """The launch record, only for a spec whose ID block snpvirt signs (its blocks are part of the
        definition); None when the launch files are not readable here (the comparison leaves them out)."""
        if not spec.snp.id_key:
            return None
        try:
            return launch.record(spec)
        except BadInputError:
            return None

    def _with_xml(self, plan: _Plan, defined_at: str, now: str, record: launch.LaunchRecord | None = None) -> _Plan:
        """The document to define, rendered with the launch record and the stamp. It is checked (every SNP
        rule) by _execute, on the thread that carries the plan out, before anything else is done with it."""
        record = record or launch.record(plan.spec)
        stamp = Stamp(defined_at, now, record.expected.digests)
        plan.xml = render.render_xml(plan.spec, self._resolve_sev(plan.spec), stamp, record)
        return plan

    def _check_rendered(self, plan: _Plan) -> None:
        """Raise BadInputError unless the plan's document passes every SNP rule (render.check_rendered: no
        schema run, the spec checks make it schema-valid); keep its SNP projection for the check after define.
        On a worker thread, the parse runs without the GIL, beside the main thread's next render."""
        if plan.xml is not None and plan.asked_snp is None:
            _, root = render.check_rendered(plan.spec.name, plan.xml, self.allow_debug)
            plan.asked_snp = drift.project(root, snp_only=True)

    def apply(self, inputs: Iterable[SpecInput], check: bool = False, start: bool = True,
              restart: bool = False) -> list[Outcome]:
        """Make each spec's domain exist as specified, with its autostart flag, and (with start) in its
        run state: running or shut off; `restart`: restart the ones running an older definition. `check`
        only plans.

        Specs are planned (parsed, rendered) on this thread, which also passes the readiness gate before
        the first change (a plan is refused alike), while LIBVIRT_WORKERS threads carry out earlier plans:
        the CPU work and the RPC round trips overlap. Each domain's own steps stay in order (one worker
        owns a plan: check the rendered document, define, check libvirt's copy, autostart, run state);
        results come back in the order given.
        """
        existing_names = self.hv.domain_names()
        seen: set[str] = set()
        results: list[Outcome | Future[Outcome]] = []
        slots = threading.BoundedSemaphore(LOOKAHEAD)
        with ThreadPoolExecutor(LIBVIRT_WORKERS, thread_name_prefix="snpvirt-apply") as libvirt_workers:
            for item in inputs:
                planned = self._plan_item(item, seen, existing_names)
                if isinstance(planned, Outcome):
                    results.append(planned)
                    continue
                planned.restart = start and restart and planned.restart_required and planned.spec.state == "running"
                if planned.action != "unchanged" or planned.autostart is not None or (
                        start and (planned.start or planned.stop or planned.restart)):
                    self.ensure_ready()  # before the first change is handed to libvirt; a plan is refused alike
                if check:
                    results.append(self._execute(planned, True, start))
                    continue
                slots.acquire()  # waits (without the GIL) while LOOKAHEAD plans are still to be carried out
                future = libvirt_workers.submit(self._execute, planned, False, start)
                future.add_done_callback(lambda _: slots.release())
                results.append(future)
        return [r.result() if isinstance(r, Future) else r for r in results]

    def _plan_item(self, item: SpecInput, seen: set[str], existing_names: set[str]) -> _Plan | Outcome:
        if item.error is not None:
            return Outcome(item.label, "invalid").fail(item.error)
        spec = item.spec
        if spec.name in seen:
            return Outcome(spec.name, "invalid").fail(BadInputError(
                f"{item.label}: domain {spec.name} is named by two specs in this call", "give each spec its own name"))
        seen.add(spec.name)
        try:
            return self._plan(spec, existing_names)
        except SnpvirtError as err:
            return Outcome(spec.name, _refused_action(err)).fail(err)

    def _execute(self, plan: _Plan, check: bool, start: bool, retries: int = RACE_RETRIES) -> Outcome:
        try:
            self._check_rendered(plan)
        except BadInputError as err:
            return Outcome(plan.spec.name, "invalid").fail(err)
        existing_state = plan.existing.state if plan.existing else None
        will_start, will_stop, will_restart = start and plan.start, start and plan.stop, plan.restart
        run_state = [c for c in plan.run_state_diff() if start or c["key"] != "state"]  # define leaves it running
        out = Outcome(plan.spec.name, plan.action, state=existing_state or "absent", details={
            "diff": plan.diff + run_state, "restart_required": plan.restart_required, "will_start": will_start,
            "will_stop": will_stop, "will_restart": will_restart})
        if check:
            out.changed = plan.action != "unchanged" or bool(run_state) or will_start or will_restart
            out.details["planned"] = True
            if (will_start or will_restart) and plan.xml is None:  # the run would refuse to start it: so does the plan
                try:
                    self._refuse_to_start(plan.existing)
                except SnpvirtError as err:
                    return out.fail(err)
            return out
        try:
            if plan.xml is not None:
                self._define_checked(plan.xml, plan.existing, plan.asked_snp)
                out.changed, out.state = True, existing_state or "shutoff"
            if plan.autostart is not None:
                self.hv.set_autostart(plan.spec.name, plan.autostart)
                out.changed = True
            if will_start:
                if plan.xml is None:  # starting the existing definition: it must still be the SEV-SNP one
                    self._refuse_to_start(plan.existing)
                out.details["started"] = self._start_once(plan.spec.name)
                out.changed, out.state = out.changed or out.details["started"], "running"
            elif will_stop:
                out.state, out.changed = self._shut_down(plan.spec.name), True
            elif will_restart:
                self._restart(plan, out)
        except _DefinedMeanwhile as err:
            if not retries:
                return out.fail(err)
            return self._replan(plan, start, retries - 1)
        except SnpvirtError as err:
            defined = plan.xml is None or out.changed
            out.details.update(defined=defined, started=False)
            return out.fail(err)
        return out

    def _replan(self, plan: _Plan, start: bool, retries: int) -> Outcome:
        """Another client (a second `apply` of the same spec) created the domain first: plan again against
        the domain that now exists, as if this run had started a moment later."""
        try:
            replanned = self._plan(plan.spec, {plan.spec.name})
        except SnpvirtError as err:
            return Outcome(plan.spec.name, _refused_action(err)).fail(err)
        return self._execute(replanned, False, start, retries)

    def _shut_down(self, name: str) -> str:
        """Graceful shutdown within the usual timeout (never forced); the state it ended in."""
        outcome = self.stop_all([name], self.shutdown_timeout_s, force=False)[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome.state

    def _restart(self, plan: _Plan, out: Outcome) -> None:
        """apply --restart: shut down, then start on the desired definition; one domain of this host at a
        time, so a host's service never loses all its guests at once."""
        with self._restarting:
            if plan.xml is None:  # restarting on the existing definition: it must still be the SEV-SNP one
                self._refuse_to_start(plan.existing)
            out.state, out.changed = self._shut_down(plan.spec.name), True
            self.hv.start(plan.spec.name)
            out.state = "running"
            out.details.update(restarted=True, restart_required=False)

    def _start_once(self, name: str) -> bool:
        """Start; True when this call started it. A domain another client started meanwhile is running,
        which is what was asked: not an error."""
        try:
            self.hv.start(name)
        except SnpvirtError:
            if is_active(self.hv.state(name)):
                return False
            raise
        return True

    # --- define an XML document ------------------------------------------------------------------

    def define_xml(self, xml: bytes, label: str, check: bool = False) -> Outcome:
        errors = [f for f in domxml.check(xml, self.allow_debug) if f.severity == "error"]
        if errors:
            raise BadInputError(f"{label}: {errors[0].rule_id}: {errors[0].message}"
                                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), errors[0].hint)
        root = domxml.parse(xml)
        digest = metadata.content_digest(root)
        if metadata.read(root) is None:
            metadata.add_import_record(root, xml, self.clock())
        metadata.find(root).set("xml_digest", digest)
        return self._define_document(root, "define", digest, check)

    def _define_document(self, root: etree._Element, action: str, digest: str, check: bool = False) -> Outcome:
        name = root.findtext("name")
        existing = self.hv.lookup(name)
        if existing is not None:
            existing_root = domxml.parse(existing.xml)
            info = metadata.read(existing_root)
            uuid = root.findtext("uuid")
            if info is None or (uuid and uuid != existing.uuid):
                raise ConflictError(f"a domain named {name} already exists" + (" and is not managed by snpvirt" if info is None
                                    else f" with UUID {existing.uuid}"), f"bring it under management with: snpvirt import {name}")
            # The same document again, and libvirt still holds what it said (no other tool redefined it).
            if info.xml_digest == digest and not drift.differences(drift.project(root), drift.project(existing_root)):
                return Outcome(name, "unchanged", state=existing.state)
            if not uuid:
                etree.SubElement(root, "uuid").text = existing.uuid
        self.ensure_ready()
        if check:  # the same conflicts and the same gate as the run, then stop short of libvirt
            return Outcome(name, action if existing is None else "update", changed=True,
                           state=existing.state if existing else "absent", details={"planned": True})
        self._define_checked(etree.tostring(root, encoding="unicode"), existing)
        return Outcome(name, action if existing is None else "update", changed=True,
                       state=existing.state if existing else "shutoff")

    # --- import ----------------------------------------------------------------------------------

    def import_domain(self, xml: bytes, from_domain: DomainRecord | None, fix: bool, check: bool,
                      sev: SevParams | None, firmware: str | None,
                      installed: InstalledFirmware = InstalledFirmware()) -> Outcome:
        """`installed`: what the host's descriptors and files say about firmware (nothing known by default:
        a domain's firmware path must then be an AmdSev build by name, or given as --firmware)."""
        if firmware is not None:
            self.warnings += installed.check_option(firmware)
        try:
            root = domxml.parse(xml)
        except etree.XMLSyntaxError as exc:  # a file that is not XML at all: bad input, like validate says
            raise BadInputError(f"not well-formed XML: {exc}", "fix the XML syntax at that line") from None
        name = root.findtext("name") or "(unnamed)"
        if from_domain is not None and metadata.read(root) is not None:
            return Outcome(name, "unchanged", state=from_domain.state, details={
                "managed": True, "restart_required": self._restart_required(from_domain, root)})
        before = domxml.check(xml, self.allow_debug)
        changes = importer.fix(root, sev, firmware) if fix else []
        fixed = etree.tostring(root, encoding="unicode") + ("\n" if xml.endswith(b"\n") else "")
        after = domxml.check(fixed, self.allow_debug)
        # Both sides parsed and serialised alike: the diff shows the changes, not libvirt's quotes or spacing.
        original = etree.tostring(domxml.parse(xml), encoding="unicode") + ("\n" if xml.endswith(b"\n") else "")
        diff = "".join(difflib.unified_diff(original.splitlines(True), fixed.splitlines(True), "original", "fixed"))
        out = Outcome(name, "import", state=from_domain.state if from_domain else None, details={
            "broken_rules": [f.as_dict() for f in before if f.severity == "error"], "changes": changes,
            "remaining": [f.as_dict() for f in after], "xml_diff": diff})
        errors = [f for f in after if f.severity == "error"]
        if errors:
            hint = "run again with --fix" if not fix and changes == [] else errors[0].hint
            return out.fail(BadInputError(f"{name} breaks {len(errors)} SEV-SNP rule(s): {', '.join(f.rule_id for f in errors)}", hint))
        refused = _firmware_refused(name, root, installed, fix, firmware)
        if refused is not None:
            return out.fail(refused)
        if from_domain is not None:  # a running domain keeps running as it was until it restarts
            out.details["restart_required"] = self._restart_required(from_domain, root)
        metadata.add_import_record(root, xml, self.clock())
        digest = metadata.read(root).digest
        if from_domain is None:
            existing = self.hv.lookup(name)
            if existing is not None:
                info = metadata.read(domxml.parse(existing.xml))
                if info is not None and info.digest == digest:
                    out.action, out.state = "unchanged", existing.state
                    return out
                return out.fail(ConflictError(f"a domain named {name} already exists", f"import it by name: snpvirt import {name}"))
        self.ensure_ready()
        if check:  # after the same conflict checks and gate as the run: the plan promises only what it would do
            out.changed = True
            out.details["planned"] = True
            return out
        self._define_checked(etree.tostring(root, encoding="unicode"), from_domain)
        out.changed, out.state = True, from_domain.state if from_domain else "shutoff"
        return out

    # --- single-domain verbs ---------------------------------------------------------------------

    def start(self, name: str) -> Outcome:
        record, _ = self._managed(name)
        if is_active(record.state):
            return Outcome(name, "start", state=record.state)
        self._refuse_to_start(record)
        self.ensure_ready()
        self.hv.start(name)
        self._destroy_if_started_otherwise(name)
        return Outcome(name, "start", changed=True, state="running")

    def _destroy_if_started_otherwise(self, name: str) -> None:
        """The check before start and libvirt's create are two calls, and another tool can define the domain
        in between: what runs is checked the same way, and a guest that did not start as the SEV-SNP guest
        snpvirt defined is destroyed at once rather than reported as started."""
        record = self.hv.lookup(name)
        if record is None or record.live_xml is None:
            return
        try:
            self._refuse_to_start(dataclasses.replace(record, xml=record.live_xml))
        except ConflictError as err:
            self.hv.destroy(name)
            raise ConflictError(f"{name}'s definition was changed while snpvirt started it, and it started without "
                                f"the SEV-SNP settings snpvirt defined; snpvirt destroyed it ({err.message})", err.hint) from None

    def stop(self, name: str, timeout_s: float, force: bool, poll_s: float = 0.2) -> Outcome:
        """Shut one domain down (see stop_all); its failure is raised."""
        outcome = self.stop_all([name], timeout_s, force, poll_s)[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def stop_all(self, names: list[str], timeout_s: float, force: bool, poll_s: float = 0.2,
                 waiting: Callable[[list[str], float], None] | None = None) -> list[Outcome]:
        """Ask every domain to shut down at once, then wait for all of them under one deadline (not one
        timeout per domain, one after another). The state is read once more when the deadline has passed:
        a guest that stopped in time is never reported as timed out. `waiting(names, seconds_left)` hears
        which are still shutting down between polls. Each name gets its own outcome, in the order given."""
        if timeout_s < 0:
            raise BadInputError(f"--timeout must be 0 or more seconds, not {timeout_s:g}", "give the seconds to wait, e.g. --timeout 60")
        outcomes: dict[str, Outcome] = {}
        pending = [name for name in dict.fromkeys(names) if self._ask_to_shut_down(name, outcomes)]
        deadline = time.monotonic() + timeout_s
        while pending:
            pending = [name for name in pending if not self._stopped(name, outcomes)]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            if waiting is not None:
                waiting(list(pending), remaining)
            time.sleep(min(poll_s, remaining))
        for name in pending:
            outcomes[name] = self._after_timeout(name, timeout_s, force)
        return [outcomes[name] for name in names]

    def _ask_to_shut_down(self, name: str, outcomes: dict[str, Outcome]) -> bool:
        """True when `name` was asked to shut down and must be waited for; otherwise its outcome is set."""
        try:
            record, _ = self._managed(name)
            if not is_active(record.state):
                outcomes[name] = Outcome(name, "stop", state=record.state)
                return False
            self.hv.shutdown(name)
        except SnpvirtError as err:
            outcomes[name] = Outcome(name, "stop").fail(err)
            return False
        return True

    def _stopped(self, name: str, outcomes: dict[str, Outcome]) -> bool:
        try:
            state = self.hv.state(name)
        except SnpvirtError as err:  # undefined meanwhile by another client, or the connection went away
            outcomes[name] = Outcome(name, "stop").fail(err)
            return True
        if is_active(state):
            return False
        outcomes[name] = Outcome(name, "stop", changed=True, state=state)
        return True

    def _after_timeout(self, name: str, timeout_s: float, force: bool) -> Outcome:
        try:
            if not force:
                state = self.hv.state(name)
                return Outcome(name, "stop", state=state).fail(OperationTimeoutError(
                    f"{name} did not shut down within {timeout_s:g} s (it is still {state})",
                    "wait longer (--timeout), or add --force to destroy it after the timeout"))
            self.hv.destroy(name)
            return Outcome(name, "stop", changed=True, state=self.hv.state(name), details={"forced": True})
        except SnpvirtError as err:
            return Outcome(name, "stop").fail(err)

    def destroy(self, name: str) -> Outcome:
        record, _ = self._managed(name)
        if not is_active(record.state):
            return Outcome(name, "destroy", state=record.state)
        self.hv.destroy(name)
        return Outcome(name, "destroy", changed=True, state="shutoff")

    def undefine(self, name: str) -> Outcome:
        if self.hv.lookup(name) is None:
            return Outcome(name, "undefine", state="absent")
        record, _ = self._managed(name)
        if is_active(record.state):
            raise ConflictError(f"{name} is {record.state}; snpvirt undefines only stopped domains",
                                f"stop it first: snpvirt stop {name}")
        self.hv.undefine(name)
        return Outcome(name, "undefine", changed=True, state="absent")

    # --- measurement recorded later (files were not readable where the domain was defined) ----------

    def record_measurement(self, name: str, inputs: launchrecord.LaunchInputs, expected: launch.Expected) -> Outcome:
        """Record `expected` in the domain only if it was computed from what the domain launches with:
        otherwise it is a value this domain can never produce (attestation would fail, or pass for another guest).

        A domain defined from a spec launches with that spec's inputs, as snpvirt recorded them (with the
        digests of the files it could read then). An imported domain launches with its definition: its
        inputs are recorded from it, with the measurement, so that `list` can tell when they change."""
        record, info = self._managed(name)
        root = domxml.parse(record.xml)
        imported = info.origin == "import"
        mismatches = launchrecord.mismatches(root, info, inputs, expected)
        if mismatches:
            spec = inputs.source == "spec"
            whose = "this spec's" if spec else "the given"
            raise ConflictError(f"{name} was not launched with {whose} inputs ({'; '.join(mismatches)})",
                                "measure with the spec the domain was defined from (snpvirt status NAME shows it)" if spec
                                else f"give what {name} launches with (snpvirt status {name}; virsh dumpxml {name})")
        element = metadata.find(root)
        if imported:
            element = metadata.with_launch_inputs(element, launchrecord.launch_record(root, expected))
        element = metadata.with_measurement(element, expected)
        if etree.tostring(element) == etree.tostring(metadata.find(root)):
            return Outcome(name, "record", state=record.state)
        self.hv.set_metadata(name, metadata.without_namespace(element), domxml.METADATA_NS)
        return Outcome(name, "record", changed=True, state=record.state)

    def attestation_expectations(self, name: str) -> dict[str, Any]:
        """What a report from this domain must show: its recorded measurement, policy and host data."""
        record, info = self._managed(name)
        return launchrecord.attestation_expectations(name, domxml.parse(record.xml), info)

    # --- inventory -------------------------------------------------------------------------------

    def list(self, include_inactive: bool = False) -> list[dict[str, Any]]:
        return self.inventory(include_inactive)[0]

    def inventory(self, include_inactive: bool = False, include_unmanaged: bool = False) -> tuple[list[dict[str, Any]], int]:
        """The rows `list` shows, each saying whether snpvirt manages it, and how many domains snpvirt does not
        manage were left out (so `list` can say so rather than look like the host's whole inventory)."""
        rows, hidden = [], 0
        for record in self.hv.domains():
            if not include_inactive and not is_active(record.state):
                continue
            root = domxml.parse(record.xml)
            info = metadata.read(root)
            if info is None and not include_unmanaged:
                hidden += 1
                continue
            rows.append({**inventory.row(record, root, info), "managed": info is not None})
        return sorted(rows, key=lambda r: r["name"]), hidden

    def status(self, name: str) -> dict[str, Any]:
        record, info = self._managed(name)
        root = domxml.parse(record.xml)
        return {**inventory.row(record, root, info), "origin": info.origin, "snpvirt_version": info.version,
                "spec_digest": info.digest, "spec": info.spec, "launch": metadata.typed_launch(info.launch),
                "defined_at": info.defined_at, "updated_at": info.updated_at}


def _refused_action(err: SnpvirtError) -> str:
    """The action a spec that could not be planned shows: `conflict` when another domain holds its name
    (or it is not snpvirt's to change), `invalid` when the spec itself is wrong."""
    return "conflict" if isinstance(err, ConflictError) else "invalid"


def _firmware_refused(name: str, root: etree._Element, installed: InstalledFirmware, fix: bool,
                      firmware: str | None) -> BadInputError | None:
    """A domain whose firmware is not an SEV-SNP build would be defined and then never launch (or launch
    unmeasurable): refuse it unless descriptors or its name say it is one, or --firmware named it."""
    loader = (root.findtext("os/loader") or "").strip()
    if not loader or (fix and loader == firmware):
        return None  # no path: libvirt picks a firmware whose descriptor offers amd-sev-snp
    verdict = installed.verdict(loader)
    if verdict.snp:
        return None
    what = "is not an SEV-SNP build" if verdict.snp is False else "is not known here as an SEV-SNP build"
    return BadInputError(f"firmware {loader} {what} ({verdict.reason}); {name} was not imported",
                         ("pass" if fix else "run again with --fix and") +
                         f" --firmware PATH of an SEV-SNP build, e.g. --firmware {installed.example()}")


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None
