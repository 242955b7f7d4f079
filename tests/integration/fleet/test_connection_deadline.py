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



# In a process of its own: libvirt's event loop, once registered by an earlier test, would hide the bug.
_SINGLE_HOST = """
import sys
from snpvirt import api
from snpvirt.errors import SnpvirtError
with api.open_manager(sys.argv[1]) as manager:
    manager.hv.domain_names()
    print("connected", flush=True)
    sys.stdin.readline()  # the daemon is frozen now
    try:
        manager.storage.volumes("default-pool")
    except SnpvirtError as err:
        print(err.kind, flush=True)
"""


def test_a_single_host_apply_s_connection_gives_up_on_a_frozen_daemon(hosts):
    """`snpvirt apply -c URI` (api.open_manager) uploads seeds and reads boot volumes back over its connection:
    storage.py promises every call bounded by keepalive, which libvirt runs only on a connection opened after
    its event loop was registered. Without that the call waits for the frozen daemon forever."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    h4 = hosts["h4"]
    proc = subprocess.Popen([sys.executable, "-c", _SINGLE_HOST, h4.uri], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected", proc.stderr.read()
        h4.freeze()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            out, err = proc.communicate(timeout=60)  # a guard against a hang, not a speed target
        except subprocess.TimeoutExpired:
            out, err = "still waiting after 60 s", ""
    finally:
        h4.revive()
        proc.kill()
        proc.wait()
    assert out.strip().splitlines()[-1:] == ["connection"], (out, err)
