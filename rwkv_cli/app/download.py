"""Resumable, verified downloads over HTTP (httpx streaming).

The file grows as `DEST.part`; an interrupted download (network failure, Ctrl-C) keeps it,
and the next call asks the server for the rest with an HTTP Range request. Only after the
size (and the sha256 when one is known) match is the `.part` renamed to `DEST`, so a broken
download is never mistaken for a model. The caller draws the progress (see `progress`) and
shows the notices (`notify`): resuming, a server that restarts from zero, each retry.

Only failures that can pass are retried: timeouts, dropped or reset connections, a refused
connection, HTTP 5xx and 429. An unknown host, a malformed URL or another HTTP 4xx fails at
once: waiting would not change the answer.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError

ProgressCallback = Callable[[int, Optional[int]], None]  # (bytes done, total or None)
NoticeCallback = Callable[[str], None]  # one line for the user

CHUNK_SIZE = 1 << 20
# Keep this much disk free beyond the download itself (the system needs room to breathe).
DISK_MARGIN = 64 * 1024 * 1024


class DownloadError(UserError):
    """A download that could not complete; the message is one line a user can act on."""


class DownloadInterrupted(DownloadError):
    """Ctrl-C during a download: the `.part` file is kept for a later resume."""

    exit_code = 130  # what a shell expects after Ctrl-C


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def check_free_space(folder: Path, needed: int) -> None:
    """Raise DownloadError when `folder`'s disk cannot hold `needed` more bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise DownloadError(
            f"not enough disk space in {folder}: need {human_bytes(needed)}, "
            f"{human_bytes(free)} free"
        )


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _total_from(response, offset: int) -> int | None:
    """Total file size from a 200 or 206 response, when the server says."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match and match.group(3) != "*":
            return int(match.group(3))
    length = response.headers.get("content-length")
    if length is not None and length.isdigit():
        return int(length) + (offset if response.status_code == 206 else 0)
    return None


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    check_disk: bool = True,
    transport=None,
    notify: NoticeCallback | None = None,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if present; returns `dest`.

    `retries` counts consecutive failed attempts that made no progress, of the kinds that
    can pass (timeouts, connection errors, HTTP 5xx and 429); each waits `backoff * 2**n`
    seconds first (or what a 429's Retry-After asks, up to a minute), announced through
    `notify`. Raises DownloadError (DownloadInterrupted on Ctrl-C, with the `.part` kept).
    """
    part = part_path(Path(dest))
    try:
        return _download(
            url, Path(dest), expected_size=expected_size, sha256=sha256, progress=progress,
            retries=retries, backoff=backoff, timeout=timeout, check_disk=check_disk,
            transport=transport, notify=notify or (lambda _text: None),
        )
    except KeyboardInterrupt:
        have = part.stat().st_size if part.exists() else 0
        if have == 0:
            part.unlink(missing_ok=True)
            raise DownloadInterrupted(
                f"download of {Path(dest).name} interrupted before any data arrived"
            ) from None
        raise DownloadInterrupted(
            f"download interrupted: {human_bytes(have)} kept in {part}; "
            "run the same command again to resume"
        ) from None


def _download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: ProgressCallback | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 30.0,
    check_disk: bool = True,
    transport=None,
    notify: NoticeCallback = lambda _text: None,
) -> Path:
    import httpx

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    sha256 = sha256.lower() if sha256 else None
    total: int | None = expected_size
    if part.exists() and expected_size is not None and part.stat().st_size > expected_size:
        part.unlink()  # longer than the file can be: not ours to resume
    if check_disk and expected_size is not None:
        have = part.stat().st_size if part.exists() else 0
        check_free_space(dest.parent, expected_size - have)

    failures = 0
    resumed_from = part.stat().st_size if part.exists() else 0
    timeouts = httpx.Timeout(timeout, connect=min(timeout, 15.0))
    client = None
    try:
        client = httpx.Client(
            timeout=timeouts, follow_redirects=True, transport=transport,
            headers={"User-Agent": "rwkv-cpp"},
        )
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if total is not None and offset == total:
                break  # everything is already here (a previous run was stopped at the end)
            progressed = False
            try:
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                with client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if status == 416 and offset:
                        # Nothing left past our offset: either complete, or a stale part.
                        match = _CONTENT_RANGE.match(
                            response.headers.get("content-range", "").replace("*", "0-0")
                        )
                        size = int(match.group(3)) if match and match.group(3).isdigit() else None
                        if size == offset:
                            total = size
                            break
                        part.unlink()
                        continue
                    if status >= 500 or status == 429:
                        raise _Retryable(
                            f"HTTP {status} {response.reason_phrase}",
                            _retry_after(response.headers.get("retry-after")),
                        )
                    if status >= 400:
                        raise DownloadError(
                            f"download failed: HTTP {status} {response.reason_phrase} for {url}"
                        )
                    if status == 206:
                        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
                        if not match or int(match.group(1)) != offset:
                            raise DownloadError(
                                f"download failed: {url} answered a range request for byte "
                                f"{offset} with {response.headers.get('content-range')!r}"
                            )
                        mode = "ab"
                        if resumed_from:
                            notify(f"Resuming {dest.name}: {human_bytes(offset)} already "
                                   "downloaded.")
                    else:
                        if offset:
                            notify(
                                f"The server does not resume downloads (it sent the whole "
                                f"file): downloading {dest.name} again from the start "
                                f"({human_bytes(offset)} were kept)."
                            )
                        # 200: the server ignored the Range header and sends the whole file.
                        offset = 0
                        mode = "wb"
                    resumed_from = 0
                    size = _total_from(response, offset)
                    if size is not None:
                        if expected_size is not None and size != expected_size:
                            raise DownloadError(
                                f"download failed: {url} is {size} bytes, "
                                f"the catalog expects {expected_size}"
                            )
                        if total is None and check_disk:
                            check_free_space(dest.parent, size - offset)
                        total = size
                    done = offset
                    if progress:
                        progress(done, total)
                    with open(part, mode) as handle:
                        # No chunk size: write what arrives, so a slow link shows progress
                        # and an interruption keeps every byte received.
                        for chunk in response.iter_bytes():
                            handle.write(chunk)
                            done += len(chunk)
                            progressed = True
                            if progress:
                                progress(done, total)
                if total is None:
                    total = part.stat().st_size  # the server never said; trust a clean end
                break
            except (_Retryable, httpx.TransportError, httpx.InvalidURL) as exc:
                reason = _retryable_reason(exc)
                if reason is None:
                    raise DownloadError(f"download failed: {_permanent_reason(exc, url)}") from exc
                failures = 0 if progressed else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"download failed after {retries + 1} attempts: {reason} ({url})"
                        + _kept_note(part)
                    ) from exc
                delay = backoff * (2 ** max(failures - 1, 0))
                if isinstance(exc, _Retryable) and exc.retry_after is not None:
                    delay = exc.retry_after
                notify(f"retrying in {delay:g} s: {reason} (attempt {failures + 1} of "
                       f"{retries + 1})")
                time.sleep(delay)
            except OSError as exc:
                raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
    finally:
        if client is not None:
            client.close()

    have = part.stat().st_size if part.exists() else 0
    if total is not None and have != total:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"download of {url} has {have} bytes, expected {total}; the partial file was removed"
        )
    if sha256:
        actual = sha256_of(part)
        if actual != sha256:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {dest.name}: expected sha256 {sha256}, got {actual}; "
                "the downloaded file was removed"
            )
    os.replace(part, dest)
    return dest


def download_first(urls: list[str], dest: Path, **kwargs) -> Path:
    """Try mirrors in order; the error of the last one is raised if all fail."""
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from")
    error: DownloadError | None = None
    for url in urls:
        try:
            return download(url, dest, **kwargs)
        except DownloadInterrupted:
            raise
        except DownloadError as exc:
            error = exc
            part_path(Path(dest)).unlink(missing_ok=True)  # another mirror may differ
    assert error is not None
    raise error


class _Retryable(Exception):
    """An HTTP answer that may change if asked again (5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


MAX_RETRY_AFTER = 60.0


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is rare; it gets the backoff)."""
    if value and value.strip().isdigit():
        return min(float(value.strip()), MAX_RETRY_AFTER)
    return None


def _causes(exc: BaseException):
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def _retryable_reason(exc: BaseException) -> str | None:
    """Why a failed attempt may succeed later, in a few words; None when it cannot."""
    import httpx

    if isinstance(exc, _Retryable):
        return str(exc)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError)):
        return None
    if any(isinstance(cause, socket.gaierror) for cause in _causes(exc)):
        return None  # unknown host: asking again gets the same answer
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.NetworkError)):
        return "connection reset"
    if isinstance(exc, httpx.TransportError):
        return str(exc) or type(exc).__name__
    return None


def _permanent_reason(exc: BaseException, url: str) -> str:
    import httpx

    if any(isinstance(cause, socket.gaierror) for cause in _causes(exc)):
        from urllib.parse import urlsplit

        host = urlsplit(url).hostname or url
        return (f"unknown host {host!r} ({url}); check the address (--base-url, "
                "RWKV_DOWNLOAD_BASE) and the network")
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return (f"malformed URL {url!r} ({exc}); a mirror is given as https://host[/path] "
                "(--base-url, RWKV_DOWNLOAD_BASE)")
    return f"{exc} ({url})"


def _kept_note(part: Path) -> str:
    have = part.stat().st_size if part.exists() else 0
    if not have:
        return ""
    return f"; {human_bytes(have)} kept in {part}: run the same command again to resume"
