"""A real SSH transport for the integration tests: a private ``sshd`` on loopback in front of a libvirtd.

libvirt's ``+ssh`` transport runs the ``ssh`` client, which logs in and runs ``nc -U <socket>`` on the
"remote" side: the same path a fleet takes to a real host. :class:`LoopbackSshd` starts such a server,
with nothing shared with the machine's own SSH setup:

* a throw-away host key and client key, generated into the caller's temp dir;
* its own ``sshd_config``: loopback only, a random free port, key authentication only, no PAM, the
  authorized key file in the temp dir, a pid file; run as ``sshd -D -e`` (foreground, log to stderr),
  so it is this process's child and dies with it (at ``with`` exit, at interpreter exit, or by the
  parent-death signal if the test run is killed);
* its own client config (``ssh -F``), reached through libvirt's ``command=`` URI parameter: the host key
  is checked against a known_hosts file in the temp dir, so nothing is ever written to ~/.ssh.

sshd needs its privilege-separation directory ``/run/sshd``; like the isolated libvirtd it runs in a
private mount namespace with an empty tmpfs on /run, so the machine's /run is never touched.

Fixtures (made available to every integration test by tests/integration/conftest.py):

``loopback_sshd`` (module scope): a running :class:`LoopbackSshd`.

``ssh_libvirtd`` (module scope): the module's isolated ``libvirtd`` reached over SSH; ``.uri`` is
``test+ssh://root@localhost:PORT/default?socket=<its socket>&proxy=netcat&keyfile=<key>&command=<ssh>``,
which any libvirt client (snpvirt's CLI as a subprocess, libvirt-python, virsh) can open. The daemon's
test driver keeps state only while a client holds a connection, so take the ``held`` fixture too::

    def test_something(ssh_libvirtd, held):
        run_cli("apply", spec, "-c", ssh_libvirtd.uri)

A fleet test with one SSH host among unix-socket ones builds the URI for any daemon it started::

    with IsolatedLibvirtd(tmp / "h2", qemu_caps_cache) as h2:
        hosts = {"h1": h1.test_uri, "h2": loopback_sshd.libvirt_uri(h2.socket_path)}

An SSH host that is down: leave the ``with LoopbackSshd(tmp)`` block (or call ``stop()``); the URI
stays valid and connecting to it fails at once (connection refused).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.daemon import _exited, _kill_all, _mnt_ns, _namespace_members, _which

# Runs inside `unshare --mount --propagation private`: a tmpfs on /run gives sshd the /run/sshd it
# insists on (root-owned, not group/world writable) without creating anything on the machine.
_WRAPPER = """\
set -eu
mount -t tmpfs -o mode=0755 loopback-sshd-run /run
mkdir -m 0755 /run/sshd
exec "$@"
"""

_SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# pytest's temp dirs are not the home directory layout StrictModes expects; the keys are 0600 anyway.
StrictModes no
LoginGraceTime 10
LogLevel VERBOSE
"""

_SSH_CONFIG = """\
Host *
  AddressFamily inet
  BatchMode yes
  ConnectTimeout 10
  IdentitiesOnly yes
  IdentityFile {dir}/client_key
  UserKnownHostsFile {dir}/known_hosts
  StrictHostKeyChecking yes
  CheckHostIP no
"""

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


def sshd_available() -> str | None:
    """Why a loopback sshd cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "a loopback sshd for root logins needs root (and a private mount namespace for /run/sshd)"
    for tool in ("sshd", "ssh", "ssh-keygen", "nc", "unshare"):
        if _which(tool) is None:
            return f"{tool} not found (scripts/setup installs openssh-server and netcat-openbsd)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies (kept across exec)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class LoopbackSshd:
    """``with LoopbackSshd(tmp_dir) as sshd: libvirt.open(sshd.libvirt_uri(daemon.socket_path))``"""

    def __init__(self, tmp_dir: os.PathLike | str) -> None:
        self.dir = Path(tmp_dir).resolve()
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._ns: str | None = None

    # -- public API ---------------------------------------------------------

    @property
    def client_key(self) -> str:
        return str(self.dir / "client_key")

    @property
    def ssh_command(self) -> str:
        """The ssh client libvirt runs (its `command=` parameter): ssh with this server's own client config."""
        return str(self.dir / "ssh")

    @property
    def log_path(self) -> str:
        return str(self.dir / "sshd.log")

    def libvirt_uri(self, socket_path: str, driver: str = "test", path: str = "/default") -> str:
        """The libvirt URI reaching the daemon listening on `socket_path` through this sshd."""
        return (f"{driver}+ssh://root@localhost:{self.port}{path}?socket={socket_path}&proxy=netcat"
                f"&keyfile={self.client_key}&command={self.ssh_command}")

    def __enter__(self) -> LoopbackSshd:
        self._prepare()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the server and every session it still serves (they live in its mount namespace)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        sessions = _namespace_members(self._ns, proc.pid)  # collected while sshd still pins the namespace
        proc.terminate()
        if not _exited(proc.pid, _STOP_TIMEOUT):
            proc.kill()
        _kill_all(sessions, self._ns)
        proc.wait()

    # -- internals ----------------------------------------------------------

    def _prepare(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            if not (d / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"snpvirt-test-{key}",
                                "-f", str(d / key)], check=True, capture_output=True, timeout=30)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        (d / "authorized_keys").chmod(0o600)
        (d / "ssh_config").write_text(_SSH_CONFIG.format(dir=d))
        (d / "ssh").write_text(f'#!/bin/sh\nexec ssh -F "{d}/ssh_config" "$@"\n')
        (d / "ssh").chmod(0o755)
        (d / "start.sh").write_text(_WRAPPER)

    def _start(self) -> None:
        for _ in range(3):  # the free port may be taken between probing and sshd's bind: try another
            self.port = _free_port()
            host_key = (self.dir / "host_key.pub").read_text().split()[:2]
            (self.dir / "known_hosts").write_text(f"[localhost]:{self.port} {' '.join(host_key)}\n")
            (self.dir / "sshd_config").write_text(_SSHD_CONFIG.format(port=self.port, dir=self.dir))
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    ["unshare", "--mount", "--propagation", "private", "--", "sh", str(self.dir / "start.sh"),
                     _which("sshd"), "-D", "-e", "-f", str(self.dir / "sshd_config")],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    preexec_fn=_die_with_parent)
            atexit.register(self.stop)
            if self._wait_for_banner():
                self._ns = _mnt_ns(self._proc.pid)
                return
            self.stop()
        tail = Path(self.log_path).read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError("sshd did not start; tail of its log:\n" + "\n".join(tail))

    def _wait_for_banner(self) -> bool:
        """True once sshd answers with its SSH banner; False when it exited (e.g. the port was taken)."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    if conn.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False


@dataclass
class SshLibvirtd:
    """An isolated libvirtd and the SSH server in front of it."""

    sshd: LoopbackSshd
    socket_path: str

    @property
    def uri(self) -> str:
        return self.sshd.libvirt_uri(self.socket_path)


@pytest.fixture(scope="module")
def loopback_sshd(tmp_path_factory):
    """A private sshd on 127.0.0.1 (a random port), for this test module."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    with LoopbackSshd(tmp_path_factory.mktemp("sshd")) as sshd:
        yield sshd


@pytest.fixture(scope="module")
def ssh_libvirtd(libvirtd, loopback_sshd):
    """The module's isolated libvirtd reached over a real SSH transport: ``.uri``. Hold it with ``held``."""
    return SshLibvirtd(loopback_sshd, libvirtd.socket_path)
