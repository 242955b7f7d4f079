"""Four isolated libvirtd "hosts" for the fleet tests, started once for the package, each with a
connection held open so its test driver keeps state; every test starts from hosts that answer and hold
only the test driver's own `test` domain, and may kill or freeze a daemon (it is brought back after)."""

from __future__ import annotations

import os
import signal
import textwrap
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.integration.daemon import IsolatedLibvirtd, libvirtd_available

HOSTS = ("h1", "h2", "h3", "h4")


@dataclass
class Host:
    name: str
    daemon: IsolatedLibvirtd
    held: libvirt.virConnect | None = None
    frozen: bool = False

    @property
    def uri(self) -> str:
        return self.daemon.test_uri

    def names(self) -> list[str]:
        return sorted(d.name() for d in self.held.listAllDomains() if d.name() != "test")

    def running(self) -> list[str]:
        return sorted(d.name() for d in self.held.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                      if d.name() != "test")

    def kill(self) -> None:
        """The daemon dies and its socket is gone: a host that is down."""
        os.kill(self.daemon.pid, signal.SIGKILL)
        Path(self.daemon.socket_path).unlink(missing_ok=True)

    def freeze(self) -> None:
        """The daemon stops answering, its socket still accepts: the case libvirt's own open never returns from."""
        os.kill(self.daemon.pid, signal.SIGSTOP)
        self.frozen = True

    def revive(self) -> None:
        if self.frozen:
            os.kill(self.daemon.pid, signal.SIGCONT)
            self.frozen = False
        if self.daemon._proc is not None and self.daemon._proc.poll() is None:
            return
        self.daemon._stop()  # reaps it and forgets it
        self.daemon.__enter__()  # the same "host" comes back, same socket
        self.held = libvirt.open(self.uri)


@pytest.fixture(scope="package")
def fleet_daemons(tmp_path_factory, qemu_caps_cache):
    reason = libvirtd_available()
    if reason:
        pytest.skip(reason)
    with ExitStack() as stack:
        hosts = []
        for name in HOSTS:
            daemon = stack.enter_context(IsolatedLibvirtd(tmp_path_factory.mktemp(name), qemu_caps_cache))
            hosts.append(Host(name, daemon, libvirt.open(daemon.test_uri)))
        yield hosts
        for host in hosts:
            host.revive()
            host.held.close()


@pytest.fixture
def hosts(fleet_daemons):
    """The four hosts, answering and empty (but for `test`) before and after the test."""
    for host in fleet_daemons:
        host.revive()
        _empty(host)
    yield {h.name: h for h in fleet_daemons}
    for host in fleet_daemons:
        host.revive()
        _empty(host)


def _empty(host: Host) -> None:
    for dom in host.held.listAllDomains():
        if dom.name() != "test":
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()


SPEC = """\
name = "{name}"
memory_mib = {memory}
vcpus = 1
firmware = "/usr/share/ovmf/OVMF.amdsev.fd"

[snp]
policy = {{ smt = true, debug = false }}
cbitpos = 51
reduced_phys_bits = 1
"""


def write_spec(folder: Path, name: str, memory: int = 256) -> str:
    (folder / "vms").mkdir(exist_ok=True)
    (folder / "vms" / f"{name}.toml").write_text(SPEC.format(name=name, memory=memory))
    return f"vms/{name}.toml"


def write_fleet(folder: Path, hosts: list[Host], domains: str, *, fleet: str = "prod", slots: int | None = 2,
                settings: str = "", host_extra: dict[str, str] | None = None) -> Path:
    """A fleet file over `hosts` (each with `slots` SNP guests: the test driver reports none) and `domains`
    (TOML [[domains]] text)."""
    host_extra = host_extra or {}
    text = f'[fleet]\nname = "{fleet}"\nconnect_timeout_s = 3\nkeepalive_interval_s = 1\nkeepalive_count = 2\n{settings}\n'
    for host in hosts:
        text += (f'[[hosts]]\nname = "{host.name}"\nuri = "{host.uri}"\n' + (f"snp_guests = {slots}\n" if slots else "")
                 + f'{host_extra.get(host.name, "")}\n')
    path = folder / "fleet.toml"
    path.write_text(text + textwrap.dedent(domains))
    return path
