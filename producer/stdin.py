"""Reading a spec from standard input (the path `-`): a stream with no name and no suffix.

A stream cannot be reopened or rewound, so its format is told from its first non-blank line
(a JSON object or array: JSON Lines; anything else: CSV), and the lines read to tell it are
given back to the reader.
"""

from __future__ import annotations

from typing import Protocol

#: the path that means standard input, and the FILE its problems name
STDIN_PATH = "-"
STDIN_NAME = "<stdin>"

_BOM = b"\xef\xbb\xbf"


class LineSource(Protocol):
    """What the readers need of a byte stream: `readline` with a size limit."""

    def readline(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes, ending at the first line break."""
        ...


def is_stdin(path: object) -> bool:
    """True when `path` is `-`, standard input."""
    return str(path) == STDIN_PATH


class Replay:
    """A stream whose leading lines were read ahead (to tell its format) and are replayed.

    Leading blank lines are kept as a count, not as bytes, so a stream of nothing but line
    breaks holds no memory; each is replayed as `\\n` (a blank line in either format).
    """

    def __init__(self, stream: LineSource, max_line: int) -> None:
        self._stream = stream
        self._blank = 0
        self.first = b""
        while line := stream.readline(max_line + 1):
            if line.removeprefix(_BOM).strip():
                self.first = line
                break
            self._blank += 1
        self._pending = self.first

    def looks_like_jsonl(self) -> bool:
        """True when the first non-blank line opens a JSON object or array (or none has)."""
        return self.first.removeprefix(_BOM).lstrip()[:1] in (b"{", b"[", b"")

    def readline(self, size: int = -1, /) -> bytes:
        """The next line (or `size` bytes of it): the lines read ahead first."""
        if self._blank:
            self._blank -= 1
            return b"\n"
        if self._pending:
            cut = len(self._pending) if size < 0 else size
            out, self._pending = self._pending[:cut], self._pending[cut:]
            return out
        return self._stream.readline(size)
