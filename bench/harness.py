"""The real processes a benchmark runs against, all on 127.0.0.1, and probes of their costs.

- `Simulator`: `rcbatch simulate` in its own process (so it never shares a GIL with what is
  measured), reset between runs through `POST /_sim/reset`.
- `Services`: one embedded Redis (append-only, as in production) and one simulator for a whole
  `python -m bench` process, stopped at its end.
- `group_cpu`, `rss`, `peak_rss`, `reset_peak`: CPU seconds and memory of process groups read
  from /proc (Linux), so worker costs are measured without instrumenting the workers.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import redis

from rcbatch.cli.embedded_redis import EmbeddedRedis
from rcbatch.cli.supervisor import read_listening_url
from rcbatch.lifetime import die_with_parent

TOKEN = "bench-token-7c1e55aa90"
T2I = "bytedance/dreamina-4-0/text-to-image"
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
SEQ = "bytedance/seedream-4-5/edit-sequential"
_TICKS = os.sysconf("SC_CLK_TCK")
#: tiny outputs: 51x51 JPEGs for 1024x1024 requests, 50 KB videos (benchmarks measure the
#: pipeline, not the disk)
SIM_DEFAULTS = {"image_format": "jpeg", "image_scale": 0.05, "video_bytes": 50_000}
#: CLOCK_MONOTONIC is shared by every process: simulator times map onto wall time here
MONO_TO_WALL = time.time() - time.monotonic()


class Simulator:
    """The simulator as a child process; `reset` changes its options between runs."""

    def __init__(self, log_path: Path, options: Mapping[str, Any] | None = None) -> None:
        self.log_path = log_path
        self.options = dict(options or {})
        self.base_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=60)

    def start(self) -> str:
        """Start it on a free loopback port; returns its base URL."""
        argv = [sys.executable, "-m", "rcbatch", "simulate", "--port", "0",
                "--host", "127.0.0.1"]
        for name, value in self.options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        env = {**os.environ, "RCBATCH_SIMULATOR_TOKEN": TOKEN}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=log,
                                          preexec_fn=die_with_parent(),
                                          start_new_session=True)
        self.base_url = _read_url(self._proc, 30.0)
        threading.Thread(target=_drain, args=(self._proc.stdout,), daemon=True).start()
        return self.base_url

    @property
    def pid(self) -> int | None:
        """The simulator's process id while it runs."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def reset(self, **overrides: Any) -> None:
        """Forget every job and counter; apply option overrides (not cumulative)."""
        answer = self._http.post(f"{self.base_url}/_sim/reset", json=overrides)
        answer.raise_for_status()

    def stats(self) -> dict[str, Any]:
        """`GET /_sim/stats`."""
        data: dict[str, Any] = self._http.get(f"{self.base_url}/_sim/stats").json()
        return data

    def jobs(self) -> list[dict[str, Any]]:
        """`GET /_sim/jobs`: each job with its drawn duration and engine times."""
        data: list[dict[str, Any]] = self._http.get(f"{self.base_url}/_sim/jobs").json()["jobs"]
        return data

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        self._http.close()
        if self._proc is not None:
            _stop_group(self._proc)
            self._proc = None


def _read_url(proc: subprocess.Popen[bytes], timeout: float) -> str:
    url = read_listening_url(proc, timeout)
    if url is None:
        _stop_group(proc)
        raise RuntimeError("the simulator did not start")
    return url


def _drain(stream: IO[bytes] | None) -> None:
    if stream is not None:
        for _ in iter(stream.readline, b""):
            pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Services:
    """A scratch folder, one Redis and one simulator for a whole bench process."""

    def __init__(self, keep: Path | None = None) -> None:
        self._tmp = None if keep else tempfile.TemporaryDirectory(prefix="rcbatch-bench-")
        self.root = keep or Path(self._tmp.name)  # type: ignore[union-attr]
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_server = EmbeddedRedis(self.root / "redis")
        self.sim = Simulator(self.logs / "simulator.log", SIM_DEFAULTS)
        self.redis_url = ""

    def __enter__(self) -> Services:
        self.redis_url = self.redis_server.start()
        try:
            self.sim.start()
        except BaseException:
            self.redis_server.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.sim.stop()
        self.redis_server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def redis(self, db: int = 0) -> redis.Redis:
        """A client on one database of the bench Redis."""
        return redis.Redis.from_url(self.redis_url.rsplit("/", 1)[0] + f"/{db}")

    def flush(self) -> None:
        """Empty every database (a run starts from nothing, no learned durations either)."""
        client = self.redis()
        try:
            client.flushall()
        finally:
            client.close()

    def service_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the simulator and by Redis."""
        pids = {"simulator": self.sim.pid, "redis": self.redis_server.pid}
        return {name: process_cpu(pid) if pid else 0.0 for name, pid in pids.items()}

    def folder(self, name: str) -> Path:
        """A fresh scratch folder under the bench root."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def forget_broker(celery_app: Any) -> None:
    """Make a Celery app look up its broker connection pool again, so that it connects to the
    broker its configuration names now (each bench has its own Redis; `python -m bench all`
    runs many). Pools are only dropped, not closed: kombu keeps one per broker URL and would
    hand a closed one back for the same URL."""
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


# --- processes, CPU and memory ---------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group `pgid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: fields[0] is the state (field 3 of proc(5))."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of a process, plus its reaped children's when asked."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def group_cpu(pgids: list[int]) -> float:
    """CPU seconds used so far by every process of the given process groups."""
    return sum(process_cpu(pid) for pgid in pgids for pid in group_pids(pgid))


def rss(pid: int) -> int:
    """Resident set size in bytes (0 when the process is gone)."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss(pid: int) -> int:
    """Peak resident set size in bytes since start or the last `reset_peak`."""
    return _status_kb(pid, "VmHWM") * 1024


def reset_peak(pid: int) -> None:
    """Reset a process's peak RSS to its current RSS (Linux clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kb(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """Calls `probe` every `every` seconds in a thread and keeps what it returns."""

    def __init__(self, probe: Callable[[], Any], every: float = 0.1) -> None:
        self.probe, self.every = probe, every
        self.samples: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self.samples.append(self.probe())

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):  # a probe racing a stopping process
                self.samples.append(self.probe())


def machine() -> str:
    """One line describing this machine, for the results."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    os_name = "Linux"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return (f"{os.cpu_count()} vCPU {model}, {memory:.0f} GiB RAM, {os_name}, "
            f"kernel {platform.release()}, Python {platform.python_version()}")


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t:` ... then `t[0]` is the elapsed wall time in seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
