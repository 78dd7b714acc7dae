"""Downloads against a real HTTP server on 127.0.0.1: resume, retries, verification, errors."""

from __future__ import annotations

import hashlib
import socket
import time

import numpy as np
import pytest
from http_range_server import serve

from rwkv_cli.app.download import (
    DownloadError,
    DownloadInterrupted,
    check_free_space,
    download,
    download_first,
    part_path,
)

SIZE = 3 * 1024 * 1024 + 12345  # several download chunks, and not a round number


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    (root / "repo").mkdir(parents=True)
    payload = np.random.default_rng(7).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    (root / "repo" / "model.bin").write_bytes(payload)
    with serve(root) as server:
        yield server, payload, f"{server.base_url}/repo/model.bin"


def test_full_download_writes_the_exact_bytes_and_no_part_file(served, tmp_path):
    _server, payload, url = served
    seen = []
    dest = download(url, tmp_path / "out" / "model.bin", progress=lambda d, t: seen.append((d, t)))
    assert dest.read_bytes() == payload
    assert not part_path(dest).exists()
    assert seen[-1] == (SIZE, SIZE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_dropped_connection_is_resumed_with_a_range_request(served, tmp_path):
    server, payload, url = served
    server.drop_after["/repo/model.bin"] = SIZE // 2
    dest = download(url, tmp_path / "model.bin", backoff=0)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(payload).digest()
    ranges = [r for _, _, r in server.requests if r]
    assert ranges and ranges[0].startswith("bytes=") and int(ranges[0][6:-1]) > 0


def test_failed_download_leaves_a_part_that_the_next_run_resumes(served, tmp_path):
    server, payload, url = served
    server.drop_after["/repo/model.bin"] = SIZE // 3
    server.fail_after_drop["/repo/model.bin"] = 2
    dest = tmp_path / "model.bin"
    with pytest.raises(DownloadError, match="after 2 attempts: HTTP 503"):
        download(url, dest, retries=1, backoff=0)
    assert not dest.exists()
    kept = part_path(dest).stat().st_size
    assert 0 < kept < SIZE
    download(url, dest, retries=0)
    assert dest.read_bytes() == payload
    assert server.requests[-1][2] == f"bytes={kept}-"


def test_server_ignoring_range_restarts_from_zero(served, tmp_path):
    server, payload, url = served
    dest = tmp_path / "model.bin"
    part_path(dest).write_bytes(payload[:1000])
    server.ignore_range = True
    download(url, dest)
    assert dest.read_bytes() == payload


def test_wrong_checksum_leaves_nothing_installed(served, tmp_path):
    _, _payload, url = served
    dest = tmp_path / "model.bin"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(url, dest, sha256="0" * 64)
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_right_checksum_and_size_are_accepted(served, tmp_path):
    _, payload, url = served
    dest = download(
        url, tmp_path / "m.bin", sha256=hashlib.sha256(payload).hexdigest(), expected_size=SIZE
    )
    assert dest.stat().st_size == SIZE


def test_size_differing_from_the_catalog_is_refused(served, tmp_path):
    _, _, url = served
    with pytest.raises(DownloadError, match="expects"):
        download(url, tmp_path / "m.bin", expected_size=SIZE + 1)
    assert not (tmp_path / "m.bin").exists()


def test_404_is_a_clear_error_without_retries(served, tmp_path):
    server, _, _ = served
    url = f"{server.base_url}/repo/missing.bin"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "m.bin", backoff=0)
    message = str(info.value)
    assert "404" in message and url in message and "\n" not in message
    assert len(server.requests) == 1


def test_server_errors_are_retried(served, tmp_path):
    server, payload, url = served
    server.fail_times["/repo/model.bin"] = 2
    dest = download(url, tmp_path / "m.bin", backoff=0)
    assert dest.read_bytes() == payload
    assert len(server.requests) == 3


def test_unreachable_server_fails_after_retries(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download(f"http://127.0.0.1:{port}/m.bin", tmp_path / "m.bin", retries=2, backoff=0)


def test_ctrl_c_keeps_the_part_file_and_says_so(served, tmp_path):
    _, payload, url = served
    dest = tmp_path / "m.bin"

    def interrupt(done, total):
        if done > SIZE // 2:
            raise KeyboardInterrupt

    with pytest.raises(DownloadInterrupted) as info:
        download(url, dest, progress=interrupt)
    assert str(part_path(dest)) in str(info.value) and "resume" in str(info.value)
    assert 0 < part_path(dest).stat().st_size < SIZE
    download(url, dest)
    assert dest.read_bytes() == payload


def test_not_enough_disk_space_is_refused_before_downloading(served, tmp_path):
    server, _, url = served
    with pytest.raises(DownloadError, match="not enough disk space"):
        download(url, tmp_path / "m.bin", expected_size=1 << 60)
    assert server.requests == []
    with pytest.raises(DownloadError, match="not enough disk space"):
        check_free_space(tmp_path, 1 << 60)


def test_mirrors_are_tried_in_order(served, tmp_path):
    server, payload, url = served
    dest = download_first([f"{server.base_url}/nope.bin", url], tmp_path / "m.bin")
    assert dest.read_bytes() == payload


# ---- issue 15: retry only what can pass, and say what happens ----


def test_an_unknown_host_fails_at_once_without_retries(tmp_path):
    notices = []
    started = time.monotonic()
    with pytest.raises(DownloadError, match="unknown host") as info:
        download("http://no-such-host.invalid/m.bin", tmp_path / "m.bin", backoff=1.0,
                 notify=notices.append)
    assert time.monotonic() - started < 5  # not 31 s of back-off
    assert notices == [] and "attempts" not in str(info.value)


@pytest.mark.parametrize("url", ["htp://example/m.bin", "localhost:8000/m.bin", "http://[::1/m"])
def test_a_malformed_url_fails_at_once(tmp_path, url):
    notices = []
    with pytest.raises(DownloadError, match="malformed URL"):
        download(url, tmp_path / "m.bin", backoff=1.0, notify=notices.append)
    assert notices == []


def test_each_retry_is_announced_with_its_reason_and_wait(served, tmp_path):
    server, payload, url = served
    server.fail_times["/repo/model.bin"] = 2
    notices = []
    dest = download(url, tmp_path / "m.bin", backoff=0, notify=notices.append)
    assert dest.read_bytes() == payload
    assert len(notices) == 2
    assert notices[0].startswith("retrying in 0 s: HTTP 503") and "attempt 2 of 6" in notices[0]


def test_too_many_requests_is_retried_after_what_the_server_asks(served, tmp_path):
    server, payload, url = served
    server.fail_status, server.retry_after = 429, "0"
    server.fail_times["/repo/model.bin"] = 1
    notices = []
    dest = download(url, tmp_path / "m.bin", backoff=30, notify=notices.append)
    assert dest.read_bytes() == payload
    assert notices and notices[0].startswith("retrying in 0 s: HTTP 429")


def test_a_client_error_is_not_retried(served, tmp_path):
    server, _payload, url = served
    server.fail_status = 403
    server.fail_times["/repo/model.bin"] = 1
    with pytest.raises(DownloadError, match="HTTP 403"):
        download(url, tmp_path / "m.bin", backoff=0)
    assert len(server.requests) == 1


def test_giving_up_says_the_part_is_kept_and_a_rerun_resumes(served, tmp_path):
    server, _payload, url = served
    server.drop_after["/repo/model.bin"] = SIZE // 3
    server.fail_after_drop["/repo/model.bin"] = 5
    dest = tmp_path / "m.bin"
    with pytest.raises(DownloadError) as info:
        download(url, dest, retries=1, backoff=0)
    message = str(info.value)
    assert str(part_path(dest)) in message and "again to resume" in message
    assert part_path(dest).stat().st_size == SIZE // 3


def test_a_server_that_ignores_range_is_said_to_restart_not_to_resume(served, tmp_path):
    server, payload, url = served
    dest = tmp_path / "m.bin"
    part_path(dest).write_bytes(payload[:1000])
    server.ignore_range = True
    notices = []
    download(url, dest, notify=notices.append)
    assert dest.read_bytes() == payload
    assert len(notices) == 1 and "from the start" in notices[0]
    assert not any("Resuming" in n for n in notices)
    server.ignore_range = False
    part_path(dest).write_bytes(payload[:1000])
    dest.unlink()
    download(url, dest, notify=notices.append)
    assert notices[-1].startswith("Resuming m.bin")
