"""fetch-certs against a local KDS stand-in serving the real certificates: retries, cache, URLs."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from snpvirt import kds, report as reports
from snpvirt.cli.app import run
from snpvirt.errors import ConnectionFailedError, NotFoundError
from tests.conftest import vector

REPORT = "attestation/derived/virtee_report_milan.bin"
CHIP = ("d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
        "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6")


class FakeKds(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    failures: list = []  # status codes to answer first, one per request
    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        if type(self).failures:
            self.send_response(type(self).failures.pop(0))
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        body = type(self).routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeKds.routes = {
        "/vcek/v1/Milan/cert_chain": vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(),
        f"/vcek/v1/Milan/{CHIP}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115": vector("attestation/virtee-sev/vcek_milan.der").read_bytes(),
    }
    FakeKds.failures, FakeKds.requests = [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKds)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_vcek_url_follows_kds_scheme():
    rep = reports.parse(vector(REPORT).read_bytes())
    assert kds.vcek_query(rep, "milan") == (CHIP, "blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115")


def test_retries_on_429_and_503_then_caches(server, tmp_path):
    service = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None)
    FakeKds.failures = [429, 503]
    rep = reports.parse(vector(REPORT).read_bytes())
    assert service.vcek(rep, "milan") == vector("attestation/virtee-sev/vcek_milan.der").read_bytes()
    assert service.fetched == 3
    again = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None)
    again.vcek(rep, "milan")
    assert again.fetched == 0, "the cache answers; the fleet fetches each certificate once"


def test_gives_up_with_a_clear_error(server, tmp_path):
    service = kds.Kds(server, tmp_path / "cache", attempts=3, sleep=lambda s: None)
    FakeKds.failures = [503, 503, 503]
    with pytest.raises(ConnectionFailedError, match="KDS answered 503"):
        service.cert_chain("milan")
    with pytest.raises(NotFoundError, match="404"):
        service.cert_chain("genoa")
    unreachable = kds.Kds("http://127.0.0.1:9", None, attempts=2, timeout_s=2, sleep=lambda s: None)
    with pytest.raises(ConnectionFailedError, match="cannot reach KDS"):
        unreachable.cert_chain("milan")


def test_fetch_certs_then_verify_with_fetch(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "certs"
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server, "-o", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and sorted(doc["files"]) == ["ark", "ask", "vcek"] and doc["network_requests"] == 2
    measurement = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    assert run(["attest", "verify", str(vector(REPORT)), "--certs", str(out), "--expected-measurement", measurement, "--no-nonce"]) == 0
    capsys.readouterr()
    before = len(FakeKds.requests)
    code = run(["attest", "verify", str(vector(REPORT)), "--fetch", "--kds-url", server, "--product", "milan",
                "--expected-measurement", measurement, "--no-nonce", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["ok"] is True
    assert len(FakeKds.requests) == before, "verify --fetch used the cache fetch-certs filled"


def test_a_v2_report_needs_the_product(capsys):
    assert run(["attest", "fetch-certs", str(vector(REPORT)), "--kds-url", "http://127.0.0.1:9"]) == 2
    assert "give --product" in capsys.readouterr().err


def test_turin_queries_use_eight_bytes_of_chip_id_and_fmc_first():
    raw = bytearray(vector("attestation/derived/trustee_e2e_genoa_report.bin").read_bytes())
    raw[0x180:0x188] = bytes([5, 3, 1, 8, 0, 0, 0, 0x15])  # Turin TCB: FMC, BL, TEE, SNP, ..., ucode
    raw[0x1A0:0x1A8] = bytes.fromhex("1e550a8ee5cf9f4d")
    rep = reports.parse(bytes(raw))
    assert kds.vcek_query(rep, "turin") == ("1e550a8ee5cf9f4d", "fmcSPL=05&blSPL=03&teeSPL=01&snpSPL=08&ucodeSPL=21")


def test_verify_fetch_gets_each_chips_vcek(server, tmp_path, monkeypatch, capsys):
    go_chip = ("3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea4"
               "64cdce40c05f63c9b610c5068b006b5d")
    FakeKds.routes[f"/vcek/v1/Milan/{go_chip}?blSPL=02&teeSPL=00&snpSPL=05&ucodeSPL=68"] = \
        vector("attestation/go-sev-guest/vcek_milan.der").read_bytes()
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    code = run(["attest", "verify", str(vector(REPORT)), str(vector("attestation/go-sev-guest/attestation.bin")),
                "--fetch", "--kds-url", server, "--product", "milan", "--no-nonce", "--allow-debug",
                "--now", "2026-01-01T00:00:00Z", "--json"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["failed"] for r in results] == [["expect.measurement"], ["expect.measurement"]], "only the measurement is missing"
    assert code == 1 and sum("/vcek/v1/Milan/" in r and "cert_chain" not in r for r in FakeKds.requests) == 2


def test_a_non_certificate_answer_is_refused_and_not_cached(server, tmp_path):
    FakeKds.routes["/vcek/v1/Genoa/cert_chain"] = b"<html>proxy login</html>"
    service = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None)
    with pytest.raises(ConnectionFailedError, match="did not return a certificate"):
        service.cert_chain("genoa")
    assert not list((tmp_path / "cache").rglob("*.pem"))


def test_retry_after_is_capped(server, tmp_path):
    waits = []
    FakeKds.failures = [429]
    original = FakeKds.do_GET

    def huge_retry_after(handler):
        if FakeKds.failures:
            FakeKds.failures.pop(0)
            handler.send_response(429)
            handler.send_header("Retry-After", "86400")
            handler.end_headers()
            return
        original(handler)

    FakeKds.do_GET = huge_retry_after
    try:
        kds.Kds(server, None, sleep=waits.append).cert_chain("milan")
    finally:
        FakeKds.do_GET = original
    assert waits == [kds.MAX_WAIT_S]
