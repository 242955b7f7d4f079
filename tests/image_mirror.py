"""A fake Ubuntu cloud-images mirror on loopback, for `image pull` tests.

The tree has Ubuntu's layout (snpvirt/image/catalog.py): a tiny real qcow2 made with qemu-img, a kernel
and an initrd (random bytes), and SHA256SUMS lists signed by a throwaway OpenPGP key made for the
session (gpg --batch in a temporary GNUPGHOME; the public key exported to a keyring file for
`--keyring`). The server (ThreadingHTTPServer) answers Range requests, records every request, and can
be told to stall a file mid-transfer, to 404 a path, or to serve other bytes for a path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION, CODENAME, ARCH = "24.04", "noble", "amd64"
STEM = f"ubuntu-{VERSION}-server-cloudimg-{ARCH}"
RELEASE = f"releases/{CODENAME}/release"
IMG = f"{RELEASE}/{STEM}.img"
KERNEL = f"{RELEASE}/unpacked/{STEM}-vmlinuz-generic"
INITRD = f"{RELEASE}/unpacked/{STEM}-initrd-generic"
BIG_FILES = (IMG, KERNEL, INITRD)
VOLUMES = {IMG: "ubuntu-24.04.qcow2", KERNEL: "ubuntu-24.04.vmlinuz", INITRD: "ubuntu-24.04.initrd"}


@dataclass
class Signer:
    """A throwaway OpenPGP key: signs files, and its public key is in `keyring`."""
    home: Path
    keyring: Path

    def sign(self, path: Path) -> None:
        _gpg(self.home, "--armor", "--detach-sign", "--yes", "-o", f"{path}.gpg", str(path))


def _gpg(home: Path, *args: str) -> None:
    subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(home), "--passphrase", "", *args],
                   check=True, capture_output=True, timeout=60)


@contextmanager
def signer(name: str = "snpvirt test mirror <mirror@example.invalid>"):
    # A short GNUPGHOME: gpg-agent's socket path must fit in sun_path.
    home = Path(tempfile.mkdtemp(prefix="snpvirt-gpg-", dir="/tmp"))
    try:
        _gpg(home, "--quick-generate-key", name, "ed25519", "sign", "never")
        keyring = home / "keyring.gpg"
        with open(keyring, "wb") as out:
            subprocess.run(["gpg", "--batch", "--homedir", str(home), "--export"], stdout=out, check=True, timeout=60)
        yield Signer(home, keyring)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_tree(root: Path, key: Signer) -> dict[str, bytes]:
    """The fake release folder under `root`; returns {path below root: bytes} of the three big files."""
    unpacked = root / RELEASE / "unpacked"
    unpacked.mkdir(parents=True)
    img = root / IMG
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True, timeout=30)
    subprocess.run(["qemu-io", "-c", "write -P 0x42 0 256k", str(img)], check=True, timeout=30, capture_output=True)
    (root / KERNEL).write_bytes(os.urandom(300_000))
    (root / INITRD).write_bytes(os.urandom(500_000))
    files = {path: (root / path).read_bytes() for path in BIG_FILES}
    write_sums(root / RELEASE, {f"{STEM}.img": files[IMG], f"{STEM}.manifest": b"not pulled\n"}, key)
    write_sums(unpacked, {Path(KERNEL).name: files[KERNEL], Path(INITRD).name: files[INITRD]}, key)
    return files


def write_sums(folder: Path, files: dict[str, bytes], key: Signer | None) -> None:
    """SHA256SUMS in Ubuntu's form (`<hex> *<name>`), signed by `key` (or left unsigned)."""
    sums = folder / "SHA256SUMS"
    sums.write_text("".join(f"{sha256(data)} *{name}\n" for name, data in sorted(files.items())))
    Path(f"{sums}.gpg").unlink(missing_ok=True)
    if key is not None:
        key.sign(sums)


@dataclass
class Mirror:
    root: Path
    url: str
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    stall: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before its first answer stalls
    stall_always: bool = False  # stall every answer of those paths, not only the first
    missing: set[str] = field(default_factory=set)  # paths answered with 404
    ignore_range: bool = False  # answer 200 with the whole file, as a server without Range support
    drip: set[str] = field(default_factory=set)  # paths answered with a header byte every 0.1 s, for ever
    paced: set[str] = field(default_factory=set)  # paths whose body goes out 4 KiB every 0.05 s (80 KB/s)
    drip_chunked: set[str] = field(default_factory=set)  # paths answered chunked, a byte of the first chunk's size line every 0.1 s
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requested(self, path: str) -> list[str | None]:
        """The Range header of each request for `path` (None: the whole file)."""
        with self.lock:
            return [r for p, r in self.requests if p == path]

    def big_requests(self) -> list[tuple[str, str | None]]:
        with self.lock:
            return [(p, r) for p, r in self.requests if p in BIG_FILES]


def _handler(mirror: Mirror):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.lstrip("/").split("?")[0]
            range_header = self.headers.get("Range")
            with mirror.lock:
                mirror.requests.append((path, range_header))
                stall_at = mirror.stall.get(path) if mirror.stall_always else mirror.stall.pop(path, None)
            if path in mirror.drip or path in mirror.drip_chunked:
                chunked = path in mirror.drip_chunked
                self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else
                                 b"HTTP/1.1 200 OK\r\nX-Slow: ")
                try:
                    while not mirror.stopping.wait(0.1):
                        self.wfile.write(b"0" if chunked else b"a")
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up: what the test wants
                return
            target = (mirror.root / path).resolve()
            if path in mirror.missing or not target.is_file() or mirror.root.resolve() not in target.parents:
                self._answer(404, b"not found\n")
                return
            data = target.read_bytes()
            start = 0
            if range_header and not mirror.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self._answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
            body = data[start:]
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if start else {}
            self.send_response(206 if start else 200)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            if stall_at is not None:  # half the answer, then silence until the test ends
                self.wfile.write(body[:stall_at])
                self.wfile.flush()
                mirror.stopping.wait(120)
                return
            if path in mirror.paced:
                for at in range(0, len(body), 4096):
                    self.wfile.write(body[at:at + 4096])
                    self.wfile.flush()
                    mirror.stopping.wait(0.05)
                return
            self.wfile.write(body)

        def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(root: Path, files: dict[str, bytes]):
    mirror = Mirror(root, "", files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    server.daemon_threads = True
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-mirror", daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        mirror.stopping.set()
        server.shutdown()
        server.server_close()


# --- pytest fixtures (import them into a test module by name) ---------------------------------------

import pytest  # noqa: E402  (only the fixtures need it)


@pytest.fixture(scope="session")
def mirror_key():
    with signer() as key:
        yield key


@pytest.fixture
def mirror(tmp_path, mirror_key):
    """A fake mirror serving a freshly built, correctly signed release folder."""
    root = tmp_path / "mirror"
    files = build_tree(root, mirror_key)
    with serve(root, files) as running:
        yield running
