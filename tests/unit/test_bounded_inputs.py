"""Issue 9 §4: no input file or count can hang snpvirt or exhaust its memory.

Every launch input and every other file snpvirt reads must be a regular file (checked on the open
descriptor, opened without blocking) within a size limit for its kind; a device, a FIFO or a huge
file is one clear error, exit 2, nothing written. The subprocess timeout only turns a hang into a
failure: before the fix these runs never ended.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from snpvirt import fileio
from snpvirt.errors import ExitCode
from tests.conftest import EXAMPLES, GENOA_DOMCAPS, ROOT, CliRun, assert_clean_error, vector

WEB = str(EXAMPLES / "web-01.toml")
HANG_GUARD_S = 30  # far beyond any of these runs; reached only when snpvirt blocks


def run_bounded(*args) -> CliRun:
    try:
        proc = subprocess.run([sys.executable, "-m", "snpvirt", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"snpvirt {' '.join(map(str, args))} still running after {HANG_GUARD_S} s: it blocked")
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.fixture
def firmware():
    return vector("measurement/ovmf/ovmf_AmdSev_suffix.bin")


def sparse(path, size):
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


@pytest.mark.parametrize("key", ["firmware", "boot.kernel", "boot.initrd"])
@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_render_refuses_a_launch_file_that_is_not_a_regular_file(key, source, fifo, firmware, tmp_path):
    path = fifo if source == "fifo" else source
    target = tmp_path / "vm.xml"
    result = run_bounded("render", WEB, "--set", f"firmware={firmware}", "--set", f"{key}={path}", "-o", target)
    assert_clean_error(result, ExitCode.BAD_INPUT, f"{key.split('.')[-1]} {path}: is ", "not a regular file")
    assert not target.exists(), "nothing written"


def test_apply_refuses_a_device_as_firmware_before_defining_anything(tmp_path):
    spec = tmp_path / "vm.toml"
    spec.write_text(EXAMPLES.joinpath("web-01.toml").read_text().replace("/usr/share/ovmf/OVMF.amdsev.fd", "/dev/zero"))
    result = run_bounded("apply", spec, "-c", "test:///default")
    assert_clean_error(result, ExitCode.BAD_INPUT, "firmware /dev/zero: is a character device")


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_measure_refuses_a_firmware_that_is_not_a_regular_file(source, fifo):
    path = fifo if source == "fifo" else source
    result = run_bounded("measure", "--firmware", path, "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert_clean_error(result, ExitCode.BAD_INPUT, f"firmware {path}: is ", "not a regular file")


@pytest.mark.parametrize("vcpus", [1_000_000_000, 2 ** 64])
def test_measure_bounds_the_vcpu_count_like_the_spec(vcpus, firmware):
    result = run_bounded("measure", "--firmware", firmware, "--vcpus", vcpus, "--vcpu-type", "EPYC-v4")
    assert_clean_error(result, ExitCode.BAD_INPUT, "--vcpus", "1<=x<=512")


@pytest.mark.parametrize("option, value, bits", [("--vcpu-sig", 2 ** 32, 32), ("--guest-features", 2 ** 64, 64)])
def test_measure_bounds_the_numbers_it_packs(option, value, bits, firmware):
    result = run_bounded("measure", "--firmware", firmware, "--vcpus", "1", "--vcpu-type", "EPYC-v4", option, hex(value))
    assert_clean_error(result, ExitCode.BAD_INPUT, f"{option} {hex(value)} does not fit in {bits} bits")


def test_idblock_bounds_the_guest_svn():
    result = run_bounded("idblock", "--measurement", "ab" * 48, "--id-key", "/nonexistent.pem", "--guest-svn", 2 ** 32)
    assert_clean_error(result, ExitCode.BAD_INPUT, "--guest-svn")


def test_the_library_bounds_vcpus_too(firmware):
    from snpvirt import measure
    from snpvirt.errors import BadInputError

    with pytest.raises(BadInputError, match="out of range 1..512"):
        measure.measure(firmware.read_bytes(), vcpus=513, signature=0)


def test_a_huge_sparse_firmware_is_refused_by_its_size_not_read(tmp_path):
    huge = sparse(tmp_path / "OVMF.fd", 6 << 30)  # 6 GiB of holes: once "internal error: MemoryError"
    target = tmp_path / "vm.xml"
    result = run_bounded("render", WEB, "--set", f"firmware={huge}", "-o", target)
    assert_clean_error(result, ExitCode.BAD_INPUT, f"firmware {huge}: 6442450944 bytes is more than the 64 MiB")
    assert not target.exists()
    result = run_bounded("measure", "--firmware", huge, "--vcpus", "1", "--vcpu-type", "EPYC-v4")
    assert_clean_error(result, ExitCode.BAD_INPUT, "more than the 64 MiB a firmware file may have")


def test_a_huge_sparse_kernel_is_refused_before_hashing(tmp_path, firmware):
    huge = sparse(tmp_path / "vmlinuz", 3 << 30)
    result = run_bounded("render", WEB, "--set", f"firmware={firmware}", "--set", f"boot.kernel={huge}")
    assert_clean_error(result, ExitCode.BAD_INPUT, f"kernel {huge}: ", "more than the 512 MiB a kernel file may have")


def test_a_launch_file_missing_here_still_renders_with_the_measurement_unknown(tmp_path):
    """Only files that exist and can never be launch files are errors: a remote host's paths are not."""
    result = run_bounded("render", WEB, "--json")
    assert result.code == 0, result.stderr
    assert '"measurement_unknown_reason": "kernel /var/lib/snpvirt/web-01/vmlinuz: not found on this machine"' \
        in result.stdout


REPORT = "attestation/virtee-sev/report_milan.hex"
OTHER_INPUTS = {  # name: (arguments, with {path} for the device or FIFO, and what the error names)
    "spec": (["render", "{path}"], "spec file"),
    "host-caps": (["render", WEB, "--host-caps", "{path}"], "cannot read --host-caps"),
    "domcaps": (["host", "check", "--host-caps", "{path}"], "cannot read --host-caps"),
    "id-key": (["idblock", "--measurement", "ab" * 48, "--id-key", "{path}"], "the ID key"),
    "nonce": (["guest", "report", "--nonce-file", "{path}", "-o", "{tmp}/report.bin"], "--nonce-file"),
    "report": (["attest", "show", "{path}"], "report"),
    "certs-folder": (["attest", "verify", "{report}", "--certs", "{tmp}/certs", "--no-nonce"], "certificate"),
    "trust-root": (["attest", "verify", "{report}", "--trust-root", "{path}", "--no-nonce"], "certificate"),
    "define": (["define", "{path}", "-c", "test:///default"], "spec or domain XML"),
    "import": (["import", "{path}", "-c", "test:///default"], "domain XML"),
}


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
@pytest.mark.parametrize("case", OTHER_INPUTS)
def test_every_other_input_file_is_checked_too(case, source, fifo, tmp_path):
    path = fifo if source == "fifo" else source
    (tmp_path / "certs").mkdir()
    os.symlink(path, tmp_path / "certs" / "ark.pem")  # a folder of certificates holding a device or a FIFO
    template, what = OTHER_INPUTS[case]
    args = [str(a).format(path=path, tmp=tmp_path, report=vector(REPORT) if "{report}" in str(a) else "")
            for a in template]
    assert_clean_error(run_bounded(*args), ExitCode.BAD_INPUT, what, "not a regular file")
    assert not (tmp_path / "report.bin").exists()


@pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
def test_validate_reports_a_device_or_fifo_as_unreadable(source, fifo):
    path = fifo if source == "fifo" else source
    result = run_bounded("validate", path, "--json")
    assert result.code == ExitCode.BAD_INPUT and "cannot read: is " in result.stdout and "not a regular file" in result.stdout


def test_host_check_does_not_block_on_a_spec_firmware_fifo(fifo, tmp_path):
    spec = tmp_path / "vm.toml"
    spec.write_text(EXAMPLES.joinpath("web-01.toml").read_text().replace("/usr/share/ovmf/OVMF.amdsev.fd", str(fifo)))
    result = run_bounded("host", "check", "--policy", spec, "--domcaps", vector(GENOA_DOMCAPS), "--json")
    assert result.code in (ExitCode.FAILURE, ExitCode.NOT_READY) and "Traceback" not in result.stderr
    assert f"{fifo} is a FIFO, not a regular file" in result.stdout


def test_a_spec_that_is_not_utf8_is_bad_input(tmp_path):
    spec = tmp_path / "vm.toml"
    spec.write_bytes(b'name = "caf\xe9"\n')
    assert_clean_error(run_bounded("render", spec), ExitCode.BAD_INPUT, "is not UTF-8 text")


def test_reads_stop_at_the_limit_even_when_the_size_says_zero(monkeypatch):
    """procfs files report size 0; a file growing while read is the same case: read at most limit + 1."""
    monkeypatch.setitem(fileio.LIMITS, "host", 64)
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(fileio.InputFileError, match="more bytes is more than the 64 bytes"):
        fileio.read_input("/proc/self/maps", "host")
    with pytest.raises(fileio.InputFileError, match="more bytes is more than the 64 bytes"):
        fileio.sha256_input("/proc/self/maps", "host")


def test_an_absent_or_unreadable_file_is_not_present_a_device_is():
    with pytest.raises(fileio.InputFileError) as absent:
        fileio.read_input("/nonexistent/firmware.fd", "firmware")
    with pytest.raises(fileio.InputFileError) as device:
        fileio.read_input("/dev/null", "firmware")
    assert (absent.value.present, device.value.present) == (False, True)
    assert absent.value.message == "firmware /nonexistent/firmware.fd: does not exist"


@pytest.mark.parametrize("args", [["stop", "web-01", "--force"], ["watch", "--count", "1"]])
@pytest.mark.parametrize("seconds", ["nan", "inf", "1e300", "-1"])
def test_timeouts_are_finite_seconds(args, seconds):
    """A NaN deadline passes at once (stop --force would destroy at once); 1e300 overflowed watch's timer
    in a thread and the command never ended."""
    result = run_bounded(*args, "--timeout", seconds, "-c", "test:///default")
    assert_clean_error(result, ExitCode.BAD_INPUT, "Invalid value for '--timeout'")


def test_a_log_is_read_from_its_tail_only(tmp_path, fifo):
    log = sparse(tmp_path / "vm.log", 1 << 30)
    with open(log, "ab") as handle:
        handle.write(b"qemu: SEV-SNP launch failed\n")
    assert fileio.read_tail(log, "log", 64).endswith(b"qemu: SEV-SNP launch failed\n")
    assert len(fileio.read_tail(log, "log", 64)) == 64
    with pytest.raises(fileio.InputFileError, match="is a FIFO"):
        fileio.read_tail(fifo, "log", 64)


def test_guest_check_does_not_block_on_a_fifo_in_its_sysroot(tmp_path):
    (tmp_path / "proc").mkdir()
    os.mkfifo(tmp_path / "proc" / "cpuinfo")
    result = run_bounded("guest", "check", "--sysroot", tmp_path, "--json")
    assert result.code == ExitCode.NOT_READY and "Traceback" not in result.stderr
