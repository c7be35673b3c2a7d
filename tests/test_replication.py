"""With replicas (a Sentinel set), a submit is sent only once its `submitting` mark is on a
replica: a failover that dropped the mark would otherwise let the item be submitted again."""

from __future__ import annotations

import fakeredis
import pytest

from rcbatch.worker import keys
from rcbatch.worker.state import Store
from tests.test_steps import Harness


def _replicas(h: Harness, acked: int, replicas: int = 1) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    def wait(replicas: int, timeout_ms: int) -> int:
        calls.append((replicas, timeout_ms))
        return acked

    h.store.replicated = True
    h.store.redis.wait = wait
    h.store.redis.info = lambda section: {"connected_slaves": replicas}
    return calls


def test_a_submit_waits_for_its_mark_to_reach_a_replica() -> None:
    h = Harness()
    calls = _replicas(h, acked=1)
    [iid] = h.register(1)
    h.drive()
    assert h.state(iid) == keys.COMPLETED
    assert calls and len(h.api.calls("submit")) == 1


def test_an_unreplicated_mark_holds_the_submit_back() -> None:
    h = Harness()
    _replicas(h, acked=0)
    [iid] = h.register(1)
    h.step()  # the submit task
    assert h.api.calls("submit") == []
    assert h.state(iid) == keys.CLAIMED
    assert "replica" in h.store.item("b", iid)["last_error"]  # type: ignore[index]


@pytest.mark.parametrize("client", [fakeredis.FakeRedis()])
def test_a_plain_redis_needs_no_replica(client: fakeredis.FakeRedis) -> None:
    store = Store(client)
    assert store.replicated is False and store.on_a_replica()


def test_a_master_without_replicas_sends_at_once() -> None:
    h = Harness()
    calls = _replicas(h, acked=0, replicas=0)
    [iid] = h.register(1)
    h.drive()
    assert h.state(iid) == keys.COMPLETED and calls == []
