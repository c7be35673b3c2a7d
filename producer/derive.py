"""A batch made from another batch's outputs (`rcbatch derive`): one item per image output.

Each completed image output of the parent batch becomes a row for the new model, the output
fed into the model's image field as a bucket reference (`rcbatch-object:<key>`, pre-signed by
the submit step like a local file's upload) plus the `--set` fields, then swept and checked
like any input file's rows. A row is named `<parent batch>/<item>:<n>` (the parent item and
its output number) wherever an input file's row would be named `FILE:LINE`, and each item
keeps `parent: {"batch_id", "item_id", "output", "key"}` for the manifest.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcbatch.errors import InputError, Problem, ValidationFailed
from rcbatch.producer.reader import Row
from rcbatch.producer.spec import CheckResult, ItemSpec, check_rows
from rcbatch.producer.sweep import expand_rows
from rcbatch.runcomfy.catalogue import MODELS, ImageInfo, unknown_model_issue
from rcbatch.runcomfy.imageinfo import read_header
from rcbatch.runcomfy.preflight import Probe, judge
from rcbatch.worker import keys
from rcbatch.worker.bucket import Bucket
from rcbatch.worker.bucket.inputs import object_ref


@dataclass(frozen=True)
class Selection:
    """Which of the parent's items feed the new batch: `--only` ids and `--where status=`."""

    only: frozenset[str] | None = None
    status: str = "completed"

    @classmethod
    def from_options(cls, only: str | None, where: str | None) -> Selection:
        """Parse `--only ID1,ID2` and `--where status=STATE` (InputError when malformed)."""
        status = "completed"
        if where:
            name, sep, value = where.partition("=")
            if name.strip() != "status" or not sep or value.strip() not in keys.PUBLIC_STATES:
                raise InputError(f"--where {where!r}: expected status=STATE, one of "
                                 f"{', '.join(keys.PUBLIC_STATES)}")
            status = value.strip()
        ids = frozenset(p.strip() for p in only.split(",") if p.strip()) if only else None
        return cls(ids, status)

    def takes(self, record: Mapping[str, str]) -> bool:
        """Whether this parent item is selected."""
        state = keys.PUBLIC_STATE.get(record.get("state", ""), record.get("state"))
        return state == self.status and (self.only is None or record.get("id") in self.only)


def parent_rows(pbid: str, records: Iterable[Mapping[str, str]], model: str,
                sets: Mapping[str, Any], selection: Selection) -> list[Row]:
    """One row per image output of the selected parent items, in the parent's order."""
    spec = MODELS.get(model)
    if spec is None:
        raise InputError(f"--model: {unknown_model_issue(model).message}")
    if spec.image_field is None:
        raise InputError(f"--model {model} takes no input image, so nothing can feed it")
    rows = []
    for record in records:
        if not selection.takes(record):
            continue
        for n, output in enumerate(json.loads(record.get("outputs") or "[]")):
            if not str(output.get("content_type", "")).startswith("image/"):
                continue
            data = {"model": model, **sets, spec.image_field: [object_ref(output["key"])]}
            rows.append(Row(f"{pbid}/{record['id']}", n, data))
    return rows


def derive_items(rows: Sequence[Row], *, sweep: Mapping[str, list[Any]],
                 allow_loopback_http: bool) -> CheckResult:
    """The items of the derived rows after sweeps, each naming its parent output;
    ValidationFailed listing every problem when a row is wrong."""
    expanded, problems = expand_rows(rows, cli_sweep=sweep)
    checked = check_rows(expanded, allow_loopback_http=allow_loopback_http)
    checked.problems = problems + checked.problems
    checked.raise_if_invalid()
    by_row = {(row.file, row.line): row for row in rows}
    checked.items = [dataclasses.replace(item, parent=_parent(by_row[(item.file, item.line)]))
                     for item in checked.items]
    return checked


def _parent(row: Row) -> dict[str, Any]:
    pbid, _, iid = row.file.partition("/")
    spec = MODELS[row.data["model"]]
    key = row.data[spec.image_field or ""][0].partition(":")[2]
    return {"batch_id": pbid, "item_id": iid, "output": row.line, "key": key}


def preflight_outputs(items: Sequence[ItemSpec], bucket: Bucket) -> list[Problem]:
    """The new model's image rules applied to each parent output (its header read from the
    bucket): errors and warnings, as `Problem`s with their severity in `.field`'s issue."""
    found: list[Problem] = []
    infos: dict[str, ImageInfo | str] = {}
    for item in items:
        parent = item.parent or {}
        key = str(parent.get("key", ""))
        if key not in infos:
            infos[key] = _measure(bucket, key)
        info = infos[key]
        spec = MODELS[item.model]
        field = spec.fields[spec.image_field or ""]
        probe = Probe(key, error=info) if isinstance(info, str) else Probe(key, info=info)
        for issue in judge(field, f"{field.name}[0]", probe):
            if issue.severity == "error":
                found.append(Problem(item.file, item.line, issue.field, issue.message))
    return found


def check_outputs(items: Sequence[ItemSpec], bucket: Bucket) -> None:
    """Raise ValidationFailed when a parent output breaks the new model's image rules."""
    problems = preflight_outputs(items, bucket)
    if problems:
        raise ValidationFailed(sorted(set(problems), key=lambda p: (p.file, p.line)))


def _measure(bucket: Bucket, key: str) -> ImageInfo | str:
    try:
        data = bucket.get_bytes(key)
    except KeyError:
        return f"the parent output {key} is no longer in the bucket"
    header = read_header(data)
    if header is None:
        return f"the parent output {key} is not an image rcbatch can read"
    width, height, fmt = header
    return ImageInfo(width, height, len(data), fmt)
