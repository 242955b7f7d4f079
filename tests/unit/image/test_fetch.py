"""Downloads against a real HTTP server on loopback: resumption with Range, stalls, retries, 404s."""

import pytest

from snpvirt.errors import ConnectionFailedError, NotFoundError, OperationTimeoutError, SnpvirtError
from snpvirt.image.fetch import Fetcher
from tests.image_mirror import IMG, INITRD, KERNEL, mirror, mirror_key  # noqa: F401 (fixtures)


def fetcher(**kwargs) -> Fetcher:
    waits = []
    return Fetcher(timeout_s=kwargs.pop("timeout_s", 5.0), sleep=waits.append, **kwargs)


def test_a_whole_file_arrives_with_progress(mirror, tmp_path):
    seen = []
    got = fetcher(on_progress=seen.append)
    assert got.to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel") == len(mirror.files[KERNEL])
    assert (tmp_path / "k").read_bytes() == mirror.files[KERNEL]
    assert seen[-1].finished and seen[-1].done == seen[-1].total == len(mirror.files[KERNEL])
    assert mirror.requested(KERNEL) == [None]


def test_a_stalled_transfer_times_out_and_resumes_at_the_offset_with_range(mirror, tmp_path):
    mirror.stall[IMG] = 65536
    retries = []
    got = fetcher(timeout_s=1.0, on_retry=retries.append)
    got.to_file(f"{mirror.url}/{IMG}", tmp_path / "img", "img")
    assert (tmp_path / "img").read_bytes() == mirror.files[IMG]
    assert mirror.requested(IMG) == [None, "bytes=65536-"]  # the second request starts where the first stopped
    assert "no data within the timeout" in retries[0] and "resuming at byte 65536" in retries[0]


def test_a_partial_file_from_an_earlier_run_is_resumed(mirror, tmp_path):
    (tmp_path / "k").write_bytes(mirror.files[KERNEL][:1000])
    fetcher().to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel")
    assert (tmp_path / "k").read_bytes() == mirror.files[KERNEL]
    assert mirror.requested(KERNEL) == ["bytes=1000-"]
    assert fetcher().received == 0


def test_a_server_without_range_support_sends_the_whole_file_again(mirror, tmp_path):
    mirror.ignore_range = True
    (tmp_path / "k").write_bytes(b"x" * 1000)  # not even the right bytes: they are replaced
    fetcher().to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel")
    assert (tmp_path / "k").read_bytes() == mirror.files[KERNEL]


def test_a_complete_partial_file_costs_one_416(mirror, tmp_path):
    (tmp_path / "k").write_bytes(mirror.files[KERNEL])
    assert fetcher().to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel") == len(mirror.files[KERNEL])
    assert mirror.requested(KERNEL) == [f"bytes={len(mirror.files[KERNEL])}-"]


def test_a_server_that_stalls_every_time_ends_in_a_timeout_keeping_what_arrived(mirror, tmp_path):
    got = fetcher(timeout_s=0.5, attempts=2)
    mirror.stall[IMG], mirror.stall_always = 4096, True
    with pytest.raises(OperationTimeoutError, match="after 2 attempts.*resumes it"):
        got.to_file(f"{mirror.url}/{IMG}", tmp_path / "img", "img")
    assert (tmp_path / "img").stat().st_size == 8192


def test_a_missing_file_is_not_found_at_once(mirror, tmp_path):
    got = fetcher()
    with pytest.raises(NotFoundError, match="404"):
        got.to_file(f"{mirror.url}/releases/nothing.img", tmp_path / "x", "x")
    assert got.requests == 1


def test_a_refused_connection_is_retried_then_a_connection_error(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    got = fetcher(attempts=3)
    with pytest.raises(ConnectionFailedError, match="after 3 attempts"):
        got.small(f"http://127.0.0.1:{port}/SHA256SUMS", 1024)
    assert got.requests == 3


def test_a_small_answer_that_is_too_big_is_refused(mirror):
    with pytest.raises(SnpvirtError, match="more than 1000 bytes"):
        fetcher().small(f"{mirror.url}/{INITRD}", 1000)


def test_a_server_dripping_its_headers_meets_the_request_deadline(mirror):
    """Each byte comes well within the per-read timeout: only the request's own deadline ends it."""
    mirror.drip.add("releases/SHA256SUMS")
    got = fetcher(timeout_s=1.0, attempts=2)
    with pytest.raises(OperationTimeoutError, match="no answer within the timeout"):
        got.small(f"{mirror.url}/releases/SHA256SUMS", 1024)
    assert got.requests == 2


def test_a_server_dripping_a_chunk_size_line_meets_the_floor_rate(mirror, tmp_path):
    """Chunked transfer: http.client reads a chunk's size line whole (up to 64 KiB), each byte well within the
    per-read timeout, before read1 returns anything: the floor rate must be kept by a timer, not between reads
    (without one this download would last 64 KiB x 0.1 s, about two hours, and the test times out)."""
    mirror.drip_chunked.add(KERNEL)
    got = fetcher(timeout_s=0.5, attempts=2)
    with pytest.raises(OperationTimeoutError):
        got.to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel")
    assert got.requests == 2


def test_a_body_that_keeps_the_floor_rate_outlasts_the_first_deadline(mirror, tmp_path):
    """The timer that ends a dripping body must not end a healthy one: ~4 s at 80 KB/s, with a rate window
    of 1 s (a deadline 2 s after the headers unless each window postpones it), in one attempt."""
    mirror.paced.add(KERNEL)
    got = fetcher(timeout_s=0.25, attempts=1)
    assert got.to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel") == len(mirror.files[KERNEL])
    assert (tmp_path / "k").read_bytes() == mirror.files[KERNEL]


def test_a_file_bigger_than_such_a_file_may_be_is_refused_and_deleted(mirror, tmp_path):
    got = fetcher()
    with pytest.raises(SnpvirtError, match="announces 300000 bytes, more than the 1000"):
        got.to_file(f"{mirror.url}/{KERNEL}", tmp_path / "k", "kernel", max_bytes=1000)
    assert not (tmp_path / "k").exists() and got.requests == 1  # not retried
