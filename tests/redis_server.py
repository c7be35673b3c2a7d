"""pytest fixtures backed by a real embedded Redis (valkey-server), for any test that needs one.

To use them everywhere, add these lines to tests/conftest.py:

    from tests.redis_server import redis_client, redis_server, redis_url

    __all__ = ["redis_client", "redis_server", "redis_url"]

- `redis_server` (session): one EmbeddedRedis in a temporary folder, stopped at session end.
- `redis_url` (function): its URL, with every database flushed before the test; if an earlier
  test killed or stopped the server it is restarted (same port, same data) first.
- `redis_client` (function): a redis-py client on that URL, bytes in and out.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from rcbatch.cli.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real Redis for the whole test session, on a free 127.0.0.1 port."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server's URL, empty (FLUSHALL) at the start of the test."""
    if redis_server.pid is None:
        redis_server.restart()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client on the clean database (decode_responses=False: values are bytes)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()
