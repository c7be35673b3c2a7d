"""Building the real parts (Redis, the API client, buckets) from settings, at the edge.

This module sits above every step, so it is where the runtime's hooks are wired: the runtime
(below the steps) calls `refill` when an item ends, and that is `submission.refill`.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx
import redis

from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.worker import submission
from rcbatch.worker.bucket import Bucket, open_bucket
from rcbatch.worker.connection import check_redis, redis_client
from rcbatch.worker.runtime import Limits, Publisher, Runtime
from rcbatch.worker.state import Store


def api_client(settings: Any) -> RunComfyClient:
    """The RunComfy client configured from settings."""
    timeout = httpx.Timeout(connect=settings.http_connect_timeout,
                            read=settings.http_read_timeout,
                            write=settings.http_read_timeout, pool=10.0)
    return RunComfyClient(settings.runcomfy_api_token or "", settings.runcomfy_base_url,
                          timeout=timeout, max_output_bytes=settings.max_output_bytes)


def limits_from(settings: Any) -> Limits:
    """The pipeline limits from settings.

    Every reconciler deadline follows `step_grace`: a submit nudge lost with a killed worker
    is re-sent after twice the grace, and a submit that crashed mid-call becomes
    submit_uncertain once the longest the call itself could take (connect, write and read
    timeouts) plus the grace has passed.
    """
    grace = settings.step_grace
    longest_submit = settings.http_connect_timeout + 2 * settings.http_read_timeout
    return Limits(max_in_flight=settings.max_in_flight, submit_rate=settings.submit_rate,
                  max_output_bytes=settings.max_output_bytes, step_grace=grace,
                  claim_due=2 * grace, submit_due=longest_submit + grace)


def build_runtime(settings: Any, publisher: Publisher,
                  state: redis.Redis | None = None) -> Runtime:
    """A runtime over the real Redis (`state`, or a client of its own), API and buckets
    named by `settings`."""
    @functools.lru_cache(maxsize=8)
    def buckets(url: str) -> Bucket:
        return open_bucket(url or settings.resolved_bucket_url(),
                           s3_endpoint_url=settings.s3_endpoint_url)

    state = state if state is not None else redis_client(settings.redis_url)
    return Runtime(store=Store(state, retention=settings.retention),
                   client=api_client(settings), buckets=buckets, publisher=publisher,
                   limits=limits_from(settings), refill=submission.refill)


def warm_up(rt: Runtime, settings: Any) -> None:
    """Pay a worker process's one-off set-up before its first task rather than inside it:
    the API client's TLS context (45 ms of CPU here) and the default bucket (for S3, importing
    boto3 and making its client: a quarter second and more). Without this, the first submits
    of a batch wait for the one and its first downloads for the other, in every pool child."""
    rt.client.prepare()
    rt.buckets(settings.resolved_bucket_url())


__all__ = ["api_client", "build_runtime", "check_redis", "limits_from", "redis_client",
           "warm_up"]
