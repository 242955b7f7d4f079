"""apply with pool volumes and cloud-init, against a real libvirtd's storage driver (dir pools, qemu-img).

Domains go to the daemon's test driver (no SEV hardware here); volumes to its QEMU driver's storage, in a
pool whose folder is this test's own. The store is wrapped to record the calls that change a pool, so
"touches no volume" is observed, not assumed.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import pycdlib
import pytest

from snpvirt.domain import metadata, sevparams
from snpvirt.domain import spec as specs
from snpvirt.domain import xml as domxml
from snpvirt.errors import NotFoundError
from snpvirt.host import readiness
from snpvirt.image.cache import Cache
from snpvirt.libvirt import storage
from snpvirt.libvirt.connection import Connection
from snpvirt.manager import Manager, SpecInput
from tests.sshkeys import public_key

GiB = 1 << 30


class Recording:
    """A VolumeStore that passes every call to the real one and notes those that change a pool."""

    CHANGES = ("create_volume", "upload", "delete")

    def __init__(self, store):
        self.store, self.calls = store, []
        self.uri = store.uri

    def __getattr__(self, name):
        call = getattr(self.store, name)

        def recorded(*args, **kwargs):
            self.calls.append((name, args[:2]))
            return call(*args, **kwargs)
        return recorded

    def changes(self):
        return [c for c in self.calls if c[0] in self.CHANGES]


@contextmanager
def made_pool(uri: str, folder: str | Path, name: str | None = None):
    """A dir pool at `folder` on the host of `uri`, removed with its volumes afterwards: (name, store)."""
    name = name or f"t-{uuid.uuid4().hex[:8]}"
    with storage.connect(uri) as store:
        store.ensure_pool(name, str(folder))
        try:
            yield name, store
        finally:
            for volume in store.volumes(name):
                store.delete(name, volume.name)
            handle = store._conn.storagePoolLookupByName(name)
            handle.destroy()
            handle.undefine()


@pytest.fixture
def pool(libvirtd, tmp_path):
    """A dir pool in this test's own folder, removed with its volumes afterwards."""
    folder = tmp_path / "pool"
    with made_pool(libvirtd.qemu_uri, folder) as (name, store):
        yield name, folder, store


@pytest.fixture
def files(tmp_path):
    """A tiny real qcow2 image (64 MiB virtual, some data), and kernel and initrd bytes."""
    image = tmp_path / "ubuntu-24.04.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True, timeout=30)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 1M", str(image)], check=True, timeout=30, capture_output=True)
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"MZ a kernel " * 1000)
    initrd.write_bytes(b"070701 an initrd " * 1000)
    return {"image": image, "kernel": kernel, "initrd": initrd}


@pytest.fixture
def hv(held, libvirtd):
    with Connection(libvirtd.test_uri) as conn:
        yield conn


def manager(hv, store, cache=lambda sha256: None):
    return Manager(hv, gate=lambda: readiness.gate_report(hv), resolve_sev=lambda s: sevparams.resolve(s, []),
                   storage=store, image_cache=cache)


def spec_for(pool_name, key, **changes):
    raw = {"name": "vol-01", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
           "boot": {"kernel": {"pool": pool_name, "volume": "ubuntu-24.04.vmlinuz"},
                    "initrd": {"pool": pool_name, "volume": "ubuntu-24.04.initrd"},
                    "cmdline": "console=ttyS0 root=LABEL=cloudimg-rootfs ro"},
           "snp": {"cbitpos": 51, "reduced_phys_bits": 1},
           "disks": [{"pool": pool_name, "volume": "vol-01.qcow2", "size_gib": 2, "backing": "ubuntu-24.04.qcow2"},
                     {"pool": pool_name, "volume": "vol-01-data.qcow2", "size_gib": 1}],
           "cloud_init": {"user": "alice", "ssh_authorized_keys": [key], "pool": pool_name},
           "state": "shutoff", **changes}
    return SpecInput(raw["name"], specs.parse_spec(raw))


def upload_images(store, pool_name, files):
    store.upload(pool_name, "ubuntu-24.04.qcow2", files["image"], "qcow2")
    store.upload(pool_name, "ubuntu-24.04.vmlinuz", files["kernel"], "raw")
    store.upload(pool_name, "ubuntu-24.04.initrd", files["initrd"], "raw")


def qemu_img_info(path: Path) -> dict:
    done = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True,
                          timeout=30, check=True)
    return json.loads(done.stdout)


def iso_files(path: Path) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for name in ("user-data", "meta-data"):
            data = io.BytesIO()
            iso.get_file_from_iso_fp(data, joliet_path=f"/{name}")
            out[name] = data.getvalue()
        return iso.pvd.volume_identifier.decode().strip(), out
    finally:
        iso.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apply_creates_the_overlay_the_empty_disk_and_the_seed_then_touches_nothing(hv, pool, files, tmp_path):
    name, folder, store = pool
    upload_images(store, name, files)
    key = public_key(tmp_path)
    recording = Recording(store)
    mgr = manager(hv, recording)

    plan = mgr.apply([spec_for(name, key)], check=True)[0]
    assert plan.ok and plan.action == "create", plan.error
    assert [(v["volume"], v["action"]) for v in plan.details["volumes"]] == [
        ("vol-01.qcow2", "create"), ("vol-01-data.qcow2", "create"), ("vol-01-cidata.iso", "create")]
    assert recording.changes() == [], "--check changes no volume"

    done = mgr.apply([spec_for(name, key)])[0]
    assert done.ok and done.changed, done.error
    overlay = qemu_img_info(folder / "vol-01.qcow2")
    assert (overlay["format"], overlay["virtual-size"]) == ("qcow2", 2 * GiB)
    assert overlay["backing-filename"] == str(folder / "ubuntu-24.04.qcow2")
    assert overlay.get("backing-filename-format", "qcow2") == "qcow2"
    empty = qemu_img_info(folder / "vol-01-data.qcow2")
    assert (empty["virtual-size"], "backing-filename" in empty) == (1 * GiB, False)

    label, seed = iso_files(folder / "vol-01-cidata.iso")
    assert label == "cidata"
    assert b'name: "alice"' in seed["user-data"] and key.encode() in seed["user-data"]
    assert b'local-hostname: "vol-01"' in seed["meta-data"]

    root = domxml.parse(hv.lookup("vol-01").xml)
    info = metadata.read(root)
    assert info.seed["sha256"] == sha256(folder / "vol-01-cidata.iso"), "the metadata records the seed that was stored"
    assert mgr.status("vol-01")["cloud_init_seed"] == {"pool": name, "volume": "vol-01-cidata.iso",
                                                        "sha256": sha256(folder / "vol-01-cidata.iso")}
    assert root.findtext("os/kernel") == str(folder / "ubuntu-24.04.vmlinuz"), "the kernel volume resolved to its path"
    assert info.launch["kernel"]["sha256"] == sha256(files["kernel"])
    assert info.launch["initrd"]["sha256"] == sha256(files["initrd"])
    disk = root.xpath("devices/disk[target/@dev='vda']")[0]
    assert disk.get("type") == "volume" and disk.find("source").get("volume") == "vol-01.qcow2"

    recording.calls.clear()
    again = mgr.apply([spec_for(name, key)])[0]
    assert (again.ok, again.action, again.changed) == (True, "unchanged", False), again.error
    assert recording.changes() == [], "a second apply touches no volume"
    assert qemu_img_info(folder / "vol-01.qcow2") == overlay


def test_an_existing_disk_volume_is_never_touched(hv, pool, files, tmp_path):
    name, folder, store = pool
    upload_images(store, name, files)
    store.create_volume(name, "vol-01.qcow2", 3 * GiB)  # not what the spec would create: no backing, 3 GiB
    subprocess.run(["qemu-io", "-c", "write -P 0x77 0 64k", str(folder / "vol-01.qcow2")], check=True, timeout=30,
                   capture_output=True)
    before = (folder / "vol-01.qcow2").read_bytes()
    recording = Recording(store)
    done = manager(hv, recording).apply([spec_for(name, public_key(tmp_path))])[0]
    assert done.ok, done.error
    assert ("create_volume", (name, "vol-01.qcow2")) not in recording.calls
    assert ("delete", (name, "vol-01.qcow2")) not in recording.calls
    assert (folder / "vol-01.qcow2").read_bytes() == before, "the guest's disk keeps its bytes"
    assert "backing-filename" not in qemu_img_info(folder / "vol-01.qcow2")


def test_a_changed_seed_replaces_the_seed_volume_and_updates_the_recorded_digest(hv, pool, files, tmp_path):
    name, folder, store = pool
    upload_images(store, name, files)
    mgr = manager(hv, store)
    assert mgr.apply([spec_for(name, public_key(tmp_path))])[0].ok
    first = sha256(folder / "vol-01-cidata.iso")
    other = public_key(tmp_path / "..", "ecdsa")
    done = mgr.apply([spec_for(name, other)])[0]
    assert done.ok and done.action == "update", done.error
    _, seed = iso_files(folder / "vol-01-cidata.iso")
    assert other.encode() in seed["user-data"] and sha256(folder / "vol-01-cidata.iso") != first
    assert metadata.read(domxml.parse(hv.lookup("vol-01").xml)).seed["sha256"] == sha256(folder / "vol-01-cidata.iso")


def test_the_kernel_digest_comes_from_the_verified_cache_when_the_pull_vouches_for_the_volume(hv, pool, files, tmp_path):
    name, folder, store = pool
    upload_images(store, name, files)
    cache = Cache(tmp_path / "cache")
    entries = []
    for role, volume, path in (("kernel", "ubuntu-24.04.vmlinuz", files["kernel"]), ("initrd", "ubuntu-24.04.initrd", files["initrd"])):
        digest = sha256(path)
        cache.verified(digest).write_bytes(path.read_bytes())
        entries.append({"role": role, "volume": volume, "sha256": digest, "size_bytes": path.stat().st_size})
    manifest = tmp_path / "ubuntu-24.04.snpvirt-image.json"
    manifest.write_text(json.dumps({"manifest_version": 1, "image": "ubuntu:24.04", "files": entries}))
    store.upload(name, manifest.name, manifest, "raw")
    recording = Recording(store)
    done = manager(hv, recording, cache.verified_path).apply([spec_for(name, public_key(tmp_path))])[0]
    assert done.ok, done.error
    downloads = [args for call, args in recording.calls if call == "download"]
    assert (name, "ubuntu-24.04.vmlinuz") not in downloads and (name, "ubuntu-24.04.initrd") not in downloads
    info = metadata.read(domxml.parse(hv.lookup("vol-01").xml))
    assert info.launch["kernel"]["sha256"] == sha256(files["kernel"])


@pytest.mark.parametrize("tampered", [b"MZ evil kernel" * 857 + b"MZ", b"MZ a longer evil kernel" * 1000],
                         ids=["same size", "other size"])
def test_a_kernel_volume_swapped_after_the_pull_is_refused_not_measured(hv, pool, files, tmp_path, tampered):
    """The host (untrusted under SEV-SNP) swaps the kernel the pull verified; an apply from a machine without
    the cache reads the volume back: it must not make the expected measurement from those bytes."""
    name, folder, store = pool
    upload_images(store, name, files)
    digest = sha256(files["kernel"])
    manifest = tmp_path / "ubuntu-24.04.snpvirt-image.json"
    manifest.write_text(json.dumps({"manifest_version": 1, "image": "ubuntu:24.04", "files": [
        {"role": "kernel", "volume": "ubuntu-24.04.vmlinuz", "sha256": digest, "size_bytes": files["kernel"].stat().st_size}]}))
    store.upload(name, manifest.name, manifest, "raw")
    store.delete(name, "ubuntu-24.04.vmlinuz")
    (tmp_path / "evil").write_bytes(tampered)
    store.upload(name, "ubuntu-24.04.vmlinuz", tmp_path / "evil", "raw")
    done = manager(hv, store).apply([spec_for(name, public_key(tmp_path))])[0]
    assert not done.ok and "ubuntu-24.04.vmlinuz" in done.error.message, done.details
    assert digest[:16] in done.error.message and done.error.exit_code == 1
    assert hv.lookup("vol-01") is None


@pytest.mark.parametrize("missing,volume", [("backing", "ubuntu-25.04.qcow2"), ("kernel", "ubuntu-25.04.vmlinuz")])
def test_an_absent_image_fails_with_the_pull_to_run_and_changes_nothing(hv, pool, files, tmp_path, missing, volume):
    name, folder, store = pool
    upload_images(store, name, files)
    item = spec_for(name, public_key(tmp_path))
    raw = json.loads(json.dumps(item.spec.source))
    if missing == "backing":
        raw["disks"][0]["backing"] = volume
    else:
        raw["boot"]["kernel"]["volume"] = volume
    recording = Recording(store)
    done = manager(hv, recording).apply([SpecInput("vol-01", specs.parse_spec(raw))])[0]
    assert not done.ok and isinstance(done.error, NotFoundError)
    assert volume in done.error.message
    assert f"snpvirt image pull ubuntu:25.04 --pool {name}" in done.error.hint
    assert recording.changes() == [] and hv.lookup("vol-01") is None


class FailingDefine:
    """The real hypervisor, except that its define fails (as a libvirt refusal would)."""

    def __init__(self, hv):
        self.hv = hv

    def __getattr__(self, name):
        return getattr(self.hv, name)

    def define(self, xml):
        from snpvirt.errors import SnpvirtError
        raise SnpvirtError("define refused (injected)", "none")


def test_volumes_made_for_a_domain_whose_define_fails_are_removed(hv, pool, files, tmp_path):
    name, folder, store = pool
    upload_images(store, name, files)
    store.create_volume(name, "vol-01-data.qcow2", 1 * GiB)  # exists before: must survive the undo
    done = manager(FailingDefine(hv), store).apply([spec_for(name, public_key(tmp_path))])[0]
    assert not done.ok and "injected" in done.error.message
    left = {v.name for v in store.volumes(name)}
    assert left == {"ubuntu-24.04.qcow2", "ubuntu-24.04.vmlinuz", "ubuntu-24.04.initrd", "vol-01-data.qcow2"}


def spec_toml(pool_name: str, key: str) -> str:
    return f"""
name = "vol-01"
memory_mib = 2048
vcpus = 2
firmware = "/usr/share/ovmf/OVMF.amdsev.fd"
state = "shutoff"
[boot]
kernel = {{ pool = "{pool_name}", volume = "ubuntu-24.04.vmlinuz" }}
initrd = {{ pool = "{pool_name}", volume = "ubuntu-24.04.initrd" }}
cmdline = "console=ttyS0 root=LABEL=cloudimg-rootfs ro"
[snp]
cbitpos = 51
reduced_phys_bits = 1
[[disks]]
pool = "{pool_name}"
volume = "vol-01.qcow2"
size_gib = 2
backing = "ubuntu-24.04.qcow2"
[[disks]]
pool = "{pool_name}"
volume = "vol-01-data.qcow2"
size_gib = 1
[cloud_init]
user = "alice"
ssh_authorized_keys = ["{key}"]
pool = "{pool_name}"
"""


def test_render_with_connect_resolves_the_volumes_to_their_paths_on_that_host(libvirtd, hv, pool, files, tmp_path):
    from tests.conftest import run_cli

    name, folder, store = pool
    upload_images(store, name, files)
    key = public_key(tmp_path)
    path = tmp_path / "vol-01.toml"
    path.write_text(spec_toml(name, key))
    assert specs.load_spec(path).source == spec_for(name, key).spec.source, "the TOML is the spec the manager applies"
    xml = run_cli("render", path, "-c", libvirtd.qemu_uri)
    assert xml.code == 0, xml.stderr
    assert f"<kernel>{folder}/ubuntu-24.04.vmlinuz</kernel>" in xml.stdout
    before = {v.name for v in store.volumes(name)}
    refused = run_cli("render", path, "--format", "qemu", "-c", libvirtd.qemu_uri)
    assert refused.code == 2 and "volume 'vol-01.qcow2'" in refused.stderr, "no path before apply creates it"
    assert {v.name for v in store.volumes(name)} == before, "render changes no pool"

    assert manager(hv, store).apply([spec_for(name, key)])[0].ok
    line = run_cli("render", path, "--format", "qemu", "-c", libvirtd.qemu_uri)
    assert line.code == 0, line.stderr
    assert f"-kernel {folder}/ubuntu-24.04.vmlinuz" in line.stdout
    assert f"file={folder}/vol-01.qcow2,format=qcow2" in line.stdout
    assert f"file={folder}/vol-01-cidata.iso,format=raw,readonly=on" in line.stdout, "the pool's seed, read-only"


def test_the_cli_wires_the_connections_storage_and_names_the_pull(tmp_path):
    """`snpvirt apply` gets its storage from the connection it opens (libvirt's test driver has a simulated
    pool, default-pool): an absent image is exit 4 with the pull to run, and nothing is defined."""
    from tests.conftest import assert_clean_error, run_cli

    path = tmp_path / "cli-vol.toml"
    path.write_text('name = "cli-vol"\nmemory_mib = 2048\nvcpus = 2\nfirmware = "/usr/share/ovmf/OVMF.amdsev.fd"\n'
                    '[snp]\ncbitpos = 51\nreduced_phys_bits = 1\n'
                    '[[disks]]\npool = "default-pool"\nvolume = "cli-vol.qcow2"\nbacking = "ubuntu-24.04.qcow2"\n')
    run = run_cli("apply", path, "-c", "test:///default")
    assert_clean_error(run, 4, "volume ubuntu-24.04.qcow2 is not in pool default-pool")
    assert "hint: pull the image into the pool first: snpvirt image pull ubuntu:24.04 --pool default-pool" in run.stderr


def test_cli_apply_with_storage_connect_puts_the_domain_on_the_test_driver_and_the_volumes_in_the_real_pool(
        libvirtd, held, pool, files, tmp_path):
    """libvirt's test driver simulates its pools (they take no upload): `--storage-connect` names the same
    daemon's real storage, where apply creates the overlay and the seed, and render finds their paths."""
    from tests.conftest import run_cli

    name, folder, store = pool
    upload_images(store, name, files)
    path = tmp_path / "vol-01.toml"
    path.write_text(spec_toml(name, public_key(tmp_path)))
    alone = run_cli("apply", path, "-c", libvirtd.test_uri)
    assert alone.code == 4 and name in alone.stderr, "by default the volumes are the domains' connection's"
    assert "vol-01" not in {d.name() for d in held.listAllDomains()}

    run = run_cli("apply", path, "-c", libvirtd.test_uri, "--storage-connect", libvirtd.qemu_uri, "--json")
    assert run.code == 0, run.stderr
    (result,) = json.loads(run.stdout)["results"]
    assert [(v["volume"], v["action"]) for v in result["volumes"]] == [
        ("vol-01.qcow2", "create"), ("vol-01-data.qcow2", "create"), ("vol-01-cidata.iso", "create")]
    assert qemu_img_info(folder / "vol-01.qcow2")["backing-filename"] == str(folder / "ubuntu-24.04.qcow2")
    assert iso_files(folder / "vol-01-cidata.iso")[0] == "cidata"
    root = domxml.parse(held.lookupByName("vol-01").XMLDesc(0))
    assert root.findtext("os/kernel") == str(folder / "ubuntu-24.04.vmlinuz"), "the path on the storage connection"

    line = run_cli("render", path, "--format", "qemu", "-c", libvirtd.test_uri, "--storage-connect", libvirtd.qemu_uri)
    assert line.code == 0, line.stderr
    assert f"file={folder}/vol-01-cidata.iso,format=raw,readonly=on" in line.stdout


@pytest.fixture(scope="module")
def other_host(tmp_path_factory, qemu_caps_cache):
    """A second isolated libvirtd under its own host name (its own UTS namespace): another host."""
    from tests.integration.daemon import IsolatedLibvirtd

    with IsolatedLibvirtd(tmp_path_factory.mktemp("other"), qemu_caps_cache, hostname="snpvirt-other-host") as daemon:
        yield daemon


def test_a_storage_connection_to_another_host_is_refused_before_anything_changes(libvirtd, held, pool, files,
                                                                                 other_host, tmp_path):
    """The other host holds a pool of the same name with the same images, so only the host check stops apply
    from defining a domain whose disk paths are on another machine."""
    from tests.conftest import assert_clean_error, run_cli

    name = pool[0]
    path = tmp_path / "vol-01.toml"
    path.write_text(spec_toml(name, public_key(tmp_path)))
    with made_pool(other_host.qemu_uri, tmp_path / "other-pool", name) as (_, there):
        upload_images(there, name, files)
        for command in (["apply", path], ["render", path, "--format", "qemu"]):
            run = run_cli(*command, "-c", libvirtd.test_uri, "--storage-connect", other_host.qemu_uri)
            assert_clean_error(run, 2, "snpvirt-other-host", "the volumes must be on the domains' host")
        assert "vol-01" not in {d.name() for d in held.listAllDomains()}
        assert {v.name for v in there.volumes(name)} == {"ubuntu-24.04.qcow2", "ubuntu-24.04.vmlinuz",
                                                         "ubuntu-24.04.initrd"}, "no volume made there"


def test_render_does_not_call_a_boot_volume_missing_on_this_machine(libvirtd, files, tmp_path):
    """A boot volume's path is the host's (here under the daemon's private /var/lib/snpvirt, absent on this
    machine) and its digest comes from the pool: no "does not exist on this machine" warning for it."""
    from tests.conftest import run_cli

    folder = f"/var/lib/snpvirt/t-{uuid.uuid4().hex[:8]}"
    assert not Path(folder).exists()
    with made_pool(libvirtd.qemu_uri, folder) as (name, store):
        upload_images(store, name, files)
        path = tmp_path / "vol-01.toml"
        path.write_text(spec_toml(name, public_key(tmp_path)))
        run = run_cli("render", path, "-c", libvirtd.qemu_uri)
        assert run.code == 0, run.stderr
        assert f"<kernel>{folder}/ubuntu-24.04.vmlinuz</kernel>" in run.stdout
        assert "boot.kernel" not in run.stderr and "boot.initrd" not in run.stderr, run.stderr
