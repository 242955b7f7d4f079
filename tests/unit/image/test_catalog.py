"""Image names onto Ubuntu's cloud-images layout, and the volume names they get."""

import pytest

from snpvirt.errors import BadInputError
from snpvirt.image import catalog


@pytest.mark.parametrize("ref", ["ubuntu:24.04", "ubuntu:noble", "Ubuntu:Noble", " ubuntu:24.04 "])
def test_a_version_and_its_codename_are_the_same_image(ref):
    image = catalog.resolve(ref)
    assert (image.ref, image.codename, image.arch) == ("ubuntu:24.04", "noble", "amd64")
    assert image.release_url == "https://cloud-images.ubuntu.com/releases/noble/release"


def test_the_files_follow_ubuntus_artefact_names_and_get_stable_volume_names():
    image = catalog.resolve("ubuntu:25.04", mirror="http://127.0.0.1:8080/cloud/")
    files = {f.role: f for f in image.files()}
    assert image.url(files["disk"].path) == \
        "http://127.0.0.1:8080/cloud/releases/plucky/release/ubuntu-25.04-server-cloudimg-amd64.img"
    assert files["kernel"].path == "unpacked/ubuntu-25.04-server-cloudimg-amd64-vmlinuz-generic"
    assert files["initrd"].path == "unpacked/ubuntu-25.04-server-cloudimg-amd64-initrd-generic"
    assert [(f.volume, f.format) for f in image.files()] == [
        ("ubuntu-25.04.qcow2", "qcow2"), ("ubuntu-25.04.vmlinuz", "raw"), ("ubuntu-25.04.initrd", "raw")]
    assert (files["kernel"].folder, files["disk"].folder) == ("unpacked", "")
    assert image.manifest_volume == "ubuntu-25.04.snpvirt-image.json"


def test_another_architecture_is_in_the_names():
    image = catalog.resolve("ubuntu:24.04", arch="arm64")
    assert image.files()[0].path == "ubuntu-24.04-server-cloudimg-arm64.img"
    assert image.files()[0].volume == "ubuntu-24.04-arm64.qcow2"


@pytest.mark.parametrize("ref, arch, mirror, word", [
    ("ubuntu:99.04", "amd64", None, "no Ubuntu release"),
    ("debian:12", "amd64", None, "not one snpvirt knows"),
    ("ubuntu", "amd64", None, "not one snpvirt knows"),
    ("ubuntu:../../etc", "amd64", None, "not one snpvirt knows"),
    ("ubuntu:24.04", "x86_64", None, "--arch"),
    ("ubuntu:24.04", "amd64", "file:///etc", "not an http(s) URL"),
    ("ubuntu:24.04", "amd64", "ftp://mirror/x", "not an http(s) URL"),
])
def test_unknown_names_arches_and_mirrors_are_bad_input(ref, arch, mirror, word):
    with pytest.raises(BadInputError, match=word.replace("(", r"\(").replace(")", r"\)")) as caught:
        catalog.resolve(ref, arch, mirror)
    assert caught.value.hint
