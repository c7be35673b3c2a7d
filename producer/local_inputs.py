"""Local files as input images: found in a row, checked like a fetched image, referenced by hash.

An image field (`image_urls`, `images`) may name a local file: a path relative to the input
file's folder, an absolute path, or a `file://` URL. Each file is read once per submission
(however many rows name it): its sha256, size and header (runcomfy/imageinfo.py) are taken,
and the page's image rules applied exactly as preflight does for a URL (runcomfy/preflight.py's
`judge`). The row's value becomes a bucket reference, `rcbatch-input:<sha256>.<ext>`
(worker/bucket/inputs.py), so the item's input and id depend on the file's content, not on
where it was read from; the CLI uploads each file once at registration, and the submit step
sends a fresh pre-signed URL in its place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from rcbatch.errors import InputError
from rcbatch.runcomfy.catalogue import MODELS, ImageInfo, Issue
from rcbatch.runcomfy.imageinfo import read_header
from rcbatch.runcomfy.preflight import Probe, judge
from rcbatch.worker.bucket import Bucket
from rcbatch.worker.bucket.inputs import input_key, input_ref, is_ref

#: a stand-in URL for a reference while the row is checked against the model's URL rules
PLACEHOLDER_URL = "https://bucket.rcbatch.invalid/input.png"
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
               "TIFF": "tiff"}
_HEADER_BYTES = 1 << 20
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalFile:
    """One local image as read: where, its content hash, extension, and what it measures."""

    path: Path
    sha256: str
    ext: str
    info: ImageInfo | None

    @property
    def ref(self) -> str:
        """The bucket reference that stands for this file in an item's input."""
        return input_ref(self.sha256, self.ext)

    @property
    def name(self) -> str:
        """`<sha256>.<ext>`: the object's name under `<batch>/inputs/`."""
        return f"{self.sha256}.{self.ext}"


@dataclass(frozen=True)
class LocalInput:
    """A local file used by one item, at one place (`image_urls[0]`)."""

    field: str
    file: LocalFile

    def record(self, bid: str) -> dict[str, str]:
        """The manifest's entry: `{"field", "local_path", "sha256", "key"}`."""
        return {"field": self.field, "local_path": str(self.file.path),
                "sha256": self.file.sha256, "key": input_key(bid, self.file.name)}


def is_local(value: Any) -> bool:
    """Whether an image field's value names a local file (a path or a `file://` URL)."""
    if not isinstance(value, str) or not value or is_ref(value) or value.startswith("data:"):
        return False
    scheme = value.partition("://")[0].lower() if "://" in value else ""
    return scheme in ("", "file")


def local_path(value: str, base: Path) -> Path:
    """The file a local value names: `file://` URLs and absolute paths as they are, other
    paths relative to `base` (the input file's folder)."""
    if value.lower().startswith("file://"):
        return Path(unquote(urlsplit(value).path))
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def with_placeholders(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with each reference or local file replaced by a stand-in https URL, for the
    model's URL rules (a local file's own problems are reported by `LocalFiles.resolve`)."""
    def stand_in(value: Any) -> Any:
        return PLACEHOLDER_URL if is_ref(value) or is_local(value) else value

    if not any(isinstance(v, list) for v in body.values()):
        return body
    return {k: [stand_in(x) for x in v] if isinstance(v, list) else v for k, v in body.items()}


class LocalFiles:
    """The local images of one submission, each read once (by resolved path)."""

    def __init__(self) -> None:
        self._seen: dict[Path, LocalFile | str] = {}

    def files(self) -> Iterator[LocalFile]:
        """Every file read successfully so far."""
        return (f for f in self._seen.values() if isinstance(f, LocalFile))

    def resolve(self, model: Any, body: dict[str, Any], base: Path
                ) -> tuple[list[LocalInput], list[Issue]]:
        """Replace the local files of `body`'s image field with references (in place);
        the inputs found, and the issues of those files (errors and warnings)."""
        spec = MODELS.get(model) if isinstance(model, str) else None
        if spec is None or spec.image_field is None:
            return [], []
        field = spec.fields[spec.image_field]
        values = body.get(field.name)
        if not isinstance(values, list) or not any(is_local(v) for v in values):
            return [], []
        values = body[field.name] = list(values)  # the row's own list may be shared
        found: list[LocalInput] = []
        issues: list[Issue] = []
        for index, value in enumerate(values):
            if not is_local(value):
                continue
            label = f"{field.name}[{index}]"
            read = self.read(local_path(value, base))
            if isinstance(read, str):
                issues.append(Issue(label, read))
                continue
            issues += judge(field, label, _probe(read))
            values[index] = read.ref
            found.append(LocalInput(label, read))
        return found, issues

    def read(self, path: Path) -> LocalFile | str:
        """The file at `path` as read, or why it cannot be used (cached either way)."""
        key = path.resolve()
        if key not in self._seen:
            self._seen[key] = _read(key, path)
        return self._seen[key]


def _read(path: Path, shown: Path) -> LocalFile | str:
    hasher = hashlib.sha256()
    head = b""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                if len(head) < _HEADER_BYTES:
                    head += chunk[:_HEADER_BYTES - len(head)]
                hasher.update(chunk)
            size = handle.tell()
    except FileNotFoundError:
        return (f"must be an https:// URL or a local image file, and there is no file "
                f"{shown} (a relative path starts from the input file's folder)")
    except OSError as exc:
        return f"cannot read {shown}: {exc.strerror or exc}"
    header = read_header(head)
    if header is None:
        return f"{shown} is not an image file rcbatch can read"
    width, height, fmt = header
    ext = _EXTENSIONS.get(fmt, fmt.lower()[:5])
    info = ImageInfo(width, height, size, fmt, f"image/{fmt.lower()}")
    return LocalFile(path, hasher.hexdigest(), ext, info)


def _probe(file: LocalFile) -> Probe:
    return Probe(file.path.as_uri(), info=file.info)



def files_of(items: Iterable[Any]) -> list[LocalFile]:
    """The distinct local files (by content) of checked items (`ItemSpec.local_inputs`)."""
    found: dict[str, LocalFile] = {}
    for item in items:
        for used in item.local_inputs:
            found.setdefault(used.file.name, used.file)
    return list(found.values())


def upload(bucket: Bucket, bid: str, files: Iterable[LocalFile]) -> int:
    """Store each file under `<bid>/inputs/<sha256>.<ext>` unless it is there already
    (once per content hash, also when a batch is resumed); how many were stored.

    InputError when a file changed since it was checked (its hash no longer matches).
    """
    stored = 0
    for file in files:
        key = input_key(bid, file.name)
        if bucket.exists(key):
            continue
        data = file.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != file.sha256:
            raise InputError(f"{file.path} changed while the submission was checked; "
                             "submit again")
        content_type = file.info.content_type if file.info else None
        bucket.put_bytes(key, data, content_type=content_type or "application/octet-stream")
        stored += 1
    return stored
