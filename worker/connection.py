"""Connections to Redis: the one place that decides how a client is built.

Light on purpose (redis-py and the error tree only), so a command such as `rcbatch status`
reaches Redis without importing the API client or Celery.
"""

from __future__ import annotations

import redis

from rcbatch.errors import ServiceUnavailable


def redis_client(url: str) -> redis.Redis:
    """A redis-py client with timeouts and health checks (no silent half-open stalls)."""
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=10, socket_keepalive=True,
        health_check_interval=10, retry_on_timeout=True)


def check_redis(client: redis.Redis) -> None:
    """Raise ServiceUnavailable when Redis does not answer."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis is not reachable: {type(exc).__name__}") from exc
