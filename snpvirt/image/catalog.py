"""Which files make an image: `ubuntu:24.04` (or `ubuntu:noble`) and an architecture, mapped onto Ubuntu's
cloud-images layout, and the libvirt volume names those files get in a pool.

Ubuntu's layout (the public-images documentation, "Ubuntu cloud image artefacts"), per release folder
`<mirror>/releases/<codename>/release/`:
  ubuntu-24.04-server-cloudimg-amd64.img                          the disk image (qcow2)
  unpacked/ubuntu-24.04-server-cloudimg-amd64-vmlinuz-generic     the kernel, for direct kernel boot
  unpacked/ubuntu-24.04-server-cloudimg-amd64-initrd-generic      its initrd
  SHA256SUMS, SHA256SUMS.gpg                                      digests of the folder's files, and
                                                                  their detached signature
A folder's SHA256SUMS lists the files of that folder; the `unpacked/` files are looked up in the
release folder's list first (as `unpacked/NAME`), then in `unpacked/SHA256SUMS`, signed the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from snpvirt.errors import BadInputError

DEFAULT_MIRROR = "https://cloud-images.ubuntu.com"
MIRROR_ENV = "SNPVIRT_IMAGE_MIRROR"
DEFAULT_KEYRING = "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg"  # Ubuntu's and Debian's ubuntu-keyring package
ARCHES = ("amd64", "arm64", "ppc64el", "s390x", "riscv64")

# version -> codename: the releases whose cloud images have the layout above.
UBUNTU_RELEASES = {
    "20.04": "focal", "22.04": "jammy", "24.04": "noble", "24.10": "oracular",
    "25.04": "plucky", "25.10": "questing", "26.04": "resolute",
}


@dataclass(frozen=True)
class ImageFile:
    role: str  # "disk", "kernel" or "initrd"
    path: str  # below the release folder: "ubuntu-24.04-server-cloudimg-amd64.img", "unpacked/..."
    volume: str  # its volume name in a pool
    format: str  # what libvirt must read it as: "qcow2" or "raw"

    @property
    def folder(self) -> str:
        """The folder (below the release folder) whose SHA256SUMS lists it: "" or "unpacked"."""
        return self.path.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass(frozen=True)
class Image:
    distro: str
    version: str
    codename: str
    arch: str
    mirror: str

    @property
    def ref(self) -> str:
        return f"{self.distro}:{self.version}"

    @property
    def release_url(self) -> str:
        return f"{self.mirror.rstrip('/')}/releases/{self.codename}/release"

    @property
    def volume_stem(self) -> str:
        """`ubuntu-24.04` (amd64, the usual case), `ubuntu-24.04-arm64` otherwise."""
        return f"{self.distro}-{self.version}" + ("" if self.arch == "amd64" else f"-{self.arch}")

    @property
    def manifest_volume(self) -> str:
        """The pool volume that records what snpvirt verified and uploaded for this image."""
        return f"{self.volume_stem}.snpvirt-image.json"

    def files(self) -> tuple[ImageFile, ...]:
        stem = f"ubuntu-{self.version}-server-cloudimg-{self.arch}"
        return (ImageFile("disk", f"{stem}.img", f"{self.volume_stem}.qcow2", "qcow2"),
                ImageFile("kernel", f"unpacked/{stem}-vmlinuz-generic", f"{self.volume_stem}.vmlinuz", "raw"),
                ImageFile("initrd", f"unpacked/{stem}-initrd-generic", f"{self.volume_stem}.initrd", "raw"))

    def url(self, path: str) -> str:
        return f"{self.release_url}/{path}"


_REF = re.compile(r"(?P<distro>[a-z]+):(?P<release>[a-z0-9.]+)")


def resolve(ref: str, arch: str = "amd64", mirror: str | None = None) -> Image:
    """`ubuntu:24.04` or `ubuntu:noble` -> Image; BadInputError naming what is known otherwise."""
    known = ", ".join(f"ubuntu:{v}" for v in UBUNTU_RELEASES)
    match = _REF.fullmatch(ref.strip().lower())
    if not match or match["distro"] != "ubuntu":
        raise BadInputError(f"image {ref!r} is not one snpvirt knows", f"give one of: {known} (or ubuntu:CODENAME)")
    release = match["release"]
    by_codename = {codename: version for version, codename in UBUNTU_RELEASES.items()}
    version = release if release in UBUNTU_RELEASES else by_codename.get(release)
    if version is None:
        raise BadInputError(f"image {ref!r}: no Ubuntu release {release!r} with cloud images", f"give one of: {known}")
    if arch not in ARCHES:
        raise BadInputError(f"--arch {arch!r} is not an architecture of Ubuntu's cloud images",
                            f"give one of: {', '.join(ARCHES)}")
    mirror = mirror or DEFAULT_MIRROR
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", mirror):
        raise BadInputError(f"mirror {mirror!r} is not an http(s) URL",
                            f"give --mirror (or {MIRROR_ENV}) as http(s)://HOST[/PATH], the folder that holds releases/")
    return Image("ubuntu", version, UBUNTU_RELEASES[version], arch, mirror.rstrip("/"))
