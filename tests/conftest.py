"""Shared fixtures: a real Redis server process (embedded valkey) for the whole session."""

from tests.redis_server import redis_client, redis_server, redis_url

__all__ = ["redis_client", "redis_server", "redis_url"]
