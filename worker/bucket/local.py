"""A bucket in a local folder (`file:///abs/path`): the default, and handy for single machines.

Every write goes to a temporary file in the object's own folder (named `.rcbtmp-...`, a prefix
no key may use), is flushed and fsynced, then renamed over the final name with `os.replace`, so a
reader sees either the old object, the new one whole, or nothing, even after a crash.

A large stream is written from `pump`'s writer thread (see `base.py`), which also asks the
kernel every `WRITEBACK_EVERY` bytes to start writing the data out, so that the final fsync,
on the critical path, finds little left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from rcbatch.errors import InputError, RetryLater, ServiceUnavailable

from .base import REFUSED, SMALL_STREAM, UNAVAILABLE, NotFound, StoredObject, pump
from .naming import TEMP_MARK, check_key, check_prefix

# Errors that may clear up by themselves (space freed, a network filesystem back): retry later.
# Anything else (permission denied, read-only, a file where a folder should be) needs a human.
_TRANSIENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR, errno.ENOMEM,
    errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY, errno.ENFILE, errno.EMFILE,
})
_FILE_MODE = 0o644
#: while streaming a large output, start the disk writeback every this many bytes
WRITEBACK_EVERY = 16 * 1024 * 1024


class LocalBucket:
    """A bucket stored as files under an absolute folder, created as needed."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root)
        if not path.is_absolute():
            raise InputError(f"a local bucket needs an absolute folder, not {str(root)!r}")
        self.root = path
        self.url = path.as_uri()

    @classmethod
    def from_url(cls, url: str) -> LocalBucket:
        """Open `file:///abs/path` (percent-escapes allowed); anything else is an InputError."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InputError(f"a local bucket URL looks like file:///abs/path, not {url!r}")
        if parts.query or parts.fragment or not parts.path.startswith("/"):
            raise InputError(f"a local bucket URL looks like file:///abs/path, not {url!r}")
        path = unquote(parts.path)
        if "\x00" in path:
            raise InputError("a local bucket path must not contain NUL")
        return cls(Path(path))

    def __repr__(self) -> str:
        return f"LocalBucket({self.url!r})"

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str,
                         expected_size: int | None = None,
                         max_bytes: int | None = None) -> StoredObject:
        """Stream into a temp file next to the final one; rename it into place when whole."""
        sink = _FileSink(self._path(key), key)
        digest = await pump(chunks, sink, expected_size=expected_size, max_bytes=max_bytes)
        return StoredObject(key, digest.size, digest.sha256, content_type, self.url_for(key))

    def put_bytes(self, key: str, data: bytes, *, content_type: str) -> StoredObject:
        """Write `data` atomically under `key`."""
        sink = _FileSink(self._path(key), key)
        try:
            sink.write_now(data)
            sink.finish(fsync=True)
        except BaseException:
            sink.discard()
            raise
        digest = hashlib.sha256(data).hexdigest()
        return StoredObject(key, len(data), digest, content_type, self.url_for(key))

    def get_bytes(self, key: str) -> bytes:
        """The file's bytes; NotFound when there is no such file."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(key) from None
        except OSError as exc:
            raise _translate_os_error(exc, f"read {key}") from exc

    def exists(self, key: str) -> bool:
        """Whether a file is stored under `key`."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the file under `key` (no error when it is already gone)."""
        path = self._path(key)
        with _translated(f"delete {key}"), \
                contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()

    def list_keys(self, prefix: str) -> list[str]:
        """Every stored key starting with `prefix`, sorted; unfinished temp files are skipped."""
        check_prefix(prefix)
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        keys = []
        with _translated(f"list {prefix or 'the bucket'}"):
            for dirpath, _dirs, files in os.walk(start):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                base = "" if rel == "." else rel + "/"
                keys += [base + name for name in files
                         if not name.startswith(TEMP_MARK) and (base + name).startswith(prefix)]
        return sorted(keys)

    def url_for(self, key: str) -> str:
        """The object's `file://` URI."""
        return self._path(key).as_uri()

    def presigned_url(self, key: str, *, expires: int) -> str:
        """A folder serves no URL the API could fetch: always InputError (use S3)."""
        raise InputError(f"the local folder bucket {self.url} cannot serve input images over "
                         "HTTPS to the API: set RCBATCH_BUCKET_URL (or --bucket) to an S3 "
                         "bucket, s3://bucket/prefix")

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))


class _FileSink:
    """One atomic file write: a temp file in the final folder, renamed into place at the end."""

    def __init__(self, final: Path, key: str) -> None:
        self._final = final
        self._key = key
        self._file: BinaryIO | None = None
        self._tmp: Path | None = None
        # Progressive writeback: [_advised, _kicked) was handed to the kernel last time.
        self._advised = self._kicked = 0

    async def write(self, chunk: bytes) -> None:
        """Append a chunk of a small stream (to the page cache: fine on the event loop)."""
        self.write_now(chunk)

    def write_blocking(self, data: bytes) -> None:
        """Append a batch on pump's writer thread, starting the disk writeback as we go."""
        file = self._open()
        with _translated(f"store {self._key}"):
            file.write(data)
            if WRITEBACK_EVERY and file.tell() - self._kicked >= WRITEBACK_EVERY:
                self._start_writeback(file)

    async def commit(self) -> None:
        """fsync (in a thread when large: it can take seconds), then rename into place.

        The rename happens after the last await, so a cancellation can never land between a
        completed rename and the caller seeing success.
        """
        file = self._open()
        with _translated(f"store {self._key}"):
            file.flush()
        if file.tell() <= SMALL_STREAM:
            # A small file syncs in well under a millisecond here, and the hand-over to a
            # thread and back costs ~150 us of CPU (measured); the step awaits it either way.
            self.finish(fsync=True)
            return
        await _fsync_in_thread(file.fileno(), self._key)
        self.finish(fsync=False)

    def write_now(self, chunk: bytes) -> None:
        """Append a chunk synchronously."""
        file = self._open()
        with _translated(f"store {self._key}"):
            file.write(chunk)

    def finish(self, *, fsync: bool) -> None:
        """Flush, optionally fsync, close and rename the temp file over the final name."""
        file, tmp = self._open(), self._tmp
        assert tmp is not None
        with _translated(f"store {self._key}"):
            file.flush()
            if fsync:
                os.fsync(file.fileno())
            file.close()
            os.replace(tmp, self._final)
        self._tmp = None
        _fsync_folder(self._final.parent)

    async def abort(self) -> None:
        """Close and remove the temp file, whatever state it is in."""
        self.discard()

    def discard(self) -> None:
        """Synchronous `abort`."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def _open(self) -> BinaryIO:
        if self._file is None:
            with _translated(f"store {self._key}"):
                self._final.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=TEMP_MARK, dir=self._final.parent)
                self._tmp = Path(name)
                self._file = os.fdopen(fd, "wb")
                os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would hide outputs from others
        return self._file

    def _start_writeback(self, file: BinaryIO) -> None:
        # POSIX_FADV_DONTNEED makes Linux start writing the dirty pages of the range back
        # without waiting for it, and drop the pages already clean: the range covers the
        # bytes written since last time and the previous ones, clean by now. The final fsync
        # then has little left to do, and a worker does not fill the page cache with outputs
        # it never reads. Advisory only: a failure changes nothing.
        file.flush()
        end = file.tell()
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: not on macOS
            os.posix_fadvise(file.fileno(), self._advised, end - self._advised,
                             os.POSIX_FADV_DONTNEED)
        self._advised, self._kicked = self._kicked, end


async def _fsync_in_thread(fd: int, key: str) -> None:
    with _translated(f"store {key}"):
        await asyncio.to_thread(os.fsync, fd)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; the data is already synced, so a failure here is ignored.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _translate_os_error(exc, action) from exc


def _translate_os_error(exc: OSError, action: str) -> RetryLater | ServiceUnavailable:
    message = f"local bucket: cannot {action}: {exc.strerror or exc}"
    if exc.errno in _TRANSIENT_ERRNOS:
        return RetryLater(message, kind=UNAVAILABLE)
    return ServiceUnavailable(message, kind=REFUSED)
