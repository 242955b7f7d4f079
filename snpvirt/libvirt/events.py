"""libvirt lifecycle events, through libvirt's default event loop, with reconnection.

The default event implementation must be registered before the connection is opened; the loop
runs in a daemon thread; keepalive notices a dead daemon; after a loss, reconnect with backoff.
A process forked after the loop started gets no events: libvirt's GLib loop stays owned by the parent's
loop thread, which the child does not have (so fork before connecting, or exec).
"""

from __future__ import annotations

import atexit
import datetime
import threading
import time
from dataclasses import dataclass
from typing import Callable

import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# virDomainEventType -> (name, {detail number -> name}), as libvirt's enums name them, lowercased.
EVENTS: dict[int, tuple[str, dict[int, str]]] = {
    0: ("defined", {0: "added", 1: "updated", 2: "renamed", 3: "from_snapshot"}),
    1: ("undefined", {0: "removed", 1: "renamed"}),
    2: ("started", {0: "booted", 1: "migrated", 2: "restored", 3: "from_snapshot", 4: "wakeup"}),
    3: ("suspended", {0: "paused", 1: "migrated", 2: "ioerror", 3: "watchdog", 4: "restored", 5: "from_snapshot",
                      6: "api_error", 7: "postcopy", 8: "postcopy_failed"}),
    4: ("resumed", {0: "unpaused", 1: "migrated", 2: "from_snapshot", 3: "postcopy", 4: "postcopy_failed"}),
    5: ("stopped", {0: "shutdown", 1: "destroyed", 2: "crashed", 3: "migrated", 4: "saved", 5: "failed",
                    6: "from_snapshot"}),
    6: ("shutdown", {0: "finished", 1: "guest", 2: "host"}),
    7: ("pmsuspended", {0: "memory", 1: "disk"}),
    8: ("crashed", {0: "panicked", 1: "crashloaded"}),
}

_loop_started = False
_loop_lock = threading.Lock()
_loop_stop = threading.Event()
_loop_thread: threading.Thread | None = None


@dataclass(frozen=True)
class Event:
    time: str
    uri: str
    domain: str
    uuid: str
    event: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def start_event_loop() -> None:
    """Register libvirt's default event implementation once, and run it in a daemon thread."""
    global _loop_started, _loop_thread
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # A periodic timer so the loop wakes up even when nothing happens (and sees a stop request).
        libvirt.virEventAddTimeout(250, lambda _timer, _opaque: None, None)
        _loop_thread = threading.Thread(target=_run_loop, name="libvirt-events", daemon=True)
        _loop_thread.start()
        # A loop thread still inside libvirt while the interpreter finalises can crash the process
        # (seen as SIGSEGV after Ctrl-C): stop it before exit, whatever way the command ends.
        atexit.register(stop_event_loop)
        _loop_started = True


# A pause between the loop's iterations. While a worker thread waits for its reply, the connection's socket
# stays readable until that thread reads it, and libvirt's poll returns at once: without a pause the loop
# spins, taking the GIL from the threads doing the work (measured: 0.3 ms of CPU per domain in a bulk apply,
# a third of snpvirt's client CPU). Even 2 ms pauses (500 wake-ups a second, each taking the GIL) slowed most
# bulk runs: fleet apply of 1,000 domains took 0.97 ms per domain in most runs with 2 ms, 0.69-0.83 with
# 100 ms, and 0.74-0.80 with no event loop at all. Keepalive works in seconds, so 100 ms costs it nothing.
# No pause while events are flowing: a remote connection's events come about one per iteration, so under a
# flood a pause after each would put `watch` further behind (800 events: 800 pauses, and growing for as long
# as the flood lasts). The loop pauses again once no event came for EVENT_QUIET_S (measured by
# tests/integration/test_lifecycle_daemon.py in pauses); the first event after a quiet spell waits up to one pause.
# That needs QUIET_ITERATIONS quiet iterations before each pause: an event takes up to three (a wake-up, the
# read, the delivery), and a pause between them made a lone event wait two pauses. A spin still pauses after
# every third iteration (30 wake-ups a second, not 500).
LOOP_PAUSE_S = 0.1
EVENT_QUIET_S = 0.05
QUIET_ITERATIONS = 3
_last_event = [-EVENT_QUIET_S]  # time.monotonic() of the last event delivered (set on the loop thread)


def _pause() -> None:
    _loop_stop.wait(LOOP_PAUSE_S)  # a stop request ends the pause at once


def _run_loop() -> None:
    quiet = 0  # quiet iterations since the last pause
    while not _loop_stop.is_set():
        libvirt.virEventRunDefaultImpl()
        quiet = quiet + 1 if time.monotonic() - _last_event[0] > EVENT_QUIET_S else 0
        if quiet >= QUIET_ITERATIONS:
            quiet = 0
            _pause()


def stop_event_loop(timeout_s: float = 2.0) -> None:
    """Ask the loop thread to leave libvirt's event loop, and wait for it. A timer due at once wakes a loop
    waiting in libvirt for its next event (otherwise up to 250 ms, the periodic timer)."""
    _loop_stop.set()
    if _loop_thread is not None and _loop_thread.is_alive() and _loop_thread is not threading.current_thread():
        libvirt.virEventAddTimeout(0, lambda timer, _opaque: libvirt.virEventRemoveTimeout(timer), None)
        _loop_thread.join(timeout_s)


def watch(uri: str | None, names: set[str], on_event: Callable[[Event], None], on_status: Callable[[str], None],
          stop: threading.Event, keepalive_s: int = 5, max_backoff_s: float = 30.0,
          on_link: Callable[[str, str], None] | None = None) -> None:
    """Deliver lifecycle events until `stop` is set; reconnect with backoff when the connection is lost.
    `on_link(change, uri)` hears "disconnected" when the connection is lost and "reconnected" when it is back."""
    link = on_link or (lambda _change, _uri: None)
    start_event_loop()
    backoff = 1.0
    first = True
    while not stop.is_set():
        lost = threading.Event()
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            if first:
                raise
            on_status(f"reconnect to {uri or 'the default URI'} failed ({exc.get_error_message()}); retrying in {backoff:.0f} s")
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            continue
        actual_uri = conn.getURI()
        if not first:
            on_status(f"reconnected to {actual_uri}")
            link("reconnected", actual_uri)
        first, backoff = False, 1.0

        def lifecycle(_conn, dom, event, detail, _opaque):
            _last_event[0] = time.monotonic()  # before the filter: any event read means more may be waiting
            if names and dom.name() not in names:
                return
            name, details = EVENTS.get(event, (f"event_{event}", {}))
            on_event(Event(datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                           actual_uri, dom.name(), dom.UUIDString(), name, details.get(detail, str(detail))))

        try:
            conn.setKeepAlive(keepalive_s, 3)
        except libvirt.libvirtError:
            pass  # local drivers (test:///) have no keepalive; they cannot be lost either
        conn.registerCloseCallback(lambda _conn, _reason, _opaque: lost.set(), None)
        callback_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
        while not stop.is_set() and not lost.is_set():
            stop.wait(0.2)
        if lost.is_set() and not stop.is_set():
            on_status(f"connection to {actual_uri} lost; reconnecting")
            link("disconnected", actual_uri)
            time.sleep(0)  # let the close callback finish before the handle goes away
            continue
        try:
            conn.domainEventDeregisterAny(callback_id)
            conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError:
            pass
