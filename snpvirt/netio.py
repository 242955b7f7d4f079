"""Bounded HTTP requests, as fileio.py bounds files (DESIGN.md "Everything bounded"): a deadline per
request, and an opener that speaks http(s) only.

urllib's timeout bounds each socket operation, not the request: a server dripping a header byte every
few seconds, or a redirect to ftp: doing the same, holds it for hours. A `Deadline` shuts every socket
of the request down when it passes (what was read by then is not an answer: callers check `expired`).
Used by attest/kds.py (AMD's key service) and image/fetch.py (cloud images).

Vocabulary level: imports nothing of snpvirt.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.parse
import urllib.request
from typing import Callable


class Deadline:
    """Shuts down every socket a request opened once `seconds` have passed (each is tracked by a dup of
    its descriptor: TLS takes the original over, and a shutdown acts on the connection, not on one fd)."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:
                _shut(self._sockets[-1])

    def postpone(self, seconds: float) -> None:
        """Move the deadline to `seconds` from now (a long body that keeps its pace earns more time)."""
        with self._lock:
            if self.expired:
                return
            self._timer.cancel()
            self._timer = threading.Timer(seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _tracked(connection_class: type, deadline: Deadline) -> Callable[..., http.client.HTTPConnection]:
    """A connection factory for urllib whose every TCP socket is under `deadline`."""
    def make(*args, **kwargs) -> http.client.HTTPConnection:
        connection = connection_class(*args, **kwargs)
        create = connection._create_connection

        def create_tracked(*c_args, **c_kwargs) -> socket.socket:
            sock = create(*c_args, **c_kwargs)
            deadline.track(sock)
            return sock
        connection._create_connection = create_tracked
        return connection
    return make


def opener(deadline: Deadline, refuse_redirect: Callable[[str, str], Exception]) -> urllib.request.OpenerDirector:
    """http(s) only (no ftp:, file: or data: handler), proxies from the environment, each socket under
    `deadline`. A redirect to another scheme raises `refuse_redirect(url, scheme)`: the caller's own error."""
    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(_tracked(http.client.HTTPConnection, deadline), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(_tracked(http.client.HTTPSConnection, deadline), req, context=self._context)

    class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            scheme = urllib.parse.urlsplit(newurl).scheme
            if scheme not in ("http", "https"):
                fp.close()
                raise refuse_redirect(req.full_url, scheme)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    result = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), Http(), Https(),
                    urllib.request.HTTPDefaultErrorHandler(), HttpOnlyRedirects(), urllib.request.HTTPErrorProcessor()):
        result.add_handler(handler)
    return result
