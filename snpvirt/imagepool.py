"""Images into storage pools: `image pull` (fetch, verify, upload) and `image list`.

Order of a pull, each step only after the one before succeeded:
  1. the release folder's SHA256SUMS and its signature, checked by gpgv against the keyring;
  2. the pool (made if the connection has none) and what it already holds of this image;
  3. every missing file downloaded into the user's cache (resumed where a run stopped), and its
     SHA-256 checked against the signed list; a mismatch deletes it and ends the pull (exit 1);
  4. only then, each verified file uploaded as a volume, and the image's manifest volume written.
So nothing unverified reaches a pool, and a failed pull leaves the pool as it was, or with some of
the image's verified volumes and no manifest (the next pull checks those by their bytes).

How a pull knows the pool already holds the image: the manifest volume (`ubuntu-24.04.snpvirt-image.json`)
records each file's volume, SHA-256 and size as uploaded after verification. Pulling again compares
the signed SHA256SUMS with it and with the volumes' sizes: all equal, nothing is downloaded or sent.
A volume the manifest does not vouch for is read back from the pool and hashed; one with other bytes
is never overwritten (disks may be overlays on it): that is a conflict.

Works on a `Storage` (libvirt/storage.py implements it over libvirt); never imports libvirt.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from snpvirt.errors import BadInputError, ConflictError, NotFoundError
from snpvirt.image import catalog, verify
from snpvirt.image.cache import Cache
from snpvirt.image.fetch import Fetcher, Transfer
from snpvirt.image.verify import VerificationError

MANIFEST_SUFFIX = ".snpvirt-image.json"
MANIFEST_MAX_BYTES = 64 * 1024
MANIFEST_VERSION = 1
MAX_IMAGE_FILE_BYTES = 64 << 30  # what a volume read back for hashing may be


class Storage(Protocol):
    """The storage calls a pull needs (libvirt/storage.py's Storage)."""

    uri: str | None

    def ensure_pool(self, name: str, default_dir: str = ...) -> Any: ...
    def volumes(self, pool: str) -> list: ...
    def volume(self, pool: str, name: str) -> Any: ...
    def upload(self, pool: str, name: str, src_path: str | os.PathLike, fmt: str,
               progress: Optional[Callable[[int, int], None]] = None) -> Any: ...
    def download(self, pool: str, name: str, dest: str | os.PathLike, max_bytes: int,
                 progress: Optional[Callable[[int, int], None]] = None) -> int: ...
    def delete(self, pool: str, name: str) -> None: ...


@dataclass
class Reporter:
    """Where a pull tells how it goes: steps ("checking the signature ...") and transfers."""
    step: Callable[[str], None] = lambda _message: None
    transfer: Callable[[Transfer], None] = lambda _transfer: None


@dataclass(frozen=True)
class Expected:
    """One file of the image and the SHA-256 the signed list gives it."""
    file: catalog.ImageFile
    sha256: str


@dataclass
class PullResult:
    image: catalog.Image
    pool: str
    pool_created: bool
    signed_by: list[str]
    files: list[dict[str, Any]] = field(default_factory=list)
    downloaded_bytes: int = 0
    changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        image = self.image
        return {"image": image.ref, "version": image.version, "codename": image.codename, "arch": image.arch,
                "pool": self.pool, "pool_created": self.pool_created, "manifest": image.manifest_volume,
                "signed_by": self.signed_by, "downloaded_bytes": self.downloaded_bytes, "files": self.files}


def pull(image: catalog.Image, storage: Storage, pool: str, cache: Cache, fetcher: Fetcher, keyring: str | os.PathLike,
         default_dir: str, report: Reporter = Reporter()) -> PullResult:
    report.step(f"checking the signature of {image.release_url}/SHA256SUMS")
    expected, signers = signed_digests(image, fetcher, cache, keyring)
    pool_info = storage.ensure_pool(pool, default_dir)
    result = PullResult(image, pool, bool(pool_info.created), signers, changed=bool(pool_info.created))
    if pool_info.created:
        report.step(f"created storage pool {pool} at {pool_info.path}")
    vouched = _vouched(read_manifest(storage, pool, image.manifest_volume), expected)
    held = {e.file.volume: _held(storage, pool, e, vouched, cache, report) for e in expected}
    missing = [e for e in expected if held[e.file.volume] is None]
    for e in missing:  # every file verified before any is uploaded
        result.downloaded_bytes += _verified_copy(e, image, fetcher, cache, report)
    for e in expected:
        action = held[e.file.volume] or _upload(e, storage, pool, cache, report)
        size = os.stat(cache.verified(e.sha256)).st_size if action != "unchanged" else vouched[e.file.volume]["size_bytes"]
        result.files.append({"role": e.file.role, "volume": e.file.volume, "upstream": e.file.path,
                             "sha256": e.sha256, "size_bytes": size, "action": action})
    if any(f["action"] != "unchanged" for f in result.files) or len(vouched) != len(expected):
        _write_manifest(storage, pool, image, result.files, cache)
        result.changed = True
    return result


def signed_digests(image: catalog.Image, fetcher: Fetcher, cache: Cache,
                   keyring: str | os.PathLike) -> tuple[list[Expected], list[str]]:
    """Each file's SHA-256 from SHA256SUMS lists whose signatures gpgv accepts (the release folder's, and
    unpacked/'s when the first does not list the unpacked files). Returns them and the signing keys."""
    lists: dict[str, dict[str, str]] = {}
    signers: list[str] = []
    expected = []
    for f in image.files():
        digest = None
        for folder, name in (("", f.path), (f.folder, f.name)) if f.folder else (("", f.path),):
            if folder not in lists:
                lists[folder], signer = _signed_list(image, folder, fetcher, cache, keyring)
                signers += [signer] if signer not in signers else []
            digest = lists[folder].get(name)
            if digest:
                break
        if digest is None:
            raise VerificationError(f"the signed SHA256SUMS of {image.release_url} does not list {f.path}",
                                    "check the image name and --arch, or the mirror's layout")
        expected.append(Expected(f, digest))
    return expected, signers


def _signed_list(image: catalog.Image, folder: str, fetcher: Fetcher, cache: Cache,
                 keyring: str | os.PathLike) -> tuple[dict[str, str], str]:
    prefix = f"{folder}/" if folder else ""
    sums_url = image.url(f"{prefix}SHA256SUMS")
    sums = fetcher.small(sums_url, verify.MAX_SUMS_BYTES)
    try:
        signature = fetcher.small(image.url(f"{prefix}SHA256SUMS.gpg"), 64 * 1024)
    except NotFoundError:
        raise VerificationError(f"{sums_url} has no signature ({prefix}SHA256SUMS.gpg is missing): it cannot be trusted",
                                "nothing was downloaded; use a mirror that keeps the SHA256SUMS.gpg files") from None
    with tempfile.TemporaryDirectory(prefix="sums-", dir=cache.folder("partial")) as work:
        sums_path, signature_path = Path(work, "SHA256SUMS"), Path(work, "SHA256SUMS.gpg")
        sums_path.write_bytes(sums)
        signature_path.write_bytes(signature)
        signer = verify.check_signature(sums_path, signature_path, keyring, sums_url)
    return verify.parse_sums(sums, sums_url), signer


def _held(storage: Storage, pool: str, e: Expected, vouched: dict[str, dict], cache: Cache,
          report: Reporter) -> str | None:
    """"unchanged" when the pool holds this file already (by the manifest, or by its bytes: "adopted"),
    None when its volume is absent. A volume with other bytes is a conflict: it is never overwritten."""
    volume = storage.volume(pool, e.file.volume)
    if volume is None:
        return None
    entry = vouched.get(e.file.volume)
    if entry is not None and entry["size_bytes"] == volume.physical:
        return "unchanged"
    if entry is None and _same_bytes(storage, pool, e, cache, report):
        return "adopted"
    raise ConflictError(f"volume {e.file.volume} in pool {pool} exists and is not this build of {e.file.path} "
                        f"(SHA-256 {e.sha256[:16]}...)" + (f"; it holds {entry['sha256'][:16]}... from an earlier pull"
                                                            if entry else ""),
                        f"snpvirt never overwrites it (disks may be overlays on it): remove it once nothing uses it "
                        f"(virsh vol-delete --pool {pool} {e.file.volume}), or pull into another pool with --pool")


def _same_bytes(storage: Storage, pool: str, e: Expected, cache: Cache, report: Reporter) -> bool:
    """Read a volume no manifest vouches for (a pull stopped before writing it) back from the pool: when
    its bytes have the signed digest, it is the file, and the cache keeps the copy."""
    report.step(f"{e.file.volume} is in pool {pool} without a manifest: reading it back to check it")
    with cache.downloading(e.sha256) as partial:
        storage.download(pool, e.file.volume, partial, MAX_IMAGE_FILE_BYTES)
        if verify.sha256_file(partial)[0] != e.sha256:
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, cache.verified(e.sha256))
    return True


def _verified_copy(e: Expected, image: catalog.Image, fetcher: Fetcher, cache: Cache, report: Reporter) -> int:
    """Make sure the cache holds the file by its digest; returns the bytes downloaded for it."""
    if cache.verified_path(e.sha256) is not None:
        report.step(f"{e.file.name}: verified copy in the cache")
        return 0
    with cache.downloading(e.sha256) as partial:
        before = fetcher.received
        report.step(f"downloading {image.url(e.file.path)}")
        fetcher.to_file(image.url(e.file.path), partial, e.file.name, e.file.max_bytes)
        verify.check_digest(partial, e.sha256, e.file.path)  # deletes the download when it does not match
        os.replace(partial, cache.verified(e.sha256))
    report.step(f"{e.file.name}: SHA-256 matches the signed list")
    return fetcher.received - before


def _upload(e: Expected, storage: Storage, pool: str, cache: Cache, report: Reporter) -> str:
    path = cache.verified(e.sha256)
    verify.check_digest(path, e.sha256, f"cached {e.file.path}")  # the cache is ours, but a disk can rot
    report.step(f"uploading {e.file.name} to pool {pool} as {e.file.volume}")
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        report.transfer(Transfer(e.file.volume, done, total, rate, (total - done) / rate if rate else None,
                                 done == total))
    storage.upload(pool, e.file.volume, path, e.file.format, progress=progress)
    return "uploaded"


# --- the manifest volume ------------------------------------------------------------------------


def read_manifest(storage: Storage, pool: str, volume: str) -> dict[str, Any] | None:
    """The manifest's content, or None when the pool has no such volume (or it is not a manifest)."""
    if storage.volume(pool, volume) is None:
        return None
    with tempfile.TemporaryDirectory(prefix="snpvirt-manifest-") as work:
        target = Path(work, "manifest.json")
        try:
            storage.download(pool, volume, target, MANIFEST_MAX_BYTES)
            doc = json.loads(target.read_bytes())
        except (BadInputError, ValueError, RecursionError):
            return None  # too big, not JSON, or nested past the recursion limit: vouches for nothing
    return doc if isinstance(doc, dict) and doc.get("manifest_version") == MANIFEST_VERSION else None


def _vouched(manifest: dict[str, Any] | None, expected: list[Expected]) -> dict[str, dict]:
    """volume -> manifest entry, for the entries that record exactly the expected digest."""
    if manifest is None:
        return {}
    want = {e.file.volume: e.sha256 for e in expected}
    return {entry["volume"]: entry for entry in _entries(manifest)
            if isinstance(entry.get("size_bytes"), int) and want.get(entry.get("volume")) == entry.get("sha256")}


def _entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries that are objects (a volume anyone could have written: types are checked)."""
    files = manifest.get("files")
    return [entry for entry in files if isinstance(entry, dict)] if isinstance(files, list) else []


def volume_record(storage: Storage, pool: str, volume: str) -> dict[str, Any] | None:
    """What `image pull` recorded of a volume (sha256, size_bytes, role, upstream), from the manifests of the
    pool, or None. With cache.verified_path(record["sha256"]) the launch measurement finds the same bytes
    locally instead of downloading the volume."""
    for name in sorted(v.name for v in storage.volumes(pool) if v.name.endswith(MANIFEST_SUFFIX)):
        manifest = read_manifest(storage, pool, name)
        for entry in _entries(manifest) if manifest else []:
            if entry.get("volume") == volume and isinstance(entry.get("sha256"), str):
                return entry
    return None


def _write_manifest(storage: Storage, pool: str, image: catalog.Image, files: list[dict], cache: Cache) -> None:
    doc = {"manifest_version": MANIFEST_VERSION, "image": image.ref, "distro": image.distro, "version": image.version,
           "codename": image.codename, "arch": image.arch, "source": image.release_url,
           "pulled_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "files": [{k: f[k] for k in ("role", "volume", "upstream", "sha256", "size_bytes")} for f in files]}
    with tempfile.TemporaryDirectory(prefix="manifest-", dir=cache.folder("partial")) as work:
        path = Path(work, image.manifest_volume)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        if storage.volume(pool, image.manifest_volume) is not None:
            storage.delete(pool, image.manifest_volume)  # libvirt has no rename: replaced, written last
        storage.upload(pool, image.manifest_volume, path, "raw")


# --- image list ---------------------------------------------------------------------------------


def list_images(storage: Storage, pool: str) -> list[dict[str, Any]]:
    """Each image a manifest in the pool records, with its files and whether their volumes are there."""
    volumes = {v.name: v for v in storage.volumes(pool)}
    images = []
    for name in sorted(n for n in volumes if n.endswith(MANIFEST_SUFFIX)):
        manifest = read_manifest(storage, pool, name)
        if manifest is None or not isinstance(manifest.get("image"), str) or not isinstance(manifest.get("arch"), str):
            continue  # not one `image pull` wrote
        files = []
        for entry in _entries(manifest):
            volume = volumes.get(str(entry.get("volume")))
            files.append({"role": entry.get("role"), "volume": entry.get("volume"), "sha256": entry.get("sha256"),
                          "size_bytes": entry.get("size_bytes"), "path": volume.path if volume else None,
                          "present": volume is not None and volume.physical == entry.get("size_bytes")})
        images.append({"image": manifest.get("image"), "version": manifest.get("version"),
                       "codename": manifest.get("codename"), "arch": manifest.get("arch"),
                       "pulled_at": manifest.get("pulled_at"), "manifest": name, "files": files})
    return images
