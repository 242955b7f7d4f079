"""`snpvirt image pull|list` as real processes: a fake mirror on loopback (signed by a throwaway key), a real
libvirtd whose storage driver takes the volumes (its /var/lib/snpvirt is private to the test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import libvirt
import pytest

from tests.conftest import run_cli
from tests.image_mirror import (BIG_FILES, IMG, INITRD, KERNEL, RELEASE, STEM, VOLUMES, mirror, mirror_key,  # noqa: F401
                                sha256, write_sums)

pytestmark = pytest.mark.daemon
MANIFEST = "ubuntu-24.04.snpvirt-image.json"


@pytest.fixture
def pool(libvirtd):
    """The daemon's `default` pool, emptied after the test (the first pull creates it)."""
    yield "default"
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        found = conn.storagePoolLookupByName("default")
        found.refresh(0)
        for vol in found.listAllVolumes(0):
            vol.delete(0)
    except libvirt.libvirtError:
        pass  # never created
    finally:
        conn.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def pull(libvirtd, mirror, cache: Path, *extra: str, keyring: Path | None = None):
    return run_cli("image", "pull", "ubuntu:24.04", "-c", libvirtd.qemu_uri, "--mirror", mirror.url,
                   "--keyring", keyring or _keyring(mirror), *extra, env={"SNPVIRT_CACHE_DIR": str(cache)})


def _keyring(mirror) -> Path:
    return mirror.root.parent / "keyring.gpg"


@pytest.fixture(autouse=True)
def _mirror_keyring(request, mirror_key):
    """Each test's mirror trusts the session's throwaway key (copied beside it, as a user would keep it)."""
    if "mirror" in request.fixturenames:
        mirror = request.getfixturevalue("mirror")
        _keyring(mirror).write_bytes(mirror_key.keyring.read_bytes())


def volumes(libvirtd) -> dict[str, bytes]:
    """The pool's files, read from the daemon's private /var/lib/snpvirt/images."""
    folder = libvirtd.var_lib_snpvirt / "images"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def test_a_pull_verifies_and_uploads_disk_kernel_and_initrd(libvirtd, mirror, pool, cache):
    run = pull(libvirtd, mirror, cache)
    assert run.code == 0, run.stderr
    held = volumes(libvirtd)
    for path in BIG_FILES:
        assert held[VOLUMES[path]] == mirror.files[path]
    manifest = json.loads(held[MANIFEST])
    assert {f["volume"]: f["sha256"] for f in manifest["files"]} == {
        VOLUMES[p]: sha256(mirror.files[p]) for p in BIG_FILES}
    assert "SHA-256 matches the signed list" in run.stderr and "uploading" in run.stderr
    assert "is in pool default" in run.stdout
    # the verified copies stay in the cache, by digest, private to the user
    for path in BIG_FILES:
        assert (cache / "images" / "sha256" / sha256(mirror.files[path])).read_bytes() == mirror.files[path]
    assert os.stat(cache / "images").st_mode & 0o777 == 0o700

    listed = run_cli("image", "list", "-c", libvirtd.qemu_uri, "--json")
    assert listed.code == 0, listed.stderr
    (image,) = json.loads(listed.stdout)["results"]
    assert (image["name"], image["version"], image["codename"]) == ("ubuntu:24.04", "24.04", "noble")
    assert {(f["volume"], f["sha256"], f["size_bytes"], f["present"]) for f in image["files"]} == {
        (VOLUMES[p], sha256(mirror.files[p]), len(mirror.files[p]), True) for p in BIG_FILES}
    text = run_cli("image", "list", "-c", libvirtd.qemu_uri)
    assert sha256(mirror.files[IMG]) in text.stdout and "ubuntu-24.04.qcow2" in text.stdout


def test_a_second_pull_downloads_and_uploads_nothing(libvirtd, mirror, pool, cache, tmp_path):
    assert pull(libvirtd, mirror, cache).code == 0
    before = {name: os.stat(libvirtd.var_lib_snpvirt / "images" / name).st_mtime_ns for name in volumes(libvirtd)}
    mirror.requests.clear()
    # a fresh cache: what decides is the pool's manifest against the signed list, not the local cache
    run = pull(libvirtd, mirror, tmp_path / "other-cache", "--json")
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["changed"] is False and doc["results"][0]["downloaded_bytes"] == 0
    assert {f["action"] for f in doc["results"][0]["files"]} == {"unchanged"}
    assert mirror.big_requests() == []  # only the small signed lists were fetched
    assert {name: os.stat(libvirtd.var_lib_snpvirt / "images" / name).st_mtime_ns for name in volumes(libvirtd)} == before
    assert run.stderr == ""  # --json: no progress lines


def test_a_flipped_byte_in_the_image_fails_deletes_the_download_and_leaves_the_pool_empty(libvirtd, mirror, pool, cache):
    image = mirror.root / IMG
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    run = pull(libvirtd, mirror, cache, "--json")
    assert run.code == 1
    error = json.loads(run.stdout)["error"]
    assert "SHA-256" in error["message"] and STEM in error["message"] and "deleted" in error["hint"]
    assert not any(name.startswith("ubuntu-24.04") for name in volumes(libvirtd))
    cached = [p for p in (cache / "images").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert cached == []  # kernel and initrd were not fetched yet either: the image comes first, and failed
    assert run.stderr.count("snpvirt: error:") == 1


def test_a_list_whose_signature_is_bad_downloads_nothing(libvirtd, mirror, pool, cache):
    sums = mirror.root / RELEASE / "SHA256SUMS"
    sums.write_text(sums.read_text().replace(sha256(mirror.files[IMG]), "0" * 64))  # the signature stays the old one
    run = pull(libvirtd, mirror, cache)
    assert run.code == 1
    assert "no good signature" in run.stderr and "does not match the file" in run.stderr
    assert mirror.big_requests() == [] and volumes(libvirtd) == {}


def test_a_list_without_signature_is_refused(libvirtd, mirror, pool, cache):
    (mirror.root / RELEASE / "SHA256SUMS.gpg").unlink()
    run = pull(libvirtd, mirror, cache)
    assert run.code == 1
    assert "has no signature" in run.stderr
    assert mirror.big_requests() == [] and volumes(libvirtd) == {}


def test_unpacked_files_listed_only_in_an_unsigned_list_are_refused(libvirtd, mirror, pool, cache):
    unpacked = mirror.root / RELEASE / "unpacked"
    write_sums(unpacked, {Path(KERNEL).name: mirror.files[KERNEL], Path(INITRD).name: mirror.files[INITRD]}, None)
    run = pull(libvirtd, mirror, cache)
    assert run.code == 1 and "unpacked/SHA256SUMS has no signature" in run.stderr
    assert volumes(libvirtd) == {}


def test_a_stalled_download_times_out_and_resumes_with_range(libvirtd, mirror, pool, cache):
    mirror.stall[IMG] = 65536
    run = pull(libvirtd, mirror, cache, "--timeout", "1")
    assert run.code == 0, run.stderr
    assert mirror.requested(IMG) == [None, "bytes=65536-"]
    assert "no data within the timeout" in run.stderr and "resuming at byte 65536" in run.stderr
    assert volumes(libvirtd)[VOLUMES[IMG]] == mirror.files[IMG]


def test_a_volume_with_other_bytes_is_a_conflict_and_stays(libvirtd, mirror, pool, cache, tmp_path):
    other = tmp_path / "other.qcow2"
    other.write_bytes(b"someone else's disk")
    from snpvirt.libvirt import storage
    with storage.connect(libvirtd.qemu_uri) as store:
        store.ensure_pool("default")
        store.upload("default", "ubuntu-24.04.vmlinuz", other, "raw")
    run = pull(libvirtd, mirror, cache)
    assert run.code == 5, run.stderr
    assert "never overwrites" in run.stderr
    assert volumes(libvirtd) == {"ubuntu-24.04.vmlinuz": b"someone else's disk"}


def test_volumes_left_without_a_manifest_are_checked_by_their_bytes(libvirtd, mirror, pool, cache, tmp_path):
    assert pull(libvirtd, mirror, cache).code == 0
    conn = libvirt.open(libvirtd.qemu_uri)
    conn.storagePoolLookupByName("default").storageVolLookupByName(MANIFEST).delete(0)  # a pull stopped before it
    conn.close()
    mirror.requests.clear()
    run = pull(libvirtd, mirror, tmp_path / "fresh-cache", "--json")
    assert run.code == 0, run.stderr
    assert {f["action"] for f in json.loads(run.stdout)["results"][0]["files"]} == {"adopted"}
    assert mirror.big_requests() == [] and MANIFEST in volumes(libvirtd)


@pytest.mark.parametrize("args, code, words", [
    (("ubuntu:99.04",), 2, "no Ubuntu release"),
    (("ubuntu:24.04", "--arch", "x86_64"), 2, "--arch"),
    (("ubuntu:24.04", "--mirror", "file:///etc"), 2, "not an http(s) URL"),
])
def test_bad_names_are_refused_before_anything_is_fetched(libvirtd, args, code, words):
    run = run_cli("image", "pull", *args, "-c", libvirtd.qemu_uri)
    assert run.code == code and words in run.stderr
    assert run.stderr.count("snpvirt: error:") == 1 and "hint:" in run.stderr


def test_a_release_the_mirror_lacks_is_not_found(libvirtd, mirror, pool, cache):
    run = run_cli("image", "pull", "ubuntu:25.04", "-c", libvirtd.qemu_uri, "--mirror", mirror.url,
                  "--keyring", _keyring(mirror), env={"SNPVIRT_CACHE_DIR": str(cache)})
    assert run.code == 4 and "404" in run.stderr


def test_list_of_an_absent_pool_is_not_found(libvirtd):
    run = run_cli("image", "list", "--pool", "no-such-pool", "-c", libvirtd.qemu_uri)
    assert run.code == 4 and "storage pool" in run.stderr


def test_manifest_shaped_volumes_written_by_others_do_not_break_list(libvirtd, mirror, pool, cache, tmp_path):
    from snpvirt.libvirt import storage
    assert pull(libvirtd, mirror, cache).code == 0
    odd = {"odd.snpvirt-image.json": b'{"manifest_version": 1, "image": 5, "files": 5}',
           "big.snpvirt-image.json": b"[" * 100_000, "text.snpvirt-image.json": b"\xff\xfe not json",
           "deep.snpvirt-image.json": b"[" * 60_000}  # within the size bound, past Python's recursion limit
    with storage.connect(libvirtd.qemu_uri) as store:
        for name, data in odd.items():
            (tmp_path / name).write_bytes(data)
            store.upload("default", name, tmp_path / name, "raw")
    listed = run_cli("image", "list", "-c", libvirtd.qemu_uri, "--json")
    assert listed.code == 0, listed.stderr
    assert [(r["name"], len(r["files"])) for r in json.loads(listed.stdout)["results"]] == [("ubuntu:24.04", 3)]
    assert run_cli("image", "list", "-c", libvirtd.qemu_uri).code == 0


def test_a_volume_leads_to_its_verified_cache_copy(libvirtd, mirror, pool, cache, monkeypatch):
    """What the launch measurement does with a kernel the spec names as a volume."""
    from snpvirt import imagepool
    from snpvirt.image import cache as image_cache
    from snpvirt.libvirt import storage
    assert pull(libvirtd, mirror, cache).code == 0
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(cache))
    with storage.connect(libvirtd.qemu_uri) as store:
        record = imagepool.volume_record(store, "default", "ubuntu-24.04.vmlinuz")
        assert imagepool.volume_record(store, "default", "web-01.qcow2") is None
    assert record["sha256"] == sha256(mirror.files[KERNEL]) and record["role"] == "kernel"
    assert image_cache.verified_path(record["sha256"]).read_bytes() == mirror.files[KERNEL]
