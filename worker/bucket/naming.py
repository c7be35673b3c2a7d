"""Object keys: turning user ids into safe key parts, and refusing keys that could escape.

Keys are built from batch ids, item ids and file names (`<batch_id>/<item_id>/<n>.<ext>`).
`safe_part` makes any user text usable as one part; `object_key` joins parts and refuses anything
that could climb out of the bucket or confuse a filesystem (`..`, `.`, empty, absolute,
backslashes, control characters). Every bucket checks each key it is given with `check_key`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from rcbatch.errors import InputError

#: longest part `safe_part` returns (well under the 255-byte file name limit of filesystems)
MAX_PART = 120
#: S3's limit on a whole key, in UTF-8 bytes
MAX_KEY_BYTES = 1024
#: longest single path segment a local filesystem accepts, in UTF-8 bytes
MAX_SEGMENT_BYTES = 255
#: local buckets write here first; no key segment may start with it
TEMP_MARK = ".rcbtmp-"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_HASH_LEN = 16
# `safe_part` marks a changed id with this suffix; an unchanged id that happens to end like it is
# hashed too, so a changed id can never equal an unchanged one.
_HASHED = re.compile(rf"_[0-9a-f]{{{_HASH_LEN}}}$")


def safe_part(text: str) -> str:
    """Turn arbitrary user text (an item id, a name) into one safe, collision-free key part.

    Keeps `[A-Za-z0-9._-]` and replaces every other character with `_`. When anything had to
    change (a replaced character, too long, empty, `.` or `..`, or a name that already looks
    hashed), a `_` and 16 hex digits of the text's SHA-256 are appended, so two different texts
    never give the same part. The result is at most `MAX_PART` characters and never `.`/`..`.
    Note: on a case-insensitive filesystem `A` and `a` still share a local file.
    """
    cleaned = _SAFE.sub("_", text)
    if (cleaned == text and 0 < len(text) <= MAX_PART and text not in (".", "..")
            and not _HASHED.search(text) and not text.startswith(TEMP_MARK)):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    if cleaned.startswith("."):
        # keeps hashed parts clear of the reserved temp-file mark and of hidden-file names
        cleaned = "_" + cleaned[1:]
    return f"{cleaned[: MAX_PART - _HASH_LEN - 1]}_{digest}"


def object_key(*parts: str) -> str:
    """Join key parts with `/`, refusing any part that is unsafe (raises InputError).

    A part may itself contain `/` (e.g. a prefix `"a/b"`); every segment is then checked.
    Refused: no parts, empty segments, `.` or `..`, a leading `/`, backslashes, NUL and other
    control characters, a segment starting with the reserved `.rcbtmp-`, a segment over 255
    bytes or a key over 1024 bytes.
    """
    if not parts:
        raise InputError("an object key needs at least one part")
    return check_key("/".join(_check_part(part) for part in parts))


def check_key(key: str) -> str:
    """Return `key` unchanged if it is a safe object key, else raise InputError."""
    if not isinstance(key, str) or not key:
        raise InputError("an object key must be a non-empty string")
    _check_chars(key)
    if key.startswith("/"):
        raise InputError(f"object key {key!r} must not be absolute")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InputError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        _check_segment(segment, key)
    return key


def check_prefix(prefix: str) -> str:
    """Return a listing prefix if safe (may be empty or end with `/`), else raise InputError."""
    if not prefix:
        return ""
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _check_part(part: str) -> str:
    if not isinstance(part, str) or not part:
        raise InputError("an object key part must be a non-empty string")
    if part.startswith("/"):
        raise InputError(f"object key part {part!r} must not be absolute")
    return part


def _check_chars(key: str) -> None:
    if "\\" in key:
        raise InputError(f"object key {key!r} must not contain a backslash")
    for char in key:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise InputError(f"object key {key!r} must not contain control characters")


def _check_segment(segment: str, key: str) -> None:
    if segment in ("", ".", ".."):
        raise InputError(f"object key {key!r} has an empty, '.' or '..' segment")
    if segment.startswith(TEMP_MARK):
        raise InputError(f"object key {key!r} uses the reserved prefix {TEMP_MARK!r}")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InputError(f"object key segment is longer than {MAX_SEGMENT_BYTES} bytes")
