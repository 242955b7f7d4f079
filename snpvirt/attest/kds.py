"""AMD's Key Distribution Service: ARK/ASK chains and per-chip VCEKs, with a cache and polite retries.

URL scheme: docs/measurement.md §11.4. `--kds-url` / SNPVIRT_KDS_URL point at a mirror or proxy.

Nothing is trusted because of where it came from: a chain must lead to AMD's pinned ARK (or the
caller's trust root) and a VCEK must name the report's chip and reported TCB and be signed by that
chain's ASK, both when it is downloaded (before it is cached) and every time it is read back.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import hmac
import http.client
import os
import re
import secrets
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from snpvirt import netio
from snpvirt.attest import certs
from snpvirt.errors import BadInputError, ConnectionFailedError, NotFoundError, SnpvirtError
from snpvirt.attest.report import Report

DEFAULT_URL = "https://kdsintf.amd.com"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_WAIT_S = 60.0  # a Retry-After longer than this is capped: a command should not hang for hours
MAX_ANSWER_BYTES = 64 * 1024  # a cert_chain is ~4 KiB, a VCEK ~1.4 KiB: anything bigger is not one
# How long a cached entry is used before KDS is asked again. Every read re-checks the pin, the
# signatures, the chip id, the TCB and notAfter, so the age bounds only how long a certificate AMD
# has since revoked or reissued keeps being served from disk. ARK and ASK live for 25 years and
# change only on a revocation: a month costs one request per product per month. A VCEK is keyed by
# chip and TCB and reissued rarely, but per-chip fetches are what KDS rate-limits least kindly:
# a week keeps a fleet's load low and a reissued VCEK reaches every host within days.
CHAIN_MAX_AGE_S = 30 * 24 * 3600
VCEK_MAX_AGE_S = 7 * 24 * 3600


class UntrustedAnswer(SnpvirtError):
    """KDS (or a mirror) answered with something that is not the certificate asked for (exit 1)."""


def default_cache() -> Path:
    base = os.environ.get("SNPVIRT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "snpvirt")
    return Path(base) / "kds"


def vcek_query(report: Report, product: str) -> tuple[str, str]:
    """(hwid, query) for a report's chip and reported TCB; Turin uses 8 bytes of the chip id and adds fmcSPL."""
    tcb = report.tcb(report.reported_tcb, product).parts
    spl = "blSPL={bootloader:02}&teeSPL={tee:02}&snpSPL={snp:02}&ucodeSPL={microcode:02}".format(**tcb)
    if product == "turin":
        return report.chip_id[:8].hex(), f"fmcSPL={tcb['fmc']:02}&{spl}"
    return report.chip_id.hex(), spl


def service_folder(base_url: str) -> str:
    """The cache subfolder of one KDS service: its host (readable) and a digest of the whole URL (exact)."""
    url = base_url.rstrip("/")
    host = re.sub(r"[^A-Za-z0-9.-]", "_", urllib.parse.urlsplit(url).netloc)[:64] or "kds"
    return f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:32]}"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _quiet(message: str) -> None:
    """The default progress callback: library code never prints, the CLI passes one that does."""


@dataclass
class Kds:
    base_url: str = DEFAULT_URL
    cache: Path | None = None
    timeout_s: float = 10.0  # deadline of one request: each socket operation and the whole answer
    attempts: int = 4
    backoff_s: float = 1.0  # first wait between attempts; doubles after each
    sleep: Callable[[float], None] = time.sleep
    progress: Callable[[str], None] = _quiet  # told of each retry and each cache entry it will not use
    trust_root: certs.Cert | None = None  # a lab's ARK instead of AMD's pinned ones (--trust-root)
    clock: Callable[[], datetime.datetime] = _utcnow
    fetched: int = 0  # network requests made (the cache avoids them)
    _chains: dict = field(default_factory=dict, init=False, repr=False)  # (product, signer) -> checked certificates
    _store: CacheFolder | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # urllib also opens file:, ftp: and data: URLs: a FIFO named in --kds-url would hang the command.
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise BadInputError(f"--kds-url {self.base_url!r} is not an http(s) URL",
                                "give AMD KDS (https://kdsintf.amd.com) or a mirror's http(s) URL")
        if self.attempts < 1:  # _download's loop returns or raises on its last attempt: it needs one
            raise ValueError(f"Kds needs at least one attempt, not {self.attempts}")
        if self.cache is not None:
            self._store = CacheFolder(self.cache, self.base_url, self.progress, self.clock)

    def cert_chain(self, product: str, signer: str = "vcek") -> bytes:
        """PEM: ASK (or ASVK for VLEK) then ARK, checked against the pinned ARK."""
        return self._chain(product, signer)[0]

    def vcek(self, report: Report, product: str) -> bytes:
        """DER VCEK for the report's chip id and reported TCB, signed by the checked chain's ASK."""
        if report.signing_key != "vcek":
            raise SnpvirtError("this report is signed with a VLEK, which KDS does not hand out per chip",
                               "use the VLEK from the guest's extended report (snpvirt guest report --certs-out DIR)")
        chain = self._chain(product, "vcek")[1]
        hw_id, query = vcek_query(report, product)
        # Chip id and TCB both in the name: after a firmware update the old VCEK is not the answer.
        name = f"{product}-vcek-{hw_id}-{query.replace('&', '_').replace('=', '')}.der"
        return self._get(f"/vcek/v1/{product.capitalize()}/{hw_id}?{query}", name, VCEK_MAX_AGE_S,
                         lambda data, source: self._check_vcek(data, source, report, product, chain))

    def _chain(self, product: str, signer: str) -> tuple[bytes, list[certs.Cert]]:
        if product not in certs.PINNED_ARK_SPKI or signer not in ("vcek", "vlek"):  # they name URLs and cache files
            raise BadInputError(f"no KDS chain for product {product!r} and signer {signer!r}",
                                "give --product milan, genoa or turin")
        if (product, signer) not in self._chains:
            checked: list[certs.Cert] = []

            def check(data: bytes, source: str) -> None:
                checked[:] = self._check_chain(data, source, product, signer)

            data = self._get(f"/{signer}/v1/{product.capitalize()}/cert_chain", f"{product}-{signer}-cert_chain.pem",
                             CHAIN_MAX_AGE_S, check)
            self._chains[product, signer] = (data, checked)
        return self._chains[product, signer]

    def _get(self, path: str, name: str, max_age_s: float, check: Callable[[bytes, str], None]) -> bytes:
        """From the cache if a fresh entry still passes `check`, else from KDS; cached only once it passes."""
        url = self.base_url.rstrip("/") + path
        store = self._store
        cached = store.read(name, max_age_s) if store else None
        if cached is not None:
            try:
                check(cached, f"cached {name}")
                return cached
            except UntrustedAnswer as exc:
                self.progress(f"{exc.message}; fetching it again")
        data = self._download(url, name)
        check(data, url)  # raises: what fails is neither cached nor returned
        if store:
            store.write(name, data)
        return data

    def _download(self, url: str, what: str) -> bytes:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            self.fetched += 1
            try:
                return _fetch_once(url, self.timeout_s)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise NotFoundError(f"KDS has no {what} ({url}: 404)",
                                        "check the product (--product) and that the report's TCB is one AMD published") from None
                if exc.code not in RETRY_STATUS or attempt == self.attempts:
                    raise ConnectionFailedError(f"KDS answered {exc.code} for {url}",
                                                "try again later, or use a mirror with --kds-url") from None
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                wait = min(float(retry_after), MAX_WAIT_S) if retry_after and retry_after.isdigit() else delay
                why = f"KDS answered {exc.code} for {url}"
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if attempt == self.attempts:
                    raise ConnectionFailedError(f"cannot reach KDS at {self.base_url}: {reason}",
                                                "check the network, or point --kds-url / SNPVIRT_KDS_URL at a mirror") from None
                wait, why = delay, f"cannot reach KDS at {self.base_url}: {reason}"
            self.progress(f"{why}; retry {attempt} of {self.attempts - 1} in {wait:g} s")
            self.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _check_chain(self, data: bytes, source: str, product: str, signer: str) -> list[certs.Cert]:
        """[intermediate, ark] if `data` is exactly an ASK (ASVK) and an ARK for `product` that lead to the pinned root."""
        want = "asvk" if signer == "vlek" else "ask"
        found = _certificates(data, source)
        intermediate = [c for c in found if c.role == want and c.product == product]
        ark = [c for c in found if c.role == "ark" and c.product == product]
        if len(found) != 2 or len(intermediate) != 1 or len(ark) != 1:
            raise UntrustedAnswer(f"{source} is not one {want.upper()} and one ARK for {product} "
                                  f"(got {', '.join(c.cn or '?' for c in found)})", _HINT)
        root = self.trust_root
        pin = root.spki_sha256() if root else certs.PINNED_ARK_SPKI[product]
        if not hmac.compare_digest(ark[0].spki_sha256(), pin):
            raise UntrustedAnswer(f"the ARK from {source} is not " + (f"the --trust-root {root.source}" if root else
                                  f"AMD's pinned {product} root key"), _HINT)
        now = self.clock()
        results = (certs.signed_by(ark[0], ark[0]), certs.signed_by(intermediate[0], ark[0]),
                   certs.valid_at(ark[0], now), certs.valid_at(intermediate[0], now))
        problems = [message for ok, message in results if not ok]
        if problems:
            raise UntrustedAnswer(f"the chain from {source} does not check out: {'; '.join(problems)}", _HINT)
        return [intermediate[0], ark[0]]

    def _check_vcek(self, data: bytes, source: str, report: Report, product: str, chain: list[certs.Cert]) -> None:
        """`data` is one VCEK naming the report's chip and reported TCB, signed by the checked chain."""
        found = _certificates(data, source)
        if len(found) != 1 or found[0].role != "vcek":
            raise UntrustedAnswer(f"{source} is not one VCEK (got {', '.join(c.cn or '?' for c in found)})", _HINT)
        vcek = found[0]
        hw_id = bytes.fromhex(vcek_query(report, product)[0])
        if not hmac.compare_digest(vcek.hw_id() or b"", hw_id):
            raise UntrustedAnswer(f"the VCEK from {source} is for chip {(vcek.hw_id() or b'').hex()[:16]}..., "
                                  f"not the report's {hw_id.hex()[:16]}...", _HINT)
        tcb = report.tcb(report.reported_tcb, product).parts
        mismatched = [f"{name} {vcek.spl(name)} != {value}" for name, value in tcb.items() if vcek.spl(name) != value]
        if mismatched:
            raise UntrustedAnswer(f"the VCEK from {source} is not for the report's reported TCB: "
                                  f"{'; '.join(mismatched)}", _HINT)
        checked = certs.verify_chain(chain, vcek, "vcek", product, self.trust_root, self.clock())
        problems = [c.message for c in checked.checks if not c.ok]
        if problems:
            raise UntrustedAnswer(f"the VCEK from {source} does not check out: {'; '.join(problems)}", _HINT)


_HINT = "nothing was cached; check that --kds-url / SNPVIRT_KDS_URL points at AMD KDS or a faithful mirror"


def _certificates(data: bytes, source: str) -> list[certs.Cert]:
    try:
        return certs.load(data, source)
    except BadInputError:
        # A proxy's login page answered with 200 is not the user's bad input, and must not stick.
        raise UntrustedAnswer(f"{source} did not return a certificate ({len(data)} bytes)", _HINT) from None


def _fetch_once(url: str, timeout_s: float) -> bytes:
    """One request, redirects included, that ends within `timeout_s` whatever the server does.

    urllib's timeout bounds each socket operation, not the request: netio.Deadline shuts every socket of
    the request down when the deadline passes; what was read by then is not an answer."""
    deadline = netio.Deadline(timeout_s)
    try:
        with netio.opener(deadline, _refused_redirect).open(url, timeout=timeout_s) as response:
            data = _read_answer(response, url, time.monotonic() + timeout_s)
    except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors: retried by the caller
        if deadline.expired:
            raise TimeoutError(f"{url} did not finish answering in time ({timeout_s:g} s)") from None
        if isinstance(exc, http.client.HTTPException):  # its text is the server's bytes: not repeated
            raise ConnectionError(f"{url} did not answer in HTTP ({type(exc).__name__})") from None
        raise
    finally:
        deadline.cancel()
    if deadline.expired:  # a socket shut down mid-answer reads as a short, clean end
        raise TimeoutError(f"{url} did not finish answering in time ({timeout_s:g} s)")
    return data


def _refused_redirect(url: str, scheme: str) -> UntrustedAnswer:
    """urllib follows a redirect to ftp: too: --kds-url is http(s) only, and so is every hop."""
    return UntrustedAnswer(f"{url} redirected to a URL that is not http(s)" + (f" ({scheme}:)" if scheme.isalnum() else ""),
                           _HINT)


def _read_answer(response, url: str, deadline: float) -> bytes:
    """The body, bounded in size and in time (a server dripping a byte at a time cannot hold us)."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not finish answering in time")
        chunk = response.read1(16384)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise UntrustedAnswer(f"{url} answered more than {MAX_ANSWER_BYTES // 1024} KiB: not a certificate", _HINT)
        chunks.append(chunk)


class UnsafeCacheError(SnpvirtError):
    """The cache folder could be written by someone else: using it would let them choose our certificates."""


@dataclass
class CacheFolder:
    """One KDS service's entries under the cache root: `<root>/<service_folder(url)>/<name>`.

    Both folders are opened without following symlinks and checked (a directory the user owns, no
    group/other write); entries are read and written relative to the opened folder, so swapping a
    path component afterwards changes nothing. An entry that is a symlink, not a regular file, not
    the user's or too big is ignored with a warning and fetched again: the cache only saves requests,
    and what replaces it is checked like any download. An unsafe folder is an error: someone else
    could write there, and the operator should know.
    """

    root: Path
    service_url: str
    warn: Callable[[str], None]
    clock: Callable[[], datetime.datetime]
    usable: bool = True  # False once the folder could not be created (a read-only home): run uncached

    @contextlib.contextmanager
    def _folder(self) -> Iterator[int | None]:
        """The service's folder, opened and checked; None when the cache cannot be created at all."""
        fd = self._open() if self.usable else None
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def _open(self) -> int | None:
        name = service_folder(self.service_url)
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            root_fd = _open_private_dir(str(self.root), None, self.root)
            try:
                return _open_private_dir(name, root_fd, self.root / name)
            finally:
                os.close(root_fd)
        except OSError as exc:  # UnsafeCacheError is not an OSError: an unsafe folder stays an error
            self.warn(f"cannot use the KDS cache {self.root} ({exc.strerror or exc}); continuing without it")
            self.usable = False
            return None

    def _shown(self, name: str) -> Path:
        return self.root / service_folder(self.service_url) / name

    def read(self, name: str, max_age_s: float) -> bytes | None:
        """The entry's bytes if it is safe to read and younger than `max_age_s`, else None."""
        with self._folder() as folder:
            if folder is None:
                return None
            try:
                problem = _entry_problem(os.stat(name, dir_fd=folder, follow_symlinks=False))
                if problem:
                    self.warn(f"ignoring cache entry {self._shown(name)}: {problem}; fetching it again")
                    return None
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
            except FileNotFoundError:
                return None
            except OSError as exc:  # ELOOP: a link swapped in after the stat, which O_NOFOLLOW refused
                self.warn(f"ignoring cache entry {self._shown(name)}: {exc.strerror}; fetching it again")
                return None
            try:
                info = os.fstat(fd)  # the file opened, not the one stat-ed a moment ago
                if _entry_problem(info):
                    return None
                age = self.clock().timestamp() - info.st_mtime
                if not 0 <= age <= max_age_s:
                    return None  # old, or from the future (a clock set back): ask KDS
                return _read_bounded(fd, MAX_ANSWER_BYTES)
            finally:
                os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        """Atomically: a random, exclusive, no-follow temp file in the folder, fsync, rename. A fleet
        sharing the cache never reads half a file; a failed write leaves the old entry (or none)."""
        try:
            with self._folder() as folder:
                if folder is None:
                    return
                temporary = f".{name}.{secrets.token_hex(8)}.tmp"
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=folder)
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary, dir_fd=folder)
                    raise
                os.fsync(folder)  # the rename itself survives a crash
        except OSError as exc:  # a full disk or a read-only home: the certificate is good, only not cached
            self.warn(f"could not cache {name} in {self.root}: {exc.strerror or exc}")


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _entry_problem(info: os.stat_result) -> str | None:
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not by uid {os.geteuid()}"
    if info.st_size > MAX_ANSWER_BYTES:
        return f"larger than {MAX_ANSWER_BYTES // 1024} KiB"
    return None


def _open_private_dir(name: str, parent_fd: int | None, shown: Path) -> int:
    """Create (0700) or open a folder that only this user can write; never through a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as exc:
        why = {errno.ELOOP: "it is a symbolic link",
               errno.ENOTDIR: "it is not a directory"}.get(exc.errno, exc.strerror)
        with contextlib.suppress(OSError):  # O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR: name it properly
            if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                why = "it is a symbolic link"
        raise UnsafeCacheError(f"KDS cache folder {shown} cannot be used: {why}", _CACHE_HINT.format(shown)) from None
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"it is owned by uid {info.st_uid}, not by uid {os.geteuid()}"
    elif info.st_mode & 0o022:
        problem = f"group or others can write it (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem:
        os.close(fd)
        raise UnsafeCacheError(f"KDS cache folder {shown} is not safe to use: {problem}", _CACHE_HINT.format(shown))
    return fd


_CACHE_HINT = ("the cache must be a directory you own that only you can write: remove {0} (snpvirt recreates it "
               "with mode 0700) or point SNPVIRT_CACHE_DIR at another folder")
