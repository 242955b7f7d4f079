"""Pool volumes (disks, kernel, initrd) and [cloud_init] in a spec: what is accepted, what is refused."""

import pytest

from snpvirt.domain import spec as specs
from snpvirt.errors import BadInputError
from snpvirt.models import VolumeRef
from tests.sshkeys import public_key

MINIMAL = {"name": "web-01", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd"}
POOL_DISK = {"pool": "default", "volume": "web-01.qcow2", "size_gib": 20, "backing": "ubuntu-24.04.qcow2"}


def parse(**changes):
    return specs.parse_spec({**MINIMAL, **changes})


def rejects(match, **changes):
    with pytest.raises(BadInputError, match=match) as info:
        parse(**changes)
    assert info.value.hint
    return info.value


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return public_key(tmp_path_factory.mktemp("ssh"))


def test_a_pool_disk_names_its_volume_and_what_apply_may_create():
    disk = parse(disks=[POOL_DISK, {"path": "/var/lib/x.raw", "format": "raw"}]).disks
    assert (disk[0].volume_ref, disk[0].size_gib, disk[0].backing, disk[0].path, disk[0].target) == (
        VolumeRef("default", "web-01.qcow2"), 20, "ubuntu-24.04.qcow2", None, "vda")
    assert disk[1].volume_ref is None and disk[1].target == "vdb"


@pytest.mark.parametrize("disk,match", [
    ({}, r"disks\[0\]: give either 'path' or 'pool' and 'volume'"),
    ({"path": "/x.qcow2", "pool": "default", "volume": "x"}, "give either 'path' or 'pool'"),
    ({"pool": "default"}, r"disks\[0\]: 'volume' is missing"),
    ({"volume": "x.qcow2"}, r"disks\[0\]: 'pool' is missing"),
    ({"path": "/x.qcow2", "size_gib": 2}, r"disks\[0\]\.size_gib needs 'pool'"),
    ({"path": "/x.qcow2", "backing": "base.qcow2"}, r"disks\[0\]\.backing needs 'pool'"),
    ({**POOL_DISK, "format": "raw"}, r"backing needs format qcow2"),
    ({**POOL_DISK, "backing": "web-01.qcow2"}, "names the disk's own volume"),
    ({**POOL_DISK, "size_gib": 0}, r"size_gib: 0 is out of range 1\.\.65536"),
    ({**POOL_DISK, "size_gib": 65537}, "out of range"),
    ({**POOL_DISK, "size_gib": "20G"}, "size_gib: expected an integer"),
    ({**POOL_DISK, "volume": "../etc/passwd"}, "volume: .* is not a volume name"),
    ({**POOL_DISK, "volume": "a/b"}, "is not a volume name"),
    ({**POOL_DISK, "volume": ".hidden"}, "is not a volume name"),
    ({**POOL_DISK, "volume": "-rf"}, "is not a volume name"),
    ({**POOL_DISK, "volume": "x" * 129}, "is not a volume name"),
    ({**POOL_DISK, "backing": "../ubuntu.qcow2"}, "backing: .* is not a volume name"),
    ({**POOL_DISK, "pool": "my pool"}, "pool: .* is not a storage pool name"),
    ({**POOL_DISK, "sizegib": 1}, r"unknown key 'disks\[0\]\.sizegib'"),
])
def test_bad_pool_disks(disk, match):
    rejects(match, disks=[disk])


def test_boot_files_may_be_pool_volumes():
    vm = parse(boot={"kernel": {"pool": "default", "volume": "ubuntu-24.04-vmlinuz-generic"},
                     "initrd": {"pool": "default", "volume": "ubuntu-24.04-initrd-generic"}, "cmdline": "console=ttyS0"})
    assert vm.boot.kernel is None and vm.boot.kernel_volume == VolumeRef("default", "ubuntu-24.04-vmlinuz-generic")
    assert vm.boot.direct and vm.snp.kernel_hashes, "a kernel volume is direct kernel boot, measured by default"
    assert vm.boot.unresolved == ("kernel", "initrd")


@pytest.mark.parametrize("kernel,match", [
    ({"pool": "default"}, r"missing required key 'boot\.kernel\.volume'"),
    ({"pool": "default", "volume": "k", "path": "/x"}, r"unknown key 'boot\.kernel\.path'"),
    ({"pool": "default", "volume": "../k"}, r"boot\.kernel\.volume: .* is not a volume name"),
    ("vmlinuz", r"boot\.kernel: .* is not an absolute file path"),
    (3, r"boot\.kernel: expected a string or a table"),
])
def test_bad_boot_volumes(kernel, match):
    rejects(match, boot={"kernel": kernel})


def test_an_initrd_volume_needs_a_kernel():
    rejects("without boot.kernel", boot={"initrd": {"pool": "default", "volume": "i"}})


def test_cloud_init_defaults_its_host_name_to_the_domain_and_puts_the_seed_after_the_disks(key):
    vm = parse(disks=[POOL_DISK], cloud_init={"user": "alice", "ssh_authorized_keys": [key]})
    ci = vm.cloud_init
    assert (ci.hostname, ci.user, ci.ssh_authorized_keys, ci.target, ci.pool) == ("web-01", "alice", (key,), "vdb", "default")
    assert ci.volume_name(vm.name) == "web-01-cidata.iso"


def test_every_ssh_key_type_ssh_keygen_makes_is_accepted(tmp_path):
    keys = [public_key(tmp_path, kind) for kind in ("ed25519", "rsa", "ecdsa")]
    assert parse(cloud_init={"user": "alice", "ssh_authorized_keys": keys}).cloud_init.ssh_authorized_keys == tuple(keys)


def _mangled(key):
    kind, data, comment = key.split(" ", 2)
    return {
        "type only": kind,
        "unknown type": f"ssh-dss {data}",
        "not base64": f"{kind} {data[:-4]}!!!! {comment}",
        "type mismatch": f"ssh-rsa {data} {comment}",
        "truncated blob": f"{kind} {data[:20]} {comment}",
        "two keys": f"{key}\n{key}",
        "options prefix": f'command="/bin/sh" {key}',
        "control character": f"{key}\x1b[2J",
        "private key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
    }


@pytest.mark.parametrize("case", list(_mangled("ssh-ed25519 AAAA c").keys()))
def test_what_is_not_one_ssh_public_key_is_refused(key, case):
    err = rejects(r"cloud_init\.ssh_authorized_keys\[0\]", cloud_init={"user": "alice", "ssh_authorized_keys": [_mangled(key)[case]]})
    if case == "private key":
        assert "private key" in err.message and "OPENSSH" not in err.message + err.hint, "a secret is never repeated"


@pytest.mark.parametrize("cloud_init,match", [
    ({"user": "alice"}, "user and cloud_init.ssh_authorized_keys go together"),
    ({"user": "root", "ssh_authorized_keys": ["K"]}, r"cloud_init\.user: 'root' is refused"),
    ({"user": "Alice", "ssh_authorized_keys": ["K"]}, r"cloud_init\.user: .* is not a Linux user name"),
    ({"user": "a;rm", "ssh_authorized_keys": ["K"]}, "is not a Linux user name"),
    ({"user": "alice", "ssh_authorized_keys": "K"}, r"ssh_authorized_keys: expected"),
    ({"user": "alice", "ssh_authorized_keys": ["K"], "user_data": "/etc/ud.yaml"}, "user_data is used as is"),
    ({"user_data": "ud.yaml"}, r"cloud_init\.user_data: .* is not an absolute file path"),
    ({"hostname": "web_01"}, r"cloud_init\.hostname: .* is not a host name"),
    ({"hostname": "-web"}, "is not a host name"),
    ({"hostname": "a" * 64}, "is not a host name"),
    ({"hostnme": "x"}, r"unknown key 'cloud_init\.hostnme'"),
])
def test_bad_cloud_init(key, cloud_init, match):
    keys = cloud_init.get("ssh_authorized_keys")
    if isinstance(keys, list):
        cloud_init = {**cloud_init, "ssh_authorized_keys": [key if k == "K" else k for k in keys]}
    rejects(match, cloud_init=cloud_init)


def test_a_domain_name_that_is_no_host_name_needs_cloud_init_hostname():
    rejects(r"cloud_init\.hostname: the domain name 'web_01' is not a host name", name="web_01", cloud_init={})
    assert parse(name="web_01", cloud_init={"hostname": "web-01"}).cloud_init.hostname == "web-01"


def test_too_many_ssh_keys(key):
    rejects(r"ssh_authorized_keys: 65 keys, at most 64", cloud_init={"user": "alice", "ssh_authorized_keys": [key] * 65})


def test_the_seed_counts_against_the_26_disk_targets(key):
    disks = [{"path": f"/d{i}.qcow2"} for i in range(26)]
    parse(disks=disks)
    rejects("too many disks", disks=disks, cloud_init={"hostname": "web-01"})
