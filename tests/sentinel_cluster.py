"""A Redis Sentinel set on loopback for the tests: one master, replicas and sentinels, all
`valkey-server` processes (the same binary the embedded Redis uses), each on a free
127.0.0.1 port with its own folder, append-only files on, stopped by `stop()`.

The sentinels notice a dead master after `down_after` ms and fail over within `failover_timeout`
ms, far below the production defaults (30 s / 3 min), so a test sees a whole failover in
seconds.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from rcbatch.cli.embedded_redis import find_server_binary
from rcbatch.lifetime import die_with_parent
from tests.journeys import free_port

HOST = "127.0.0.1"
MASTER_NAME = "rcbmaster"


@dataclass
class Node:
    """One server process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        """A plain client on this one process."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, socket_connect_timeout=5)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None


@dataclass
class SentinelCluster:
    """A master, `replicas` replicas and `sentinels` sentinels under `root`."""

    root: Path
    replicas: int = 1
    sentinels: int = 3
    down_after: int = 1000
    failover_timeout: int = 4000
    data: list[Node] = field(default_factory=list)
    watchers: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The RCBATCH_REDIS_URL of this set."""
        hosts = ",".join(f"{HOST}:{n.port}" for n in self.watchers)
        return f"sentinel://{hosts}/{MASTER_NAME}/0"

    def __enter__(self) -> SentinelCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the master, its replicas, then the sentinels; wait until all know each other."""
        master = self._data_node("master", None)
        for n in range(self.replicas):
            self._data_node(f"replica{n}", master.port)
        _wait(lambda: self._replicas_online(master) == self.replicas, 20, "replicas in sync")
        for n in range(self.sentinels):
            self._sentinel(n, master.port)
        _wait(self._sentinels_agree, 30, "sentinels to discover each other and the replicas")

    def _data_node(self, name: str, replica_of: int | None) -> Node:
        port, folder = free_port(), self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        argv = [str(find_server_binary()), "--bind", HOST, "--port", str(port), "--dir",
                str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--daemonize", "no", "--logfile", str(folder / "server.log")]
        if replica_of is not None:
            argv += ["--replicaof", HOST, str(replica_of)]
        node = Node(name, port, _spawn(argv, folder))
        _wait(lambda: _answers(node), 10, f"{name} to answer PING")
        self.data.append(node)
        return node

    def _sentinel(self, n: int, master_port: int) -> None:
        port, folder = free_port(), self.root / f"sentinel{n}"
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # sentinels rewrite their config: one file each
        conf.write_text("\n".join([
            f"bind {HOST}", f"port {port}", f"dir {folder}", "daemonize no",
            f"logfile {folder / 'sentinel.log'}",
            f"sentinel monitor {MASTER_NAME} {HOST} {master_port} 2",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after}",
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout}",
            f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
        node = Node(f"sentinel{n}", port, _spawn([str(find_server_binary()), str(conf),
                                                  "--sentinel"], folder))
        _wait(lambda: _answers(node), 10, f"sentinel{n} to answer PING")
        self.watchers.append(node)

    def _replicas_online(self, master: Node) -> int:
        info: dict[str, Any] = master.client().info("replication")  # type: ignore[assignment]
        return sum(isinstance(v, dict) and v.get("state") == "online" for k, v in info.items()
                   if k.startswith("slave"))

    def _sentinels_agree(self) -> bool:
        for node in self.watchers:
            raw = node.client().execute_command("SENTINEL", "MASTER", MASTER_NAME)
            state = {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw), 2)}
            if (int(state["num-other-sentinels"]) < self.sentinels - 1
                    or int(state["num-slaves"]) < self.replicas):
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as a live sentinel reports it (None: none answered)."""
        for node in self.watchers:
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError):
                address = node.client().execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                if address:
                    return int(address[1])
        return None

    def master(self) -> Node:
        """The data node that is the master now."""
        port = self.master_port()
        return next(n for n in self.data if n.port == port)

    def kill_master(self) -> int:
        """SIGKILL the master, as a crash would; returns its port."""
        node = self.master()
        node.proc.kill()
        node.proc.wait(10)
        return node.port

    def wait_new_master(self, old_port: int, timeout: float = 30) -> Node:
        """Wait until the sentinels name another master and it accepts writes."""
        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            node = next(n for n in self.data if n.port == port)
            with contextlib.suppress(redis.RedisError):
                return bool(node.client().set("rcb:test:failover-probe", "1"))
            return False

        _wait(promoted, timeout, "a new master")
        return self.master()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        nodes = [*self.watchers, *self.data]
        for node in nodes:
            if node.alive():
                node.proc.terminate()
        for node in nodes:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)

    def logs(self) -> str:
        """The tail of every server and sentinel log, for failure messages."""
        found = sorted(self.root.glob("*/*.log"))
        return "\n".join(f"--- {p.parent.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in found)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _spawn(argv: list[str], folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent())


def _answers(node: Node) -> bool:
    if not node.alive():
        raise RuntimeError(f"{node.name} exited at start")
    try:
        return bool(node.client().ping())
    except redis.RedisError:
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if check():
                return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
