"""Rendering pool volumes and the cloud-init seed: libvirt's schema and the SNP rules accept them, the seed is
read-only virtio behind the IOMMU, and its digest is recorded beside (not among) the launch inputs."""

import dataclasses

import pytest
from lxml import etree

from snpvirt.domain import metadata, render, sevparams
from snpvirt.domain import spec as specs
from snpvirt.domain import xml as domxml
from snpvirt.errors import BadInputError
from snpvirt.image import seed as seeds
from tests.sshkeys import public_key

BASE = {"name": "web-01", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1},
        "disks": [{"pool": "default", "volume": "web-01.qcow2", "size_gib": 20, "backing": "ubuntu-24.04.qcow2"},
                  {"path": "/var/lib/libvirt/images/data.raw", "format": "raw", "readonly": True}]}


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    key = public_key(tmp_path_factory.mktemp("ssh"))
    return specs.parse_spec({**BASE, "cloud_init": {"user": "alice", "ssh_authorized_keys": [key]}})


def rendered(vm, seed_sha256=None):
    result = render.render(vm, sevparams.resolve(vm, []), seed_sha256=seed_sha256)
    return result, etree.fromstring(result.xml.encode())


def test_a_pool_disk_points_at_its_volume_with_the_iommu_on(vm):
    _, root = rendered(vm)
    disk = root.xpath("devices/disk[target/@dev='vda']")[0]
    assert disk.get("type") == "volume"
    assert dict(disk.find("source").attrib) == {"pool": "default", "volume": "web-01.qcow2"}
    assert (disk.find("driver").get("type"), disk.find("driver").get("iommu")) == ("qcow2", "on")
    assert disk.find("target").get("bus") == "virtio" and disk.find("readonly") is None


def test_the_seed_is_a_read_only_virtio_disk_behind_the_iommu(vm):
    _, root = rendered(vm)
    seed = root.xpath("devices/disk[target/@dev='vdc']")[0]
    assert dict(seed.find("source").attrib) == {"pool": "default", "volume": "web-01-cidata.iso"}
    assert seed.find("readonly") is not None, "the guest must not write to what the host hands it"
    assert (seed.find("driver").get("type"), seed.find("driver").get("iommu"), seed.find("target").get("bus")) == (
        "raw", "on", "virtio")


def test_the_documents_pass_libvirts_schema_and_every_snp_rule(vm):
    result, _ = rendered(vm)
    assert domxml.check(result.xml) == [], "no finding, not even the virtio IOMMU warning"


def test_the_seed_digest_is_recorded_beside_the_launch_inputs(vm):
    digest = seeds.build(vm.cloud_init, vm.name).sha256
    _, root = rendered(vm, digest)
    info = metadata.read(root)
    assert info.seed == {"pool": "default", "volume": "web-01-cidata.iso", "sha256": digest}
    assert "seed" not in info.launch, "the seed is not measured: it must never look like a launch input"


def test_a_boot_volume_without_its_host_path_is_not_rendered():
    raw = {**BASE, "boot": {"kernel": {"pool": "default", "volume": "ubuntu-24.04-vmlinuz-generic"}}}
    vm = specs.parse_spec(raw)
    with pytest.raises(BadInputError, match="boot.kernel is volume 'ubuntu-24.04-vmlinuz-generic' in pool 'default'") as err:
        render.render(vm, sevparams.resolve(vm, []))
    assert "--connect" in err.value.hint


def test_a_resolved_boot_volume_renders_its_path_and_records_the_volume():
    raw = {**BASE, "boot": {"kernel": {"pool": "default", "volume": "ubuntu-24.04-vmlinuz-generic"}, "cmdline": "ro"}}
    vm = specs.parse_spec(raw)
    vm = dataclasses.replace(vm, boot=dataclasses.replace(vm.boot, kernel="/var/lib/snpvirt/images/ubuntu-24.04-vmlinuz-generic"))
    _, root = rendered(vm)
    assert root.findtext("os/kernel") == "/var/lib/snpvirt/images/ubuntu-24.04-vmlinuz-generic"
    assert metadata.read(root).launch["kernel"] == {"path": "/var/lib/snpvirt/images/ubuntu-24.04-vmlinuz-generic",
                                                    "pool": "default", "volume": "ubuntu-24.04-vmlinuz-generic"}
    assert root.find("launchSecurity").get("kernelHashes") == "yes"
