"""The NoCloud seed: an ISO 9660 image cloud-init recognises, with the spec's user, keys and host name, and the
same bytes for the same spec, whatever the clock or the time zone."""

import io
import os
import subprocess
import sys

import pycdlib
import pytest
import yaml

from snpvirt.domain import spec as specs
from snpvirt.errors import BadInputError
from snpvirt.image import seed as seeds
from tests.conftest import ROOT
from tests.sshkeys import public_key

MINIMAL = {"name": "web-01", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd"}


def cloud_init(**keys):
    return specs.parse_spec({**MINIMAL, "cloud_init": keys}).cloud_init


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return public_key(tmp_path_factory.mktemp("ssh"))


def read_iso(image):
    """(volume label, {Joliet name: bytes}, {Rock Ridge name: bytes}) of an ISO image, read back with pycdlib."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        joliet, rock_ridge = {}, {}
        for facade, names, kwarg in ((iso.get_joliet_facade(), joliet, "joliet_path"), (iso.get_rock_ridge_facade(), rock_ridge, "rr_path")):
            for child in facade.list_children("/"):
                name = (child.file_identifier().decode("utf-16_be") if kwarg == "joliet_path" else child.rock_ridge.name().decode())
                if child.is_dot() or child.is_dotdot():
                    continue
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **{kwarg: f"/{name}"})
                names[name] = out.getvalue()
        return label, joliet, rock_ridge
    finally:
        iso.close()


def test_the_seed_is_an_iso_labelled_cidata_with_user_data_and_meta_data_under_both_extensions(key):
    seed = seeds.build(cloud_init(user="alice", ssh_authorized_keys=[key]), "web-01")
    label, joliet, rock_ridge = read_iso(seed.image)
    assert label == "cidata"
    expected = {"user-data": seed.user_data, "meta-data": seed.meta_data}
    assert joliet == expected and rock_ridge == expected


def test_user_data_is_a_cloud_config_with_the_user_its_keys_and_the_host_name(tmp_path, key):
    rsa = public_key(tmp_path, "rsa")
    seed = seeds.build(cloud_init(user="alice", ssh_authorized_keys=[key, rsa], hostname="web01.example.org"), "web-01")
    assert seed.user_data.startswith(b"#cloud-config\n")
    config = yaml.safe_load(seed.user_data)
    assert config["hostname"] == "web01.example.org" and config["ssh_pwauth"] is False
    (user,) = config["users"]
    assert user["name"] == "alice" and user["ssh_authorized_keys"] == [key, rsa] and user["lock_passwd"] is True
    assert yaml.safe_load(seed.meta_data) == {"instance-id": "web-01", "local-hostname": "web01.example.org"}


def test_a_key_comment_cannot_break_the_yaml(tmp_path):
    odd = public_key(tmp_path, comment='x": y - #evil {a: [ünï')
    (user,) = yaml.safe_load(seeds.user_data(cloud_init(user="alice", ssh_authorized_keys=[odd])))["users"]
    assert user["ssh_authorized_keys"] == [odd] and set(user) == {"name", "lock_passwd", "shell", "sudo", "ssh_authorized_keys"}


def test_a_user_data_file_is_used_as_is(tmp_path):
    script = b"#!/bin/sh\necho hello > /run/hello\n"
    (tmp_path / "ud").write_bytes(script)
    seed = seeds.build(cloud_init(user_data=str(tmp_path / "ud"), hostname="web-01"), "web-01")
    _, joliet, _ = read_iso(seed.image)
    assert joliet["user-data"] == script and b"local-hostname: \"web-01\"" in joliet["meta-data"]


@pytest.mark.parametrize("make", ["fifo", "huge", "folder", "absent"])
def test_a_user_data_file_is_read_bounded(tmp_path, make):
    path = tmp_path / "ud"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "huge":
        with open(path, "wb") as handle:
            handle.truncate(seeds.MAX_USER_DATA + 1)
    elif make == "folder":
        path.mkdir()
    with pytest.raises(BadInputError, match="cloud_init.user_data"):
        seeds.build(cloud_init(user_data=str(path)), "web-01")


def _digest_in_a_process(key, tz):
    code = ("import sys; from snpvirt.domain import spec; from snpvirt.image import seed; "
            "ci = spec.parse_spec({'name': 'web-01', 'memory_mib': 2048, 'vcpus': 2, 'firmware': '/f', "
            "'cloud_init': {'user': 'alice', 'ssh_authorized_keys': [sys.argv[1]]}}).cloud_init; "
            "print(seed.build(ci, 'web-01').sha256)")
    env = {**os.environ, "TZ": tz, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, key], capture_output=True, text=True, check=True,
                          timeout=60, env=env, cwd=ROOT).stdout.strip()


def test_the_same_spec_gives_the_same_bytes_in_any_time_zone(key):
    here = seeds.build(cloud_init(user="alice", ssh_authorized_keys=[key]), "web-01").sha256
    assert {here, _digest_in_a_process(key, "UTC"), _digest_in_a_process(key, "Pacific/Kiritimati")} == {here}
    assert seeds.build(cloud_init(user="bob", ssh_authorized_keys=[key]), "web-01").sha256 != here


def test_the_clock_is_restored_after_a_build(key):
    import pycdlib.dates
    import time

    seeds.build(cloud_init(user="alice", ssh_authorized_keys=[key]), "web-01")
    assert pycdlib.dates.time is time and pycdlib.pycdlib.time is time


def test_the_same_spec_gives_the_same_bytes_at_any_time(key, monkeypatch):
    import time

    ci = cloud_init(user="alice", ssh_authorized_keys=[key])
    now = seeds.build(ci, "web-01").sha256
    monkeypatch.setattr(time, "time", lambda: 4102444800.0)  # 2100-01-01: the clock pycdlib would read
    assert seeds.build(ci, "web-01").sha256 == now
