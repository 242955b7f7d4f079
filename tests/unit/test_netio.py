"""netio on its own: the request deadline and the http(s)-only opener, against a real loopback server.

The deadlines are tenths of a second and nothing here measures time: each test asserts what the
deadline did (the `expired` flag, the error the request ended with, what the server saw). A socket
wait that a working deadline ends at once has a bound of a few seconds, so a regression fails
instead of hanging.
"""

from __future__ import annotations

import http.client
import http.server
import queue
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

import pytest

from snpvirt import netio

BOUND_S = 5  # how long a test waits for something a working deadline makes happen at once


class Refused(Exception):
    """What the tests' refuse_redirect callback raises: the caller's own error."""


def refuse(url: str, scheme: str) -> Exception:
    return Refused(url, scheme)


class Loopback(http.server.BaseHTTPRequestHandler):
    seen: "queue.Queue[str]"  # what happened on the server side, for the test to read
    https_port = 0
    # Called once the request is in (and, for /drip, the headers are out): the tests make their deadline pass
    # then, so it cuts the answer at the same point however loaded the machine is.
    reached: "Callable[[], None]" = staticmethod(lambda: None)

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.put(f"GET {self.path}")
        if self.path == "/ok":
            self.answer(200, b"hello")
        elif self.path == "/drip":  # the promised body, a byte at a time: only a deadline ends it early
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            self.wfile.flush()
            type(self).reached()
            try:
                for _ in range(200):
                    self.wfile.write(b"-")
                    time.sleep(0.01)
            except OSError:
                pass
        elif self.path == "/silent":  # reads the request, answers nothing until the client hangs up
            type(self).reached()
            self.seen.put(self.client_close())
        elif self.path == "/to-ftp":
            self.redirect("ftp://127.0.0.1/x")
            self.seen.put(self.client_close())
        elif self.path == "/to-ok":
            self.redirect("/ok")
        elif self.path == "/to-https":
            self.redirect(f"https://127.0.0.1:{self.https_port}/")
        else:  # as a proxy: the absolute URL of the request, answered
            self.answer(200, b"proxied")

    def do_POST(self):  # noqa: N802
        self.seen.put(f"POST {self.path}")
        self.redirect("/ok", code=307)

    def answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, code: int = 302) -> None:
        body = b"moved"
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def client_close(self) -> str:
        self.connection.settimeout(BOUND_S)
        try:
            return "client closed" if self.connection.recv(1) == b"" else "client sent more"
        except ConnectionResetError:  # closed with the answer's body unread: the kernel resets, no FIN
            return "client closed"
        except TimeoutError:
            return "client kept the connection open"

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A loopback HTTP server; yields (base URL, queue of what it saw)."""
    Loopback.seen, Loopback.reached = queue.Queue(), staticmethod(lambda: None)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loopback)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Loopback.seen
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def deadline():
    """Deadline factory; every deadline made is cancelled after the test."""
    made = []

    def make(seconds: float) -> netio.Deadline:
        made.append(netio.Deadline(seconds))
        return made[-1]
    yield make
    for d in made:
        d.cancel()


@pytest.fixture
def pair():
    mine, peer = socket.socketpair()
    peer.settimeout(BOUND_S)  # bounds a regression that leaves the connection open
    yield mine, peer
    mine.close()
    peer.close()


@pytest.fixture
def quiet_listener():
    """Accepts TCP connections (the kernel does) and never says a word: a TLS server that never shakes hands."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(BOUND_S)
    yield listener
    listener.close()


def assert_cut_at_the_deadline(d: netio.Deadline, url: str) -> None:
    """Opening `url` ends in a connection error because `d` shut the socket, not in urllib's (long) timeout."""
    with pytest.raises(urllib.error.URLError) as failed:
        netio.opener(d, refuse).open(url, timeout=30)
    assert d.expired is True
    assert isinstance(failed.value.reason, (ssl.SSLError, ConnectionError)), "the handshake was cut, no timeout"


# --- Deadline on its own --------------------------------------------------------------------------


def test_a_tracked_socket_works_until_the_deadline_then_is_shut(deadline, pair):
    mine, peer = pair
    d = deadline(0.2)
    d.track(mine)
    mine.sendall(b"x")
    assert peer.recv(1) == b"x", "tracking leaves the connection working"
    assert d.expired is False
    assert d._timer.daemon, "a pending deadline never holds the process open at exit"
    d._timer.join()
    assert d.expired is True
    assert peer.recv(1) == b"", "the other end sees the connection end: the deadline shut it"


def test_a_socket_tracked_after_expiry_is_shut_at_once(deadline, pair):
    """A redirect's second connection can open after the deadline passed: it is shut as it is tracked."""
    mine, peer = pair
    d = deadline(0)
    d._timer.join()
    d.track(socket.socket())  # never connected: shutting it down fails, and that is fine
    d.track(mine)
    assert d.expired is True
    assert peer.recv(1) == b"", "the other end sees the connection end"


def test_postpone_moves_the_deadline_later(deadline, pair):
    mine, peer = pair
    d = deadline(0.05)
    d.track(mine)
    first = d._timer
    d.postpone(3600)
    first.join()  # the first deadline's time: it was called off
    assert d.expired is False
    mine.sendall(b"x")
    assert peer.recv(1) == b"x", "the connection still works"
    assert d._timer.daemon, "the new timer never holds the process open at exit either"


def test_postpone_moves_the_deadline_earlier(deadline, pair):
    mine, peer = pair
    d = deadline(3600)
    d.track(mine)
    d.postpone(0.05)
    d._timer.join()
    assert d.expired is True
    assert peer.recv(1) == b"", "the postponed deadline shut the connection"


def test_postponing_an_expired_deadline_changes_nothing(deadline):
    d = deadline(0)
    d._timer.join()
    d.postpone(3600)
    assert d.expired is True
    assert not d._timer.is_alive(), "no timer is armed again: an expired deadline stays expired, at no cost"


def test_cancel_stops_the_timer_and_closes_the_dups(deadline, pair):
    mine, peer = pair
    d = deadline(0.05)
    d.track(mine)
    d.cancel()
    d._timer.join()
    assert d.expired is False, "a cancelled deadline never expires"
    mine.close()  # the caller's socket closed: with the dup closed too, the connection ends
    assert peer.recv(1) == b"", "no dup kept the connection open"


# --- the opener against a real server --------------------------------------------------------------


def test_an_answer_in_time_is_read_whole(server, deadline):
    url, _ = server
    d = deadline(BOUND_S)
    with netio.opener(d, refuse).open(f"{url}/ok", timeout=BOUND_S) as response:
        assert response.read() == b"hello"
    assert d.expired is False


def test_a_dripping_body_is_cut_at_the_deadline(server, deadline):
    url, _ = server
    d = deadline(BOUND_S)
    Loopback.reached = staticmethod(lambda: d.postpone(0.05))  # the deadline passes mid-body
    with netio.opener(d, refuse).open(f"{url}/drip", timeout=BOUND_S) as response:
        with pytest.raises(http.client.IncompleteRead):
            response.read()  # each byte comes well within urllib's timeout: only the deadline ends it
    assert d.expired is True


def test_a_server_that_never_answers_is_cut_at_the_deadline(server, deadline):
    url, seen = server
    d = deadline(BOUND_S)
    Loopback.reached = staticmethod(lambda: d.postpone(0.05))  # the deadline passes while the server is silent
    with pytest.raises(http.client.RemoteDisconnected):  # the connection was shut: no timeout
        netio.opener(d, refuse).open(f"{url}/silent", timeout=30)
    assert d.expired is True
    assert seen.get(timeout=BOUND_S) == "GET /silent"
    assert seen.get(timeout=BOUND_S) == "client closed"


def test_urllibs_timeout_still_bounds_each_read(server, deadline):
    """Under a long deadline, a silent server still meets the per-operation timeout."""
    url, _ = server
    d = deadline(3600)
    with pytest.raises(TimeoutError):
        netio.opener(d, refuse).open(f"{url}/silent", timeout=0.2)
    assert d.expired is False


def test_an_https_server_that_never_shakes_hands_is_cut_at_the_deadline(deadline, quiet_listener):
    assert_cut_at_the_deadline(deadline(0.2), f"https://127.0.0.1:{quiet_listener.getsockname()[1]}/")


def test_a_redirect_http_to_http_is_followed(server, deadline):
    url, seen = server
    with netio.opener(deadline(BOUND_S), refuse).open(f"{url}/to-ok", timeout=BOUND_S) as response:
        assert response.read() == b"hello"
        assert response.url == f"{url}/ok"
    assert [seen.get(timeout=BOUND_S) for _ in range(2)] == ["GET /to-ok", "GET /ok"]


def test_a_redirect_to_https_is_followed_under_the_deadline(server, deadline, quiet_listener):
    url, _ = server
    Loopback.https_port = quiet_listener.getsockname()[1]
    assert_cut_at_the_deadline(deadline(0.2), f"{url}/to-https")
    quiet_listener.accept()[0].close()  # the https: hop reached the listener


def test_a_redirect_to_ftp_raises_the_callers_error_and_closes_the_answer(server, deadline):
    url, seen = server
    d = deadline(3600)
    with pytest.raises(Refused) as refused:
        netio.opener(d, refuse).open(f"{url}/to-ftp", timeout=BOUND_S)
    assert refused.value.args == (f"{url}/to-ftp", "ftp")
    d.cancel()  # the dup closed: the redirect's answer, still referenced by the traceback, must be closed too
    assert seen.get(timeout=BOUND_S) == "GET /to-ftp"
    assert seen.get(timeout=BOUND_S * 2) == "client closed"
    assert refused.value.__traceback__ is not None  # the traceback, and the answer in it, lived until here


def test_a_redirect_urllib_refuses_still_reports_the_servers_answer(server, deadline):
    """A POST answered with 307 is not followed (urllib's rule): the error carries the redirect's answer."""
    url, _ = server
    with pytest.raises(urllib.error.HTTPError) as refused:
        netio.opener(deadline(BOUND_S), refuse).open(urllib.request.Request(f"{url}/x", data=b"a"), timeout=BOUND_S)
    error = refused.value
    assert (error.code, error.msg, error.headers["Location"]) == (307, "Temporary Redirect", "/ok")
    assert error.read() == b"moved"
    error.close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:,hello"])
def test_no_scheme_but_http_and_https_is_opened(url, deadline):
    with pytest.raises(urllib.error.URLError, match="unknown url type"):
        netio.opener(deadline(BOUND_S), refuse).open(url, timeout=BOUND_S)


def test_proxies_come_from_the_environment(server, deadline, monkeypatch):
    url, seen = server
    monkeypatch.setenv("http_proxy", url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with netio.opener(deadline(BOUND_S), refuse).open("http://kds.invalid/vcek", timeout=BOUND_S) as response:
        assert response.read() == b"proxied"
    assert seen.get(timeout=BOUND_S) == "GET http://kds.invalid/vcek"
