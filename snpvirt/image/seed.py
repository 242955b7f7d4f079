"""The cloud-init NoCloud seed: an ISO 9660 image labelled `cidata` holding `user-data` and `meta-data`.

cloud-init's NoCloud data source finds the seed by its volume label on any block device and reads the two
files from it. The image has Joliet and Rock Ridge extensions, as genisoimage/cloud-localds make them, so
the files keep their lower-case names with hyphens whichever extension the guest's kernel reads.

The bytes depend only on the spec: every date in the image is one fixed instant, so the same spec gives
the same image and the same SHA-256, which the domain's metadata records. The seed is NOT part of the
launch measurement: it is untrusted input for the guest (the host can change it at will).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import types
from dataclasses import dataclass

from snpvirt import fileio
from snpvirt.models import CloudInitSpec

LABEL = "cidata"
# 2000-01-01T00:00:00Z: every date in the image (a real date: 0 means "not specified" in ISO 9660).
FIXED_TIME = 946684800.0
MAX_USER_DATA = fileio.LIMITS["user_data"]

# pycdlib stamps images with time.time() in local time; it reads the clock through the `time` name of these
# modules, which for the length of one build sees a clock stopped at FIXED_TIME in UTC. The lock keeps two
# builds (apply's worker threads) from restoring the clock under each other.
_PYCDLIB_CLOCKED = ("pycdlib.pycdlib", "pycdlib.headervd", "pycdlib.dates", "pycdlib.rockridge", "pycdlib.dr")
_CLOCK_LOCK = threading.Lock()


@dataclass(frozen=True)
class Seed:
    user_data: bytes
    meta_data: bytes
    image: bytes  # the ISO 9660 image

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()


def user_data(cloud_init: CloudInitSpec) -> bytes:
    """The user-data: the spec's file as is, or a #cloud-config with the user, its keys and the host name.
    Values are written as JSON strings, which YAML reads as double-quoted scalars: no value can break it."""
    if cloud_init.user_data is not None:
        return fileio.read_input(cloud_init.user_data, "user_data", "cloud_init.user_data")
    q = json.dumps
    lines = ["#cloud-config", f"hostname: {q(cloud_init.hostname)}", "ssh_pwauth: false"]
    if cloud_init.user is not None:
        lines += ["users:",
                  f"  - name: {q(cloud_init.user)}",
                  "    lock_passwd: true",  # keys only
                  "    shell: /bin/bash",
                  "    sudo: \"ALL=(ALL) NOPASSWD:ALL\"",  # as Ubuntu's default cloud user: there is no password
                  "    ssh_authorized_keys:"]
        lines += [f"      - {q(key)}" for key in cloud_init.ssh_authorized_keys]
    return ("\n".join(lines) + "\n").encode()


def meta_data(cloud_init: CloudInitSpec, domain: str) -> bytes:
    """instance-id stays the domain's name: cloud-init runs its first-boot work (users, host keys) once per
    instance, so changing the spec's keys later does not regenerate the guest's host keys."""
    q = json.dumps
    return f"instance-id: {q(domain)}\nlocal-hostname: {q(cloud_init.hostname)}\n".encode()


def build(cloud_init: CloudInitSpec, domain: str) -> Seed:
    user, meta = user_data(cloud_init), meta_data(cloud_init, domain)
    return Seed(user, meta, iso_image({"user-data": user, "meta-data": meta}))


def iso_image(files: dict[str, bytes]) -> bytes:
    """An ISO 9660 image (Joliet, Rock Ridge 1.09) labelled cidata with these files at its root."""
    import pycdlib  # only apply and render of a spec with [cloud_init] need it

    with _stopped_clock():
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL, sys_ident="LINUX",
                app_ident_str="SNPVIRT")
        for index, (name, data) in enumerate(sorted(files.items()), start=1):
            # ISO 9660 names are upper case 8.3; Rock Ridge and Joliet carry the real name.
            iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index:03d}.;1", rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
    return out.getvalue()


class _stopped_clock:
    """The `time` module as pycdlib sees it during one build: FIXED_TIME, in UTC."""

    def __enter__(self) -> None:
        import importlib

        _CLOCK_LOCK.acquire()
        clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
        clock.time = lambda: FIXED_TIME
        clock.localtime = lambda seconds=None: time.gmtime(FIXED_TIME if seconds is None else seconds)
        self._saved = []
        for name in _PYCDLIB_CLOCKED:
            module = importlib.import_module(name)
            if hasattr(module, "time"):
                self._saved.append((module, module.time))
                module.time = clock

    def __exit__(self, *exc: object) -> None:
        for module, original in self._saved:
            module.time = original
        _CLOCK_LOCK.release()
