"""apply a spec -> its expected measurement is in the domain -> a report carrying it verifies with
--domain; one with another measurement, policy or host data does not."""

from __future__ import annotations

import base64
import json

from snpvirt.launch import idblock
from snpvirt.launch import inputs as launch
from snpvirt.domain import spec as specs
from snpvirt.cli.app import run
from snpvirt.errors import ExitCode
from tests.attest_factory import make_ca
from tests.conftest import vector
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


def test_ready_made_id_blocks_bind_the_report_to_the_owners_id_key(clean_test_driver, files, tmp_path, capsys):  # noqa: F811
    """A spec that brings its ID block and ID_AUTH ready-made (signed elsewhere): the report must carry
    the digests of the ID and author keys inside that ID_AUTH, or the guest was launched without them."""
    plain = specs.load_spec(spec_file(tmp_path, "attested-03", files))
    expected = bytes.fromhex(launch.expected_measurement(plain).value)
    keys = [idblock.load_private_key(vector(f"measurement/idblock-virtee-sev/{name}"), name)
            for name in ("test_id_key.pem", "test_auth_key.pem")]
    blocks = idblock.build(expected, plain.snp.policy, *keys)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    path = spec_file(tmp_path, "attested-03", files, id_block=b64(blocks.id_block), id_auth=b64(blocks.id_auth))
    path.write_text(path.read_text() + "author_key = true\n")
    assert run(["apply", str(path), "-c", "test:///default"]) == 0
    capsys.readouterr()
    ca = make_ca()
    ca_paths = ca.write(tmp_path / "ca")

    def verify(report: bytes, name: str) -> tuple[int, dict]:
        (tmp_path / name).write_bytes(report)
        code = run(["attest", "verify", str(tmp_path / name), "--certs", str(tmp_path / "ca"), "--trust-root",
                    str(ca_paths["ark"]), "--product", "milan", "--now", "2025-06-01T00:00:00Z", "--domain", "attested-03",
                    "-c", "test:///default", "--no-nonce", "--json"])
        return code, json.loads(capsys.readouterr().out)["results"][0]

    code, result = verify(ca.report(expected), "without-id-block.bin")
    assert code == ExitCode.FAILURE and result["failed"] == ["expect.id_key_digest", "expect.author_key_digest"]

    other_key = idblock.build(expected, plain.snp.policy, keys[1], keys[1])  # signed with the author key as ID key
    code, result = verify(ca.report(expected, id_key_digest=other_key.id_key_digest,
                                    author_key_digest=blocks.author_key_digest), "another-id-key.bin")
    assert code == ExitCode.FAILURE and result["failed"] == ["expect.id_key_digest"]

    code, result = verify(ca.report(expected, id_key_digest=blocks.id_key_digest,
                                    author_key_digest=blocks.author_key_digest), "owners-id-block.bin")
    assert code == 0 and result["verified"] is True
    assert {"expect.id_key_digest", "expect.author_key_digest"} <= {c["id"] for c in result["checks"]}


def test_an_id_auth_swapped_behind_snpvirts_back_is_a_conflict(clean_test_driver, files, tmp_path, capsys):  # noqa: F811
    """snpvirt signed the ID block with snp.id_key; another tool put another ID key's <idAuth> in the
    definition. Neither digest can be trusted to stand for the owner: verification refuses (exit 5)."""
    id_key = vector("measurement/idblock-virtee-sev/test_id_key.pem")
    path = spec_file(tmp_path, "attested-04", files, id_key=id_key)
    assert run(["apply", str(path), "-c", "test:///default"]) == 0
    dom = clean_test_driver.lookupByName("attested-04")
    other = idblock.load_private_key(vector("measurement/idblock-virtee-sev/test_auth_key.pem"), "other")
    swapped = base64.b64encode(idblock.build(bytes(48), 0x30000, other).id_auth).decode()
    xml = dom.XMLDesc(0)
    start, end = xml.index("<idAuth>") + len("<idAuth>"), xml.index("</idAuth>")
    clean_test_driver.defineXML(xml[:start] + swapped + xml[end:])
    capsys.readouterr()
    ca = make_ca()
    (tmp_path / "r.bin").write_bytes(ca.report(bytes(48)))
    code = run(["attest", "verify", str(tmp_path / "r.bin"), "--certs", str(ca.write(tmp_path / "ca")["ark"].parent),
                "--domain", "attested-04", "-c", "test:///default", "--no-nonce"])
    assert code == ExitCode.CONFLICT
    assert "attested-04's <idAuth> carries another ID key" in capsys.readouterr().err
