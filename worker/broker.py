"""The Redis broker transport the workers use: kombu's, minus a busy loop.

kombu's Redis transport sends one BRPOP at a time while the worker may take more messages, and
reads its answer when the socket becomes readable, but only if the worker may still take a
message at that moment (`qos.can_consume()`). Celery raises the prefetch limit while it holds a
countdown message and lowers it again when the message becomes due and runs, so a BRPOP sent
in between is often answered (a message, or nil after its 1 s timeout) when the worker is full.
The answer is then never read, the socket stays readable, and the worker's main process spins
at a full core until the running task ends: measured, 100 % of a core through every poll task
that ran from a countdown, which is most of rcbatch's tasks (tests/test_broker.py).

`Transport` reads such an answer anyway. A nil answer just ends that BRPOP; a message is taken
one over the limit and waits in the worker like any prefetched message (acknowledged late, and
back in the queue after the visibility timeout if the worker dies). No new BRPOP is sent until
the worker may consume again, so it is never more than one.

Its channel also keeps one redis-py client for its short commands (publish, ack, restore)
instead of building a new one for each, as kombu does: a third of the CPU of publishing a
message went into building clients (py-spy, GIL-held samples). Connections still come from
kombu's pool for each command; the client is rebuilt when the pool is (after a fork, or when
kombu drops its pools).

`SentinelTransport` is the same transport for a Redis Sentinel set (kombu's SentinelChannel,
which asks the sentinels for the master each time its pool connects, plus both fixes above):
after a failover the worker's lost connection is rebuilt by Celery and reaches the new master.
worker/celery_app.py picks it for a `sentinel://` RCBATCH_REDIS_URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis

#: how Celery names this transport (the `broker_transport` setting)
TRANSPORT = "rcbatch.worker.broker:Transport"
#: the same for a Sentinel set
SENTINEL_TRANSPORT = "rcbatch.worker.broker:SentinelTransport"
#: URL schemes this transport serves (kombu's Redis transport serves both)
SCHEMES = ("redis", "rediss")


class _Poller(redis.MultiChannelPoller):
    """kombu's poller, reading every answer that arrives (see the module)."""

    def on_readable(self, fileno: int) -> None:
        """Handle the answer waiting on `fileno`, whether or not the worker is full."""
        channel, kind = self._fd_to_chan[fileno]
        channel.handlers[kind]()


class _Channel(redis.Channel):
    """kombu's channel, with one client for short commands while its pool lasts."""

    _commands: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The caller's client, else this channel's client on its current pool."""
        if client:
            yield client
            return
        pool = self.pool
        if self._commands is None or self._commands.connection_pool is not pool:
            self._commands = self._create_client()
        yield self._commands


class Transport(redis.Transport):
    """kombu's Redis transport with a poller that never leaves an answer unread and a
    channel that reuses its client."""

    Channel = _Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build kombu's transport, then swap in the poller (no channel exists yet)."""
        super().__init__(*args, **kwargs)
        self.cycle = _Poller()


class _SentinelChannel(_Channel, redis.SentinelChannel):
    """kombu's Sentinel channel (its pool follows the master), reusing its client."""


class SentinelTransport(Transport):
    """`Transport` on a Redis Sentinel set: the master is looked up through the sentinels."""

    Channel = _SentinelChannel
    default_port = redis.SentinelTransport.default_port
