"""`snpvirt watch`: lifecycle events as they happen (NDJSON with --json)."""

from __future__ import annotations

from typing import List, Optional

import typer

from snpvirt.cli.common import connect_option, seconds_option

WATCH_EPILOG = """\b
Examples:
  snpvirt watch                          # every domain, until Ctrl-C
  snpvirt watch web-01 db-01 --json      # one JSON object per line
  snpvirt watch --json --count 2 --timeout 30 -c qemu:///system
"""


def watch(
    names: Optional[List[str]] = typer.Argument(None, metavar="[NAME]...", help="Only these domains (default: all)."),
    count: Optional[int] = typer.Option(None, "--count", min=1, metavar="N", help="Stop after N events."),
    timeout: Optional[float] = seconds_option(None, "Stop after S seconds."),
    connect: Optional[str] = connect_option(),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per event and line (NDJSON)."),
) -> None:
    """Print domain lifecycle events (defined, started, stopped, ...) as libvirt reports them.

    A lost connection is reported (with --json as a "disconnected" event, then "reconnected") and retried;
    a watch that ends while disconnected exits 6.
    """
    import datetime
    import json
    import sys
    import threading

    from snpvirt import events
    from snpvirt.connection import translate

    stop = threading.Event()
    seen = [0]

    def on_event(event) -> None:
        line = json.dumps(event.as_dict()) if json_output else \
            f"{event.time}  {event.domain:<20} {event.event:<12} {event.detail}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        seen[0] += 1
        if count is not None and seen[0] >= count:
            stop.set()

    def on_status(message: str) -> None:
        sys.stderr.write(f"snpvirt: {message}\n")

    disconnected_from: list[str] = []  # the URI while the connection is lost

    def on_link(change: str, uri: str) -> None:
        """The connection's own events, in the stream a script reads (same keys as a domain's, no domain)."""
        disconnected_from[:] = [uri] if change == "disconnected" else []
        if json_output:
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
            detail = "connection lost; reconnecting" if change == "disconnected" else "connection back"
            sys.stdout.write(json.dumps({"time": now, "uri": uri, "domain": None, "uuid": None, "event": change,
                                         "detail": detail}) + "\n")
            sys.stdout.flush()

    if timeout is not None:
        timer = threading.Timer(timeout, stop.set)
        timer.daemon = True
        timer.start()
    worker_error: list = []

    def run() -> None:
        try:
            events.watch(connect, set(names or []), on_event, on_status, stop, on_link=on_link)
        except events.libvirt.libvirtError as exc:
            worker_error.append(translate(exc, "watch", connect))
        finally:
            stop.set()

    thread = threading.Thread(target=run, name="snpvirt-watch", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        stop.set()  # Ctrl-C ends the watch cleanly
    thread.join(timeout=2)
    if worker_error:
        raise worker_error[0]
    if disconnected_from:  # stdout stays NDJSON: the error goes to stderr only
        from snpvirt import output
        from snpvirt.errors import ExitCode

        output.print_error(f"the watch ended while disconnected from {disconnected_from[0]}; events may have been missed",
                           "check that libvirtd runs on that host, then watch again")
        raise typer.Exit(int(ExitCode.CONNECTION))
