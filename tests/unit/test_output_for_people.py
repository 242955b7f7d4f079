"""What people read, through the real CLI: reports, ID block digests, missing certificates, errors about files."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from snpvirt.errors import ExitCode
from tests.conftest import assert_clean_error, run_cli, vector

V2_REPORT = "attestation/trustee/test-report.bin"  # a version 2 report: it does not say its product
IDBLOCK = "measurement/idblock-virtee-sev"


def field(text: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key + ":"))


def test_attest_show_says_why_the_product_is_unknown_and_what_to_give():
    shown = run_cli("attest", "show", vector(V2_REPORT))
    assert shown.code == 0 and "None" not in shown.stdout
    assert field(shown.stdout, "product") == "unknown (version 2 reports do not say; give --product milan, genoa or turin)"
    assert "assumed" in field(shown.stdout, "tcb_layout")
    assert field(shown.stdout, "launch_mit_vector") == "-"  # a v5 field, absent from v2
    given = run_cli("attest", "show", vector(V2_REPORT), "--product", "milan")
    assert field(given.stdout, "product") == "milan" and field(given.stdout, "tcb_layout") == "milan-genoa"
    doc = json.loads(run_cli("attest", "show", vector(V2_REPORT), "--json").stdout)
    assert doc["results"][0]["product"] is None  # scripts get null, not a sentence


@pytest.mark.parametrize("command", [("attest", "show"), ("attest", "verify", "--no-nonce"), ("attest", "fetch-certs")],
                         ids=["show", "verify", "fetch-certs"])
def test_an_error_about_a_file_names_it_once(tmp_path, command):
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(vector(V2_REPORT).read_bytes()[:100])
    result = run_cli(*command[:2], trunc, *command[2:])
    assert_clean_error(result, ExitCode.BAD_INPUT, "not an SEV-SNP attestation report")
    error = next(line for line in result.stderr.splitlines() if line.startswith("snpvirt: error: "))
    assert error.count("trunc.bin") == 1, error


def test_idblock_digests_are_hex_as_attest_show_prints_them():
    keys = ("--id-key", vector(f"{IDBLOCK}/test_id_key.pem"), "--author-key", vector(f"{IDBLOCK}/test_auth_key.pem"))
    result = run_cli("idblock", "--measurement", "00" * 48, *keys, "--json")
    item = json.loads(result.stdout)["results"][0]
    assert result.code == 0
    for key in ("id_key_digest", "author_key_digest"):
        assert len(item[key]) == 96 and bytes.fromhex(item[key])  # SHA-384, in hex like the report's fields
    assert len(base64.b64decode(item["id_block"], validate=True)) == 96  # libvirt takes the blobs in base64
    assert len(base64.b64decode(item["id_auth"], validate=True)) == 4096
    text = run_cli("idblock", "--measurement", "00" * 48, *keys).stdout
    assert field(text, "id_key_digest") == item["id_key_digest"]
    assert field(text, "author_key_digest") == item["author_key_digest"]


def test_a_missing_vcek_says_which_options_give_it():
    result = run_cli("attest", "verify", vector(V2_REPORT), "--no-nonce")
    assert_clean_error(result, ExitCode.FAILURE, "NOT verified")
    leaf = next(line for line in result.stdout.splitlines() if "cert.leaf" in line)
    assert "no VCEK certificate" in leaf and all(option in leaf for option in ("--certs DIR", "--vcek FILE", "--fetch"))
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert all(option in hint for option in ("--certs DIR", "--vcek FILE", "--fetch"))
    doc = json.loads(run_cli("attest", "verify", vector(V2_REPORT), "--no-nonce", "--json").stdout)
    assert "--fetch" in doc["error"]["hint"]


def test_a_missing_chain_says_which_options_give_it():
    result = run_cli("attest", "verify", vector(V2_REPORT), "--vcek", vector("attestation/trustee/test-vcek.der"),
                     "--no-nonce")
    chain = next(line for line in result.stdout.splitlines() if "cert.chain" in line)
    assert "no ARK" in chain and all(option in chain for option in ("--certs DIR", "--chain PEM", "--fetch"))


def test_guest_report_random_sends_a_fresh_64_byte_nonce_and_prints_it(tmp_path):
    from tests.attest_factory import make_ca
    from tests.unit.attest.test_guest import FakeTsmKernel, guest_root

    root = guest_root(tmp_path / "guest")
    nonces = []
    with FakeTsmKernel(root, make_ca()) as kernel:
        for name in ("r1.bin", "r2.bin"):
            result = run_cli("guest", "report", "--random", "--sysroot", root, "-o", tmp_path / name, "--json")
            assert result.code == 0, result.stderr
            item = json.loads(result.stdout)["results"][0]
            nonces.append(item["report_data"])
            assert item["random"] is True and (tmp_path / name).read_bytes()[0x50:0x90].hex() == item["report_data"]
        text = run_cli("guest", "report", "-r", "--sysroot", root, "-o", tmp_path / "r3.bin")
    printed = field(text.stdout, "report data (random)")
    assert text.code == 0 and (tmp_path / "r3.bin").read_bytes()[0x50:0x90].hex() == printed
    assert [len(bytes.fromhex(n)) for n in nonces + [printed]] == [64, 64, 64]  # the whole REPORT_DATA
    assert len({*nonces, printed}) == 3, "each request gets its own nonce"
    assert [seen[1].hex() for seen in kernel.seen] == [*nonces, printed]


@pytest.mark.parametrize("other", [("--report-data", "00"), ("--nonce-file", "nonce.bin")], ids=["report-data", "nonce-file"])
def test_guest_report_random_excludes_another_nonce(tmp_path, other):
    from tests.unit.attest.test_guest import guest_root

    (tmp_path / "nonce.bin").write_bytes(b"n")
    result = run_cli("guest", "report", "--random", other[0], tmp_path / other[1] if other[0] == "--nonce-file" else other[1],
                     "--sysroot", guest_root(tmp_path / "guest"), "-o", tmp_path / "r.bin")
    assert_clean_error(result, ExitCode.BAD_INPUT, "exactly one of --report-data HEX, --nonce-file F or --random")
    assert not (tmp_path / "r.bin").exists()


def captured_host(tmp_path, psp=True):
    """A host's files as `host show tcb` reads them: the ccp driver's sysfs, kvm_amd's switch, cpuinfo, /dev/sev."""
    root = tmp_path / "host"
    device = root / "sys/bus/pci/drivers/ccp/0000:c1:00.1"
    device.mkdir(parents=True)
    (root / "sys/bus/pci/drivers/ccp/bind").write_text("")  # the driver's own files are no PSP device
    if psp:
        (device / "bootloader_version").write_text("00.13.00.70\n")
        (device / "tee_version").write_text("00.1b.00.31\n")
    (root / "sys/module/kvm_amd/parameters").mkdir(parents=True)
    (root / "sys/module/kvm_amd/parameters/sev_snp").write_text("Y\n")
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n")
    (root / "dev").mkdir()
    (root / "dev/sev").write_bytes(b"")  # a captured file, not the device: it cannot answer firmware commands
    return root


def test_host_show_tcb_reads_a_captured_host(tmp_path):
    root = captured_host(tmp_path)
    result = run_cli("host", "show", "tcb", "--sysroot", root, "--json")
    item = json.loads(result.stdout)["results"][0]
    assert result.code == 0 and item["ok"] is True
    assert item["psp"] == {"0000:c1:00.1": {"bootloader_version": "00.13.00.70", "tee_version": "00.1b.00.31"}}
    assert item["product"] == "genoa" and item["kvm_amd_sev_snp"] == "Y"
    assert item["snp_firmware"] is None and "not a character device" in item["snp_firmware_error"]
    text = run_cli("host", "show", "tcb", "--sysroot", root).stdout
    assert "0000:c1:00.1: bootloader 00.13.00.70, tee 00.1b.00.31" in text and "not a character device" in text


def test_host_show_tcb_on_the_test_driver_says_libvirt_has_no_sev_information(tmp_path):
    root = captured_host(tmp_path)
    result = run_cli("host", "show", "tcb", "--sysroot", root, "-c", "test:///default")
    assert result.code == 0 and "Traceback" not in result.stderr
    assert "libvirt nodesevinfo (test:///default):\n  unavailable: test:///default gives no SEV information" in result.stdout
    doc = json.loads(run_cli("host", "show", "tcb", "--sysroot", root, "-c", "test:///default", "--json").stdout)
    assert doc["results"][0]["libvirt"] is None and "not supported" in doc["results"][0]["libvirt_error"]


def test_host_show_tcb_with_nothing_to_show_is_not_ready(tmp_path):
    root = captured_host(tmp_path, psp=False)
    os.mkfifo(root / "sys/bus/pci/drivers/ccp/0000:c1:00.1/tee_version")  # read as a file, a FIFO would block
    result = run_cli("host", "show", "tcb", "--sysroot", root, "-c", "test:///default")
    assert_clean_error(result, ExitCode.NOT_READY, "no SEV firmware information")
    doc = json.loads(run_cli("host", "show", "tcb", "--sysroot", root, "--json").stdout)
    assert doc["ok"] is False and doc["error"]["kind"] == "not_ready" and doc["results"][0]["ok"] is False


def test_snp_platform_status_is_decoded_as_the_kernel_lays_it_out():
    """struct sev_user_data_snp_status (include/uapi/linux/psp-sev.h), packed: the answer SNP_PLATFORM_STATUS gives."""
    from snpvirt.host import sevfw

    tcb = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # bootloader 3, TEE 0, SNP 8, microcode 115 (Milan/Genoa layout)
    raw = bytes([1, 55, 1, 1]) + (21).to_bytes(4, "little") + (0b101).to_bytes(4, "little") + (2).to_bytes(4, "little")
    status = sevfw.parse_snp_status(raw + tcb + tcb)
    assert status.version == "1.55.21" and status.rmp_initialized and status.mask_chip_id and status.vlek_en
    assert not status.mask_chip_key and status.guest_count == 2
    shown = status.as_dict("genoa")
    assert shown["state"] == "initialized" and shown["reported_tcb"]["snp"] == 8
    assert shown["current_tcb"]["microcode"] == 115 and shown["current_tcb"]["bootloader"] == 3
    assert sevfw.SEV_ISSUE_CMD == 0xC0105300  # _IOWR('S', 0, 16 bytes)


def test_host_show_tcb_shows_control_characters_escaped(tmp_path):
    root = captured_host(tmp_path)
    (root / "sys/bus/pci/drivers/ccp/0000:c1:00.1/tee_version").write_text("00.1b\x1b[2K\rVERIFIED\n")
    result = run_cli("host", "show", "tcb", "--sysroot", root)
    assert result.code == 0 and "\x1b" not in result.stdout and "\r" not in result.stdout
    assert "tee 00.1b\\x1b[2K\\rVERIFIED" in result.stdout


def test_host_show_tcb_does_not_open_a_sysroot_character_device_that_is_not_sev(tmp_path):
    # A captured tree's dev/sev may be any device node (or a link to one): opening /dev/watchdog as root
    # arms it. Only the kernel's own SEV device (its number from /sys/class/misc/sev/dev) is opened.
    root = captured_host(tmp_path)
    (root / "dev/sev").unlink()
    try:
        os.mknod(root / "dev/sev", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null: harmless to open
    except PermissionError:
        pytest.skip("creating device nodes needs root (CAP_MKNOD)")
    result = run_cli("host", "show", "tcb", "--sysroot", root)
    assert result.code == 0, result.stderr
    assert "character device 1:3, not this kernel's SEV device" in result.stdout
    assert "Inappropriate ioctl" not in result.stdout, "the node was opened and sent SEV_ISSUE_CMD"


def test_a_progress_line_shows_control_characters_as_escapes(capsys):
    """fleet's progress lines carry what a remote host chose (libvirt forwards the daemon's own error text:
    'h3: unreachable: ...'): like errors and warnings, they must not drive the terminal or forge a line."""
    from snpvirt import output

    output.print_progress("h3: unreachable: \x1b]0;owned\x07\x1b[2K\rsnpvirt: h3: 0 domains\nsnpvirt: done")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err and "\x07" not in err
    assert "\\x1b]0;owned\\x07" in err
