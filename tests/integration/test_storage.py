"""libvirt/storage.py against a real libvirtd's storage driver (QEMU driver, `dir` pools, qemu-img).

The daemon runs in a private mount namespace whose /var/lib/snpvirt is a folder under the test's tmp
(tests/integration/daemon.py), so the default pool folder is never created on this machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import libvirt
import pytest

from snpvirt.errors import BadInputError, ConflictError, NotFoundError
from snpvirt.libvirt import storage

POOL = "default"


@pytest.fixture(scope="module")
def store(libvirtd):
    with storage.connect(libvirtd.qemu_uri) as s:
        s.ensure_pool(POOL)
        yield s


def outside(libvirtd, path: str) -> Path:
    """A path of the daemon's namespace, as this process sees it."""
    prefix = "/var/lib/snpvirt/"
    assert path.startswith(prefix), path
    return libvirtd.var_lib_snpvirt / path[len(prefix):]


def qemu_img_info(path: Path) -> dict:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True,
                          timeout=30, check=True)
    return json.loads(done.stdout)


@pytest.fixture
def base_image(tmp_path) -> Path:
    """A tiny real qcow2 image with some data in it."""
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True, timeout=30)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 1M", str(path)], check=True, timeout=30, capture_output=True)
    return path


def names(store) -> set[str]:
    return {v.name for v in store.volumes(POOL)}


def test_ensure_pool_makes_an_autostarted_dir_pool_under_var_lib_snpvirt(libvirtd, store):
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        pool = conn.storagePoolLookupByName(POOL)
        assert pool.isActive() and pool.autostart()
        assert "<path>/var/lib/snpvirt/images</path>" in pool.XMLDesc(0)
    finally:
        conn.close()
    assert (libvirtd.var_lib_snpvirt / "images").is_dir()  # the daemon's private folder, not this machine's
    again = store.ensure_pool(POOL)
    assert (again.created, again.path) == (False, "/var/lib/snpvirt/images")


def test_ensure_pool_starts_an_existing_inactive_pool_and_keeps_its_folder(libvirtd, store, tmp_path):
    conn = libvirt.open(libvirtd.qemu_uri)
    try:
        pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>mine</name><target><path>{tmp_path}</path>"
                                         "</target></pool>", 0)
        try:
            info = store.ensure_pool("mine", "/var/lib/snpvirt/elsewhere")
            assert (info.created, info.path) == (False, str(tmp_path))
            assert pool.isActive()
        finally:
            pool.destroy()
            pool.undefine()
    finally:
        conn.close()


def test_upload_sends_the_bytes_and_libvirt_sees_a_qcow2(libvirtd, store, base_image):
    seen = []
    info = store.upload(POOL, "up.qcow2", base_image, "qcow2", progress=lambda done, total: seen.append((done, total)))
    try:
        size = base_image.stat().st_size
        assert (info.name, info.format, info.capacity) == ("up.qcow2", "qcow2", 64 << 20)
        assert outside(libvirtd, info.path).read_bytes() == base_image.read_bytes()
        assert seen[-1] == (size, size)
        assert store.volume(POOL, "up.qcow2") == info
    finally:
        store.delete(POOL, "up.qcow2")
    assert store.volume(POOL, "up.qcow2") is None


def test_an_upload_that_fails_midway_leaves_no_volume(store, tmp_path):
    big = tmp_path / "kernel"
    big.write_bytes(b"\x01" * (3 * storage.CHUNK))

    def stop(done, total):
        if done >= storage.CHUNK:
            raise KeyboardInterrupt  # the user's Ctrl-C, or any failure on the way

    with pytest.raises(KeyboardInterrupt):
        store.upload(POOL, "half", big, "raw", progress=stop)
    assert "half" not in names(store)


def test_an_upload_whose_bytes_are_another_format_is_refused_and_removed(store, base_image):
    with pytest.raises(BadInputError, match="qcow2, not raw"):
        store.upload(POOL, "wrong", base_image, "raw")
    assert "wrong" not in names(store)


def test_an_existing_volume_is_a_conflict_and_is_not_touched(libvirtd, store, tmp_path):
    src = tmp_path / "initrd"
    src.write_bytes(b"first")
    store.upload(POOL, "initrd", src, "raw")
    try:
        src.write_bytes(b"second")
        with pytest.raises(ConflictError):
            store.upload(POOL, "initrd", src, "raw")
        with pytest.raises(ConflictError):
            store.create_volume(POOL, "initrd", 1 << 20)
        assert outside(libvirtd, store.volume(POOL, "initrd").path).read_bytes() == b"first"
    finally:
        store.delete(POOL, "initrd")


def test_an_overlay_has_the_backing_volume_as_backing_file_and_its_own_size(libvirtd, store, base_image):
    base = store.upload(POOL, "base.qcow2", base_image, "qcow2")
    try:
        overlay = store.create_volume(POOL, "web-01.qcow2", 20 << 30, backing="base.qcow2")
        try:
            info = qemu_img_info(outside(libvirtd, overlay.path))
            assert info["format"] == "qcow2"
            assert info["virtual-size"] == 20 << 30 == overlay.capacity
            assert info["backing-filename"] == base.path == "/var/lib/snpvirt/images/base.qcow2"
            assert info["backing-filename-format"] == "qcow2"
        finally:
            store.delete(POOL, "web-01.qcow2")
    finally:
        store.delete(POOL, "base.qcow2")


def test_an_empty_volume_has_no_backing_file(libvirtd, store):
    vol = store.create_volume(POOL, "data.qcow2", 1 << 30)
    try:
        info = qemu_img_info(outside(libvirtd, vol.path))
        assert (info["format"], info["virtual-size"]) == ("qcow2", 1 << 30)
        assert "backing-filename" not in info
    finally:
        store.delete(POOL, "data.qcow2")


def test_an_overlay_on_a_missing_volume_is_not_found_and_creates_nothing(store):
    with pytest.raises(NotFoundError, match="backing volume ubuntu-99.04.qcow2"):
        store.create_volume(POOL, "web-02.qcow2", 1 << 30, backing="ubuntu-99.04.qcow2")
    assert "web-02.qcow2" not in names(store)


def test_download_returns_the_bytes_and_refuses_a_volume_over_the_limit(store, tmp_path):
    src = tmp_path / "vmlinuz"
    src.write_bytes(bytes(range(256)) * 5000)
    store.upload(POOL, "vmlinuz", src, "raw")
    try:
        dest = tmp_path / "back"
        assert store.download(POOL, "vmlinuz", dest, max_bytes=2 << 20) == src.stat().st_size
        assert dest.read_bytes() == src.read_bytes()
        small = tmp_path / "small"
        with pytest.raises(BadInputError, match="more than"):
            store.download(POOL, "vmlinuz", small, max_bytes=1000)
        assert not small.exists() and not list(tmp_path.glob(".small.*"))
    finally:
        store.delete(POOL, "vmlinuz")


def test_missing_pools_and_volumes_are_not_found(store, tmp_path):
    with pytest.raises(NotFoundError, match="storage pool"):
        store.volumes("no-such-pool")
    with pytest.raises(NotFoundError):
        store.delete(POOL, "no-such-volume")
    with pytest.raises(NotFoundError):
        store.download(POOL, "no-such-volume", tmp_path / "x", max_bytes=1)
