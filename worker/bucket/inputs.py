"""Input images kept in the bucket: references in an item's stored input, pre-signed at submit.

An item's stored input never holds a pre-signed URL (it expires, and item ids are derived from
the input, so a resumed batch must find the same items). It holds a reference instead:

- `rcbatch-input:<sha256>.<ext>`: a local file uploaded at registration, stored under
  `<batch>/inputs/<sha256>.<ext>` in the batch's own bucket (one object per content hash);
- `rcbatch-object:<key>`: any object of the batch's bucket, e.g. another batch's output
  (`rcbatch derive`).

The submit step turns each reference into a fresh pre-signed URL just before sending
(`presigned_body`), so the URL always outlives the job that fetches it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from rcbatch.errors import InputError

from .naming import check_key, object_key

INPUT_REF = "rcbatch-input:"
OBJECT_REF = "rcbatch-object:"
#: the longest a pre-signed S3 URL may live (SigV4): seven days
PRESIGN_SECONDS = 7 * 24 * 3600
_INPUT_NAME = re.compile(r"[0-9a-f]{64}\.[a-z0-9]{1,5}")


def input_ref(sha256: str, ext: str) -> str:
    """The reference to a local file's upload, by content hash and extension (`png`)."""
    name = f"{sha256}.{ext.lower()}"
    if not _INPUT_NAME.fullmatch(name):
        raise InputError(f"not a sha256 and an image extension: {name!r}")
    return INPUT_REF + name


def object_ref(key: str) -> str:
    """The reference to an object already in the bucket (another batch's output)."""
    return OBJECT_REF + check_key(key)


def is_ref(value: Any) -> bool:
    """Whether `value` is one of the references above (not a URL to send as is)."""
    return isinstance(value, str) and value.startswith((INPUT_REF, OBJECT_REF))


def input_key(bid: str, name: str) -> str:
    """Where an uploaded local file lives: `<batch>/inputs/<sha256>.<ext>`."""
    return object_key(bid, "inputs", name)


def ref_key(value: str, bid: str) -> str:
    """The bucket key a reference names, for batch `bid`; InputError for a malformed one."""
    if value.startswith(INPUT_REF):
        name = value[len(INPUT_REF):]
        if not _INPUT_NAME.fullmatch(name):
            raise InputError(f"malformed input reference {value!r}")
        return input_key(bid, name)
    if value.startswith(OBJECT_REF):
        return check_key(value[len(OBJECT_REF):])
    raise InputError(f"not a bucket reference: {value!r}")


def has_refs(body: Mapping[str, Any]) -> bool:
    """Whether any field (or list item) of `body` is a reference."""
    return any(is_ref(v) or (isinstance(v, list) and any(is_ref(x) for x in v))
               for v in body.values())


def presigned_body(body: Mapping[str, Any], bid: str,
                   presign: Callable[[str], str]) -> dict[str, Any]:
    """`body` with every reference replaced by `presign(key)` (a URL the API can GET)."""
    def one(value: Any) -> Any:
        return presign(ref_key(value, bid)) if is_ref(value) else value

    return {name: [one(x) for x in value] if isinstance(value, list) else one(value)
            for name, value in body.items()}


def serving_problem(bucket: Any, *, api_on_loopback: bool) -> str | None:
    """Why the API could not fetch input images from `bucket`'s pre-signed URLs, or None.

    An https URL is fine; plain http only from a loopback host and only when the API is on
    loopback too (the simulator fetching from moto or MinIO on this machine).
    """
    from rcbatch.runcomfy.addresses import is_loopback_url, safe_url

    try:
        url = bucket.presigned_url(object_key("rcbatch-probe", "inputs", "probe.png"),
                                   expires=60)
    except InputError as exc:
        return exc.message
    if url.startswith("https://"):
        return None
    if url.startswith("http://") and is_loopback_url(url) and api_on_loopback:
        return None
    return (f"input images must reach the API over https, but {bucket.url} serves "
            f"{safe_url(url)}: point RCBATCH_S3_ENDPOINT_URL at an https endpoint (plain http "
            "only on loopback, with the API on loopback: the simulator)")
