"""apply a spec -> its expected measurement is in the domain -> a report carrying it verifies with
--domain; one with another measurement, policy or host data does not."""

from __future__ import annotations

import base64
import json

from snpvirt import launch
from snpvirt import spec as specs
from snpvirt.cli.app import run
from snpvirt.errors import ExitCode
from tests.attest_factory import make_ca
from tests.integration.test_measurement_recorded import files, spec_file  # noqa: F401 - fixture

HOST_DATA = base64.b64encode(bytes(range(32))).decode()


def test_report_verifies_against_the_domain_snpvirt_launched(clean_test_driver, files, tmp_path, capsys):  # noqa: F811
    path = spec_file(tmp_path, "attested-01", files, host_data=HOST_DATA)
    assert run(["apply", str(path), "-c", "test:///default"]) == 0
    capsys.readouterr()
    expected = launch.expected_measurement(specs.load_spec(path)).value
    ca = make_ca()
    ca_paths = ca.write(tmp_path / "ca")
    nonce = "5a" * 32

    def verify(report: bytes, name: str) -> tuple[int, dict]:
        report_path = tmp_path / name
        report_path.write_bytes(report)
        code = run(["attest", "verify", str(report_path), "--certs", str(tmp_path / "ca"), "--trust-root",
                    str(ca_paths["ark"]), "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--domain", "attested-01",
                    "-c", "test:///default", "--report-data", nonce, "--json"])
        return code, json.loads(capsys.readouterr().out)["results"][0]

    honest = ca.report(bytes.fromhex(expected), report_data=bytes.fromhex(nonce).ljust(64, b"\0"), host_data=bytes(range(32)))
    code, result = verify(honest, "honest.bin")
    assert code == 0 and result["verified"] is True
    assert {"expect.measurement", "expect.policy", "expect.host_data", "expect.report_data"} <= {c["id"] for c in result["checks"]}

    impostor = ca.report(bytes(48), report_data=bytes.fromhex(nonce).ljust(64, b"\0"), host_data=bytes(range(32)))
    code, result = verify(impostor, "impostor.bin")
    assert code == ExitCode.FAILURE and result["failed"] == ["expect.measurement"]

    wrong_host = ca.report(bytes.fromhex(expected), report_data=bytes.fromhex(nonce).ljust(64, b"\0"), host_data=bytes(32),
                           policy=0x20000)
    code, result = verify(wrong_host, "wrong-host.bin")
    assert code == ExitCode.FAILURE and result["failed"] == ["expect.policy", "expect.host_data"]


def test_a_domain_without_a_recorded_measurement_cannot_be_verified(clean_test_driver, tmp_path, capsys):
    remote = {"firmware": "/srv/remote/OVMF.fd", "kernel": "/srv/remote/vmlinuz", "initrd": "/srv/remote/initrd"}
    path = spec_file(tmp_path, "attested-02", remote)
    assert run(["apply", str(path), "-c", "test:///default"]) == 0
    capsys.readouterr()
    ca = make_ca()
    ca_paths = ca.write(tmp_path / "ca")
    report_path = tmp_path / "r.bin"
    report_path.write_bytes(ca.report(bytes(48)))
    code = run(["attest", "verify", str(report_path), "--certs", str(tmp_path / "ca"), "--trust-root", str(ca_paths["ark"]),
                "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--domain", "attested-02", "-c", "test:///default"])
    out = capsys.readouterr().out
    assert code == ExitCode.FAILURE and "fail  expect.measurement" in out and "--record attested-02" in out
