"""Opening a connection runs under snpvirt's own deadline: libvirt's open never returns from a daemon
that accepts the socket and never answers (here a listener that does exactly that)."""

from __future__ import annotations

import socket
import threading

import pytest

from snpvirt.errors import ConnectionFailedError, ExitCode, OperationTimeoutError, SnpvirtError
from snpvirt.libvirt.connection import Connection


def test_a_silent_daemon_is_given_up_at_the_deadline(tmp_path):
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    uri = f"test+unix:///default?socket={path}"
    try:
        with pytest.raises(OperationTimeoutError) as caught:
            Connection(uri, timeout_s=1, keepalive=(1, 2))
    finally:
        listener.close()
    assert caught.value.exit_code == ExitCode.TIMEOUT
    assert uri in caught.value.message and "1 s" in caught.value.message and caught.value.hint


def test_a_connection_that_stops_answering_mid_run_fails_after_the_keepalive(hosts):
    """Without keepalive the call below would wait for the frozen daemon forever."""
    h4 = hosts["h4"]
    conn = Connection(h4.uri, timeout_s=10, keepalive=(1, 2))
    assert "test" in conn.domain_names()
    h4.freeze()
    outcome: list[BaseException | set] = []
    call = threading.Thread(target=lambda: outcome.append(_call(conn.domain_names)), daemon=True)
    call.start()
    call.join(30)  # a guard against a hang, not a speed target
    conn.close()
    assert outcome and isinstance(outcome[0], ConnectionFailedError), outcome


def _call(function):
    try:
        return function()
    except SnpvirtError as err:
        return err
