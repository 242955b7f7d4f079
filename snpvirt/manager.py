"""Desired state for SEV-SNP domains, over any hypervisor object (never libvirt itself).

Verbs are idempotent, a plan (`apply --check`) is computed by the same code that applies it, a
domain snpvirt does not manage is never overwritten, nothing restarts implicitly, and the host's
readiness is checked before the first change (on libvirt's simulated test driver only with a captured host's facts).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from snpvirt.domain.copies import CopyRenderer
from snpvirt.domain.sevparams import SevParams
from snpvirt.errors import HostNotReadyError
from snpvirt.image import cache
from snpvirt.models import Finding, HostReport, VmSpec
# What callers import from here: the parts live in orchestration/, Manager composes them.
from snpvirt.orchestration.apply import LIBVIRT_WORKERS, LOOKAHEAD, RACE_RETRIES, Applying
from snpvirt.orchestration.base import ACTIVE_STATES, Hypervisor, Outcome, SpecInput, is_active, utc_now
from snpvirt.orchestration.define import Defining
from snpvirt.orchestration.guards import Guards
from snpvirt.orchestration.reading import Reading
from snpvirt.orchestration.verbs import Verbs
from snpvirt.orchestration.volumes import VolumeStore

__all__ = ["ACTIVE_STATES", "LIBVIRT_WORKERS", "LOOKAHEAD", "RACE_RETRIES", "Hypervisor", "Manager", "Outcome",
           "SpecInput", "is_active", "utc_now"]


class Manager(Applying, Defining, Verbs, Reading, Guards):
    def __init__(self, hv: Hypervisor, *, gate: Callable[[], HostReport | None], resolve_sev: Callable[[VmSpec], SevParams],
                 allow_debug: bool = False, clock: Callable[[], str] = utc_now, storage: VolumeStore | None = None,
                 image_cache: Callable[[str], Path | None] = cache.verified_path) -> None:
        self.hv = hv
        self.storage = storage  # pools and volumes of the same host (libvirt/storage.py), for specs naming volumes
        self.image_cache = image_cache  # sha256 -> the verified copy of a pulled file (the launch measurement's kernel)
        self._gate = gate
        self._resolve_sev = resolve_sev
        self.allow_debug = allow_debug
        self.clock = clock
        self.warnings: list[Finding] = []
        self._ready = False
        self._not_ready: tuple[str, str] | None = None  # the gate's refusal, given again to every later caller
        self._gate_lock = threading.Lock()  # the gate runs once, whichever thread asks first
        self.shutdown_timeout_s = 60.0  # how long apply waits for a graceful shutdown (state = "shutoff", --restart)
        self._restarting = threading.Lock()  # --restart: one domain of this host at a time
        self.libvirt_workers = LIBVIRT_WORKERS  # apply's operations at once on the connection (a fleet's per_host)
        self._copies = CopyRenderer(self._shape_asked_snp)  # a fleet's renamed copies of one spec: rendered once
        self._compared_copies = CopyRenderer()  # and once for the comparison with what a host holds

    # --- the readiness gate ----------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Fail closed before the first change. The gate has no report only for a simulated hypervisor
        (libvirt's test driver without a captured host's facts): then say that the gate does not apply."""
        with self._gate_lock:
            if self._ready:
                return
            if self._not_ready is None:
                report = self._gate()
                if report is None and self.hv.simulated:
                    self.warnings.append(Finding("gate.simulated", "warning",
                                                 "libvirt's test driver is a simulated hypervisor: the SEV-SNP readiness gate does not apply",
                                                 "use a qemu:// URI for real guests"))
                    self._ready = True
                    return
                if report is not None and report.ready:
                    self._ready = True
                    return
                # A real hypervisor without a report is never waved through.
                self._not_ready = ("host not ready for SEV-SNP, nothing was changed: "
                                   + (report.summary if report else "no host facts to check"),
                                   f"see the fixes: snpvirt host check --connect {self.hv.uri or '<uri>'}")
            raise HostNotReadyError(*self._not_ready)

