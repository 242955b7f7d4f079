"""Inside the guest: readiness signals, configfs-tsm against a fake tree, the ioctl's structures."""

from __future__ import annotations

import json
import struct
import threading
import time
import uuid

import pytest

from snpvirt.attest import guest
from snpvirt.cli.app import run
from snpvirt.errors import ExitCode, SnpvirtError
from tests.attest_factory import make_ca


def guest_root(tmp_path, flags="fpu sev sev_es sev_snp", tsm=True, device=True):
    (tmp_path / "proc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    if tsm:
        (tmp_path / guest.TSM_DIR).mkdir(parents=True)
        (tmp_path / "sys/module/sev_guest").mkdir(parents=True)
    if device:
        (tmp_path / "dev").mkdir(exist_ok=True)
        (tmp_path / guest.SEV_GUEST).write_bytes(b"")
    return tmp_path


class FakeTsmKernel:
    """Plays the kernel's part of configfs-tsm: when inblob appears, the firmware's report appears in outblob."""

    def __init__(self, root, ca, certs=b""):
        self.base, self.ca, self.aux = root / guest.TSM_DIR, ca, certs
        self.stop, self.seen = threading.Event(), []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for entry in self.base.iterdir():
                inblob = entry / "inblob"
                if inblob.exists() and not (entry / "outblob").exists():
                    data = inblob.read_bytes()
                    time.sleep(0.01)
                    if not data or inblob.read_bytes() != data:
                        continue  # the guest is still writing inblob
                    self.seen.append((entry.name, data, (entry / "privlevel").read_text() if (entry / "privlevel").exists() else None))
                    (entry / "generation").write_text("1")
                    if self.aux:
                        (entry / "auxblob").write_bytes(self.aux)
                    partial = entry / ".outblob"
                    partial.write_bytes(self.ca.report(bytes(48), report_data=data.ljust(64, b"\0")))
                    partial.rename(entry / "outblob")  # appears whole, as the kernel's blocking read gives it
            time.sleep(0.002)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def cert_table(entries: dict[str, bytes]) -> bytes:
    guids = {v: k for k, v in guest.CERT_GUIDS.items()}
    header = b""
    offset = 24 * (len(entries) + 1)
    body = b""
    for name, der in entries.items():
        header += guids[name].bytes + struct.pack("<II", offset + len(body), len(der))
        body += der
    return header + bytes(24) + body


def test_guest_check_on_an_snp_guest_and_on_this_machine(tmp_path, capsys):
    assert run(["guest", "check", "--sysroot", str(guest_root(tmp_path)), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"] is True and doc["results"] and all(c["status"] == "pass" and c["ok"] for c in doc["results"])
    code = run(["guest", "check", "--sysroot", str(guest_root(tmp_path / "plain", flags="fpu", tsm=False, device=False))])
    out = capsys.readouterr().out
    assert code == ExitCode.NOT_READY and "fix: modprobe sev-guest" in out and "linux-generic" in out


def test_report_through_configfs_tsm(tmp_path, capsys):
    root = guest_root(tmp_path)
    ca = make_ca()
    from cryptography.hazmat.primitives import serialization
    table = cert_table({"vcek.der": ca.vcek.public_bytes(serialization.Encoding.DER),
                        "ask.der": ca.ask.public_bytes(serialization.Encoding.DER)})
    nonce = "ab" * 32
    with FakeTsmKernel(root, ca, table) as kernel:
        code = run(["guest", "report", "--sysroot", str(root), "--report-data", nonce, "--vmpl", "0",
                    "-o", str(tmp_path / "report.bin"), "--certs-out", str(tmp_path / "certs"), "--json"])
    doc = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and doc["interface"] == "configfs-tsm" and sorted(doc["certificates"]) == ["ask.der", "vcek.der"]
    report = (tmp_path / "report.bin").read_bytes()
    assert len(report) == 1184 and report[0x50:0x90] == bytes.fromhex(nonce).ljust(64, b"\0")
    assert kernel.seen[0][1] == bytes.fromhex(nonce) and kernel.seen[0][2] == "0"
    assert list((root / guest.TSM_DIR).iterdir()) == [], "the entry is removed"
    assert (tmp_path / "certs/vcek.der").read_bytes() == ca.vcek.public_bytes(serialization.Encoding.DER)


def test_report_data_rules(tmp_path, capsys):
    root = guest_root(tmp_path)
    assert run(["guest", "report", "--sysroot", str(root), "-o", str(tmp_path / "r")]) == ExitCode.BAD_INPUT
    assert "exactly one of --report-data" in capsys.readouterr().err
    assert run(["guest", "report", "--sysroot", str(root), "--report-data", "00" * 65, "-o", str(tmp_path / "r")]) == 2
    assert "at most 64" in capsys.readouterr().err


def test_no_interface_is_a_clear_error(tmp_path, capsys):
    root = guest_root(tmp_path, tsm=False, device=False)
    assert run(["guest", "report", "--sysroot", str(root), "--report-data", "00", "-o", str(tmp_path / "r")]) == 1
    assert "neither configfs-tsm nor /dev/sev-guest" in capsys.readouterr().err


def test_ioctl_structures():
    request = guest.report_request(b"nonce", 2)
    assert len(request) == 96 and request[:5] == b"nonce" and request[5:64] == bytes(59)
    assert struct.unpack_from("<I", request, 64)[0] == 2 and request[68:] == bytes(28)
    assert guest.SNP_GUEST_REQUEST.size == 32 and guest.SNP_GET_REPORT == 0xC0205300
    report = bytes(range(256)) * 4 + bytes(160)
    response = struct.pack("<II", 0, 1184) + bytes(24) + report + bytes(4000 - 32 - 1184)
    assert guest.parse_report_response(response) == report
    with pytest.raises(SnpvirtError, match="status 0x16"):
        guest.parse_report_response(struct.pack("<II", 0x16, 0) + bytes(3992))
    with pytest.raises(SnpvirtError, match="1000-byte report"):
        guest.parse_report_response(struct.pack("<II", 0, 1000) + bytes(3992))


def test_certificate_table_parsing():
    table = cert_table({"vcek.der": b"V" * 10, "ark.der": b"A" * 3})
    assert guest.parse_cert_table(table) == {"vcek.der": b"V" * 10, "ark.der": b"A" * 3}
    unknown = uuid.uuid4()
    odd = unknown.bytes + struct.pack("<II", 48, 2) + bytes(24) + b"xy"
    assert guest.parse_cert_table(odd) == {f"cert-{unknown}.der": b"xy"}
    with pytest.raises(SnpvirtError, match="past its data"):
        guest.parse_cert_table(unknown.bytes + struct.pack("<II", 48, 99) + bytes(24))


def test_certificate_guids_are_in_rfc_byte_order():
    """As AMD's sev-guest tools write them (uuid_parse): the VCEK entry starts 63 da 75 8d."""
    entry = bytes.fromhex("63da758de6644564adc5f4b93be8accd") + struct.pack("<II", 48, 1) + bytes(24) + b"v"
    assert guest.parse_cert_table(entry) == {"vcek.der": b"v"}
