"""Registering a checked submission as a batch in Redis, resuming one under the same name."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rcbatch.config.prices import estimate
from rcbatch.producer.spec import ItemSpec
from rcbatch.producer.stdin import is_stdin
from rcbatch.worker.state import NewItem, Registration, Store


def default_name(paths: Sequence[Path]) -> str:
    """A batch name for files given without --name: the same files give the same name.

    Standard input (`-`) has no such identity: a submission reading it gets a fresh name,
    so it never resumes (and adds to) an earlier, unrelated one.
    """
    if any(is_stdin(p) for p in paths):
        return f"stdin-{secrets.token_hex(4)}"
    joined = "\n".join(str(p.resolve()) for p in paths)
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in paths[0].stem)[:40]
    return f"{stem or 'batch'}-{digest}"


def new_batch_id(now: float | None = None) -> str:
    """A fresh, sortable, key-safe batch id such as `20261123-004911-3fa2c1`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


def register_batch(store: Store, items: Sequence[ItemSpec], *, name: str, bucket_url: str,
                   sources: Sequence[str], start: bool = True, start_at: float | None = None,
                   max_cost: float | None = None,
                   prices: Mapping[str, float] | None = None,
                   stage: Callable[[str], None] | None = None,
                   extra: Mapping[str, str] | None = None) -> Registration:
    """Create the batch `name` (or extend the existing one) with `items`; nothing is sent.

    `max_cost` (USD) caps what the batch may reserve: each submission reserves its
    estimated cost first, atomically, so workers together never pass it. `stage` is called
    with the batch id before any item is registered (uploading the local input files, which
    no worker may submit before they are in the bucket). `extra` adds fields to the batch
    record (a derived batch names its parent).
    """
    bid = store.batch_id_for_name(name) or new_batch_id()
    if stage is not None:
        stage(bid)
    record = {"name": name, "bucket_url": bucket_url, "sources": "\n".join(sources),
              **(extra or {})}
    if start_at is not None:
        record["start_at"] = str(start_at)
    if max_cost is not None:
        record["max_cost"] = repr(float(max_cost))
        if store.batch(bid):  # resuming under a new cap: the new cap applies
            store.set_batch(bid, max_cost=record["max_cost"])
    new_items = (NewItem(item_id=s.item_id, file=s.file, line=s.line, model=s.model,
                         input=s.input, extra=_extra(s, prices, bid)) for s in items)
    registration = store.register(bid, record, new_items, start=start)
    if start and (store.batch(bid) or {}).get("state") == "paused":
        # submitting again resumes, whatever paused it (an outage: its workers try again)
        store.set_batch(bid, state="running", pause_kind="", pause_reason="")
    return registration


def _extra(spec: ItemSpec, prices: Mapping[str, float] | None, bid: str) -> dict[str, str]:
    extra = {"estimate": repr(estimate(spec.model, spec.input, prices))}
    if spec.sweep:
        extra["sweep"] = json.dumps(spec.sweep, ensure_ascii=False)
    if spec.local_inputs:
        extra["inputs"] = json.dumps([i.record(bid) for i in spec.local_inputs],
                                     ensure_ascii=False)
    if spec.parent:
        extra["parent"] = json.dumps(spec.parent, ensure_ascii=False)
    if spec.unchecked:
        extra["unchecked_model"] = "1"
    return extra


def estimate_total(items: Sequence[ItemSpec], prices: Mapping[str, float] | None) -> float:
    """The estimated USD cost of all items (config/prices.py)."""
    return sum(estimate(i.model, i.input, prices) for i in items)
