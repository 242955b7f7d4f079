"""A boot volume's path is the host's answer, and it goes into a document apply defines without libvirt's
schema: a host that answers with a path no spec could hold is refused, never rendered."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from snpvirt.domain import spec as specs
from snpvirt.errors import BadInputError
from snpvirt.orchestration import volumes

SPEC = {"name": "vm", "memory_mib": 1024, "vcpus": 1, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "boot": {"kernel": {"pool": "default", "volume": "ubuntu-24.04.vmlinuz"}, "cmdline": "console=ttyS0"},
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1, "kernel_hashes": False}}


class LyingHost:
    """Storage whose only volume reports the path a compromised or broken host chose."""

    uri = "test:///lying"

    def __init__(self, path: str) -> None:
        self.path = path

    def volume(self, pool: str, name: str):
        return SimpleNamespace(name=name, path=self.path, capacity=1, physical=1, format="raw")


@pytest.mark.parametrize("path", ["/", "relative/vmlinuz", "/boot/vm\x01linuz", "/boot/\ufffe", ""])
def test_a_host_path_no_spec_could_hold_is_refused(path):
    with pytest.raises(BadInputError) as refused:
        volumes.prepare(specs.parse_spec(SPEC), LyingHost(path), lambda digest: None)
    assert "boot.kernel" in refused.value.message and "ubuntu-24.04.vmlinuz" in refused.value.message


def test_a_plain_host_path_is_taken():
    spec, _ = volumes.prepare(specs.parse_spec(SPEC), LyingHost("/var/lib/snpvirt/images/ubuntu-24.04.vmlinuz"),
                              lambda digest: None)
    assert spec.boot.kernel == "/var/lib/snpvirt/images/ubuntu-24.04.vmlinuz"
