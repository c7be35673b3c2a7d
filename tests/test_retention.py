"""Retention: a finished batch's records expire from Redis, a tombstone answers `status` and
`ls`, a retry or new items bring a recent batch back, `rcbatch prune` drops old ones now."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from rcbatch.producer.batch import register_batch
from rcbatch.producer.spec import ItemSpec
from rcbatch.worker import keys, operations, retention
from rcbatch.worker.state import NewItem, Store

RCBATCH = Path(sys.executable).parent / "rcbatch"  # the venv running the tests
DAY = 86_400.0


def items(n: int, start: int = 0) -> list[NewItem]:
    return [NewItem(f"i{k}", "f.jsonl", k + 1, "m", {"prompt": f"p{k}"})
            for k in range(start, start + n)]


def run_to_the_end(store: Store, bid: str, ends: dict[str, str], *, at: float) -> None:
    """Move the claimed items to their end states and finish the batch as the manifest task
    does (finished_at, then mark_inactive)."""
    for iid, _ in store.claim(bid, cap=1000, lease=60, claim_due=60, limit=1000):
        end = ends.get(iid, keys.COMPLETED)
        error = {"kind": "job_failed", "message": "boom"} if end == keys.FAILED else None
        store.transition(bid, iid, expect=(keys.CLAIMED,), to=end, due="-", inflight="-",
                         values={"finished_at": at, "error": json.dumps(error)})
    store.set_batch(bid, finished_at=str(at), reserved_cost="0.25")
    store.mark_inactive(bid)


def finished_batch(store: Store, bid: str = "b1", name: str = "nightly", n: int = 3,
                   ends: dict[str, str] | None = None, at: float | None = None) -> str:
    store.register(bid, {"name": name, "bucket_url": "file:///srv/out"}, items(n))
    run_to_the_end(store, bid, ends or {}, at=store.clock() if at is None else at)
    return bid


def pttl(client: Any, key: str) -> int:
    """Milliseconds left of a key's expiry; -1: none, -2: no such key."""
    return int(client.pttl(key))


def batch_keys(client: redis.Redis, bid: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"rcb:*{bid}*")
                  if not k.decode().startswith("rcb:tombstone:"))  # SCAN has no order


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


@pytest.fixture
def cli(redis_url: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {**os.environ, "HOME": str(tmp_path), "RCBATCH_REDIS_URL": redis_url,
           "RCBATCH_STATE_DIR": str(tmp_path / "state"),
           "RCBATCH_BUCKET_URL": (tmp_path / "bucket").as_uri()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(RCBATCH), *args], env=env, cwd=tmp_path, text=True,
                              capture_output=True, timeout=60)
    return run


def test_finishing_a_batch_gives_every_record_one_expiry_and_leaves_a_tombstone(
        redis_client: redis.Redis) -> None:
    store = Store(redis_client, retention=2 * DAY)
    bid = finished_batch(store, ends={"i2": keys.FAILED})

    ttls = {key: pttl(redis_client, key) for key in batch_keys(redis_client, bid)}
    assert len(ttls) == 3 + 3  # batch, counts, order and the three items
    assert all(2 * DAY * 1000 - 60_000 < ttl <= 2 * DAY * 1000 for ttl in ttls.values()), ttls
    assert max(ttls.values()) - min(ttls.values()) < 1000  # they all go together
    assert bid not in store.active_batches()

    stone = retention.tombstone(store, bid)
    assert stone is not None
    assert (stone["id"], stone["name"], stone["state"], stone["total"]) == (
        bid, "nightly", "finished", "3")
    assert json.loads(stone["counts"])["completed"] == 2
    assert json.loads(stone["counts"])["failed"] == 1
    assert float(stone["spend"]) == 0.25 and float(stone["created"]) > 0
    assert float(stone["expires_at"]) == pytest.approx(float(stone["finished"]) + 2 * DAY)
    assert stone["manifest"] == f"file:///srv/out/{bid}/manifest.jsonl"
    assert pttl(redis_client, keys.tombstone(bid)) > max(ttls.values()) + 80 * DAY * 1000


def test_a_batch_with_an_item_still_running_keeps_its_records(
        redis_client: redis.Redis) -> None:
    store = Store(redis_client, retention=DAY)
    store.register("b1", {"name": "n"}, items(2))
    store.mark_inactive("b1")
    assert "b1" in store.active_batches()
    assert all(pttl(redis_client, k) == -1 for k in batch_keys(redis_client, "b1"))
    assert retention.tombstone(store, "b1") is None


def test_expired_records_leave_status_and_ls_answering_from_the_tombstone(
        redis_client: redis.Redis, cli: Callable[..., subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    store = Store(redis_client, retention=0.3)
    bid = finished_batch(store, ends={"i0": keys.FAILED})
    wait_until(lambda: not batch_keys(redis_client, bid))  # Redis's own expiry

    done = cli("status", "nightly", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["batch_id"], doc["state"], doc["total"], doc["expired"]) == (
        bid, "finished", 3, True)
    assert (doc["counts"]["completed"], doc["counts"]["failed"]) == (2, 1)
    assert doc["manifest"] == f"file:///srv/out/{bid}/manifest.jsonl"
    text = cli("status", bid).stdout
    assert "records expired from Redis on" in text and doc["manifest"] in text

    listed = json.loads(cli("ls", "--json").stdout)
    assert [(b["batch_id"], b["name"], b["state"], b["expired"]) for b in listed] == [
        (bid, "nightly", "finished", True)]
    assert listed[0]["counts"]["completed"] == 2 and listed[0]["spend"] == 0.25
    assert "(records expired)" in cli("ls").stdout


def test_retry_of_an_expired_batch_says_when_and_where_its_manifest_is(
        redis_client: redis.Redis, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    store = Store(redis_client, retention=0.2)
    bid = finished_batch(store, ends={"i1": keys.FAILED})
    wait_until(lambda: not batch_keys(redis_client, bid))

    done = cli("retry", "nightly")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"records expired from Redis on {day}" in lines[0]
    assert f"file:///srv/out/{bid}/manifest.jsonl" in lines[0]
    assert redis_client.exists(keys.ACTIVE) == 0  # nothing came back


def test_retry_of_a_recent_batch_removes_its_expiry(redis_client: redis.Redis) -> None:
    store = Store(redis_client, retention=DAY)
    bid = finished_batch(store, n=4, ends={"i3": keys.FAILED})
    failed = [r for r in store.iter_items(bid) if r["state"] == keys.FAILED]

    assert operations.retry_items(store, bid, failed) == 1
    # batch, counts, order, the pending list it is back on, and the four items
    assert [pttl(redis_client, k) for k in batch_keys(redis_client, bid)] == [-1] * 8
    assert retention.tombstone(store, bid) is None
    assert bid in store.active_batches()

    # finishing again gives a fresh expiry, counted from the new finish
    run_to_the_end(store, bid, {}, at=store.clock())
    assert all(pttl(redis_client, k) > 0 for k in batch_keys(redis_client, bid))
    assert json.loads(retention.tombstone(store, bid)["counts"])["completed"] == 4  # type: ignore[index]


def test_new_items_under_the_name_of_a_recent_batch_remove_its_expiry(
        redis_client: redis.Redis) -> None:
    store = Store(redis_client, retention=DAY)
    bid = finished_batch(store)
    spec = ItemSpec(item_id="new", file="f.jsonl", line=9, model="m", input={"prompt": "x"})
    reg = register_batch(store, [spec], name="nightly", bucket_url="file:///srv/out",
                         sources=["f.jsonl"])
    assert reg.batch_id == bid and reg.added == 1
    assert all(pttl(redis_client, k) == -1 for k in batch_keys(redis_client, bid))
    assert retention.tombstone(store, bid) is None


def test_a_name_whose_batch_expired_goes_to_a_new_batch_and_ls_shows_both(
        redis_client: redis.Redis, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    store = Store(redis_client, retention=0.2)
    old = finished_batch(store)
    wait_until(lambda: not batch_keys(redis_client, old))

    spec = ItemSpec(item_id="a", file="f.jsonl", line=1, model="m", input={"prompt": "x"})
    new = register_batch(store, [spec], name="nightly", bucket_url="file:///srv/out",
                         sources=["f.jsonl"]).batch_id
    assert new != old and store.batch_id_for_name("nightly") == new
    assert json.loads(cli("status", "nightly", "--json").stdout)["batch_id"] == new
    listed = [(b["batch_id"], b["expired"]) for b in json.loads(cli("ls", "--json").stdout)]
    assert sorted(listed) == sorted([(new, False), (old, True)])


def test_prune_drops_only_batches_finished_longer_ago_than_asked(
        redis_client: redis.Redis, cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    store = Store(redis_client)
    now = time.time()
    old = finished_batch(store, "old", "old", n=5, at=now - 5 * 3600)
    recent = finished_batch(store, "recent", "recent", at=now - 600)
    store.register("running", {"name": "running", "created_at": "1"}, items(2))
    running_keys = batch_keys(redis_client, "running")

    done = cli("prune", "--older-than", "2h")
    assert done.returncode == 0, done.stderr
    assert "pruned 1 finished batches (8 Redis keys)" in done.stdout  # 5 items + 3
    assert batch_keys(redis_client, old) == []
    assert retention.tombstone(store, old) is not None
    assert len(batch_keys(redis_client, recent)) == 6
    assert batch_keys(redis_client, "running") == running_keys
    assert json.loads(cli("status", "old", "--json").stdout)["expired"] is True

    again = cli("prune", "--older-than", "0")
    assert "pruned 1 finished batches" in again.stdout
    assert store.batch(recent) is None and store.batch("running") is not None
    assert cli("prune", "--older-than", "soon").returncode == 2


def test_the_sweep_expires_batches_finished_before_retention_and_forgets_dead_ones(
        redis_client: redis.Redis) -> None:
    store = Store(redis_client, retention=DAY)
    store.register("before", {"name": "before"}, items(2))
    for iid, _ in store.claim("before", cap=10, lease=60, claim_due=60):
        store.transition("before", iid, expect=(keys.CLAIMED,), to=keys.COMPLETED,
                         due="-", inflight="-")
    store.set_batch("before", finished_at=str(store.clock() - 3600))
    redis_client.zrem(keys.ACTIVE, "before")  # finished under the code without retention
    redis_client.zadd(keys.BATCHES, {"gone": 1.0})
    redis_client.hset(keys.NAMES, "gone-name", "gone")
    store.register("busy", {"name": "busy"}, items(1))

    swept = retention.sweep(store, force=True)
    assert swept == retention.Swept(sealed=1, forgotten=1)
    assert all(0 < pttl(redis_client, k) <= (DAY - 3500) * 1000
               for k in batch_keys(redis_client, "before"))
    assert retention.tombstone(store, "before") is not None
    assert store.all_batches() == ["before", "busy"]
    assert redis_client.hget(keys.NAMES, "gone-name") is None
    assert all(pttl(redis_client, k) == -1 for k in batch_keys(redis_client, "busy"))

    redis_client.zadd(keys.BATCHES, {"gone-too": 2.0})
    assert retention.sweep(store) == retention.Swept(0, 1)  # the first sweep of the hour
    redis_client.zadd(keys.BATCHES, {"gone-3": 3.0})
    assert retention.sweep(store) == retention.Swept(0, 0)  # then held for SWEEP_EVERY


@pytest.mark.parametrize(("text", "seconds"), [
    ("3d", 3 * DAY), ("12h", 43_200), ("30m", 1800), ("45s", 45), ("90", 90), ("1.5h", 5400)])
def test_ages_read_as_seconds(text: str, seconds: float) -> None:
    assert retention.parse_age(text) == seconds
