"""The pool volumes a spec uses: boot files resolved to their host paths (and their digests for the launch
measurement), disk volumes created when absent and never touched when present, and the cloud-init seed
stored as a volume.

Planning (`prepare`) only reads, so `apply --check` shows what a run would do; `carry_out` makes the changes,
before the domain is defined, and `undo` removes what it made when the define fails. Works on a
`VolumeStore` (libvirt/storage.py's Storage implements it); never imports libvirt.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from snpvirt import fileio
from snpvirt.domain import specvalues
from snpvirt.errors import BadInputError, NotFoundError
from snpvirt.image import seed as seeds
from snpvirt.image.verify import VerificationError
from snpvirt.launch import inputs as launch
from snpvirt.models import DiskSpec, FileDigest, VmSpec, VolumeRef

GiB = 1 << 30
SEED_MAX_BYTES = 16 << 20  # a seed is a few hundred KiB (user-data is at most 1 MiB): a bigger volume is not ours
MANIFEST_SUFFIX = ".snpvirt-image.json"  # imagepool.py's manifest volumes: what `image pull` verified
# `ubuntu-24.04.qcow2`, `ubuntu-24.04-arm64.vmlinuz`: the volume names `image pull` gives (image/catalog.py).
_PULLED = re.compile(r"(?P<distro>ubuntu)-(?P<version>\d\d\.\d\d)(?:-(?P<arch>[a-z0-9]+))?\.(?:qcow2|vmlinuz|initrd)")


class VolumeStore(Protocol):
    """The storage calls apply needs. Volume infos have `path`, `capacity`, `physical` and `format`."""

    uri: str | None

    def volume(self, pool: str, name: str) -> Any: ...
    def volumes(self, pool: str) -> list: ...
    def create_volume(self, pool: str, name: str, size_bytes: int, fmt: str = "qcow2",
                      backing: str | None = None) -> Any: ...
    def upload(self, pool: str, name: str, src_path: str | os.PathLike, fmt: str,
               progress: Optional[Callable[[int, int], None]] = None) -> Any: ...
    def download(self, pool: str, name: str, dest: str | os.PathLike, max_bytes: int,
                 progress: Optional[Callable[[int, int], None]] = None) -> int: ...
    def delete(self, pool: str, name: str) -> None: ...


@dataclass(frozen=True)
class DiskVolume:
    """What apply does for one pool disk: "create" it (an overlay on `backing`, or empty) or leave it ("present")."""

    disk: DiskSpec
    action: str
    size_bytes: int | None = None


@dataclass
class VolumePlan:
    disks: list[DiskVolume] = field(default_factory=list)
    seed: seeds.Seed | None = None
    seed_ref: VolumeRef | None = None  # where the seed is stored: NAME-cidata.iso in cloud_init.pool
    seed_action: str | None = None  # "create", "replace" (other bytes) or "unchanged"
    digests: dict[str, FileDigest] = field(default_factory=dict)  # kernel/initrd volumes, for the measurement
    made: list[VolumeRef] = field(default_factory=list)  # what carry_out created: undone when the define fails

    @property
    def changes(self) -> list[dict[str, Any]]:
        """The volume changes, as the plan's details show them."""
        out = [{"pool": d.disk.pool, "volume": d.disk.volume, "action": "create",
                "backing": d.disk.backing, "size_bytes": d.size_bytes} for d in self.disks if d.action == "create"]
        if self.seed is not None and self.seed_action != "unchanged":
            out.append({"pool": self.seed_ref.pool, "volume": self.seed_ref.volume, "action": self.seed_action,
                        "seed_sha256": self.seed.sha256})
        return out


def needs_storage(spec: VmSpec) -> bool:
    return bool(spec.cloud_init or spec.boot.kernel_volume or spec.boot.initrd_volume
                or any(d.volume_ref for d in spec.disks))


def prepare(spec: VmSpec, store: VolumeStore | None, cached: Callable[[str], Path | None]) -> tuple[VmSpec, VolumePlan]:
    """The spec with its boot volumes resolved to host paths, and what apply must do with its volumes.
    Reads only. An absent image (a backing or boot volume) is NotFoundError naming `snpvirt image pull`."""
    plan = VolumePlan()
    if not needs_storage(spec):
        return spec, plan
    if store is None:
        raise BadInputError(f"{spec.name}: the spec names pool volumes, and this connection offers no storage",
                            "apply it through a libvirt connection (snpvirt apply -c URI)")
    boot = spec.boot
    for kind in ("kernel", "initrd"):
        ref = getattr(boot, f"{kind}_volume")
        if ref is None:
            continue
        info = _existing_image(store, ref, f"boot.{kind}")
        where = f"boot.{kind} (the host's path of volume {ref.volume} in pool {ref.pool})"
        boot = dataclasses.replace(boot, **{kind: specvalues.host_path(where, info.path)})
        if spec.snp.kernel_hashes:  # measured: its digest, from the verified cache or read through libvirt
            plan.digests[kind] = boot_digest(store, ref, info, kind, cached)
    spec = dataclasses.replace(spec, boot=boot)
    plan.disks = [_disk_volume(store, disk) for disk in spec.disks if disk.volume_ref]
    if spec.cloud_init is not None:
        plan.seed = seeds.build(spec.cloud_init, spec.name)
        plan.seed_ref = VolumeRef(spec.cloud_init.pool, spec.cloud_init.volume_name(spec.name))
        plan.seed_action = _seed_action(store, plan.seed_ref, plan.seed)
    return spec, plan


def _existing_image(store: VolumeStore, ref: VolumeRef, what: str) -> Any:
    info = store.volume(ref.pool, ref.volume)
    if info is None:
        raise NotFoundError(f"{what}: volume {ref.volume} is not in pool {ref.pool}", pull_hint(ref))
    return info


def pull_hint(ref: VolumeRef) -> str:
    """How to get an image volume: the `image pull` that makes a volume of this name, when it is one of those."""
    match = _PULLED.fullmatch(ref.volume)
    if match:
        arch = f" --arch {match['arch']}" if match["arch"] else ""
        return f"pull the image into the pool first: snpvirt image pull {match['distro']}:{match['version']}{arch} --pool {ref.pool}"
    return (f"pull the image into the pool first (snpvirt image pull ubuntu:24.04 --pool {ref.pool}), "
            f"or correct the volume name (virsh vol-list {ref.pool})")


def _disk_volume(store: VolumeStore, disk: DiskSpec) -> DiskVolume:
    if store.volume(disk.pool, disk.volume) is not None:
        return DiskVolume(disk, "present")  # never touched: it is the guest's disk, whatever the spec says now
    size = disk.size_gib * GiB if disk.size_gib else None
    if disk.backing is not None:
        base = _existing_image(store, VolumeRef(disk.pool, disk.backing), f"disk {disk.target}: backing")
        if size is None:
            size = base.capacity
        elif size < base.capacity:
            raise BadInputError(f"disk {disk.target}: size_gib {disk.size_gib} is smaller than its backing image "
                                f"{disk.backing} ({base.capacity / GiB:.1f} GiB)",
                                f"set size_gib to at least {-(-base.capacity // GiB)}, or leave it out")
    elif size is None:
        raise NotFoundError(f"disk {disk.target}: volume {disk.volume} is not in pool {disk.pool}, and the spec gives "
                            "no size_gib or backing to create it", "add size_gib (an empty disk) or backing "
                            f"(an overlay on an image), or create the volume (virsh vol-create-as {disk.pool} ...)")
    return DiskVolume(disk, "create", size)


def _seed_action(store: VolumeStore, ref: VolumeRef, seed: seeds.Seed) -> str:
    """"unchanged" when the pool holds exactly these bytes: a second apply uploads nothing."""
    if store.volume(ref.pool, ref.volume) is None:
        return "create"
    with tempfile.TemporaryDirectory(prefix="snpvirt-seed-") as work:
        target = Path(work, ref.volume)
        try:
            store.download(ref.pool, ref.volume, target, SEED_MAX_BYTES)
        except BadInputError:
            return "replace"  # too big to be a seed of ours
        with open(target, "rb") as held:  # our own temporary file, which the download bounded
            return "unchanged" if held.read(SEED_MAX_BYTES + 1) == seed.image else "replace"


def boot_digest(store: VolumeStore, ref: VolumeRef, info: Any, kind: str,
                cached: Callable[[str], Path | None]) -> FileDigest:
    """A boot volume's SHA-256. The verified cache's copy when the pull's manifest vouches for the volume as it
    is (same size) and the cache has the file; otherwise the volume's bytes, read through libvirt, which must
    then be the bytes the pull verified when a manifest names the volume (the host may have swapped them)."""
    recorded = _manifest_entry(store, ref)
    digest = recorded["sha256"] if recorded else None
    path = cached(digest) if digest and recorded["size_bytes"] == info.physical else None
    if path is not None:
        return launch.file_digest(str(path), kind)
    with tempfile.TemporaryDirectory(prefix="snpvirt-boot-") as work:
        target = Path(work, kind)
        store.download(ref.pool, ref.volume, target, fileio.LIMITS[kind])
        found = launch.file_digest(str(target), kind)
    if digest is not None and found.sha256 != digest.lower():
        raise VerificationError(f"boot.{kind}: volume {ref.volume} in pool {ref.pool} holds SHA-256 {found.sha256}, "
                                f"not the {digest} that image pull verified: it was changed on the host",
                                f"measure nothing from it: remove it (virsh vol-delete --pool {ref.pool} {ref.volume}) "
                                "and its image's manifest volume, then pull the image again")
    return dataclasses.replace(found, reason=None)


def _manifest_entry(store: VolumeStore, ref: VolumeRef) -> dict[str, Any] | None:
    """What a pull's manifest records of this volume (its digest and size), whatever the volume holds now."""
    from snpvirt import imagepool  # the manifests' reader

    for volume in store.volumes(ref.pool):
        if not volume.name.endswith(MANIFEST_SUFFIX):
            continue
        manifest = imagepool.read_manifest(store, ref.pool, volume.name) or {}
        for entry in manifest.get("files") or []:
            if isinstance(entry, dict) and entry.get("volume") == ref.volume and \
                    isinstance(entry.get("size_bytes"), int) and isinstance(entry.get("sha256"), str):
                return entry
    return None


def carry_out(plan: VolumePlan, store: VolumeStore) -> bool:
    """Create the absent disk volumes and store the seed; True when anything changed. Runs before the define."""
    for item in plan.disks:
        if item.action != "create":
            continue
        disk = item.disk
        store.create_volume(disk.pool, disk.volume, item.size_bytes, disk.format, backing=disk.backing)
        plan.made.append(disk.volume_ref)
    if plan.seed is not None and plan.seed_action != "unchanged":
        _store_seed(plan, store)
    return bool(plan.changes)


def _store_seed(plan: VolumePlan, store: VolumeStore) -> None:
    """The seed is snpvirt's own volume, made from the spec: other bytes under its name are replaced."""
    pool, name = plan.seed_ref.pool, plan.seed_ref.volume
    if plan.seed_action == "replace":
        store.delete(pool, name)
    with tempfile.TemporaryDirectory(prefix="snpvirt-seed-") as work:
        path = Path(work, name)
        path.write_bytes(plan.seed.image)
        store.upload(pool, name, path, "iso")
    if plan.seed_action == "create":
        plan.made.append(plan.seed_ref)


def undo(plan: VolumePlan, store: VolumeStore) -> None:
    """Remove the volumes carry_out created (the define failed): nothing is left half made."""
    for ref in reversed(plan.made):
        try:
            store.delete(ref.pool, ref.volume)
        except Exception:  # noqa: BLE001 - a clean-up step: the define's error is the one to report
            pass
    plan.made.clear()
