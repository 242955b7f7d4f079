"""Gather a host's facts (local files, libvirt, a saved domcaps) and run the readiness checks.

This is the library entry point for `snpvirt host check` and for the lifecycle gate. The libvirt
connection is passed in (anything with `libvirt_facts()`), so this module never imports libvirt.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Protocol

from snpvirt import domcaps as domcaps_parser
from snpvirt import fileio, host, hostfacts
from snpvirt.errors import BadInputError
from snpvirt.models import HostReport, HostSevCaps, LibvirtFacts


class FactSource(Protocol):
    def libvirt_facts(self) -> LibvirtFacts: ...


def assess(
    connection: FactSource | None,
    *,
    uri: str | None = None,
    connection_error: str | None = None,
    sysroot: str = "/",
    domcaps_file: Path | None = None,
    policy: int | None = None,
    spec_firmware: str | None = None,
) -> HostReport:
    libvirt = connection.libvirt_facts() if connection is not None else None
    actual_uri = libvirt.uri if libvirt else uri
    remote = host.is_remote_uri(actual_uri)
    # The connection error itself is reported once, with the host (host.libvirt_error).
    libvirt_skip = "no libvirt connection" + (" (--sysroot without --connect)" if sysroot != "/" and not connection_error else "")

    caps: HostSevCaps | None = None
    caps_source, caps_skip = "", "no domain capabilities: give --connect URI or --host-caps FILE"
    if domcaps_file is not None:
        data = fileio.read_input(domcaps_file, "domcaps", "cannot read --host-caps")
        caps, caps_source = domcaps_parser.parse_domcaps(data, f"--host-caps {domcaps_file}"), f"--host-caps {domcaps_file}"
    elif libvirt is not None and libvirt.domcaps_xml is not None:
        caps, caps_source = domcaps_parser.parse_domcaps(libvirt.domcaps_xml, libvirt.uri), libvirt.uri
    elif libvirt is not None:
        caps_skip = f"domain capabilities unavailable: {libvirt.domcaps_error}"
    elif connection_error:
        caps_skip = libvirt_skip

    local = None if remote else hostfacts.read_local_facts(sysroot, spec_firmware)
    inputs = host.HostInputs(
        local=local,
        local_skip=f"remote host ({actual_uri}): only what libvirt reports is checked" if remote else "",
        libvirt=libvirt,
        libvirt_skip=libvirt_skip,
        domcaps=caps,
        domcaps_source=caps_source,
        domcaps_skip=caps_skip,
        policy=policy,
        spec_firmware=spec_firmware,
    )
    about = {
        "hostname": libvirt.hostname if libvirt and libvirt.hostname else (None if remote or sysroot != "/" else platform.node()),
        "uri": actual_uri,
        "libvirt_error": connection_error,
        "remote": remote,
        "sysroot": None if remote else sysroot,
        "kernel": local.kernel_release if local else None,
        "cpu": (local.cpuinfo_model if local else None),
    }
    return host.run_checks(inputs, about)


class GateSource(FactSource, Protocol):
    """The connection the lifecycle gate judges: its facts, its URI, and whether it is a simulation."""

    @property
    def simulated(self) -> bool: ...
    @property
    def actual_uri(self) -> str: ...


def check_captured_host(connection: GateSource, sysroot: Path | None) -> None:
    """A captured host (--sysroot) may stand in only for a simulated hypervisor (libvirt's test driver).

    On a real hypervisor what a launch depends on is that host's own files, so a captured one is refused
    rather than ignored: a user who gave it believed it would count, and it must never judge a real launch."""
    if sysroot is None:
        return
    if not connection.simulated:
        raise BadInputError(f"--sysroot describes a captured host; {connection.actual_uri} is a real hypervisor, "
                            "and the readiness gate checks that host's own facts",
                            "drop --sysroot (it is for libvirt's test driver, e.g. --connect test:///default)")
    if not sysroot.is_dir():
        raise BadInputError(f"--sysroot {sysroot} is not a directory",
                            "give the folder that holds the captured sys/, proc/, dev/")


def gate_report(connection: GateSource, *, sysroot: Path | None = None,
                domcaps_file: Path | None = None) -> HostReport | None:
    """What the lifecycle gate judges, or None when there is no host to judge.

    A real hypervisor: the connected host's own facts, always (a saved domcaps feeds render, not the gate).
    libvirt's test driver: the captured host given with `sysroot`, with its saved domcaps (else the test
    driver's own, which offer no SEV); without a captured host, None: the gate does not apply to a simulation.
    """
    check_captured_host(connection, sysroot)
    if not connection.simulated:
        return assess(connection, uri=connection.actual_uri)
    if sysroot is None:
        return None
    return assess(connection, sysroot=str(sysroot), domcaps_file=domcaps_file)
