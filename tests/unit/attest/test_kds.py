"""fetch-certs against a local KDS stand-in serving the real certificates: retries, cache, URLs, and
what is refused before it reaches the cache."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from snpvirt.attest import certs, kds
from snpvirt import netio
from snpvirt.attest import report as reports
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError, ConnectionFailedError, ExitCode, NotFoundError, SnpvirtError
from tests.attest_factory import issue_vcek, leaf_cert, make_ca
from tests.conftest import ROOT, CliRun, assert_clean_error, vector

REPORT = "attestation/derived/virtee_report_milan.bin"
CHIP = ("d49554ec717f4e5b0fe6b143bcf0405bd7ae304727edf46603f2a76aef6a3abc"
        "15d7af38db757039029f0efacfd08e244324884738c72b082e2f87a44d541eb6")


class FakeKds(http.server.BaseHTTPRequestHandler):
    routes: dict = {}
    failures: list = []  # status codes to answer first, one per request
    retry_after: str | None = "0"  # sent with each failure; None: no header, the client's own backoff decides
    drip: set = set()  # paths answered one byte at a time
    header_drip: set = set()  # paths whose headers come one byte at a time: each byte resets urllib's timeout
    header_drip_start = b"HTTP/1.1 200 OK\r\nX-Slow: "  # what is sent before the drip
    drip_ends: list = []  # how each header drip ended
    redirects: dict = {}  # path -> Location answered with a 302
    raw: dict = {}  # path -> bytes sent as they are instead of an HTTP answer
    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        if type(self).failures:
            self.send_response(type(self).failures.pop(0))
            if type(self).retry_after is not None:
                self.send_header("Retry-After", type(self).retry_after)
            self.end_headers()
            return
        if self.path in type(self).raw:
            self.wfile.write(type(self).raw[self.path])
            return
        if self.path in type(self).redirects:
            self.send_response(302)
            self.send_header("Location", type(self).redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in type(self).header_drip:
            self.wfile.write(type(self).header_drip_start)
            try:
                for _ in range(100):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.05)
                type(self).drip_ends.append("the whole drip was sent")
            except OSError:
                type(self).drip_ends.append("the client hung up")
            return
        if self.path in type(self).drip:  # headers, then a byte now and then: only a deadline ends it
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"-")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)
            return
        body = type(self).routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


VCEK_PATH = f"/vcek/v1/Milan/{CHIP}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
MEASUREMENT = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"


@pytest.fixture
def serve():
    """Start a KDS stand-in on loopback (all share FakeKds's routes); each is shut down after the test."""
    servers = []

    def start() -> str:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKds)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    FakeKds.routes = {
        "/vcek/v1/Milan/cert_chain": vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(),
        VCEK_PATH: vector("attestation/virtee-sev/vcek_milan.der").read_bytes(),
    }
    FakeKds.failures, FakeKds.requests, FakeKds.retry_after, FakeKds.drip = [], [], "0", set()
    FakeKds.header_drip, FakeKds.redirects, FakeKds.raw, FakeKds.drip_ends = set(), {}, {}, []
    FakeKds.header_drip_start = b"HTTP/1.1 200 OK\r\nX-Slow: "
    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(serve):
    return serve()


def entries(cache):
    """Every file under the cache (entries and any temp file), relative to it."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if not p.is_dir())


def pem(*certificates):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def der(certificate):
    return certificate.public_bytes(serialization.Encoding.DER)


def test_vcek_url_follows_kds_scheme():
    rep = reports.parse(vector(REPORT).read_bytes())
    assert kds.vcek_query(rep, "milan") == (CHIP, "blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115")


def test_retries_on_429_and_503_then_caches(server, tmp_path):
    said = []
    service = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None, progress=said.append)
    FakeKds.failures = [429, 503]
    rep = reports.parse(vector(REPORT).read_bytes())
    assert service.vcek(rep, "milan") == vector("attestation/virtee-sev/vcek_milan.der").read_bytes()
    assert service.fetched == 4, "the chain (after two retries), then the VCEK it must be signed by"
    assert [m.split("; ")[-1] for m in said] == ["retry 1 of 3 in 0 s", "retry 2 of 3 in 0 s"]
    assert "KDS answered 429" in said[0] and "KDS answered 503" in said[1]
    again = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None)
    again.vcek(rep, "milan")
    assert again.fetched == 0, "the cache answers; the fleet fetches each certificate once"


def test_gives_up_with_a_clear_error(server, tmp_path):
    service = kds.Kds(server, tmp_path / "cache", attempts=3, sleep=lambda s: None)
    FakeKds.failures = [503, 503, 503]
    with pytest.raises(ConnectionFailedError, match="KDS answered 503") as busy:
        service.cert_chain("milan")
    assert busy.value.hint == "try again later, or use a mirror with --kds-url"
    with pytest.raises(NotFoundError) as absent:
        service.cert_chain("genoa")
    assert absent.value.message == f"KDS has no genoa-vcek-cert_chain.pem ({server}/vcek/v1/Genoa/cert_chain: 404)"
    assert absent.value.hint == "check the product (--product) and that the report's TCB is one AMD published"
    unreachable = kds.Kds("http://127.0.0.1:9", None, attempts=2, timeout_s=2, sleep=lambda s: None)
    with pytest.raises(ConnectionFailedError) as refused:
        unreachable.cert_chain("milan")
    assert refused.value.message == "cannot reach KDS at http://127.0.0.1:9: [Errno 111] Connection refused", \
        "the reason, not urllib's <urlopen error ...> wrapping"
    assert refused.value.hint == "check the network, or point --kds-url / SNPVIRT_KDS_URL at a mirror"


def test_fetch_certs_then_verify_with_fetch(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "certs"
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server, "-o", str(out), "--json"])
    doc = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and sorted(doc["files"]) == ["ark", "ask", "vcek"] and doc["network_requests"] == 2
    measurement = MEASUREMENT
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
    assert code == ExitCode.PARTIAL and sum("/vcek/v1/Milan/" in r and "cert_chain" not in r for r in FakeKds.requests) == 2


def test_a_non_certificate_answer_is_refused_and_not_cached(server, tmp_path):
    FakeKds.routes["/vcek/v1/Genoa/cert_chain"] = b"<html>proxy login</html>"
    service = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None)
    with pytest.raises(kds.UntrustedAnswer, match="did not return a certificate") as refused:
        service.cert_chain("genoa")
    assert entries(tmp_path / "cache") == [] and refused.value.hint == kds._HINT


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


# --- retries: bounded, growing, said -----------------------------------------------------------------


def test_backoff_doubles_between_attempts(server, tmp_path):
    FakeKds.failures, FakeKds.retry_after = [503, 503, 503], None
    waits = []
    kds.Kds(server, None, attempts=4, backoff_s=0.5, sleep=waits.append).cert_chain("milan")
    assert waits == [0.5, 1.0, 2.0], "a rate-limited KDS is given more room each time, not hammered"


def test_a_404_is_not_retried(server, tmp_path):
    waits = []
    with pytest.raises(NotFoundError, match="404"):
        kds.Kds(server, tmp_path / "cache", sleep=waits.append).cert_chain("genoa")
    assert FakeKds.requests == ["/vcek/v1/Genoa/cert_chain"] and waits == [], "KDS will not have it a second later"


def test_the_cli_says_each_retry_on_stderr(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    FakeKds.failures = [503, 502]
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server,
                "-o", str(tmp_path / "certs"), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["ok"] is True
    retries = [line for line in captured.err.splitlines() if line.startswith("snpvirt: warning: KDS answered")]
    assert [line.rsplit("; ", 1)[1] for line in retries] == ["retry 1 of 3 in 0 s", "retry 2 of 3 in 0 s"]


def test_an_oversized_answer_is_refused_without_retrying(server, tmp_path):
    FakeKds.routes["/vcek/v1/Milan/cert_chain"] = b"-----BEGIN CERTIFICATE-----\n" + b"A" * (2 << 20)
    service = kds.Kds(server, tmp_path / "cache", sleep=lambda s: None)
    with pytest.raises(kds.UntrustedAnswer) as refused:
        service.cert_chain("milan")
    assert refused.value.message == f"{server}/vcek/v1/Milan/cert_chain answered more than 64 KiB: not a certificate"
    assert refused.value.hint == kds._HINT
    assert service.fetched == 1 and entries(tmp_path / "cache") == []


def test_an_answer_that_never_ends_meets_the_deadline(server):
    FakeKds.drip = {"/vcek/v1/Milan/cert_chain"}
    with pytest.raises(ConnectionFailedError, match="did not finish answering in time"):
        kds.Kds(server, None, timeout_s=0.3, attempts=1).cert_chain("milan")


@pytest.mark.parametrize("via_redirect", [False, True], ids=["direct", "after a redirect"])
def test_headers_that_never_end_meet_the_deadline(server, via_redirect):
    """urllib's timeout is per socket read: a header byte every 50 ms held it for the whole drip (5 s)."""
    FakeKds.header_drip = {"/slow"}
    if via_redirect:
        FakeKds.redirects = {"/vcek/v1/Milan/cert_chain": server + "/slow"}
    else:
        FakeKds.header_drip.add("/vcek/v1/Milan/cert_chain")
    with pytest.raises(ConnectionFailedError, match="did not finish answering in time"):
        kds.Kds(server, None, timeout_s=0.3, attempts=1).cert_chain("milan")
    while not FakeKds.drip_ends:  # the server notices on its next write (the per-test timeout bounds this)
        time.sleep(0.01)
    assert FakeKds.drip_ends == ["the client hung up"]  # at the deadline, not after the server was done


def listening(backlog: int = 1, timeout: float | None = None) -> socket.socket:
    """A TCP socket listening on loopback that nothing answers for: what connects to it shows up in accept()."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    listener.settimeout(timeout)
    return listener


def test_a_refused_scheme_is_named_only_when_it_is_plain_letters_and_digits():
    """urllib lets only ftp: reach the check today; a scheme that could carry terminal escapes is never echoed."""
    assert kds._refused_redirect("http://kds/x", "ftp").message == "http://kds/x redirected to a URL that is not http(s) (ftp:)"
    assert kds._refused_redirect("http://kds/x", "a\x1b[2Kb").message == "http://kds/x redirected to a URL that is not http(s)"


def test_a_redirect_to_another_scheme_is_refused(serve, tmp_path):
    """--kds-url is http(s) only, and a redirect must not open an ftp: URL (urllib follows those)."""
    listener = listening(timeout=0.2)
    server = serve()
    FakeKds.redirects = {"/vcek/v1/Milan/cert_chain": f"ftp://127.0.0.1:{listener.getsockname()[1]}/cert_chain"}
    try:
        with pytest.raises(kds.UntrustedAnswer, match=r"redirected to a URL that is not http\(s\) \(ftp:\)") as refused:
            kds.Kds(server, tmp_path / "cache", attempts=1).cert_chain("milan")
        assert refused.value.hint == kds._HINT
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing connected to the ftp: address
    finally:
        listener.close()
    assert entries(tmp_path / "cache") == []


@pytest.mark.parametrize("answer, error", [(b"\x1b]0;owned\x07garbage\r\n\r\n", "BadStatusLine"),
                                           (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "HTTPException")],
                         ids=["not a status line", "too many headers"])
def test_an_answer_that_is_not_http_is_a_connection_error(server, tmp_path, answer, error, monkeypatch, capsys):
    """http.client's own errors escaped as "internal error", with the server's bytes (escapes) on stderr."""
    FakeKds.raw = {"/vcek/v1/Milan/cert_chain": answer}
    with pytest.raises(ConnectionFailedError, match=f"did not answer in HTTP \\({error}\\)$"):
        kds.Kds(server, None, attempts=1).cert_chain("milan")
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kds, "Kds", functools.partial(kds.Kds, attempts=1))  # the CLI's retries only wait here
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server,
                "-o", str(tmp_path / "certs")])
    err = capsys.readouterr().err
    assert code == 6 and "internal error" not in err and "\x1b" not in err and "garbage" not in err


def test_kds_url_must_be_http(tmp_path, capsys):
    with pytest.raises(BadInputError, match="not an http") as refused:
        kds.Kds("file:///dev/zero", tmp_path / "cache")
    assert refused.value.hint == "give AMD KDS (https://kdsintf.amd.com) or a mirror's http(s) URL"
    assert kds.Kds("https://kdsintf.amd.com/", tmp_path / "cache").base_url == "https://kdsintf.amd.com/"
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", "file:///etc",
                "-o", str(tmp_path / "certs")])
    assert_clean_error(CliRun(code, *capsys.readouterr()), 2, "is not an http(s) URL")


# --- nothing is cached (or written) before it checks out ---------------------------------------------


def _chain_cases():
    lab = make_ca()
    real = certs.load(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(), "real")
    real_ark = next(c.cert for c in real if c.role == "ark")
    real_ask = next(c.cert for c in real if c.role == "ask")
    genoa = {c.role: c.cert for c in certs.load(vector("amd-certs/trustee/genoa_ask_ark_asvk.pem").read_bytes(), "genoa")}
    return {
        "a lab root": (pem(lab.ask, lab.ark), "not AMD's pinned milan root key"),
        "an ASK the pinned ARK did not sign": (pem(lab.ask, real_ark), "is NOT signed by ARK-Milan"),
        "Genoa's chain": (pem(genoa["ask"], genoa["ark"]), "not one ASK and one ARK for milan (got SEV-Genoa, ARK-Genoa)"),
        "Milan's ASK with Genoa's ARK": (pem(real_ask, genoa["ark"]), "(got SEV-Milan, ARK-Genoa)"),
        "Genoa's ASK with Milan's ARK": (pem(genoa["ask"], real_ark), "(got SEV-Genoa, ARK-Milan)"),
        "a certificate without a name": (_self_signed_pem(x509.Name([])) + pem(real_ark), "(got ?, ARK-Milan)"),
        "the ARK alone": (pem(real_ark), "not one ASK and one ARK for milan"),
        "an extra certificate": (vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes() + pem(lab.ark),
                                 "not one ASK and one ARK for milan"),
    }


@pytest.mark.parametrize("case", ["a lab root", "an ASK the pinned ARK did not sign", "Genoa's chain",
                                  "Milan's ASK with Genoa's ARK", "Genoa's ASK with Milan's ARK",
                                  "a certificate without a name", "the ARK alone", "an extra certificate"])
def test_a_chain_that_does_not_lead_to_the_pinned_ark_is_refused_and_not_cached(case, server, tmp_path, monkeypatch,
                                                                                capsys):
    body, message = _chain_cases()[case]
    FakeKds.routes["/vcek/v1/Milan/cert_chain"] = body
    with pytest.raises(kds.UntrustedAnswer) as refused:
        kds.Kds(server, tmp_path / "cache").cert_chain("milan")
    assert message in refused.value.message and refused.value.hint == kds._HINT
    assert entries(tmp_path / "cache") == []
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "certs"
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server, "-o", str(out)])
    assert_clean_error(CliRun(code, *capsys.readouterr()), 1, "cert_chain")
    assert not out.exists() and entries(tmp_path / "cache") == []


def _report_at(tcb_bytes: bytes) -> reports.Report:
    """The real Milan report with another reported TCB (the firmware was updated); the chip stays."""
    raw = bytearray(vector(REPORT).read_bytes())
    raw[0x180:0x188] = tcb_bytes
    return reports.parse(bytes(raw))


def _vcek_cases():
    real_tcb = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    other = make_ca(chip_id=bytes.fromhex(CHIP), tcb=real_tcb)
    forged = issue_vcek(other, real_tcb)
    rsa_keyed = leaf_cert(other, key=other.ark_key)  # a VCEK must hold an EC P-384 key
    real = reports.parse(vector(REPORT).read_bytes())
    ark = pem(next(c.cert for c in certs.load(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(), "")
                   if c.role == "ark"))
    return {
        "another chip's": (VCEK_PATH, vector("attestation/go-sev-guest/vcek_milan.der").read_bytes(), real,
                           "is for chip 3ac3fe21e13fb099..., not the report's d49554ec717f4e5b..."),
        "one without a chip id": (VCEK_PATH, der(leaf_cert(other, hw_id=None)), real,
                                  "is for chip ..., not the report's d49554ec717f4e5b..."),
        "another TCB's": (f"/vcek/v1/Milan/{CHIP}?blSPL=04&teeSPL=00&snpSPL=09&ucodeSPL=115",
                          vector("attestation/virtee-sev/vcek_milan.der").read_bytes(),
                          _report_at(bytes([4, 0, 0, 0, 0, 0, 9, 115])), "bootloader 3 != 4; snp 8 != 9"),
        "not signed by the ASK": (VCEK_PATH, der(forged), reports.parse(vector(REPORT).read_bytes()),
                                  "SEV-VCEK (http"),
        "neither signed by the ASK nor EC": (VCEK_PATH, der(rsa_keyed), real, "; SEV-VCEK key is not EC P-384"),
        "the chain instead": (VCEK_PATH, vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(), real,
                              "is not one VCEK (got SEV-Milan, ARK-Milan)"),
        "the ARK instead": (VCEK_PATH, ark, real, "is not one VCEK (got ARK-Milan)"),
        "a certificate without a name": (VCEK_PATH, _self_signed_pem(x509.Name([])), real, "is not one VCEK (got ?)"),
    }


@pytest.mark.parametrize("case", ["another chip's", "one without a chip id", "another TCB's", "not signed by the ASK",
                                  "neither signed by the ASK nor EC", "the chain instead", "the ARK instead",
                                  "a certificate without a name"])
def test_a_vcek_that_is_not_the_reports_is_refused_and_not_cached(case, server, tmp_path):
    path, body, rep, message = _vcek_cases()[case]
    FakeKds.routes[path] = body
    cache = tmp_path / "cache"
    with pytest.raises(kds.UntrustedAnswer) as refused:
        kds.Kds(server, cache).vcek(rep, "milan")
    assert message in refused.value.message and refused.value.hint == kds._HINT
    assert [e.rsplit("/", 1)[1] for e in entries(cache)] == ["milan-vcek-cert_chain.pem"], "only the good chain"
    if case == "not signed by the ASK":
        assert "NOT signed by SEV-Milan" in refused.value.message


def test_fetch_certs_refuses_a_bad_vcek_and_writes_nothing(server, tmp_path, monkeypatch, capsys):
    FakeKds.routes[VCEK_PATH] = vector("attestation/go-sev-guest/vcek_milan.der").read_bytes()
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "certs"
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server, "-o", str(out)])
    run_ = CliRun(code, *capsys.readouterr())
    assert_clean_error(run_, 1, "the VCEK from", "is for chip")
    assert "nothing was cached" in run_.stderr and not out.exists()
    code = run(["attest", "verify", str(vector(REPORT)), "--fetch", "--kds-url", server, "--product", "milan",
                "--expected-measurement", MEASUREMENT, "--no-nonce", "--json"])
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 1 and result["verified"] is False and "is for chip" in result["error"]["message"]


# --- the cache's key: service URL, product, chip and TCB ---------------------------------------------


def test_the_cache_is_keyed_by_the_service_url(serve, tmp_path):
    first, second = serve(), serve()
    kds.Kds(first, tmp_path / "cache").cert_chain("milan")
    other = kds.Kds(second, tmp_path / "cache")
    other.cert_chain("milan")
    assert other.fetched == 1, "--kds-url names the service asked, not whichever one filled the cache"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(map(kds.service_folder, (first, second)))


@pytest.fixture
def lab(server):
    """A lab CA (trusted through trust_root, as --trust-root does) serving one chip's VCEK at two TCBs."""
    ca = make_ca()
    old_tcb, new_tcb = ca.tcb, {"bootloader": 4, "tee": 1, "snp": 9, "microcode": 120}
    updated = dataclasses.replace(ca, tcb=new_tcb)
    reps = {"old": reports.parse(ca.report()), "new": reports.parse(updated.report())}
    vceks = {"old": der(ca.vcek), "new": der(issue_vcek(ca, new_tcb))}
    FakeKds.routes["/vcek/v1/Milan/cert_chain"] = pem(ca.ask, ca.ark)
    for which in ("old", "new"):
        hw_id, query = kds.vcek_query(reps[which], "milan")
        FakeKds.routes[f"/vcek/v1/Milan/{hw_id}?{query}"] = vceks[which]
    assert old_tcb != new_tcb
    return ca, certs.Cert(ca.ark, "lab ARK"), reps, vceks


def test_a_firmware_update_gets_the_new_tcbs_vcek_and_keeps_the_old(lab, server, tmp_path):
    ca, root, reps, vceks = lab
    service = lambda: kds.Kds(server, tmp_path / "cache", trust_root=root)  # noqa: E731 - one per command run
    assert service().vcek(reps["old"], "milan") == vceks["old"]
    after_update = service()
    assert after_update.vcek(reps["new"], "milan") == vceks["new"], "the VCEK of the TCB reported now"
    assert after_update.fetched == 1
    older_report = service()
    assert older_report.vcek(reps["old"], "milan") == vceks["old"]
    assert older_report.fetched == 0, "both TCBs' VCEKs are cached side by side: the TCB is part of the key"


def test_without_the_trust_root_a_lab_chain_is_refused(lab, server, tmp_path):
    ca, root, reps, vceks = lab
    with pytest.raises(kds.UntrustedAnswer, match="pinned milan root"):
        kds.Kds(server, tmp_path / "cache").vcek(reps["old"], "milan")
    with pytest.raises(kds.UntrustedAnswer, match="--trust-root another ARK"):
        kds.Kds(server, tmp_path / "cache", trust_root=certs.Cert(make_ca().ark, "another ARK")).cert_chain("milan")


# --- entries expire; a certificate past notAfter is never served ---------------------------------------


def _age(path, seconds):
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_entries_expire_chain_after_30_days_vcek_after_a_week(server, tmp_path):
    rep = reports.parse(vector(REPORT).read_bytes())
    kds.Kds(server, tmp_path / "cache").vcek(rep, "milan")
    folder = tmp_path / "cache" / kds.service_folder(server)
    chain, vcek = folder / "milan-vcek-cert_chain.pem", next(folder.glob("milan-vcek-d4*.der"))
    day = 24 * 3600
    _age(chain, 29 * day)
    _age(vcek, 8 * day)
    FakeKds.requests = []
    kds.Kds(server, tmp_path / "cache").vcek(rep, "milan")
    assert FakeKds.requests == [VCEK_PATH], "a week-old VCEK is fetched again; a 29-day-old chain is still used"
    _age(chain, 31 * day)
    _age(vcek, -day)  # from the future: a clock set back must not keep it forever
    FakeKds.requests = []
    kds.Kds(server, tmp_path / "cache").vcek(rep, "milan")
    assert FakeKds.requests == ["/vcek/v1/Milan/cert_chain", VCEK_PATH]


def test_a_cached_certificate_past_its_not_after_is_not_served(lab, server, tmp_path):
    ca, root, reps, vceks = lab
    now = datetime.datetime.now(datetime.timezone.utc)
    expiring = issue_vcek(ca, ca.tcb, days=(now - datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)).days + 1)
    hw_id, query = kds.vcek_query(reps["old"], "milan")
    FakeKds.routes[f"/vcek/v1/Milan/{hw_id}?{query}"] = der(expiring)
    assert kds.Kds(server, tmp_path / "cache", trust_root=root).vcek(reps["old"], "milan") == der(expiring)
    FakeKds.routes[f"/vcek/v1/Milan/{hw_id}?{query}"] = vceks["old"]  # KDS has reissued it
    said = []
    two_days_later = kds.Kds(server, tmp_path / "cache", trust_root=root, progress=said.append,
                             clock=lambda: now + datetime.timedelta(days=2))
    assert two_days_later.vcek(reps["old"], "milan") == vceks["old"], "the entry is young, but the certificate expired"
    assert two_days_later.fetched == 1 and "expired" in said[0]
    assert said[0].startswith("the VCEK from cached milan-vcek-"), "the message names the cache entry it refused"


# --- the cache folder and its files --------------------------------------------------------------------


def test_the_cache_folders_are_created_private(server, tmp_path):
    kds.Kds(server, tmp_path / "cache" / "kds").cert_chain("milan")
    for folder in (tmp_path / "cache" / "kds", tmp_path / "cache" / "kds" / kds.service_folder(server)):
        assert folder.stat().st_mode & 0o777 == 0o700


def _group_writable(cache):
    cache.mkdir()
    cache.chmod(0o770)


def _a_symlink(cache):
    (cache.parent / "elsewhere").mkdir(mode=0o700)
    cache.symlink_to(cache.parent / "elsewhere")


def _someone_elses(cache):
    cache.mkdir(mode=0o700)
    try:
        os.chown(cache, 65534, 65534)
    except PermissionError:
        pytest.skip("changing a folder's owner needs root")


def _a_file(cache):
    cache.write_bytes(b"")


UNSAFE = {"group-writable": (_group_writable, "is not safe to use: group or others can write it (mode 0770)"),
          "a symlink": (_a_symlink, "cannot be used: it is a symbolic link"),
          "someone else's": (_someone_elses, f"is not safe to use: it is owned by uid 65534, not by uid {os.geteuid()}"),
          "a file": (_a_file, "cannot be used: it is not a directory")}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_an_unsafe_cache_folder_is_refused(case, server, tmp_path, monkeypatch, capsys):
    make, message = UNSAFE[case]
    cache = tmp_path / "kds"
    make(cache)
    with pytest.raises(kds.UnsafeCacheError) as refused:
        kds.Kds(server, cache).cert_chain("milan")
    assert refused.value.message == f"KDS cache folder {cache} {message}" and FakeKds.requests == [], \
        "refused before asking KDS"
    assert refused.value.hint == kds._CACHE_HINT.format(cache)
    if case == "a symlink":
        assert not list((tmp_path / "elsewhere").iterdir()), "nothing created through the link"
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path))
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server,
                "-o", str(tmp_path / "certs")])
    run_ = CliRun(code, *capsys.readouterr())
    assert_clean_error(run_, 1, message)
    assert "SNPVIRT_CACHE_DIR" in run_.stderr


def _symlink_to_victim(entry, victim):
    entry.symlink_to(victim)


def _fifo(entry, victim):
    os.mkfifo(entry)


def _not_mine(entry, victim):
    entry.write_bytes(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes())
    try:
        os.chown(entry, 65534, 65534)
    except PermissionError:
        pytest.skip("changing a file's owner needs root")


def _huge(entry, victim):
    entry.write_bytes(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes() + b"\n" * (1 << 20))


ODD_ENTRIES = {"a symlink": (_symlink_to_victim, "a symbolic link"), "a FIFO": (_fifo, "not a regular file"),
               "someone else's": (_not_mine, f"owned by uid 65534, not by uid {os.geteuid()}"),
               "huge": (_huge, "larger than 64 KiB")}


@pytest.mark.parametrize("case", list(ODD_ENTRIES))
def test_an_odd_cache_entry_is_ignored_with_a_warning_and_replaced(case, server, tmp_path):
    make, message = ODD_ENTRIES[case]
    folder = tmp_path / "cache" / kds.service_folder(server)
    folder.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes())
    make(folder / "milan-vcek-cert_chain.pem", victim)
    said = []
    service = kds.Kds(server, tmp_path / "cache", progress=said.append)
    assert service.cert_chain("milan") == FakeKds.routes["/vcek/v1/Milan/cert_chain"]
    assert service.fetched == 1
    assert said == [f"ignoring cache entry {folder / 'milan-vcek-cert_chain.pem'}: {message}; fetching it again"]
    entry = (folder / "milan-vcek-cert_chain.pem").lstat()
    assert entry.st_uid == os.geteuid() and oct(entry.st_mode & 0o170777) == oct(0o100600), "a regular file of ours"
    assert victim.read_bytes() == vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes()


def test_the_old_predictable_temp_names_lead_nowhere(server, tmp_path):
    """A local user who can guess `<name>.<pid>.tmp` plants a symlink there to have us write their target."""
    folder = tmp_path / "cache" / kds.service_folder(server)
    folder.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for pattern in ("{}.{}.tmp", ".{}.{}.tmp", "{}.tmp{}", "{}.{}"):
        (folder / pattern.format("milan-vcek-cert_chain.pem", os.getpid())).symlink_to(victim)
    kds.Kds(server, tmp_path / "cache").cert_chain("milan")
    assert victim.read_bytes() == b"precious"
    assert (folder / "milan-vcek-cert_chain.pem").read_bytes() == FakeKds.routes["/vcek/v1/Milan/cert_chain"]


def test_a_temp_file_removed_by_another_process_is_a_warning_not_a_crash(server, tmp_path, monkeypatch):
    """A cache cleaner removes our temp file between its write and its rename: the rename fails, so does the
    clean-up's unlink, and both are the cache's business only: the certificate is still answered."""
    folder = tmp_path / "cache" / kds.service_folder(server)
    real_fsync = os.fsync

    def fsync_then_cleaner(fd):
        real_fsync(fd)
        for temporary in folder.glob(".*.tmp"):
            temporary.unlink()
    monkeypatch.setattr(os, "fsync", fsync_then_cleaner)
    said = []
    assert kds.Kds(server, tmp_path / "cache", progress=said.append).cert_chain("milan") == \
        FakeKds.routes["/vcek/v1/Milan/cert_chain"]
    assert said == [f"could not cache milan-vcek-cert_chain.pem in {tmp_path / 'cache'}: No such file or directory"]
    assert entries(tmp_path / "cache") == []


@pytest.mark.parametrize("entry", ["folder", "file"])
def test_a_cache_folder_removed_while_it_is_opened_is_said_in_the_systems_words(entry, server, tmp_path, monkeypatch):
    """The service folder exists when mkdir looks and is gone (another process) when it is opened, or is a file
    that is gone again when it is looked at: the refusal says what the system said, never crashes."""
    cache = tmp_path / "cache"
    folder = cache / kds.service_folder(server)
    folder.parent.mkdir(mode=0o700)
    folder.mkdir(mode=0o700) if entry == "folder" else folder.write_bytes(b"")
    real_open = os.open

    def open_then_cleaner(path, flags, *args, **kwargs):
        if path != folder.name:
            return real_open(path, flags, *args, **kwargs)
        if entry == "folder":
            folder.rmdir()
            return real_open(path, flags, *args, **kwargs)
        try:
            return real_open(path, flags, *args, **kwargs)
        finally:
            folder.unlink()
    monkeypatch.setattr(os, "open", open_then_cleaner)
    with pytest.raises(kds.UnsafeCacheError) as refused:
        kds.Kds(server, cache).cert_chain("milan")
    why = "No such file or directory" if entry == "folder" else "it is not a directory"
    assert refused.value.message == f"KDS cache folder {folder} cannot be used: {why}"


FILE_SIZE_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # every certificate is longer than this
from snpvirt.cli.app import run
sys.exit(run(sys.argv[1:]))
"""


def test_a_failed_cache_write_leaves_no_partial_entry_and_no_temp_file(server, tmp_path):
    """The disk fills up in the middle of writing each entry: the command still verifies (the certificates
    are good), and the cache holds no half-written entry: none where there was none, the old one whole
    where an expired one is being refreshed."""
    env = {**os.environ, "SNPVIRT_CACHE_DIR": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}

    def verify_with_a_full_disk():
        proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, "attest", "verify", str(vector(REPORT)),
                               "--fetch", "--kds-url", server, "--product", "milan", "--expected-measurement",
                               MEASUREMENT, "--no-nonce"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("snpvirt: warning: could not cache") == 2, proc.stderr

    verify_with_a_full_disk()
    assert entries(tmp_path / "kds") == []
    kds.Kds(server, tmp_path / "kds").vcek(reports.parse(vector(REPORT).read_bytes()), "milan")
    before = {path: (tmp_path / "kds" / path).read_bytes() for path in entries(tmp_path / "kds")}
    for path in before:
        _age(tmp_path / "kds" / path, 60 * 24 * 3600)
    verify_with_a_full_disk()
    assert {path: (tmp_path / "kds" / path).read_bytes() for path in entries(tmp_path / "kds")} == before


def _hostile_cn_certificate() -> bytes:
    """A certificate whose CN would take over the terminal: set its title, erase the line, forge one."""
    from cryptography.x509.oid import NameOID

    return _self_signed_pem(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                          "\x1b]0;owned\x07\x1b[2K\rVERIFIED\nsnpvirt: ok\u202e")]))


def _self_signed_pem(name: x509.Name) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    start = datetime.datetime(2024, 1, 1)
    return pem(x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
               .sign(key, hashes.SHA384()))


def test_a_certificates_text_reaches_the_terminal_escaped(server, tmp_path, monkeypatch, capsys):
    """A lying KDS chose the CN that the refusal quotes: stderr stays two lines, with no control character."""
    FakeKds.routes["/vcek/v1/Milan/cert_chain"] = _hostile_cn_certificate()
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server,
                "-o", str(tmp_path / "certs")])
    err = capsys.readouterr().err
    assert code == 1 and "is not one ASK and one ARK" in err
    assert err.count("\n") == 2 and err.startswith("snpvirt: error: ") and err.splitlines()[1].startswith("hint: ")
    assert r"\x1b]0;owned\x07\x1b[2K\rVERIFIED\nsnpvirt: ok\u202e" in err  # shown, not obeyed


# --- names: where the cache lives, what a service's folder and an entry are called -----------------------


def test_the_cache_lives_in_snpvirt_cache_dir_else_the_xdg_cache_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kds.default_cache() == tmp_path / "mine" / "kds"
    monkeypatch.delenv("SNPVIRT_CACHE_DIR")
    assert kds.default_cache() == tmp_path / "xdg" / "snpvirt" / "kds"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kds.default_cache() == tmp_path / "home" / ".cache" / "snpvirt" / "kds"


def test_a_services_folder_is_its_host_made_safe_and_a_digest_of_its_url():
    digest = lambda url: hashlib.sha256(url.encode()).hexdigest()[:32]  # noqa: E731
    assert kds.service_folder("https://KDS.Example.org/") == f"KDS.Example.org-{digest('https://KDS.Example.org')}"
    assert kds.service_folder("https://KDS.Example.org") == kds.service_folder("https://KDS.Example.org//")
    assert kds.service_folder("https://KDS.Example.org/X") == f"KDS.Example.org-{digest('https://KDS.Example.org/X')}"
    assert kds.service_folder("http://me:pw@[::1]:8080/kds") == f"me_pw____1__8080-{digest('http://me:pw@[::1]:8080/kds')}"
    long_host = "a" * 100 + ".example"
    assert kds.service_folder(f"http://{long_host}") == f"{'a' * 64}-{digest(f'http://{long_host}')}"
    assert kds.service_folder("http:///no-host") == f"kds-{digest('http:///no-host')}"


def test_a_kds_url_with_a_trailing_slash_asks_the_same_paths(server, tmp_path):
    kds.Kds(server + "/", tmp_path / "cache").cert_chain("milan")
    assert FakeKds.requests == ["/vcek/v1/Milan/cert_chain"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [kds.service_folder(server)]
    for base in (server + "/", server + "/X"):  # http.server itself folds a leading "//": the URL asked shows it
        with pytest.raises(NotFoundError) as absent:
            kds.Kds(base, None).cert_chain("genoa")
        assert absent.value.message.endswith(f"({base.rstrip('/')}/vcek/v1/Genoa/cert_chain: 404)")


def test_a_vceks_cache_entry_is_named_by_chip_and_tcb(server, tmp_path):
    kds.Kds(server, tmp_path / "cache").vcek(reports.parse(vector(REPORT).read_bytes()), "milan")
    folder = kds.service_folder(server)
    assert entries(tmp_path / "cache") == [f"{folder}/milan-vcek-cert_chain.pem",
                                           f"{folder}/milan-vcek-{CHIP}-blSPL03_teeSPL00_snpSPL08_ucodeSPL115.der"]


# --- what is asked for: the product and signer name URLs, a Turin VCEK its own query ----------------------


@pytest.mark.parametrize("product, signer", [("rome", "vcek"), ("milan", "ask"), ("../milan", "vcek")])
def test_an_unknown_product_or_signer_is_bad_input_before_any_request(server, product, signer):
    with pytest.raises(BadInputError) as refused:
        kds.Kds(server, None).cert_chain(product, signer)
    assert refused.value.message == f"no KDS chain for product {product!r} and signer {signer!r}"
    assert refused.value.hint == "give --product milan, genoa or turin" and FakeKds.requests == []


def test_a_vlek_chain_is_an_asvk_and_an_ark(server, tmp_path):
    genoa = {c.role: c.cert for c in certs.load(vector("amd-certs/trustee/genoa_ask_ark_asvk.pem").read_bytes(), "")}
    FakeKds.routes["/vlek/v1/Genoa/cert_chain"] = pem(genoa["asvk"], genoa["ark"])
    assert kds.Kds(server, tmp_path / "cache").cert_chain("genoa", "vlek") == pem(genoa["asvk"], genoa["ark"])
    assert entries(tmp_path / "cache") == [f"{kds.service_folder(server)}/genoa-vlek-cert_chain.pem"]
    FakeKds.routes["/vlek/v1/Genoa/cert_chain"] = pem(genoa["ask"], genoa["ark"])
    with pytest.raises(kds.UntrustedAnswer, match="is not one ASVK and one ARK for genoa"):
        kds.Kds(server, None).cert_chain("genoa", "vlek")


def test_a_report_signed_with_a_vlek_is_not_sent_to_kds(server):
    raw = bytearray(vector(REPORT).read_bytes())
    raw[0x48] |= 1 << 2  # signer info: VLEK
    with pytest.raises(SnpvirtError) as refused:
        kds.Kds(server, None).vcek(reports.parse(bytes(raw)), "milan")
    assert refused.value.message == "this report is signed with a VLEK, which KDS does not hand out per chip"
    assert refused.value.hint == "use the VLEK from the guest's extended report (snpvirt guest report --certs-out DIR)"
    assert FakeKds.requests == []


def test_a_turin_vcek_is_asked_for_with_eight_bytes_of_chip_id_and_the_fmc(server, tmp_path):
    ca = make_ca("Turin", hw_id=bytes(range(8)))
    rep = reports.parse(ca.report())
    FakeKds.routes["/vcek/v1/Turin/cert_chain"] = pem(ca.ask, ca.ark)
    path = "/vcek/v1/Turin/0001020304050607?fmcSPL=01&blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
    FakeKds.routes[path] = der(ca.vcek)
    service = kds.Kds(server, tmp_path / "cache", trust_root=certs.Cert(ca.ark, "lab ARK"))
    assert service.vcek(rep, "turin") == der(ca.vcek)
    assert FakeKds.requests == ["/vcek/v1/Turin/cert_chain", path]


def test_a_chain_past_its_end_says_each_certificate_that_expired(server):
    later = datetime.datetime(2050, 1, 1, tzinfo=datetime.timezone.utc)
    chain = {c.role: c for c in certs.load(FakeKds.routes["/vcek/v1/Milan/cert_chain"], "")}
    expired = "; ".join(certs.valid_at(chain[role], later)[1] for role in ("ark", "ask"))
    with pytest.raises(kds.UntrustedAnswer) as refused:
        kds.Kds(server, None, clock=lambda: later).cert_chain("milan")
    assert refused.value.message == f"the chain from {server}/vcek/v1/Milan/cert_chain does not check out: {expired}"
    assert expired.count("expired") == 2


def test_at_least_one_attempt():
    with pytest.raises(ValueError, match="at least one attempt, not 0"):
        kds.Kds("http://127.0.0.1:9", None, attempts=0)


# --- bounded in time and size, whatever the server does ------------------------------------------------------


def test_a_status_line_that_never_ends_meets_the_deadline(server):
    FakeKds.header_drip, FakeKds.header_drip_start = {"/vcek/v1/Milan/cert_chain"}, b"HTTP/1.1 2"
    with pytest.raises(ConnectionFailedError) as late:
        kds.Kds(server, None, timeout_s=0.3, attempts=1).cert_chain("milan")
    assert late.value.message == f"cannot reach KDS at {server}: {server}/vcek/v1/Milan/cert_chain did not finish " \
                                 "answering in time (0.3 s)"


def test_a_server_that_never_accepts_the_connection_meets_the_timeout():
    """A full listen queue: the kernel drops the SYN and connect() waits; only the timeout ends it."""
    listener = listening(backlog=0)
    queued = socket.create_connection(listener.getsockname())  # fills the queue: the next connect hangs
    try:
        with pytest.raises(ConnectionFailedError):
            kds.Kds(f"http://127.0.0.1:{listener.getsockname()[1]}", None, timeout_s=0.3, attempts=1).cert_chain("milan")
    finally:
        queued.close()
        listener.close()


def test_an_answer_of_exactly_64_kib_is_read_whole(server):
    FakeKds.routes["/vcek/v1/Milan/cert_chain"] = b"x" * kds.MAX_ANSWER_BYTES
    with pytest.raises(kds.UntrustedAnswer) as refused:
        kds.Kds(server, None).cert_chain("milan")
    assert refused.value.message == f"{server}/vcek/v1/Milan/cert_chain did not return a certificate (65536 bytes)"


def test_reading_a_body_stops_at_its_own_deadline():
    with pytest.raises(TimeoutError, match="^http://kds/x did not finish answering in time$"):
        kds._read_answer(io.BufferedReader(io.BytesIO(b"data")), "http://kds/x", time.monotonic() - 1)


def test_a_socket_opened_after_the_deadline_is_shut_at_once():
    """A redirect's second connection can open after the deadline passed: it is shut as it is tracked."""
    deadline = netio.Deadline(0)
    deadline._timer.join()
    mine, peer = socket.socketpair()
    try:
        deadline.track(socket.socket())  # never connected: shutting it down fails, and that is fine
        deadline.track(mine)
        peer.settimeout(10)  # bounds a regression that leaves it open
        assert deadline.expired and peer.recv(1) == b"", "the other end sees the connection end"
    finally:
        deadline.cancel()
        mine.close()
        peer.close()


def test_a_redirect_to_https_is_followed(serve):
    listener = listening(timeout=10)
    server = serve()
    FakeKds.redirects = {"/vcek/v1/Milan/cert_chain": f"https://127.0.0.1:{listener.getsockname()[1]}/cert_chain"}
    outcome = []
    client = threading.Thread(target=lambda: outcome.append(_raised(
        lambda: kds.Kds(server, None, timeout_s=5, attempts=1).cert_chain("milan"))))
    client.start()
    try:
        connection, _ = listener.accept()  # the https: hop was followed, with TLS: a ClientHello comes
        connection.settimeout(10)
        assert connection.recv(1) == b"\x16", "a TLS handshake record"
        connection.close()
    finally:
        client.join()
        listener.close()
    assert [type(e) for e in outcome] == [ConnectionFailedError], "the handshake failed, nothing refused the hop"


def _raised(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test looks at which
        return exc
    return None


# --- the cache folder: created with its parents, or done without, and said once -------------------------------


def test_the_cache_folder_is_created_with_missing_parents(server, tmp_path):
    kds.Kds(server, tmp_path / "a" / "b" / "kds").cert_chain("milan")
    assert entries(tmp_path / "a" / "b" / "kds") == [f"{kds.service_folder(server)}/milan-vcek-cert_chain.pem"]


def test_a_cache_that_cannot_be_created_is_done_without_and_said_once(server, tmp_path):
    (tmp_path / "file").write_text("")
    said = []
    service = kds.Kds(server, tmp_path / "file" / "cache" / "kds", progress=said.append)
    assert service.vcek(reports.parse(vector(REPORT).read_bytes()), "milan")
    assert said == [f"cannot use the KDS cache {tmp_path / 'file' / 'cache' / 'kds'} (Not a directory); continuing without it"]
    assert service.fetched == 2


def test_an_unsafe_services_folder_is_named(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (cache / kds.service_folder(server)).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(kds.UnsafeCacheError) as refused:
        kds.Kds(server, cache).cert_chain("milan")
    folder = cache / kds.service_folder(server)
    assert refused.value.message == f"KDS cache folder {folder} cannot be used: it is a symbolic link"
    assert refused.value.hint == kds._CACHE_HINT.format(folder)
    (cache / kds.service_folder(server)).unlink()
    (cache / kds.service_folder(server)).mkdir()
    (cache / kds.service_folder(server)).chmod(0o770)
    with pytest.raises(kds.UnsafeCacheError, match=f"^KDS cache folder {folder} is not safe to use: group or others"):
        kds.Kds(server, cache).cert_chain("milan")


# --- cache entries: read in full, young enough, never through what was swapped in -----------------------------


def _cached_chain(server, tmp_path, data=None):
    """The service's folder holding the chain entry (the real one unless `data`)."""
    folder = tmp_path / "cache" / kds.service_folder(server)
    folder.mkdir(parents=True, mode=0o700)
    entry = folder / "milan-vcek-cert_chain.pem"
    entry.write_bytes(data if data is not None else FakeKds.routes["/vcek/v1/Milan/cert_chain"])
    return entry


def test_a_cache_entry_of_exactly_64_kib_is_read_whole(server, tmp_path):
    _cached_chain(server, tmp_path, b"x" * kds.MAX_ANSWER_BYTES)
    said = []
    kds.Kds(server, tmp_path / "cache", progress=said.append).cert_chain("milan")
    assert said == ["cached milan-vcek-cert_chain.pem did not return a certificate (65536 bytes); fetching it again"]


@pytest.mark.parametrize("age", [0, kds.CHAIN_MAX_AGE_S], ids=["just written", "exactly the maximum age"])
def test_a_cache_entry_is_used_from_its_first_to_its_last_second(server, tmp_path, age):
    entry = _cached_chain(server, tmp_path)
    written = 1_900_000_000
    os.utime(entry, (written, written))
    now = datetime.datetime.fromtimestamp(written + age, datetime.timezone.utc)
    service = kds.Kds(server, tmp_path / "cache", clock=lambda: now)
    service.cert_chain("milan")
    assert service.fetched == 0


@pytest.mark.parametrize("swapped_in", ["a symlink", "a FIFO"])
def test_an_entry_swapped_after_its_check_is_not_opened_through(server, tmp_path, monkeypatch, swapped_in):
    """Between the lstat and the open another process replaces the entry: the open itself must not follow
    a link (to a certificate we did not fetch) nor block on a FIFO. The lstat is made to see the file as it
    was, which is what winning that race looks like."""
    entry = _cached_chain(server, tmp_path)
    as_checked = entry.lstat()
    victim = tmp_path / "planted.pem"
    victim.write_bytes(pem(make_ca().ark))
    entry.unlink()
    entry.symlink_to(victim) if swapped_in == "a symlink" else os.mkfifo(entry)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, dir_fd=None, **kw: as_checked if dir_fd is not None and
                        path == entry.name else real_stat(path, *a, dir_fd=dir_fd, **kw))
    said = []
    service = kds.Kds(server, tmp_path / "cache", progress=said.append)
    assert service.cert_chain("milan") == FakeKds.routes["/vcek/v1/Milan/cert_chain"] and service.fetched == 1
    if swapped_in == "a symlink":
        assert said == [f"ignoring cache entry {entry}: Too many levels of symbolic links; fetching it again"]


def test_a_link_planted_at_the_temporary_name_is_not_written_through(server, tmp_path, monkeypatch):
    folder = tmp_path / "cache" / kds.service_folder(server)
    folder.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(kds.secrets, "token_hex", lambda n: "guessed")
    (folder / ".milan-vcek-cert_chain.pem.guessed.tmp").symlink_to(victim)
    said = []
    kds.Kds(server, tmp_path / "cache", progress=said.append).cert_chain("milan")
    assert victim.read_bytes() == b"precious"
    assert said == [f"could not cache milan-vcek-cert_chain.pem in {tmp_path / 'cache'}: File exists"]


def test_a_failed_rename_into_the_cache_is_said_and_leaves_no_temporary(server, tmp_path):
    entry = _cached_chain(server, tmp_path)
    entry.unlink()
    entry.mkdir()  # the entry's name is taken by a folder: the rename over it fails
    said = []
    kds.Kds(server, tmp_path / "cache", progress=said.append).cert_chain("milan")
    assert said == [f"ignoring cache entry {entry}: not a regular file; fetching it again",
                    f"could not cache milan-vcek-cert_chain.pem in {tmp_path / 'cache'}: Is a directory"]
    assert sorted(p.name for p in entry.parent.iterdir()) == ["milan-vcek-cert_chain.pem"]


def test_a_bounded_read_stops_one_byte_past_the_limit(tmp_path):
    """The byte past the limit tells the caller the file is too big; the rest is never read."""
    big = tmp_path / "big"
    big.write_bytes(bytes(range(100)))
    fd = os.open(big, os.O_RDONLY)
    try:
        assert kds._read_bounded(fd, 10) == bytes(range(11))
    finally:
        os.close(fd)
