"""The bytes the simulator serves: real images made with Pillow, and synthetic videos.

Images are rendered in a worker thread (a large PNG takes a fraction of a second) and cached
by (size, format, padding). Videos are never held in memory: their content is a short
per-request pattern repeated up to the wanted size and produced chunk by chunk.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import zlib
from collections.abc import Iterator
from typing import Protocol

import anyio.to_thread
from PIL import Image

CHUNK = 64 * 1024
MAX_SIDE = 8192
MAX_PAD = 64 * 1024 * 1024
_CACHE_LIMIT = 64
# An ISO BMFF `ftyp` box, so anything sniffing the first bytes sees an MP4.
_FTYP = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"mp42", 0, b"mp42", b"isom")


class ByteSource(Protocol):
    """Something with a known size whose bytes can be read as chunks of a range."""

    size: int

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes [start, end) in chunks of at most CHUNK bytes."""
        ...


class BytesSource:
    """A ByteSource over bytes held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.size = len(data)

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes [start, end) in chunks."""
        for offset in range(start, end, CHUNK):
            yield bytes(self._data[offset:min(offset + CHUNK, end)])


class PatternSource:
    """`size` bytes of fake MP4: an `ftyp` box, then a pattern fixed by `key`."""

    def __init__(self, size: int, key: str) -> None:
        self.size = size
        pattern = random.Random(key).randbytes(CHUNK)
        self._doubled = pattern + pattern

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes [start, end) in chunks."""
        for offset in range(start, end, CHUNK):
            length = min(CHUNK, end - offset)
            at = offset % CHUNK
            chunk = self._doubled[at:at + length]
            if offset < len(_FTYP):
                head = _FTYP[offset:offset + length]
                chunk = head + chunk[len(head):]
            yield chunk


def render_image(width: int, height: int, fmt: str, pad_to: int = 0) -> bytes:
    """A real `fmt` ("png" or "jpeg") image of that size, padded to at least `pad_to` bytes."""
    ramp = Image.linear_gradient("L")
    red = ramp.resize((width, height))
    green = ramp.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    blue = Image.new("L", (width, height), 96)
    buffer = io.BytesIO()
    image = Image.merge("RGB", (red, green, blue))
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    return _pad(data, fmt, pad_to) if pad_to > len(data) else data


def _pad(data: bytes, fmt: str, pad_to: int) -> bytes:
    """Grow a valid image to `pad_to` bytes with chunks every decoder skips."""
    if fmt == "png":
        # An ancillary private chunk ("rcPd") before IEND: 12 bytes of framing plus the filler.
        filler = b"\0" * max(0, pad_to - len(data) - 12)
        chunk = struct.pack(">I", len(filler)) + b"rcPd" + filler
        chunk += struct.pack(">I", zlib.crc32(b"rcPd" + filler))
        return data[:-12] + chunk + data[-12:]
    # JPEG comment segments (each at most 65533 bytes of payload) right after SOI.
    missing, segments = pad_to - len(data), []
    while missing > 0:
        size = min(65533, max(0, missing - 4))
        segments.append(b"\xff\xfe" + struct.pack(">H", size + 2) + b"\0" * size)
        missing -= size + 4
    return data[:2] + b"".join(segments) + data[2:]


class ImageCache:
    """Rendered images by (width, height, format, padding), rendered once in a thread."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int, str, int], asyncio.Future[bytes]] = {}

    async def get(self, width: int, height: int, fmt: str, pad_to: int = 0) -> bytes:
        """The image's bytes; concurrent callers for one key share a single render."""
        key = (width, height, fmt, pad_to)
        entry = self._entries.get(key)
        if entry is None:
            self._evict()
            entry = asyncio.ensure_future(
                anyio.to_thread.run_sync(render_image, width, height, fmt, pad_to))
            self._entries[key] = entry
        try:
            return await asyncio.shield(entry)
        except Exception:
            self._entries.pop(key, None)
            raise

    def warm(self, width: int, height: int, fmt: str) -> None:
        """Start rendering an image now so its first download does not wait for it."""
        if (width, height, fmt, 0) not in self._entries:
            task = asyncio.ensure_future(self.get(width, height, fmt))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _evict(self) -> None:
        # Keep the most recent entries: input sizes are arbitrary, output sizes few.
        while len(self._entries) >= _CACHE_LIMIT:
            oldest = next(iter(self._entries))
            self._entries.pop(oldest)
