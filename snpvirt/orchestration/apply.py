"""`apply`: desired state from specs. A plan (`apply --check`) is computed by the same code that carries
it out; the calling thread plans while worker threads carry out earlier plans."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from lxml import etree

from snpvirt.domain import copies, drift, metadata, render
from snpvirt.domain.copies import CopyRenderer
from snpvirt.domain import xml as domxml
from snpvirt.domain.sevparams import SevParams
from snpvirt.errors import BadInputError, ConflictError, NotFoundError, SnpvirtError
from snpvirt.launch import inputs as launch
from snpvirt.models import DomainRecord, Stamp, VmSpec
from snpvirt.orchestration import volumes as pool_volumes
from snpvirt.orchestration.base import DefinedMeanwhile, Hypervisor, Outcome, SpecInput, is_active, snp_errors


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
    volumes: pool_volumes.VolumePlan = field(default_factory=pool_volumes.VolumePlan)  # disks to create, the seed

    def run_state_diff(self) -> list[dict[str, Any]]:
        """The run-state changes, in the diff's form (keys without a `definition.` prefix)."""
        changes = []
        if self.autostart is not None:
            changes.append({"key": "autostart", "from": not self.autostart, "to": self.autostart})
        if self.stop:
            changes.append({"key": "state", "from": self.existing.state, "to": "shutoff"})
        return changes


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


def _keep_identity(spec: VmSpec, uuid: str, existing: etree._Element) -> VmSpec:
    """A redefinition keeps the domain's identity: its UUID, and the MAC address libvirt gave each interface
    the spec leaves without one (a new MAC after every update would change the guest's network identity)."""
    macs = [interface.find("mac").get("address") if interface.find("mac") is not None else None
            for interface in existing.iterfind("devices/interface")]
    networks = tuple(dataclasses.replace(net, mac=macs[i]) if net.mac is None and i < len(macs) and macs[i] else net
                     for i, net in enumerate(spec.networks))
    return dataclasses.replace(spec, uuid=uuid, networks=networks)


class Applying:
    """Part of Manager: apply (plan each spec, carry the plans out on worker threads)."""

    hv: Hypervisor
    allow_debug: bool
    clock: Callable[[], str]
    shutdown_timeout_s: float
    libvirt_workers: int
    _resolve_sev: Callable[[VmSpec], SevParams]
    _restarting: threading.Lock
    storage: pool_volumes.VolumeStore | None
    image_cache: Callable[[str], Any]
    _copies: CopyRenderer

    def _plan(self, spec: VmSpec, existing_names: set[str]) -> _Plan:
        existing = self.hv.lookup(spec.name) if spec.name in existing_names else None
        now = self.clock()
        if existing is None:  # libvirt defines a new domain without autostart: only `true` is a change
            spec, volumes = pool_volumes.prepare(spec, self.storage, self.image_cache)
            return self._with_xml(_Plan(spec, "create", None, spec.state == "running",
                                        autostart=True if spec.autostart else None, volumes=volumes), now, now)
        root = domxml.parse(existing.xml)
        info = metadata.read(root)
        if info is None:
            raise ConflictError(f"a domain named {spec.name} exists and is not managed by snpvirt; it is left untouched",
                                f"choose another name, or bring it under management: snpvirt import {spec.name}")
        if info.fleet != spec.fleet:  # two fleets (or a fleet and a single-host apply) never take each other's domains
            raise ConflictError(f"domain {spec.name} belongs to " + (f"fleet {info.fleet}" if info.fleet else "no fleet")
                                + "; it is left untouched",
                                "choose another name, or manage it where it belongs" + (
                                    f" (the fleet file of {info.fleet}: snpvirt fleet apply FILE)" if info.fleet else
                                    f" (snpvirt apply SPEC -c URI), or undefine it first: snpvirt undefine {spec.name}"))
        if spec.uuid is not None and spec.uuid != existing.uuid:
            raise ConflictError(f"domain {spec.name} exists with UUID {existing.uuid}, the spec says {spec.uuid}",
                                "remove uuid from the spec or fix it; snpvirt never replaces another domain")
        spec = _keep_identity(spec, existing.uuid, root)
        spec, volumes = pool_volumes.prepare(spec, self.storage, self.image_cache)
        # Desired state is what the spec renders compared with what libvirt holds, not the digest snpvirt
        # wrote earlier: another tool may have redefined the domain since, metadata and all.
        record = self._id_block_record(spec, volumes.digests)
        defined = drift.project(root)
        desired = self._desired_projection(spec, root, defined, record)
        drifted = drift.differences(desired, defined)
        broken = snp_errors(root, self.allow_debug)
        same_spec = info.digest == "sha256:" + hashlib.sha256(render.spec_json(spec).encode()).hexdigest()
        diff = metadata.spec_diff(info.spec, spec.source) if not same_spec else \
            [{**c, "key": f"definition.{c['key']}"} for c in drifted]
        if broken:  # edited outside snpvirt so that it no longer launches as SEV-SNP: the spec puts it back
            diff.append({"key": "(definition)", "from": f"breaks {broken[0].rule_id}", "to": "as the spec renders it"})
        seed_recorded = (info.seed or {}).get("sha256")
        seed_changed = volumes.seed is not None and seed_recorded != volumes.seed.sha256
        if seed_changed:  # the same spec, another seed: its user_data file changed
            diff.append({"key": "seed.sha256", "from": seed_recorded, "to": volumes.seed.sha256})
        action = "unchanged" if same_spec and not drifted and not broken and not seed_changed else "update"
        active = is_active(existing.state)
        wants_running = spec.state == "running"
        plan = _Plan(spec, action, existing, wants_running and not active, diff,
                     restart_required=active and self._runs_otherwise(existing, desired),
                     stop=active and not wants_running, autostart=self._autostart_change(spec), volumes=volumes)
        if action == "unchanged":
            return plan
        return self._with_xml(plan, info.defined_at or now, now, record)

    def _autostart_change(self, spec: VmSpec) -> bool | None:
        """The autostart flag to set on an existing domain, or None (the spec is silent, or it is set so)."""
        if spec.autostart is None or self.hv.autostart(spec.name) == spec.autostart:
            return None
        return spec.autostart

    @staticmethod
    def _id_block_record(spec: VmSpec, known: dict[str, Any] | None = None) -> launch.LaunchRecord | None:
        """The launch record, only for a spec whose ID block snpvirt signs (its blocks are part of the
        definition); None when the launch files are not readable here (the comparison leaves them out)."""
        if not spec.snp.id_key:
            return None
        try:
            return launch.record(spec, known)
        except BadInputError:
            return None

    def _with_xml(self, plan: _Plan, defined_at: str, now: str, record: launch.LaunchRecord | None = None) -> _Plan:
        """The document to define, rendered with the launch record and the stamp. It is checked (SNP rules)
        by _execute, on the thread that carries the plan out, before anything else is done with it. Renamed
        copies of one spec (a fleet's count) are rendered once (domain/copies.py); each is still checked."""
        seed = plan.volumes.seed
        seed_sha256 = seed.sha256 if seed else None

        def fresh(spec: VmSpec) -> str:
            launched = record or launch.record(spec, plan.volumes.digests)
            stamp = Stamp(defined_at, now, launched.expected.digests)
            return render.render_xml(spec, self._resolve_sev(spec), stamp, launched, seed_sha256)

        if record is not None:  # signed ID blocks, made for this spec already
            plan.xml = fresh(plan.spec)
        else:
            plan.xml, plan.asked_snp = self._copies.render_checked(
                plan.spec, (defined_at, now, seed_sha256, plan.volumes.digests), fresh)
        return plan

    def _shape_asked_snp(self, shape_xml: str) -> dict[str, Any] | None:
        """The check of a fleet's copies of one spec, made once on the shape (the document with placeholders for
        the name, UUID and MACs, domain/copies.py) and standing for each copy filled in from it: the SNP rules
        passed, and the SNP projection that libvirt's copy of each is compared with after its define.

        A copy is the shape's document with the placeholders replaced by values that no escaping changes, so
        where no value of the shape's SNP projection holds a placeholder, each copy's projection is the shape's.
        The SNP rules read only parts that projection holds (as define.py's check of libvirt's copy relies on
        too): each copy passes them as the shape did. tests/unit/domain/test_copies.py checks both over
        generated specs. Otherwise (None) each copy is checked on its own."""
        asked = self._checked_snp_projection(copies.PLACEHOLDER, shape_xml)
        return None if copies.holds_identity_placeholder(asked) else asked

    def _checked_snp_projection(self, name: str, xml: str) -> dict[str, Any]:
        """The SNP projection of a rendered document that passes every SNP rule (BadInputError otherwise)."""
        _, root = render.check_rendered(name, xml, self.allow_debug)
        return drift.project(root, snp_only=True)

    def _check_rendered(self, plan: _Plan) -> None:
        """Raise BadInputError unless the plan's document passes libvirt's schema and every SNP rule, as
        render.render checks it; keep its SNP projection for the check after define. On a worker thread,
        the parse and the schema check run without the GIL, beside the main thread's next render. A fleet's copy
        filled in from a checked shape has its projection already (_shape_asked_snp)."""
        if plan.xml is not None and plan.asked_snp is None:
            plan.asked_snp = self._checked_snp_projection(plan.spec.name, plan.xml)

    def apply(self, inputs: Iterable[SpecInput], check: bool = False, start: bool = True,
              restart: bool = False) -> list[Outcome]:
        """Make each spec's domain exist as specified, with its autostart flag, and (with start) in its
        run state: running or shut off; `restart`: restart the ones running an older definition. `check`
        only plans.

        Specs are planned (parsed, rendered) on this thread, which also passes the readiness gate before
        the first change (a plan is refused alike), while `libvirt_workers` threads (LIBVIRT_WORKERS unless
        the caller set it) carry out earlier plans, so the CPU work and the RPC round trips overlap; with
        none, this thread carries each plan out itself. Each domain's own steps stay in order (one thread
        owns a plan: check the rendered document, define, check libvirt's copy, autostart, run state);
        results come back in the order given.
        """
        existing_names = self.hv.domain_names()
        seen: set[str] = set()
        results: list[Outcome | Future[Outcome]] = []
        slots = threading.BoundedSemaphore(max(1, LOOKAHEAD * self.libvirt_workers // LIBVIRT_WORKERS))
        with ThreadPoolExecutor(max(1, self.libvirt_workers), thread_name_prefix="snpvirt-apply") as libvirt_workers:
            for item in inputs:
                planned = self._plan_item(item, seen, existing_names)
                if isinstance(planned, Outcome):
                    results.append(planned)
                    continue
                planned.restart = start and restart and planned.restart_required and planned.spec.state == "running"
                if planned.action != "unchanged" or planned.autostart is not None or planned.volumes.changes or (
                        start and (planned.start or planned.stop or planned.restart)):
                    self.ensure_ready()  # before the first change is handed to libvirt; a plan is refused alike
                if check or not self.libvirt_workers:  # a plan; or no workers: carried out on this thread
                    results.append(self._execute(planned, check, start))
                    continue
                slots.acquire()  # waits (without the GIL) while LOOKAHEAD plans are still to be carried out
                future = libvirt_workers.submit(self._execute, planned, False, start)
                future.add_done_callback(lambda _: slots.release())
                results.append(future)
        outcomes = [r.result() if isinstance(r, Future) else r for r in results]
        if not check:
            self._created_still_defined(outcomes)
        return outcomes

    def _created_still_defined(self, outcomes: list[Outcome]) -> None:
        """A domain this run created and reports running must still be defined when the run ends. Another client
        may have undefined it between the define and the start (createXML then makes a transient domain, which
        vanishes at its first shutdown), or since (a running domain undefined is transient too, and may be gone
        by now, its name perhaps defined again by another client: the UUIDs tell), whoever started it. One listing
        for all of them: a call per domain would cost each create a round trip."""
        running = [o for o in outcomes if o.ok and o.action == "create" and o.state == "running"]
        if not running:
            return
        try:
            defined = self.hv.persistent_domains()
        except SnpvirtError:
            return  # the connection broke once the work was done: the outcomes say what was done
        for outcome in (o for o in running if defined.get(o.name) != o.created_uuid):
            self._undefined_meanwhile(outcome)

    def _undefined_meanwhile(self, outcome: Outcome) -> None:
        """Fail a created domain that nothing defines any more. What this run started is destroyed: the
        connection's handle from the start holds its UUID, so a domain another client made under the name since
        is never the one destroyed (NotFoundError: it is gone). One another client started is left to it."""
        started_here = outcome.details.get("started")
        if started_here:
            try:
                self.hv.destroy(outcome.name)
            except NotFoundError:
                pass  # shut down or destroyed already, or its name taken by another client's domain
            except SnpvirtError as err:
                outcome.fail(err)
                return
            outcome.state = "absent"
        outcome.changed = False
        outcome.details.update(defined=False, started=False)
        outcome.fail(ConflictError(
            f"another client undefined {outcome.name} after snpvirt created it, so nothing defines it any more; "
            + ("snpvirt destroyed the domain it started" if started_here
               else "another client started it, and snpvirt leaves what runs under that name alone"),
            "run the command again: it defines the domain anew" if started_here else
            # a rerun would find the running domain and leave it as it is, defined by nothing
            f"stop what runs as {outcome.name} (snpvirt stop {outcome.name}: nothing defines it, so it vanishes), "
            "then run the command again: it defines the domain anew"))

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
        volume_changes = plan.volumes.changes
        out = Outcome(plan.spec.name, plan.action, state=existing_state or "absent", details={
            "diff": plan.diff + run_state, "restart_required": plan.restart_required, "will_start": will_start,
            "will_stop": will_stop, "will_restart": will_restart, "volumes": volume_changes})
        if check:
            out.changed = plan.action != "unchanged" or bool(run_state) or will_start or will_restart or bool(volume_changes)
            out.details["planned"] = True
            if (will_start or will_restart) and plan.xml is None:  # the run would refuse to start it: so does the plan
                try:
                    self._refuse_to_start(plan.existing)
                except SnpvirtError as err:
                    return out.fail(err)
            return out
        try:
            if volume_changes:  # the disks and the seed the definition points at, before it is defined
                out.changed = pool_volumes.carry_out(plan.volumes, self.storage)
            # A domain this run creates starts on libvirt's copy that its define checked, in one call (updates: an
            # existing domain may hold a managed-save image, which createXML would leave for a later start).
            checked_copy = None
            if plan.xml is not None:
                defined = self._define_volumes_undone_on_failure(plan)
                out.changed, out.state = True, existing_state or "shutoff"
                if plan.existing is None:
                    checked_copy, out.created_uuid = defined.xml, defined.uuid
            if plan.autostart is not None:
                self.hv.set_autostart(plan.spec.name, plan.autostart)
                out.changed = True
            if will_start:
                if plan.xml is None:  # starting the existing definition: it must still be the SEV-SNP one
                    self._refuse_to_start(plan.existing)
                out.details["started"] = self._start_once(plan.spec.name, checked_copy)
                # Any start but this run's own on the checked copy is checked once it runs: another tool may have
                # defined it since the check, or started it first on whatever it defined meanwhile.
                if not out.details["started"] or checked_copy is None:
                    self._check_started(plan)
                out.changed, out.state = out.changed or out.details["started"], "running"
            elif will_stop:
                out.state, out.changed = self._shut_down(plan.spec.name), True
            elif will_restart:
                self._restart(plan, out)
        except DefinedMeanwhile as err:
            if not retries:
                return out.fail(err)
            return self._replan(plan, start, retries - 1)
        except SnpvirtError as err:
            defined = plan.xml is None or out.changed
            out.details.update(defined=defined, started=False)
            return out.fail(err)
        return out

    def _define_volumes_undone_on_failure(self, plan: _Plan) -> DomainRecord:
        """Define; when that fails, the volumes this run created go too (an existing one is never touched)."""
        try:
            return self._define_checked(plan.xml, plan.existing, plan.asked_snp)
        except BaseException:
            pool_volumes.undo(plan.volumes, self.storage)
            raise

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
            self._destroy_if_started_otherwise(plan.spec.name)
            out.state = "running"
            out.details.update(restarted=True, restart_required=False)

    def _check_started(self, plan: _Plan) -> None:
        """What started must be what was checked. A domain this apply defined (an update, or a new domain another
        client started first) was checked in libvirt's copy after the define (its SNP projection, `asked_snp`): when the running definition has that same projection it
        is the guest snpvirt defined, for one read of the live XML; anything else (or a definition that existed
        before) gets the start verb's full check, which destroys a guest that did not start as defined."""
        if plan.asked_snp is not None:
            live = self.hv.live_xml(plan.spec.name)
            if live is not None and self._not_kept(plan.asked_snp, live) is None:
                return
        self._destroy_if_started_otherwise(plan.spec.name)

    def _start_once(self, name: str, checked_copy: str | None = None) -> bool:
        """Start (on exactly `checked_copy`, when given: Hypervisor.start_definition); True when this call
        started it. A domain another client started meanwhile is running, which is what was asked: not an error
        (the caller checks what it runs)."""
        try:
            if checked_copy is None:
                self.hv.start(name)
            else:
                self.hv.start_definition(name, checked_copy)
        except SnpvirtError:
            if is_active(self.hv.state(name)):
                return False
            raise
        return True


def _refused_action(err: SnpvirtError) -> str:
    """The action a spec that could not be planned shows: `conflict` when another domain holds its name
    (or it is not snpvirt's to change), `invalid` when the spec itself is wrong."""
    return "conflict" if isinstance(err, ConflictError) else "invalid"

