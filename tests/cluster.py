"""Real parts for end-to-end tests: Celery worker processes started as `rcbatch worker`.

`Workers` starts N real worker processes (prefork pools, the same command users run) with the
given RCBATCH_* environment, and stops them (warm shutdown, then SIGKILL) at the end. The
Redis server, the simulator and the S3 server come from their own fixtures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from rcbatch.lifetime import die_with_parent
from rcbatch.worker.state import Store


class Workers:
    """N `rcbatch worker` processes; logs in `log_dir`."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, *, count: int = 2,
                 concurrency: int = 2, beat: bool = True) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.count, self.concurrency, self.beat = count, concurrency, beat
        self.procs: list[subprocess.Popen[bytes]] = []
        self._groups: set[int] = set()  # every process group started, replaced ones too

    def __enter__(self) -> Workers:
        for n in range(self.count):
            self.start(n)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, n: int) -> list[str]:
        """The command line of worker `n`, before the beat options."""
        return [sys.executable, "-m", "rcbatch", "worker", "--concurrency",
                str(self.concurrency), "--hostname", f"test{n}-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle"]

    def start(self, n: int) -> subprocess.Popen[bytes]:
        """Start worker `n` (worker 0 also runs beat when asked)."""
        argv = self.command(n)
        if self.beat and n == 0:
            argv += ["--beat", "--schedule", str(self.log_dir / "beat-schedule")]
        log = (self.log_dir / f"worker-{n}.log").open("ab")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log,
                                preexec_fn=die_with_parent(), start_new_session=True)
        log.close()
        self._groups.add(proc.pid)
        if n < len(self.procs):
            self.procs[n] = proc
        else:
            self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Warm shutdown of every worker, SIGKILL after 10 s."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for group in self._groups:  # whatever a killed worker may have left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)

    def logs(self) -> str:
        """Every worker log, for failure messages."""
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.log_dir.glob("worker-*.log")))


def wait_finished(store: Store, bid: str, timeout: float) -> dict[str, int]:
    """Wait (bounded) until every item of a batch is terminal; returns the counts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.is_finished(bid):
            return store.counts(bid)
        time.sleep(0.2)
    raise TimeoutError(f"batch {bid} not finished after {timeout}s: {store.counts(bid)}")
