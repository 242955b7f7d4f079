"""HTTP downloads that cannot hang: a deadline on every request, retries with backoff, and resumption of
a big file where it stopped (an HTTP Range request appends to the partial file).

Bounds: every socket operation waits at most `timeout_s` (a stalled server is noticed then); the
connection, redirects and headers of a request must be done within `timeout_s` (a timer shuts the
request's sockets down, so a server dripping header bytes cannot hold it); a small answer (SHA256SUMS,
a signature) must be complete within that deadline too, and within its size; a big file's body must
keep a floor rate (`MIN_RATE` over a window), so a server dripping a byte at a time is left like a
stalled one. The request's timer keeps that rate too: each window that keeps it postpones the deadline,
because a read may never return to be measured (http.client reads a chunk's size line whole, a byte at a
time). What was received before a failure stays in the partial file for the next attempt.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from snpvirt import __version__, netio
from snpvirt.errors import ConnectionFailedError, NotFoundError, OperationTimeoutError, SnpvirtError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MIN_RATE = 1024  # bytes/s, averaged over a window of 4 x timeout_s: slower than this is a stall
PROGRESS_EVERY_S = 0.5
MAX_FILE_BYTES = 64 << 30  # the default bound of a file: a server streaming for ever stops here
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Transfer:
    """How a download is going, for a progress line."""
    name: str
    done: int  # bytes in the partial file
    total: int | None  # the file's size, when the server said
    rate: float  # bytes/s in this request
    eta_s: float | None  # seconds left at that rate
    finished: bool = False


def _quiet(*_args) -> None:
    """The default callbacks: library code never prints; the CLI passes ones that do."""


class TooBig(SnpvirtError):
    """A file bigger than such a file may be: not retried, and what arrived is deleted (exit 1)."""


class _PastEnd(Exception):
    """416 to a Range request: the file has no byte after the offset asked for."""


class _Retry(Exception):
    """One attempt failed in a way worth another (a timeout, a reset, a 5xx)."""

    def __init__(self, why: str, timed_out: bool) -> None:
        super().__init__(why)
        self.timed_out = timed_out


@dataclass
class Fetcher:
    timeout_s: float = 30.0  # the longest wait for any byte; also the deadline of a small answer
    attempts: int = 5
    backoff_s: float = 1.0  # first wait between attempts; doubles after each
    sleep: Callable[[float], None] = time.sleep
    on_progress: Callable[[Transfer], None] = _quiet
    on_retry: Callable[[str], None] = _quiet
    requests: int = 0  # HTTP requests made
    received: int = 0  # body bytes received over the network

    def small(self, url: str, max_bytes: int) -> bytes:
        """A small file, whole, within `timeout_s`; NotFoundError for a 404."""
        return self._with_retries(url, lambda: self._small_once(url, max_bytes))

    def to_file(self, url: str, partial: Path, name: str, max_bytes: int = MAX_FILE_BYTES) -> int:
        """Download `url` into `partial`, resuming from its current size; returns the final size. A file
        announced or sent bigger than `max_bytes` is refused (a mirror cannot fill the disk)."""
        return self._with_retries(url, lambda: self._file_once(url, partial, name, max_bytes), partial)

    # --- one attempt ---------------------------------------------------------------------------

    def _with_retries(self, url: str, attempt_once, partial: Path | None = None):
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return attempt_once()
            except _Retry as exc:
                if attempt == self.attempts:
                    kind = OperationTimeoutError if exc.timed_out else ConnectionFailedError
                    kept = " (what arrived is kept: the same command resumes it)" if partial and partial.exists() else ""
                    raise kind(f"{url}: {exc} after {self.attempts} attempts{kept}",
                               "check the network or the mirror (--mirror / SNPVIRT_IMAGE_MIRROR), then run the "
                               "command again") from None
                at = f" (resuming at byte {partial.stat().st_size})" if partial and partial.exists() else ""
                self.on_retry(f"{url}: {exc}; retry {attempt} of {self.attempts - 1} in {delay:g} s{at}")
                self.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    @contextlib.contextmanager
    def _open(self, url: str, headers: dict[str, str], whole: bool):
        """(response, its deadline): headers in within `timeout_s`; with `whole`, the body too. Without, the
        deadline moves to two rate windows: the body's reader postpones it while the floor rate is kept."""
        self.requests += 1
        request = urllib.request.Request(url, headers={"User-Agent": f"snpvirt/{__version__}", **headers})
        watch = netio.Deadline(self.timeout_s)
        try:
            try:
                response = netio.opener(watch, _refused_redirect).open(request, timeout=self.timeout_s)
            except urllib.error.HTTPError as exc:
                exc.close()
                raise _status_error(url, exc.code) from None
            except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise _failure(exc, watch.expired) from None
            with response:
                _check(watch)  # a socket shut down mid-header reads as a short, clean answer: it is not one
                if not whole:
                    watch.postpone(2 * self._window)
                try:
                    yield response, watch
                except (TimeoutError, OSError, http.client.HTTPException) as exc:
                    raise _failure(exc, watch.expired) from None
                _check(watch)
        finally:
            watch.cancel()

    def _small_once(self, url: str, max_bytes: int) -> bytes:
        with self._open(url, {}, whole=True) as (response, _):
            chunks, size = [], 0
            while chunk := response.read1(65536):
                size += len(chunk)
                self.received += len(chunk)
                if size > max_bytes:
                    raise SnpvirtError(f"{url}: more than {max_bytes} bytes: not the file expected",
                                       "check the mirror (--mirror / SNPVIRT_IMAGE_MIRROR)")
                chunks.append(chunk)
            return b"".join(chunks)

    def _file_once(self, url: str, partial: Path, name: str, max_bytes: int) -> int:
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            with self._open(url, {"Range": f"bytes={offset}-"} if offset else {}, whole=False) as (response, watch):
                start, total = _where(response, offset)
                if (total or 0) > max_bytes:
                    raise TooBig(f"{name}: the server announces {total} bytes, more than the {max_bytes} such a "
                                       "file may have", "check the mirror (--mirror / SNPVIRT_IMAGE_MIRROR)")
                with _open_partial(partial, truncate=start == 0) as out:
                    return self._copy(response, watch, out, name, start, total or max_bytes, total is not None)
        except _PastEnd:  # the partial file is complete (a run stopped before checking it), or too long
            return offset
        except TooBig:
            partial.unlink(missing_ok=True)
            raise

    @property
    def _window(self) -> float:
        return 4 * self.timeout_s

    def _copy(self, response, watch: netio.Deadline, out, name: str, done: int, limit: int, announced: bool) -> int:
        total = limit if announced else None
        started = last_report = time.monotonic()
        window_start, window_bytes, got = started, 0, 0
        window = self._window
        while True:
            chunk = response.read1(1 << 20)  # a timeout or reset here is retried by _open's caller
            if not chunk:
                break
            out.write(chunk)
            done, got = done + len(chunk), got + len(chunk)
            self.received += len(chunk)
            if done > limit:
                raise TooBig(f"{name}: the server sent more than the {limit} bytes "
                                   + ("it announced" if announced else "such a file may have"),
                                   "check the mirror (--mirror / SNPVIRT_IMAGE_MIRROR)")
            now = time.monotonic()
            window_bytes += len(chunk)
            if now - window_start >= window:
                if window_bytes < MIN_RATE * window:
                    raise _Retry(f"slower than {MIN_RATE} bytes/s for {window:g} s", True)
                window_start, window_bytes = now, 0
                watch.postpone(2 * window)  # kept the pace: the timer ends a read that never returns
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                self.on_progress(_transfer(name, done, total, got, now - started))
        if total is not None and done < total:
            raise _Retry(f"the connection closed at byte {done} of {total}", False)
        self.on_progress(_transfer(name, done, total, got, time.monotonic() - started, finished=True))
        return done


def _transfer(name: str, done: int, total: int | None, got: int, elapsed: float, finished: bool = False) -> Transfer:
    rate = got / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if total is not None and rate > 0 else None
    return Transfer(name, done, total, rate, eta, finished)


def _where(response, offset: int) -> tuple[int, int | None]:
    """(where this answer starts in the file, the file's size if known). A 200 starts at 0 whatever
    was asked; a 206 must start exactly at `offset`."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match[1]) != offset:
            raise _Retry(f"the server resumed at {match[1] if match else '?'} instead of byte {offset}", False)
        return offset, None if match[3] == "*" else int(match[3])
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


class _open_partial:
    """The partial file for appending (or emptied first), never through a symbolic link, 0600."""

    def __init__(self, path: Path, truncate: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if truncate else 0)
        self._file = os.fdopen(os.open(path, flags, 0o600), "ab")

    def __enter__(self):
        return self._file

    def __exit__(self, *exc) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _check(watch: netio.Deadline) -> None:
    if watch.expired:
        raise _Retry("no answer within the timeout", True)


def _status_error(url: str, code: int) -> Exception:
    if code == 404:
        return NotFoundError(f"{url}: the mirror has no such file (404)",
                             "check the image name and --arch, or the mirror's layout")
    if code == 416:
        return _PastEnd()  # Range past the end: the caller decides
    if code in RETRY_STATUS:
        return _Retry(f"the server answered {code}", False)
    return ConnectionFailedError(f"{url}: the server answered {code}",
                                 "check the URL of the mirror (--mirror / SNPVIRT_IMAGE_MIRROR)")


def _failure(exc: BaseException, deadline_passed: bool = False) -> _Retry:
    if deadline_passed:  # the watch shut the socket down: whatever error that caused, the reason is time
        return _Retry("no answer within the timeout", True)
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
        return _Retry("no data within the timeout", True)
    if isinstance(exc, http.client.HTTPException):  # its text is the server's bytes: not repeated
        return _Retry(f"the answer was not HTTP ({type(exc).__name__})", False)
    return _Retry(f"{getattr(reason, 'strerror', None) or reason}", False)


def _refused_redirect(url: str, scheme: str) -> ConnectionFailedError:
    """A mirror is http(s) at every hop (urllib would follow a redirect to ftp: or file: too)."""
    return ConnectionFailedError(f"{url} redirected to a URL that is not http(s)" + (f" ({scheme}:)" if scheme.isalnum() else ""),
                                 "check the mirror (--mirror / SNPVIRT_IMAGE_MIRROR)")
