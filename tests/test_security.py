"""Secrets stay secret: a whole batch with a known API token and a password-protected Redis
leaves neither in any log, Redis key or value, broker message, manifest or error text, nor on
any process's command line; and `rediss://` URLs are accepted, with a verified certificate.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import ssl
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import redis
from celery import Celery

from bench.harness import Sampler
from rcbatch.cli.embedded_redis import EmbeddedRedis, ensure_redis
from rcbatch.config import Settings
from rcbatch.worker.celery_app import celery_config
from rcbatch.worker.wiring import redis_client
from tests.test_cli import rcbatch, write_rows

# '+', '/' and '=' make the URL-encoded and base64 forms differ from the token itself.
TOKEN = "rcb+Secr3t/4e9d1c7a=Zq"
PASSWORD = "redis-pw=8c41f0e2"
FAULTS = ("--duration 0.1-0.4 --seed 9 --concurrency 8 --image-scale 0.02 --retry-after 1 "
          "--fail-5xx 0.15 --fail-429 0.05 --drop 0.03 --job-fail 0.25 --output-404 0.15 "
          "--output-truncate 0.1")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def forms(secret: str) -> list[bytes]:
    """The secret as it could be written: raw, URL-encoded, and base64 at any alignment."""
    raw = secret.encode()
    found = {raw, quote(secret).encode(), quote(secret, safe="").encode(),
             quote_plus(secret).encode()}
    for shift in range(3):
        data = b"\0" * shift + raw
        encoded = base64.b64encode(data)[: len(data) // 3 * 4]
        middle = encoded[(shift * 4 + 2) // 3:]  # drop the characters the shift touched
        found |= {middle, middle.replace(b"+", b"-").replace(b"/", b"_")}
    return sorted(found)


def with_decoded(blob: bytes) -> Iterator[bytes]:
    """The blob, then whatever its base64-looking runs decode to (Celery message bodies)."""
    yield blob
    for run in _BASE64_RUN.findall(blob):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            with contextlib.suppress(ValueError):
                yield decode(run + b"=" * (-len(run) % 4))


def hits(sources: dict[str, bytes], needles: Iterable[bytes]) -> list[str]:
    """'source: needle' for every needle found in a source or in its decoded base64 runs."""
    needles = list(needles)
    return [f"{name}: {needle!r}" for name, blob in sources.items()
            for part in with_decoded(blob) for needle in needles if needle in part]


def redis_dump(client: Any) -> dict[str, bytes]:
    """Every key and value of every database (strings, hashes, lists, sets, zsets, streams)."""
    dump: dict[str, bytes] = {}
    databases = int(client.config_get("databases")["databases"])
    for db in range(databases):
        client.execute_command("SELECT", db)
        for key in client.scan_iter(count=1000):
            dump[f"redis db{db} {key!r}"] = key + b"\n" + _value(client, key)
    client.execute_command("SELECT", 0)
    return dump


def _value(client: Any, key: bytes) -> bytes:
    kind = client.type(key).decode()
    value: Any = {
        "string": lambda: client.get(key),
        "hash": lambda: client.hgetall(key),
        "list": lambda: client.lrange(key, 0, -1),
        "set": lambda: client.smembers(key),
        "zset": lambda: client.zrange(key, 0, -1, withscores=True),
        "stream": lambda: client.xrange(key),
    }.get(kind, lambda: b"")()
    return repr(value).encode() if not isinstance(value, bytes) else value


def files_under(*roots: Path) -> dict[str, bytes]:
    """Every file below the roots (logs, manifests, outputs, Redis's append-only files)."""
    return {str(p): p.read_bytes() for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def command_lines_with(needles: Iterable[bytes]) -> Callable[[], set[str]]:
    """A probe: the command lines (what `ps` shows) of every process that holds a needle."""
    wanted = list(needles)

    def scan() -> set[str]:
        seen = set()
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if any(n in cmdline for n in wanted):
                seen.add(cmdline.replace(b"\0", b" ").decode(errors="replace"))
        return seen

    return scan


@pytest.mark.e2e
def test_a_whole_batch_leaves_no_trace_of_the_token_or_the_redis_password(
        tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", password=PASSWORD)
    server.start()
    try:
        state = tmp_path / "state"
        env = {"RCBATCH_REDIS_URL": server.url, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN,
               "RCBATCH_STATE_DIR": str(state), "RCBATCH_BUCKET_URL": "",
               "RCBATCH_STEP_GRACE": "3", "RCBATCH_SUBMIT_RATE": "200"}
        spec = write_rows(tmp_path / "secret.jsonl", 16)
        secrets = [*forms(TOKEN), *forms(PASSWORD)]
        with Sampler(command_lines_with(secrets), every=0.1) as ps:
            done = rcbatch("run", str(spec), "--simulate", "--simulate-args", FAULTS,
                           "--workers", "2", "--name", "secrets", env=env, timeout=150)
        assert done.returncode in (0, 1), done.stderr
        client: Any = redis.Redis.from_url(server.url)
        bid = client.hget("rcb:names", "secrets").decode()
        status = rcbatch("status", bid, "--json", env=env)
        wrong = rcbatch("status", bid, env={
            **env, "RCBATCH_REDIS_URL": server.url.replace(quote(PASSWORD, safe=""), "nope")})
        dump = redis_dump(client)
        client.close()
    finally:
        server.stop()
    manifest = state / "bucket" / bid
    lines = [json.loads(x) for x in (manifest / "manifest.jsonl").read_text().splitlines()]
    errors = [line["error"]["message"] for line in lines if line["error"]]
    sources = {"run stdout": done.stdout.encode(), "run stderr": done.stderr.encode(),
               "status": status.stdout.encode() + status.stderr.encode(),
               "wrong password": wrong.stderr.encode(), **dump,
               **files_under(state, tmp_path / "redis")}
    # The search looks where the secrets could be: logs of every process, the manifest
    # (all three forms), error text, and Celery's messages in the append-only file.
    assert {"manifest.jsonl", "manifest.csv", "index.html"} <= {
        p.name for p in manifest.iterdir()}
    assert errors, "the faults produced no error text to search"
    assert any(b"item_completed" in v for k, v in sources.items() if k.endswith(".log"))
    assert any(b"rcbatch.poll" in v for k, v in sources.items() if "appendonly" in k)
    assert any(bid.encode() in part for part in with_decoded(b"".join(dump.values())))
    assert '"state": "finished"' in status.stdout  # the password URL works for the CLI too
    assert wrong.returncode == 3 and wrong.stderr.startswith("rcbatch: error: Redis")
    seen = set().union(*ps.samples)
    assert len(ps.samples) > 10 and not seen, seen
    assert hits(sources, secrets) == []


def test_rediss_urls_are_accepted_and_verify_the_server_certificate(tmp_path: Path) -> None:
    url = "rediss://:s3cret@redis.example.com:6380/0"
    assert Settings(redis_url=url).redis_url == url
    pool = redis_client(url).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs.get("ssl_cert_reqs", "required") == "required"
    assert ensure_redis(url, tmp_path) == (url, None)  # used as is, nothing embedded starts
    assert _broker_ssl(url) == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # An explicit choice in the URL wins (e.g. a private CA, or a test server).
    assert _broker_ssl(url + "?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert _broker_ssl("redis://127.0.0.1:6379/0") is False


def _broker_ssl(url: str) -> Any:
    app = Celery("tls", set_as_current=False)
    app.conf.update(celery_config(url))
    return app.connection_for_write().ssl


def test_secret_forms_cover_encodings() -> None:
    """The search itself finds the token however it is written."""
    body = base64.b64encode(f'{{"auth": "Bearer {TOKEN}"}}'.encode())
    assert hits({"celery body": body}, forms(TOKEN))
    assert hits({"url": f"http://x/?t={quote(TOKEN, safe='')}".encode()}, forms(TOKEN))
    assert hits({"b64 at offset 1": base64.b64encode(b"x" + TOKEN.encode())}, forms(TOKEN))
    assert not hits({"clean": b"Bearer [redacted] " + base64.b64encode(b"nothing")},
                    forms(TOKEN))
