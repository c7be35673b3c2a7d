"""What preflight learns about one input image, and how it reads that from the first bytes.

Only the header is needed: width, height and format are read with Pillow's format plugins
from a prefix of the file (a ranged download), never by decoding pixels.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

#: Pillow reports multi-picture JPEGs (common from phones) as MPO; they are JPEG files.
_FORMAT_ALIASES = {"MPO": "JPEG"}

#: how many bytes Pillow's plugins look at to recognise a format
_PREFIX = 16


@dataclass(frozen=True)
class ImageInfo:
    """Dimensions and size of one input image, as measured before submitting."""

    width: int
    height: int
    size_bytes: int | None = None  # None: the server did not tell us the full size
    format: str | None = None  # Pillow's name: "JPEG", "PNG", "WEBP", ...
    content_type: str | None = None

    @property
    def aspect(self) -> float:
        """width / height (0 for a degenerate zero-height header)."""
        return self.width / self.height if self.height else 0.0

    @property
    def shortest_side(self) -> int:
        """The smaller of width and height, in pixels."""
        return min(self.width, self.height)

    @property
    def longest_side(self) -> int:
        """The larger of width and height, in pixels."""
        return max(self.width, self.height)


_Plugin = tuple[str, Callable[..., Any], Callable[[bytes], Any]]


@functools.cache
def _signature_plugins() -> tuple[_Plugin, ...]:
    # Plugins without an `accept` check (TGA, IM, ...) would "recognise" any bytes, an HTML
    # error page included; only formats with a real signature are considered.
    Image.init()
    plugins: list[_Plugin] = []
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        if accept is not None:
            plugins.append((name, factory, accept))
    return tuple(plugins)


def identify(data: bytes) -> str | None:
    """The format whose signature the first bytes carry (e.g. "PNG"), or None: not an image."""
    for name, _factory, accept in _signature_plugins():
        if _accepts(accept, data[:_PREFIX]):
            return _FORMAT_ALIASES.get(name, name)
    return None


def _accepts(accept: Callable[[bytes], Any], prefix: bytes) -> bool:
    # an `accept` returns True, False, or a string explaining a near miss (not a match)
    try:
        verdict = accept(prefix)
    except Exception:
        return False
    return bool(verdict) and not isinstance(verdict, str)


def read_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, format) from a prefix of an image file; None if the prefix is too short.

    The plugin factories are called directly rather than through `Image.open` so that a huge
    header (say 30000×30000) is reported by its size instead of tripping Pillow's
    decompression-bomb guard: we never decode pixels.
    """
    for name, factory, accept in _signature_plugins():
        if not _accepts(accept, data[:_PREFIX]):
            continue
        try:
            image = factory(io.BytesIO(data), "")
        except Exception:
            # a truncated prefix (or a damaged file) makes plugins fail in many ways; the
            # caller reads more bytes or gives up at its cap, so any failure means "not yet"
            return None
        width, height = image.size
        return int(width), int(height), _FORMAT_ALIASES.get(name, name)
    return None


def make_image_bytes(width: int, height: int, fmt: str = "PNG", *, padding: int = 0) -> bytes:
    """A real image file of the given size, for tests, fakes and the simulator.

    `padding` (JPEG only) inserts that many bytes of APP1 "Exif" segments before the frame
    header, the way big camera EXIF blocks push the size information past the first 64 KiB.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, fmt)
    data = buffer.getvalue()
    if padding <= 0 or fmt.upper() != "JPEG":
        return data
    return data[:2] + _app1_padding(padding) + data[2:]


def _app1_padding(total: int) -> bytes:
    segments = []
    while total > 0:
        size = min(total, 65533)  # a JPEG segment holds at most 65533 payload bytes
        payload = (b"Exif\0\0" + bytes(size))[:size]
        segments.append(b"\xff\xe1" + struct.pack(">H", size + 2) + payload)
        total -= size
    return b"".join(segments)
