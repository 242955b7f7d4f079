"""The single-domain verbs through the manager on libvirt's in-process test driver: what each outcome says
(as the JSON envelope carries it), stop's one deadline for many guests, and what happens when it passes.
(scripts/mutation verbs)

The test driver's guests shut down the moment they are asked. A guest that does not is a thin wrapper
that ignores the request (a guest that ignores ACPI, a real case), and the waiting runs on a fake clock
handed to the verbs module: its sleeps return at once, so no test waits and none depends on timing."""

from __future__ import annotations

import libvirt
import pytest

from snpvirt.domain import xml as domxml
from snpvirt.errors import BadInputError, ConflictError, SnpvirtError
from snpvirt.libvirt.connection import Connection
from snpvirt.orchestration import verbs as verbs_module
from tests.integration.test_manager import IgnoresShutdown, make_manager, mgr, spec  # noqa: F401 - mgr: a fixture
from tests.integration.test_manager_drift import edit_outside, strip_snp_behind_a_comment

TIMEOUT_HINT = "wait longer (--timeout), or add --force to destroy it after the timeout"


class FakeClock:
    """time.monotonic and time.sleep for the verbs module: a sleep moves the clock on and returns at once."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        assert len(self.sleeps) < 100, "stop's wait never ends"
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(verbs_module, "time", fake)
    return fake


def listening(log):
    """A `waiting` callback that notes which guests are still shutting down and the seconds left."""
    return lambda names, seconds_left: log.append((names, seconds_left))


# --- start and undefine: their outcomes -------------------------------------------------------------------

def test_start_says_it_started_the_guest_and_then_that_it_already_runs(mgr, conn):
    mgr.apply([spec(name="verbs-01")], start=False)
    assert mgr.start("verbs-01").as_dict() == {"name": "verbs-01", "ok": True, "changed": True, "action": "start",
                                               "state": "running"}
    assert mgr.start("verbs-01").as_dict() == {"name": "verbs-01", "ok": True, "changed": False, "action": "start",
                                               "state": "running"}


class EditedOnceRunning(Connection):
    """Another tool edits the definition (`virsh edit`: the next boot's) the moment the guest has started."""

    def start(self, name):
        super().start(name)
        raw = libvirt.open("test:///default")
        try:
            edit_outside(raw, name, strip_snp_behind_a_comment)
        finally:
            raw.close()


def test_what_runs_is_checked_after_start_not_the_definition_for_the_next_boot(clean_test_driver):
    """The guest runs as snpvirt defined it: it is not destroyed for an edit that only the next start would
    launch (and that start refuses it)."""
    with EditedOnceRunning("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-02")], start=False)
        assert m.start("verbs-02").changed is True
        assert conn.state("verbs-02") == "running"
        assert domxml.parse(conn.lookup("verbs-02").xml).find("launchSecurity") is None, "the next boot's was edited"
        m.destroy("verbs-02")
        with pytest.raises(ConflictError, match="snpvirt does not start it"):
            m.start("verbs-02")


class CrashesAsItBoots(Connection):
    """A guest whose QEMU exits as soon as it started: by the check after start, nothing runs."""

    def start(self, name):
        super().start(name)
        super().destroy(name)


def test_a_guest_gone_by_the_check_after_start_has_nothing_to_check(clean_test_driver):
    with CrashesAsItBoots("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-03")], start=False)
        assert m.start("verbs-03").changed is True
        assert conn.state("verbs-03") == "shutoff" and conn.lookup("verbs-03") is not None


def test_undefine_says_the_domain_is_absent_whether_it_removed_it_or_not(mgr, conn):
    mgr.apply([spec(name="verbs-04")], start=False)
    assert mgr.undefine("verbs-04").as_dict() == {"name": "verbs-04", "ok": True, "changed": True,
                                                  "action": "undefine", "state": "absent"}
    assert conn.lookup("verbs-04") is None
    assert mgr.undefine("verbs-04").as_dict() == {"name": "verbs-04", "ok": True, "changed": False,
                                                  "action": "undefine", "state": "absent"}


# --- stop: one deadline, polls, and what happens after it --------------------------------------------------

def test_a_negative_timeout_says_what_to_give(mgr):
    with pytest.raises(BadInputError) as info:
        mgr.stop_all(["verbs-05"], -1.5, False)
    assert (info.value.message, info.value.hint) == ("--timeout must be 0 or more seconds, not -1.5",
                                                     "give the seconds to wait, e.g. --timeout 60")


def test_stop_waits_poll_by_poll_until_the_deadline_then_reports_the_timeout(clean_test_driver, clock):
    with IgnoresShutdown("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-06")])
        heard = []
        [outcome] = m.stop_all(["verbs-06"], 1.0, False, poll_s=0.25, waiting=listening(heard))
        assert heard == [(["verbs-06"], 1.0), (["verbs-06"], 0.75), (["verbs-06"], 0.5), (["verbs-06"], 0.25)]
        assert clock.sleeps == [0.25] * 4, "no poll once the deadline has come"
        assert outcome.as_dict() == {"name": "verbs-06", "ok": False, "changed": False, "action": "stop",
                                     "state": "running", "error": {
                                         "kind": "timeout", "hint": TIMEOUT_HINT,
                                         "message": "verbs-06 did not shut down within 1 s (it is still running)"}}
        assert conn.state("verbs-06") == "running", "without --force a guest is never destroyed"


def test_stop_polls_five_times_a_second_unless_told_otherwise(clean_test_driver, clock):
    with IgnoresShutdown("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-07")])
        m.stop_all(["verbs-07"], 1, False)
        assert clock.sleeps[0] == 0.2 and max(clock.sleeps) == 0.2
        clock.sleeps.clear()
        with pytest.raises(SnpvirtError, match="did not shut down within 1 s"):
            m.stop("verbs-07", 1, False)
        assert clock.sleeps[0] == 0.2 and max(clock.sleeps) == 0.2
        clock.sleeps.clear()
        with pytest.raises(SnpvirtError, match="did not shut down within 1 s"):
            m.stop("verbs-07", 1, False, poll_s=0.25)
        assert clock.sleeps == [0.25] * 4, "stop passes its poll interval on"


def test_force_destroys_the_guest_after_the_deadline_and_says_so(clean_test_driver, clock):
    with IgnoresShutdown("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-08")])
        assert m.stop("verbs-08", 0.5, True, poll_s=0.25).as_dict() == {
            "name": "verbs-08", "ok": True, "changed": True, "action": "stop", "state": "shutoff", "forced": True}
        assert conn.state("verbs-08") == "shutoff"


class CannotDestroy(IgnoresShutdown):
    """A guest that ignores ACPI and that libvirt cannot kill either (its QEMU stuck in the kernel)."""

    def destroy(self, name):
        raise SnpvirtError(f"destroy {name}: Failed to terminate process 4242 with SIGKILL: Device or resource busy",
                           "libvirt error code 1; see the libvirt log for more")


def test_a_forced_stop_that_cannot_destroy_reports_libvirts_error(clean_test_driver, clock):
    with CannotDestroy("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-09")])
        [outcome] = m.stop_all(["verbs-09"], 0, True)
        assert outcome.as_dict() == {"name": "verbs-09", "ok": False, "changed": False, "action": "stop", "state": None,
                                     "error": {"kind": "failure", "hint": "libvirt error code 1; see the libvirt log for more",
                                               "message": "destroy verbs-09: Failed to terminate process 4242 with "
                                                          "SIGKILL: Device or resource busy"}}
        assert conn.state("verbs-09") == "running"


def test_force_never_reaches_a_domain_that_was_not_asked_to_stop(mgr, conn, clean_test_driver, clock):
    """The test driver's own domain "test" runs and is not snpvirt's: refused, it is not waited for, and so
    not destroyed when the deadline passes. A stopped guest and an unknown name are reported, not waited for."""
    assert clean_test_driver.lookupByName("test").isActive()
    mgr.apply([spec(name="verbs-10"), spec(name="verbs-11")])
    mgr.destroy("verbs-11")
    outcomes = [o.as_dict() for o in mgr.stop_all(["verbs-10", "test", "verbs-11", "nosuch"], 0, True)]
    assert outcomes[0] == {"name": "verbs-10", "ok": True, "changed": True, "action": "stop", "state": "shutoff"}
    assert {k: v for k, v in outcomes[1].items() if k != "error"} == {
        "name": "test", "ok": False, "changed": False, "action": "stop", "state": None}
    assert outcomes[1]["error"]["kind"] == "conflict"
    assert outcomes[2] == {"name": "verbs-11", "ok": True, "changed": False, "action": "stop", "state": "shutoff"}
    assert {k: v for k, v in outcomes[3].items() if k != "error"} == {
        "name": "nosuch", "ok": False, "changed": False, "action": "stop", "state": None}
    assert outcomes[3]["error"]["kind"] == "not_found"
    assert clean_test_driver.lookupByName("test").isActive(), "a domain snpvirt does not manage is left alone"


class UndefinedMeanwhile(Connection):
    """Another client undefines the guest right after it was asked to shut down."""

    def shutdown(self, name):
        super().shutdown(name)
        raw = libvirt.open("test:///default")
        try:
            raw.lookupByName(name).undefine()
        finally:
            raw.close()


def test_a_guest_undefined_while_stopping_is_reported_and_not_waited_for(clean_test_driver, clock):
    with UndefinedMeanwhile("test:///default") as conn:
        m = make_manager(conn)
        m.apply([spec(name="verbs-12")])
        [outcome] = m.stop_all(["verbs-12"], 1.0, False, poll_s=0.25)
        assert {k: v for k, v in outcome.as_dict().items() if k != "error"} == {
            "name": "verbs-12", "ok": False, "changed": False, "action": "stop", "state": None}
        assert outcome.error.kind == "not_found" and "verbs-12" in outcome.error.message
        assert clock.sleeps == [], "nothing left to wait for"


# --- destroy: its outcomes --------------------------------------------------------------------------------

def test_destroy_says_it_stopped_the_guest_and_then_that_it_was_already_off(mgr, conn):
    """What `destroy --json` carries: a script reads `changed` to know whether it pulled the plug, and `state`."""
    mgr.apply([spec(name="verbs-13")])
    assert mgr.destroy("verbs-13").as_dict() == {"name": "verbs-13", "ok": True, "changed": True, "action": "destroy",
                                                 "state": "shutoff"}
    assert conn.state("verbs-13") == "shutoff"
    assert mgr.destroy("verbs-13").as_dict() == {"name": "verbs-13", "ok": True, "changed": False, "action": "destroy",
                                                 "state": "shutoff"}
    assert conn.lookup("verbs-13") is not None, "destroy stops a guest, it never removes its definition"
