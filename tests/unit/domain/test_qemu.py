"""`render --format qemu`: QEMU 10 on this machine parses the printed line, which stops only where KVM or the
SEV firmware is missing, and it says what the domain XML says for the same spec."""

import shlex
import subprocess

import pytest
from lxml import etree

from tests.conftest import assert_clean_error, run_cli
from tests.sshkeys import public_key

SPEC = """\
name = "web-01"
memory_mib = 2048
vcpus = 2
firmware = "{d}/OVMF.amdsev.fd"
[boot]
kernel = "{d}/vmlinuz"
initrd = "{d}/initrd"
cmdline = "console=ttyS0 root=LABEL=cloudimg-rootfs, ro"
[snp]
policy = "0x30000"
cbitpos = 51
reduced_phys_bits = 1
host_data = "5rLtUUmoVQtIr7RBa3FJ/DnMhGnRKMc8pDdejNg2ldQ="
[[disks]]
path = "{d}/disk, one.qcow2"
[[disks]]
path = "{d}/data.raw"
format = "raw"
readonly = true
[cloud_init]
user = "alice"
ssh_authorized_keys = ["{key}"]
[[networks]]
network = "default"
mac = "52:54:00:12:34:56"
"""

# Where QEMU stops on a machine without SEV-SNP: KVM refuses the SNP VM type, or there is no KVM at all.
NO_SNP_HERE = ("vm-type SEV-SNP not supported by KVM", "Could not access KVM kernel module", "failed to initialize kvm")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    d = tmp_path_factory.mktemp("qemu")
    (d / "OVMF.amdsev.fd").write_bytes(bytes(2 << 20))
    (d / "vmlinuz").write_bytes(b"not a kernel")
    (d / "initrd").write_bytes(b"not an initrd")
    for name, fmt in (("disk, one.qcow2", "qcow2"), ("data.raw", "raw")):
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(d / name), "16M"], check=True, timeout=30)
    path = d / "web-01.toml"
    path.write_text(SPEC.format(d=d, key=public_key(d)))
    return path


def argv_of(text):
    """The arguments a POSIX shell makes of the text: backslash-newline continues the line (every argument is
    quoted on its own, so no continuation is inside quotes)."""
    return shlex.split(text.replace(" \\\n", " "))


def printed(spec, *extra):
    seed = spec.parent / "web-01-cidata.iso"
    result = run_cli("render", spec, "--format", "qemu", "--seed", seed, *extra)
    assert result.code == 0, result.stderr
    return result.stdout, seed


def test_the_line_has_the_guides_form(spec):
    text, _ = printed(spec)
    lines = text.splitlines()
    assert lines[0] == "qemu-system-x86_64 \\" and all(line.endswith(" \\") for line in lines[:-1])
    assert "    -machine q35,confidential-guest-support=sev0,memory-backend=ram1,vmport=off \\" in lines
    assert "    -object memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false \\" in lines
    assert ("    -object sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000,"
            "host-data=5rLtUUmoVQtIr7RBa3FJ/DnMhGnRKMc8pDdejNg2ldQ= \\") in lines
    assert "    -append 'console=ttyS0 root=LABEL=cloudimg-rootfs, ro' \\" in lines


def test_qemu_parses_it_and_stops_only_at_the_missing_snp_support(spec):
    text, seed = printed(spec)
    assert text.endswith(" \\\n    -nographic\n")
    # Pasted into a shell as printed, with -S (do not run the guest) on one more line.
    script = text[:-1] + " \\\n    -S\n"
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    assert any(reason in proc.stderr for reason in NO_SNP_HERE), proc.stderr
    assert seed.is_file()


def test_a_broken_option_is_caught_by_the_same_run(spec):
    """The check above means something: QEMU does reject a wrong property before it asks KVM."""
    text, _ = printed(spec)
    argv = [a.replace("kernel-hashes=on", "kernel-hashes=on,bogus=1") for a in argv_of(text)]
    proc = subprocess.run(argv + ["-S"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Invalid parameter 'bogus'" in proc.stderr and not any(r in proc.stderr for r in NO_SNP_HERE)


def _object(argv, kind):
    """The -object of this kind as a dict of its properties."""
    value = next(argv[i + 1] for i, a in enumerate(argv) if a == "-object" and argv[i + 1].startswith(kind + ","))
    return dict(part.split("=", 1) for part in value.split(",")[1:])


def test_the_sev_and_memory_values_equal_the_domain_xmls(spec):
    text, _ = printed(spec)
    argv = argv_of(text)
    xml = run_cli("render", spec)
    assert xml.code == 0, xml.stderr
    root = etree.fromstring(xml.stdout.encode())
    ls = root.find("launchSecurity")
    snp = _object(argv, "sev-snp-guest")
    assert (snp["cbitpos"], snp["reduced-phys-bits"], snp["policy"], snp["host-data"]) == (
        ls.findtext("cbitpos"), ls.findtext("reducedPhysBits"), ls.findtext("policy"), ls.findtext("hostData"))
    assert (snp["kernel-hashes"] == "on") == (ls.get("kernelHashes") == "yes")
    memory = _object(argv, "memory-backend-memfd")
    assert root.find("memory").get("unit") == "MiB" and memory["size"] == root.findtext("memory") + "M"
    assert root.find("memoryBacking/source").get("type") == "memfd" and root.find("memoryBacking/access").get("mode") == "shared"
    assert memory["share"] == "true"
    assert argv[argv.index("-smp") + 1] == root.findtext("vcpu") and argv[argv.index("-bios") + 1] == root.findtext("os/loader")
    assert argv[argv.index("-kernel") + 1] == root.findtext("os/kernel")
    assert argv[argv.index("-append") + 1] == root.findtext("os/cmdline")


def test_the_seed_and_read_only_disks_stay_read_only(spec):
    text, seed = printed(spec)
    argv = argv_of(text)
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert [("readonly=on" in d) for d in drives] == [False, True, True]
    assert f"file={seed}" in drives[2] and "format=raw" in drives[2]
    assert "disk,, one.qcow2" in drives[0], "a comma in a path is doubled, as QEMU's option syntax needs"
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert all("iommu_platform=on" in d for d in devices) and len(devices) == 4


def test_a_pool_disk_without_a_host_to_ask_is_refused_with_a_hint(spec, tmp_path):
    other = tmp_path / "pool.toml"
    other.write_text(spec.read_text().replace(f'path = "{spec.parent}/data.raw"', 'pool = "default"\nvolume = "data.raw"'))
    assert_clean_error(run_cli("render", other, "--format", "qemu", "--seed", tmp_path / "s.iso"), 2,
                       "volume 'data.raw' in pool 'default'")
    assert not (tmp_path / "s.iso").exists(), "nothing is written when the line cannot be made"


def test_cloud_init_without_a_seed_file_is_refused(spec):
    assert_clean_error(run_cli("render", spec, "--format", "qemu"), 2, "[cloud_init]")


def test_seed_goes_with_format_qemu(spec, tmp_path):
    assert_clean_error(run_cli("render", spec, "--seed", tmp_path / "s.iso"), 2, "--seed goes with --format qemu")


def test_measure_refuses_a_kernel_volume_rather_than_measuring_without_it(spec, tmp_path):
    """A kernel named as a pool volume has no bytes here: leaving it out would give a wrong value, silently."""
    other = tmp_path / "volume-kernel.toml"
    other.write_text(spec.read_text().replace(f'kernel = "{spec.parent}/vmlinuz"',
                                              'kernel = { pool = "default", volume = "ubuntu-24.04.vmlinuz" }'))
    assert_clean_error(run_cli("measure", other), 2, "boot.kernel is a pool volume")
