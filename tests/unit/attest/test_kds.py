"""fetch-certs against a local KDS stand-in serving the real certificates: retries, cache, URLs, and
what is refused before it reaches the cache."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization

from snpvirt.attest import certs, kds
from snpvirt.attest import report as reports
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError, ConnectionFailedError, ExitCode, NotFoundError
from tests.attest_factory import issue_vcek, make_ca
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
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
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
    with pytest.raises(kds.UntrustedAnswer, match="did not return a certificate"):
        service.cert_chain("genoa")
    assert entries(tmp_path / "cache") == []


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
    with pytest.raises(kds.UntrustedAnswer, match="more than 64 KiB"):
        service.cert_chain("milan")
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


def test_a_redirect_to_another_scheme_is_refused(serve, tmp_path):
    """--kds-url is http(s) only, and a redirect must not open an ftp: URL (urllib follows those)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    server = serve()
    FakeKds.redirects = {"/vcek/v1/Milan/cert_chain": f"ftp://127.0.0.1:{listener.getsockname()[1]}/cert_chain"}
    try:
        with pytest.raises(kds.UntrustedAnswer, match=r"redirected to a URL that is not http\(s\) \(ftp:\)"):
            kds.Kds(server, tmp_path / "cache", attempts=1).cert_chain("milan")
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing connected to the ftp: address
    finally:
        listener.close()
    assert entries(tmp_path / "cache") == []


@pytest.mark.parametrize("answer", [b"\x1b]0;owned\x07garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n"],
                         ids=["not a status line", "too many headers"])
def test_an_answer_that_is_not_http_is_a_connection_error(server, tmp_path, answer, monkeypatch, capsys):
    """http.client's own errors escaped as "internal error", with the server's bytes (escapes) on stderr."""
    FakeKds.raw = {"/vcek/v1/Milan/cert_chain": answer}
    with pytest.raises(ConnectionFailedError, match="did not answer in HTTP"):
        kds.Kds(server, None, attempts=1).cert_chain("milan")
    monkeypatch.setenv("SNPVIRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kds, "Kds", functools.partial(kds.Kds, attempts=1))  # the CLI's retries only wait here
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", server,
                "-o", str(tmp_path / "certs")])
    err = capsys.readouterr().err
    assert code == 6 and "internal error" not in err and "\x1b" not in err and "garbage" not in err


def test_kds_url_must_be_http(tmp_path, capsys):
    with pytest.raises(BadInputError, match="not an http"):
        kds.Kds("file:///dev/zero", tmp_path / "cache")
    code = run(["attest", "fetch-certs", str(vector(REPORT)), "--product", "milan", "--kds-url", "file:///etc",
                "-o", str(tmp_path / "certs")])
    assert_clean_error(CliRun(code, *capsys.readouterr()), 2, "is not an http(s) URL")


# --- nothing is cached (or written) before it checks out ---------------------------------------------


def _chain_cases():
    lab = make_ca()
    real = certs.load(vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(), "real")
    real_ark = next(c.cert for c in real if c.role == "ark")
    genoa = certs.load(vector("amd-certs/trustee/genoa_ask_ark_asvk.pem").read_bytes(), "genoa")
    return {
        "a lab root": (pem(lab.ask, lab.ark), "not AMD's pinned milan root key"),
        "an ASK the pinned ARK did not sign": (pem(lab.ask, real_ark), "is NOT signed by ARK-Milan"),
        "Genoa's chain": (pem(*(c.cert for c in genoa if c.role in ("ask", "ark"))), "not one ASK and one ARK for milan"),
        "the ARK alone": (pem(real_ark), "not one ASK and one ARK for milan"),
        "an extra certificate": (vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes() + pem(lab.ark),
                                 "not one ASK and one ARK for milan"),
    }


@pytest.mark.parametrize("case", ["a lab root", "an ASK the pinned ARK did not sign", "Genoa's chain", "the ARK alone",
                                  "an extra certificate"])
def test_a_chain_that_does_not_lead_to_the_pinned_ark_is_refused_and_not_cached(case, server, tmp_path, monkeypatch,
                                                                                capsys):
    body, message = _chain_cases()[case]
    FakeKds.routes["/vcek/v1/Milan/cert_chain"] = body
    with pytest.raises(kds.UntrustedAnswer) as refused:
        kds.Kds(server, tmp_path / "cache").cert_chain("milan")
    assert message in refused.value.message
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
    forged = issue_vcek(make_ca(), real_tcb, chip_id=bytes.fromhex(CHIP))
    return {
        "another chip's": (VCEK_PATH, vector("attestation/go-sev-guest/vcek_milan.der").read_bytes(),
                           reports.parse(vector(REPORT).read_bytes()), "is for chip 3ac3fe21e13fb099..."),
        "another TCB's": (f"/vcek/v1/Milan/{CHIP}?blSPL=04&teeSPL=00&snpSPL=09&ucodeSPL=115",
                          vector("attestation/virtee-sev/vcek_milan.der").read_bytes(),
                          _report_at(bytes([4, 0, 0, 0, 0, 0, 9, 115])), "bootloader 3 != 4; snp 8 != 9"),
        "not signed by the ASK": (VCEK_PATH, der(forged), reports.parse(vector(REPORT).read_bytes()),
                                  "SEV-VCEK (http"),
        "the chain instead": (VCEK_PATH, vector("attestation/virtee-sev/cert_chain_milan.pem").read_bytes(),
                              reports.parse(vector(REPORT).read_bytes()), "is not one VCEK"),
    }


@pytest.mark.parametrize("case", ["another chip's", "another TCB's", "not signed by the ASK", "the chain instead"])
def test_a_vcek_that_is_not_the_reports_is_refused_and_not_cached(case, server, tmp_path):
    path, body, rep, message = _vcek_cases()[case]
    FakeKds.routes[path] = body
    cache = tmp_path / "cache"
    with pytest.raises(kds.UntrustedAnswer) as refused:
        kds.Kds(server, cache).vcek(rep, "milan")
    assert message in refused.value.message
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


UNSAFE = {"group-writable": (_group_writable, "group or others can write it (mode 0770)"),
          "a symlink": (_a_symlink, "it is a symbolic link"),
          "someone else's": (_someone_elses, "owned by uid 65534"),
          "a file": (_a_file, "it is not a directory")}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_an_unsafe_cache_folder_is_refused(case, server, tmp_path, monkeypatch, capsys):
    make, message = UNSAFE[case]
    cache = tmp_path / "kds"
    make(cache)
    with pytest.raises(kds.UnsafeCacheError, match="KDS cache folder .* (cannot be used|is not safe)") as refused:
        kds.Kds(server, cache).cert_chain("milan")
    assert message in refused.value.message and FakeKds.requests == [], "refused before asking KDS"
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
               "someone else's": (_not_mine, "owned by uid 65534"), "huge": (_huge, "larger than 64 KiB")}


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
    assert service.fetched == 1 and len(said) == 1 and message in said[0] and "fetching it again" in said[0]
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
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "\x1b]0;owned\x07\x1b[2K\rVERIFIED\nsnpvirt: ok\u202e")])
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
