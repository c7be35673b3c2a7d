"""The real processes a chaos run needs, and the hand that kills them.

- `ChaosCluster`: one embedded Redis (append-only, fsync every second, as in production), the
  simulator as its own process (`rcbatch simulate`, so it outlives every kill) and N
  `rcbatch worker` processes and nothing else (no beat: one of the workers is the clock, under
  a lease in Redis), each with a state folder of its own as on separate machines, all on
  127.0.0.1, each in its own process group, logs in `root/logs`.
- `Monkey`: SIGKILLs a random worker's pool child or main process, or the main process of the
  worker that holds the clock lease (a killed main is started again at once, as a supervisor
  would), and kills and restarts Redis on the same port and data folder; every blow is
  recorded with its monotonic time (the simulator's job times use the same clock, so the
  checks can tell which blow an uncertain submit met).
- `ClockWatch`: measures how long the cluster went without a live clock after each kill of
  its holder (until a live worker holds the lease again).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bench.harness import TOKEN, Simulator
from rcbatch.cli.embedded_redis import EmbeddedRedis
from rcbatch.lifetime import die_with_parent
from rcbatch.worker import keys

#: seconds a killed pool child's siblings may take to die with a killed main (PDEATHSIG)
_ORPHAN_WAIT = 3.0


@dataclass
class Blow:
    """One thing the monkey did: when (time.monotonic), what, to whom."""

    at: float
    kind: str  # "child", "main", "redis"
    target: str
    until: float | None = None  # a Redis outage ends here
    #: local TCP ports of the killed processes' sockets (the simulator records the port each
    #: submit came from, so a lost answer can be traced to the process that was killed)
    ports: frozenset[int] = frozenset()


@dataclass
class Proc:
    """One supervised process and how to start it again."""

    name: str
    argv: list[str]
    #: environment of its own, over the cluster's (a state folder per worker)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    groups: set[int] = field(default_factory=set)


class ChaosCluster:
    """Redis, simulator and workers (no beat) for one chaos run (a context manager)."""

    def __init__(self, root: Path, *, sim_options: Mapping[str, Any],
                 sim_faults: Mapping[str, Any], env: Mapping[str, str], workers: int = 3,
                 concurrency: int = 2) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.bucket = root / "bucket"
        self.redis = EmbeddedRedis(root / "redis", log_file=self.logs / "redis.log")
        self.sim = Simulator(self.logs / "simulator.log", sim_options)
        self._faults = dict(sim_faults)
        self._extra_env = dict(env)
        self.env: dict[str, str] = {}
        #: processes that exited on their own (not killed by the monkey), and how
        self.exits: list[str] = []
        self.workers = [Proc(f"worker-{n}", self._worker_argv(n, concurrency),
                             {"RCBATCH_STATE_DIR": str(root / f"state-worker-{n}")})
                        for n in range(workers)]

    def __enter__(self) -> ChaosCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _start(self) -> None:
        redis_url = self.redis.start()
        base_url = self.sim.start()
        # Faults (including those `rcbatch simulate` has no flag for) go in through a reset.
        self.sim.reset(**self._faults)
        self.env = {**os.environ, "RCBATCH_REDIS_URL": redis_url,
                    "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN, "RCBATCH_RUNCOMFY_BASE_URL": base_url,
                    "RCBATCH_BUCKET_URL": self.bucket.as_uri(),
                    "RCBATCH_STATE_DIR": str(self.root / "state"), **self._extra_env}
        for proc in self.workers:
            self.spawn(proc)

    def _worker_argv(self, n: int, concurrency: int) -> list[str]:
        return [sys.executable, "-m", "rcbatch", "worker", "--concurrency", str(concurrency),
                "--hostname", f"chaos{n}-{os.getpid()}@%h", "--without-gossip",
                "--without-mingle"]

    def spawn(self, proc: Proc) -> None:
        """Start (or start again) one process in its own group, logging to its file."""
        with open(self.logs / f"{proc.name}.log", "ab") as log:
            proc.process = subprocess.Popen(proc.argv, env={**self.env, **proc.env},
                                            stdout=log, stderr=log,
                                            preexec_fn=die_with_parent(),
                                            start_new_session=True)
        proc.starts += 1
        proc.groups.add(proc.process.pid)

    def revive(self) -> list[str]:
        """Start again any worker that exited on its own; returns their names."""
        revived = []
        for proc in self.workers:
            if proc.process is not None and proc.process.poll() is not None:
                self.exits.append(f"{proc.name} exited with {proc.process.returncode}")
                self.spawn(proc)
                revived.append(proc.name)
        return revived

    def clock_holder(self) -> Proc | None:
        """The worker whose main process holds the clock lease now (its token names the pid),
        or None (nobody, a dead process, or Redis down)."""
        try:
            with redis.Redis.from_url(self.redis.url, socket_timeout=2) as client:
                token = client.get(keys.CLOCK)
        except redis.RedisError:
            return None
        if token is None:
            return None
        pid = int(token.decode().split(":")[-2])
        return next((p for p in self.workers if p.process is not None
                     and p.process.pid == pid and p.process.poll() is None), None)

    def rcbatch(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run an `rcbatch` command against this cluster."""
        return subprocess.run([sys.executable, "-m", "rcbatch", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        """Warm shutdown of the workers (SIGKILL after 10 s), then simulator and Redis."""
        procs = [p for p in self.workers if p.process is not None]
        for proc in procs:
            _signal_group(proc.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
        for proc in procs:
            assert proc.process is not None
            try:
                proc.process.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(proc.process.pid, signal.SIGKILL)
                proc.process.wait(5)
            for group in proc.groups:  # whatever a killed main left behind
                _signal_group(group, signal.SIGKILL)
        self.sim.stop()
        self.redis.stop()


class Monkey:
    """SIGKILLs worker processes and Redis at random (seeded), recording every blow."""

    def __init__(self, cluster: ChaosCluster, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.blows: list[Blow] = []
        self.orphans = 0  # pool children that outlived their killed main

    def kill_random_worker_process(self) -> Blow | None:
        """Kill a pool child or (one time in three) a main process of a random worker."""
        proc = self.rng.choice(self.cluster.workers)
        if proc.process is None or proc.process.poll() is not None:
            return None
        children = _children(proc.process.pid)
        if children and self.rng.random() < 2 / 3:
            victim = self.rng.choice(children)
            ports = tcp_ports([victim])
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            return self._record(Blow(time.monotonic(), "child", f"{proc.name}:{victim}",
                                     ports=ports))
        ports = tcp_ports([proc.process.pid, *children])
        blow = self._record(Blow(time.monotonic(), "main", proc.name, ports=ports))
        proc.process.kill()
        proc.process.wait(10)
        self.orphans += _outliving(children, _ORPHAN_WAIT)
        self.cluster.spawn(proc)  # as `rcbatch run`'s supervisor would
        return blow

    def kill_clock_holder(self) -> Blow | None:
        """SIGKILL the main process (and pool) of the worker that holds the clock lease."""
        proc = self.cluster.clock_holder()
        if proc is None or proc.process is None:
            return None
        children = _children(proc.process.pid)
        ports = tcp_ports([proc.process.pid, *children])
        blow = self._record(Blow(time.monotonic(), "main", f"{proc.name} (clock)", ports=ports))
        proc.process.kill()
        proc.process.wait(10)
        self.orphans += _outliving(children, _ORPHAN_WAIT)
        self.cluster.spawn(proc)
        return blow

    def restart_redis(self, down: float) -> Blow:
        """SIGKILL Redis, keep it down for `down` seconds, start it on the same port and data."""
        blow = self._record(Blow(time.monotonic(), "redis", "redis"))
        self.cluster.redis.kill()
        time.sleep(down)
        self.cluster.redis.start()
        blow.until = time.monotonic()
        return blow

    def _record(self, blow: Blow) -> Blow:
        self.blows.append(blow)
        return blow

    def count(self, kind: str) -> int:
        """How many blows of this kind were dealt."""
        return sum(1 for b in self.blows if b.kind == kind)


class ClockWatch:
    """Seconds from each kill of the clock's holder until a live worker holds it again."""

    def __init__(self, cluster: ChaosCluster) -> None:
        self.cluster = cluster
        self.takeovers: list[float] = []
        self._since: float | None = None

    def killed(self, blow: Blow | None) -> None:
        """The holder was just killed by `blow` (None: nobody held it; nothing to time)."""
        if blow is not None:
            self._since = blow.at

    def look(self) -> None:
        """Check whether a clock runs again (call often)."""
        if self._since is not None and self.cluster.clock_holder() is not None:
            self.takeovers.append(time.monotonic() - self._since)
            self._since = None

    @property
    def waiting(self) -> bool:
        """Whether a kill of the holder is still waiting for a new holder."""
        return self._since is not None


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (a worker's pool children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry))
    return found


def tcp_ports(pids: list[int]) -> frozenset[int]:
    """Local ports of the TCP sockets these processes hold (Linux /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return frozenset(ports)


def _outliving(pids: list[int], wait: float) -> int:
    """How many of `pids` are still alive after `wait` seconds."""
    deadline = time.monotonic() + wait
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    return len(alive)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
