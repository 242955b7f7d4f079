"""A real, throw-away ``libvirtd`` isolated from the machine's own libvirt.

Each :class:`IsolatedLibvirtd` runs in a private mount namespace in which the
libvirt state directories (and ``/etc/libvirt``) are replaced by directories
under the caller's temp dir, so several can run side by side as separate
"hosts" and none of them touches the machine's real libvirt state.  Clients
reach a daemon through its own socket, e.g. ``qemu+unix:///system?socket=...``.

Nothing outlives the run that started it: a daemon runs in its own session and is
stopped by process group (and its QEMUs by mount namespace) when its ``with`` block
ends, at interpreter exit if that never happened, and, if the run was killed, by the
next daemon started on this machine (each one registers in ``REGISTRY``).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import libvirt

# Runs inside `unshare --mount --propagation private`, so none of these mounts
# is visible outside.  Private dirs under tmp_dir ($1) replace the libvirt
# state dirs and /etc/libvirt (a copy); tmp_dir itself is not overmounted, so
# the sockets in it are reachable from outside.  /run gets an empty tmpfs first
# because /run/libvirt may not exist on the host and must not be created there
# (a bind mount needs an existing mount point). /var/lib gets one too, for the
# same reason: /var/lib/snpvirt (snpvirt's default storage pool) is $T/snpvirt.
_WRAPPER = """\
set -eu
T="$1"
mount -t tmpfs -o mode=0755 isolated-libvirtd-run /run
mkdir /run/libvirt
mount --bind "$T/run" /run/libvirt
mount -t tmpfs -o mode=0755 isolated-libvirtd-varlib /var/lib
mkdir /var/lib/libvirt /var/lib/snpvirt
mount --bind "$T/lib" /var/lib/libvirt
mount --bind "$T/snpvirt" /var/lib/snpvirt
mount --bind "$T/cache" /var/cache/libvirt
mount --bind "$T/log" /var/log/libvirt
mount --bind "$T/etc" /etc/libvirt
if [ -n "${2:-}" ]; then echo "$2" > /proc/sys/kernel/hostname; fi  # its own UTS namespace: another "host"
exec libvirtd --config "$T/libvirtd.conf" --pid-file "$T/libvirtd.pid"
"""

# Replaces the private copy's qemu.conf (libvirt's conf parser uses the first
# occurrence of a key, so appending would not override host settings).
_QEMU_CONF = """\
# Root avoids permission trouble with images under 0700 pytest tmp dirs.
user = "root"
group = "root"
# Write QEMU's stdout/stderr to a file instead of going through virtlogd,
# so no virtlogd has to run in the namespace.
stdio_handler = "file"
# No per-domain mount namespace: QEMU stays in the daemon's namespace, which
# is how _stop() finds and kills leftovers.
namespaces = []
# Keep domains out of the host's cgroup tree and away from AppArmor/SELinux.
cgroup_controllers = []
security_driver = "none"
"""

_SOCKET = "libvirt-sock"
# One file per running daemon: which test process owns it, so a later run can stop what a killed run left.
REGISTRY = Path(os.environ.get("TMPDIR", "/tmp")) / f"snpvirt-test-libvirtd-{os.getuid()}"
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL


def _which(name: str) -> str | None:
    # /usr/sbin is often missing from PATH outside login shells.
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def libvirtd_available() -> str | None:
    """Return why an isolated libvirtd cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "isolated libvirtd needs root (mount namespaces, bind mounts)"
    for tool in ("libvirtd", "unshare", "mount"):
        if _which(tool) is None:
            return f"{tool} not found"
    try:  # unshare exists but may be forbidden (e.g. container without CAP_SYS_ADMIN)
        subprocess.run(
            [_which("unshare"), "--mount", "--propagation", "private", "true"],
            check=True, capture_output=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a private mount namespace: {exc}"
    return None


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process, never a reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the command name may hold spaces


def _same_process(pid: int, start_time: int | None) -> bool:
    return start_time is not None and _start_time(pid) == start_time


def _namespace_members(ns: str | None, but: int) -> list[int]:
    """Every process in mount namespace `ns` except `but` (libvirtd's QEMUs run in its namespace)."""
    if ns is None:
        return []
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != but and _mnt_ns(int(p)) == ns]


def _kill_all(pids: list[int], ns: str | None) -> None:
    for pid in pids:
        if _mnt_ns(pid) == ns:  # still the same namespace: not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _exited(pid: int, timeout: float) -> bool:
    """Wait until child `pid` has exited, without reaping it (it stays a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.02)
    return False


def _registry() -> Path:
    """The registry folder, ours alone (never a folder or link someone else put there)."""
    REGISTRY.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(REGISTRY)
    if not os.path.isdir(REGISTRY) or os.path.islink(REGISTRY) or st.st_uid != os.getuid():
        raise RuntimeError(f"{REGISTRY} is not a folder owned by uid {os.getuid()}")
    return REGISTRY


def reap_stale_daemons() -> list[int]:
    """Stop the daemons whose owning test process is gone (a killed run): their QEMUs and process group.

    Only daemons this registry recorded, still the same processes (pid and start time), and whose
    owner is dead: a parallel test run's daemons are left alone. Returns the libvirtd pids stopped."""
    stopped = []
    for entry in sorted(_registry().glob("*.json")):
        try:
            record = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if _same_process(record["owner"], record["owner_start"]):
            continue  # its run is still going
        pid = record["pid"]
        if _same_process(pid, record["start"]):
            ns = _mnt_ns(pid)
            _kill_all(_namespace_members(ns, pid), ns)
            try:
                os.killpg(pid, signal.SIGKILL)  # its own session: the group id is its pid
            except ProcessLookupError:
                pass
            stopped.append(pid)
        entry.unlink(missing_ok=True)
    return stopped


class IsolatedLibvirtd:
    """``with IsolatedLibvirtd(tmp_dir) as d: libvirt.open(d.qemu_uri)``

    ``caps_cache``: optional directory shared between daemons for libvirt's
    QEMU capability cache.  Probing QEMU costs ~4 s per binary (getVersion()
    probes every installed qemu-system-*); entries are seeded from it on start
    and written back on stop.  libvirt re-validates each entry (binary ctime,
    libvirt/kernel version, host CPU), so sharing them is safe on one machine.
    """

    def __init__(self, tmp_dir: os.PathLike | str,
                 caps_cache: os.PathLike | str | None = None, hostname: str | None = None) -> None:
        self.tmp_dir = Path(tmp_dir).resolve()
        self.caps_cache = Path(caps_cache) if caps_cache is not None else None
        self.hostname = hostname  # given: the daemon runs in its own UTS namespace under this name
        self._proc: subprocess.Popen | None = None
        self._ns: str | None = None
        self._entry: Path | None = None

    # -- public API ---------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return str(self.tmp_dir / "sock" / _SOCKET)

    @property
    def qemu_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def test_uri(self) -> str:
        return f"test+unix:///default?socket={self.socket_path}"

    @property
    def var_lib_snpvirt(self) -> Path:
        """Where this daemon's /var/lib/snpvirt (snpvirt's default pool folder) is, seen from outside."""
        return self.tmp_dir / "snpvirt"

    @property
    def log_path(self) -> str:
        return str(self.tmp_dir / "libvirtd.log")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def _caps_dir(self) -> Path:
        return self.tmp_dir / "cache" / "qemu" / "capabilities"

    def __enter__(self) -> IsolatedLibvirtd:
        self._prepare()
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    # -- internals ----------------------------------------------------------

    def _prepare(self) -> None:
        t = self.tmp_dir
        # The admin socket has the longest name in unix_sock_dir.
        if len(str(t / "sock" / "libvirt-admin-sock")) > _SUN_PATH_MAX:
            raise ValueError(f"tmp_dir too long for a unix socket path: {t}")
        t.mkdir(parents=True, exist_ok=True)
        # A daemon may be started again in the same folder: the same "host" coming back, same socket.
        shutil.copytree("/etc/libvirt", t / "etc", symlinks=True, dirs_exist_ok=True)
        (t / "etc" / "qemu.conf").write_text(_QEMU_CONF)
        for name in ("run", "lib", "cache", "log", "sock", "snpvirt"):
            (t / name).mkdir(mode=0o755, exist_ok=True)
        if self.caps_cache is not None:
            self._caps_dir.mkdir(parents=True, exist_ok=True)
            for f in self.caps_cache.glob("*.xml"):
                shutil.copyfile(f, self._caps_dir / f.name)
        (t / "start.sh").write_text(_WRAPPER)
        (t / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{t / "sock"}"\n'
            'unix_sock_group = "root"\n'
            'unix_sock_ro_perms = "0777"\n'
            'unix_sock_rw_perms = "0777"\n'
            'auth_unix_ro = "none"\n'
            'auth_unix_rw = "none"\n'
            "listen_tcp = 0\n"
            "listen_tls = 0\n"
            # Every daemon would otherwise report the machine's SMBIOS UUID,
            # and libvirt refuses to migrate between hosts with equal UUIDs.
            f'host_uuid = "{uuid.uuid4()}"\n'
            f'log_outputs = "3:file:{self.log_path}"\n'
        )

    def _start(self) -> None:
        reap_stale_daemons()
        # LIBVIRT_LOG_* etc. from our environment would override libvirtd.conf.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIBVIRT")}
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        with open(self.log_path, "ab") as log:  # daemon stdout/stderr
            # unshare and sh both exec, so the Popen pid ends up being libvirtd.
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", *(["--uts"] if self.hostname else []), "--",
                 "sh", str(self.tmp_dir / "start.sh"), str(self.tmp_dir), self.hostname or ""],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True,  # keep the terminal's Ctrl-C away; its group is stopped as one
            )
        self._register()
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                self._fail(f"libvirtd exited with status {self._proc.returncode}")
            if os.path.exists(self.socket_path):
                try:
                    # Blocks until the daemon's drivers are initialised.
                    libvirt.open(self.qemu_uri).close()
                    break
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > deadline:
                self._fail(f"libvirtd not answering on {self.socket_path} "
                           f"after {_START_TIMEOUT:.0f}s")
            time.sleep(0.05)
        self._ns = _mnt_ns(self._proc.pid)

    def _fail(self, what: str) -> None:
        try:
            tail = Path(self.log_path).read_text(errors="replace").splitlines()[-30:]
        except OSError:
            tail = []
        raise RuntimeError(f"{what}; tail of {self.log_path}:\n" + "\n".join(tail))

    def _register(self) -> None:
        """Record the daemon and its owner (this process) for reap_stale_daemons, and stop it at exit
        should its ``with`` block never end (a test runner leaving without teardown)."""
        pid = self._proc.pid
        record = {"pid": pid, "start": _start_time(pid), "owner": os.getpid(), "owner_start": _start_time(os.getpid()),
                  "tmp_dir": str(self.tmp_dir)}
        self._entry = _registry() / f"{pid}.json"
        self._entry.write_text(json.dumps(record))
        atexit.register(self._stop)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self._stop)
        if proc.poll() is None:
            others = []
            if self._ns is not None:  # i.e. startup got as far as a connection
                self._destroy_domains()
                # Collect namespace members while libvirtd still pins the
                # namespace (a freed namespace id could be reused by another).
                others = _namespace_members(self._ns, proc.pid)
            self._stop_group(proc)
            # libvirtd leaves QEMU processes running on exit.
            _kill_all(others, self._ns)
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
        if self.caps_cache is not None:
            self.caps_cache.mkdir(parents=True, exist_ok=True)
            for f in self._caps_dir.glob("*.xml"):
                # Copy then rename: other daemons may read or write concurrently.
                tmp = self.caps_cache / f".{f.name}.{os.getpid()}.{id(self)}"
                shutil.copyfile(f, tmp)
                os.replace(tmp, self.caps_cache / f.name)

    @staticmethod
    def _stop_group(proc: subprocess.Popen) -> None:
        """SIGTERM to libvirtd's process group, SIGKILL after the timeout, then SIGKILL to whatever is
        left in the group. libvirtd is reaped only after that: until then its pid, which is the group's
        id, cannot be reused, so the group signal cannot reach another process."""
        os.killpg(proc.pid, signal.SIGTERM)
        if not _exited(proc.pid, _STOP_TIMEOUT):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def _destroy_domains(self) -> None:
        # Best effort: lets libvirt clean up after running guests itself.
        try:
            conn = libvirt.open(self.qemu_uri)
        except libvirt.libvirtError:
            return
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass
        finally:
            conn.close()
