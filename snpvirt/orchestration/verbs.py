"""The single-domain verbs: start, stop (many at once, under one deadline), destroy, undefine."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from snpvirt.errors import BadInputError, ConflictError, OperationTimeoutError, SnpvirtError
from snpvirt.orchestration.base import Hypervisor, Outcome, is_active


class Verbs:
    """Part of Manager: start, stop, destroy, undefine one domain (stop_all: many)."""

    hv: Hypervisor

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
