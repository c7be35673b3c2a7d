"""Connections to Redis: the one place that decides how a client is built.

Light on purpose (redis-py and the error tree only), so a command such as `rcbatch status`
reaches Redis without importing the API client or Celery.

`RCBATCH_REDIS_URL` names either one server (`redis://`, `rediss://`, `unix://`, as redis-py
reads them) or a Redis Sentinel set:

    sentinel://[[USER]:PASSWORD@]HOST1:PORT1,HOST2:PORT2,HOST3:PORT3/MASTER_NAME[/DB]
        [?sentinel_password=SENTINEL_PASSWORD]

The hosts are the sentinels (port 26379 when left out), MASTER_NAME the name they monitor the
master under, DB the database (0 when left out). USER/PASSWORD authenticate to the master, as
in a `redis://` URL; sentinels that ask for a password of their own get `sentinel_password`.
Parts are percent-decoded (a password with `@`, `/`, `,` or `;` in it is written `%40`...).

Why this form rather than kombu's (`sentinel://h1:p1;sentinel://h2:p2` plus a `master_name`
transport option): the master's name and database belong to the address, and rcbatch has one
setting for it that the state store, the CLI and the broker all read; a second setting for
the name could disagree with the first. The broker's form is derived from this one
(`kombu_broker`, used by worker/celery_app.py).

A Sentinel URL gives a client whose connections ask the sentinels where the master is each
time they connect, so after a failover the next command reaches the new master; commands sent
while there is no master fail like commands to a stopped server (the callers already retry
or re-drive those). Lua scripts survive a failover: the new master has none cached, and
redis-py's `Script` objects (every script rcbatch runs by its hash) load theirs again on
NOSCRIPT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from rcbatch.errors import InputError, ServiceUnavailable

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
#: the options of every client: a silently dropped connection is noticed in seconds
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10, "socket_connect_timeout": 10, "socket_keepalive": True,
    "health_check_interval": 10, "retry_on_timeout": True}
_FORM = "sentinel://[[user]:password@]host:port[,host:port...]/MASTER_NAME[/DB]"


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed Sentinel URL (see the module docstring)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:
        # the passwords stay out of logs and error messages
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelUrl({hosts}/{self.master}/{self.db})"


def is_sentinel_url(url: str) -> bool:
    """Whether `url` names a Sentinel set rather than one server."""
    return url.strip().lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a Sentinel URL; InputError (without the URL, which may hold a password) if bad."""
    rest = url.strip()[len(SENTINEL_SCHEME) + 3:]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _userinfo(userinfo)
    master, db = _master_and_db(path)
    options = parse_qs(query)
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise InputError(f"RCBATCH_REDIS_URL: unknown Sentinel URL option {sorted(unknown)[0]!r}")
    secret = options.get("sentinel_password", [None])[-1]
    return SentinelUrl(_sentinels(hosts), master, db, username, password, secret)


def _userinfo(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _sentinels(hosts: str) -> tuple[tuple[str, int], ...]:
    found = tuple(_host_port(part) for part in hosts.split(",") if part.strip())
    if not found:
        raise InputError(f"RCBATCH_REDIS_URL: a Sentinel URL names its sentinels: {_FORM}")
    return found


def _host_port(part: str) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host or (port and not port.isdigit()):
        raise InputError(f"RCBATCH_REDIS_URL: bad sentinel address {unquote(host)!r}: {_FORM}")
    return unquote(host), int(port) if port else DEFAULT_SENTINEL_PORT


def _master_and_db(path: str) -> tuple[str, int]:
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise InputError(f"RCBATCH_REDIS_URL: a Sentinel URL names its master: {_FORM}")
    if len(parts) == 2 and not parts[1].isdigit():
        raise InputError(f"RCBATCH_REDIS_URL: the database must be a number: {_FORM}")
    return parts[0], int(parts[1]) if len(parts) == 2 else 0


def redis_client(url: str) -> redis.Redis:
    """A redis-py client with timeouts and health checks (no silent half-open stalls); for a
    Sentinel URL, one that follows the master through a failover."""
    if is_sentinel_url(url):
        return sentinel_client(parse_sentinel_url(url))
    return redis.Redis.from_url(url, **CLIENT_OPTIONS)


def sentinel_client(target: SentinelUrl) -> redis.Redis:
    """A client on the master of a Sentinel set, with the same options as any client."""
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target))
    # a failover leaves a few seconds without a master: wait them out (about 5.5 s in all)
    # rather than fail the command, as redis-py's default 3 quick retries would
    failover = Retry(ExponentialBackoff(cap=1.0, base=0.1), 8)
    return manager.master_for(target.master, db=target.db, username=target.username,
                              password=target.password, **{**CLIENT_OPTIONS, "retry": failover})


def kombu_broker(target: SentinelUrl) -> tuple[str, dict[str, Any]]:
    """The broker URL and extra transport options kombu's Sentinel transport reads for this
    set: one `sentinel://` URL per sentinel joined by `;`, the master's name as an option."""
    auth = ""
    if target.username or target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
    urls = ";".join(f"{SENTINEL_SCHEME}://{auth}{_netloc(h, p)}/{target.db}"
                    for h, p in target.sentinels)
    return urls, {"master_name": target.master, "sentinel_kwargs": _sentinel_kwargs(target)}


def _sentinel_kwargs(target: SentinelUrl) -> dict[str, Any]:
    """How to talk to the sentinels themselves: the same timeouts, their own password."""
    options = {k: v for k, v in CLIENT_OPTIONS.items() if k.startswith("socket_")}
    if target.sentinel_password:
        options["password"] = target.sentinel_password
    return options


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{quote(host, safe='')}:{port}"


def check_redis(client: redis.Redis) -> None:
    """Raise ServiceUnavailable when Redis does not answer."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis is not reachable: {type(exc).__name__}") from exc
