"""Redis Sentinel: one `sentinel://` RCBATCH_REDIS_URL for the state store, the CLI and the
broker, and a batch that goes on through a failover of its master (tests/sentinel_cluster.py
starts a real master, replica and three sentinels on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from rcbatch.errors import InputError
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.worker import broker, keys
from rcbatch.worker.celery_app import celery_config
from rcbatch.worker.connection import SentinelUrl, parse_sentinel_url, redis_client
from rcbatch.worker.state import NewItem, Store
from tests.cluster import Workers, wait_finished
from tests.journeys import T2I, Shell, rows, verified_outputs
from tests.sentinel_cluster import SentinelCluster

TOKEN = "sentinel-token-71c2"
ITEMS = 30


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    url = "sentinel://app:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:26380/cache/2?sentinel_password=s"
    assert parse_sentinel_url(url) == SentinelUrl(
        (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)), "cache", 2,
        "app", "p@ss", "s")
    assert parse_sentinel_url("sentinel://h:1/m") == SentinelUrl((("h", 1),), "m")
    assert "p@ss" not in repr(parse_sentinel_url(url))


@pytest.mark.parametrize("url", [
    "sentinel://:hunter2@h:1", "sentinel://:hunter2@/m", "sentinel://:hunter2@h:x/m",
    "sentinel://:hunter2@h:1/m/zero", "sentinel://:hunter2@h:1/m/0/extra",
    "sentinel://:hunter2@h:1/m?password=x"])
def test_a_bad_sentinel_url_is_a_usage_error_that_keeps_the_password_out(url: str) -> None:
    with pytest.raises(InputError) as caught:
        redis_client(url)
    assert "hunter2" not in str(caught.value)


def test_the_broker_reaches_the_same_set_through_kombus_sentinel_form() -> None:
    config = celery_config("sentinel://:pw;1@127.0.0.1:7001,127.0.0.1:7002/cache/3")
    assert config["broker_transport"] == broker.SENTINEL_TRANSPORT
    assert config["broker_url"] == ("sentinel://:pw%3B1@127.0.0.1:7001/3;"
                                    "sentinel://:pw%3B1@127.0.0.1:7002/3")
    options = config["broker_transport_options"]
    assert options["master_name"] == "cache" and options["socket_timeout"] == 10


def _one_item(store: Store, bid: str) -> None:
    item = NewItem("a", "f.jsonl", 1, T2I, {"prompt": "x"})
    store.register(bid, {"name": bid}, [item])


def test_a_state_change_works_after_the_server_forgot_its_scripts(
        redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    _one_item(store, "b1")
    assert store.transition("b1", "a", expect=["pending"], to="claimed")[0]
    redis_client.script_flush()  # what a new master after a failover looks like
    assert store.transition("b1", "a", expect=["claimed"], to="pending")[0]
    assert store.counts("b1")["pending"] == 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path / "sentinel-set") as running:
        yield running


@pytest.mark.e2e
def test_the_state_store_follows_the_master_through_a_failover(
        cluster: SentinelCluster) -> None:
    store = Store(redis_client(cluster.url))
    _one_item(store, "b1")
    assert store.transition("b1", "a", expect=["pending"], to="claimed")[0]
    old = cluster.kill_master()
    cluster.wait_new_master(old)
    # the new master never ran the script by its hash: NOSCRIPT, loaded again, then run
    assert store.transition("b1", "a", expect=["claimed"], to="pending")[0]
    assert store.item("b1", "a")["state"] == "pending"  # type: ignore[index]


def _rcbatch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rcbatch", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def _completed(store: Store, bid: str) -> int:
    try:
        return store.counts(bid).get("completed", 0)
    except redis.RedisError:
        return 0


@pytest.mark.e2e
def test_a_batch_goes_on_through_a_failover_of_its_master(
        cluster: SentinelCluster, tmp_path: Path) -> None:
    config = SimulatorConfig(token=TOKEN, concurrency=6, duration=(0.5, 1.5), seed=3,
                             image_scale=0.02)
    with SimulatorServer(config) as sim:
        env = {"RCBATCH_REDIS_URL": cluster.url, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN,
               "RCBATCH_RUNCOMFY_BASE_URL": sim.base_url, "RCBATCH_SUBMIT_RATE": "50",
               "RCBATCH_MAX_IN_FLIGHT": "6",  # submits go on all through the batch
               "RCBATCH_BUCKET_URL": (tmp_path / "bucket").as_uri(),
               "RCBATCH_STATE_DIR": str(tmp_path / "state")}
        spec = tmp_path / "batch.jsonl"
        spec.write_text("".join(json.dumps(r) + "\n" for r in rows(ITEMS, "failover")))
        with Workers(env, tmp_path, count=2, concurrency=2) as workers:
            done = _rcbatch("submit", str(spec), "--json", env=env)
            assert done.returncode == 0, done.stderr
            bid = json.loads(done.stdout)["batch_id"]
            store = Store(redis_client(cluster.url))
            deadline = time.monotonic() + 120
            while _completed(store, bid) < ITEMS // 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            before = store.counts(bid)
            assert before["completed"] < ITEMS, "the batch ended before the failover"
            old, killed = cluster.kill_master(), time.monotonic()
            cluster.wait_new_master(old)
            print(f"failover: {time.monotonic() - killed:.1f} s without a master; "
                  f"counts at the kill {before}")
            counts = wait_finished(store, bid, timeout=240)
            assert counts["completed"] == ITEMS, (counts, workers.logs(), cluster.logs())
            manifest = _rcbatch("manifest", bid, env=env)
            assert manifest.returncode == 0, manifest.stderr
        stats = httpx.get(f"{sim.base_url}/_sim/stats", timeout=10).json()
    assert verified_outputs(manifest.stdout.strip()) == {"completed": ITEMS}
    assert stats["duplicate_submits"] == 0 and stats["submits"] == ITEMS


@pytest.mark.e2e
def test_run_uses_a_sentinel_set_and_starts_no_redis_of_its_own(
        cluster: SentinelCluster, tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    shell = Shell(home, cwd, {"RCBATCH_REDIS_URL": cluster.url, "RCBATCH_SUBMIT_RATE": "200"})
    spec = shell.write("s.jsonl", rows(3))
    done = shell.run("run", str(spec), "--simulate", "--name", "via-sentinel", "--workers", "1",
                     "--simulate-args", "--duration 0.2-0.4 --image-scale 0.05")
    assert done.returncode == 0, done.stderr
    assert shell.status("via-sentinel")["counts"]["completed"] == 3
    assert cluster.master().client().exists(keys.BATCHES)
    assert not list(home.rglob("embedded-redis.lock")), "run started a Redis of its own"
