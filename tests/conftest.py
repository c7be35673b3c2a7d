"""Shared fixtures: a real Redis server process (embedded valkey) for the whole session, and
a moto S3 server and each kind of bucket for the bucket tests."""

from tests.buckets import bucket, moto
from tests.redis_server import redis_client, redis_server, redis_url

__all__ = ["bucket", "moto", "redis_client", "redis_server", "redis_url"]
