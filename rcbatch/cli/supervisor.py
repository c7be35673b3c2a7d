"""The processes `rcbatch run` starts (simulator, workers): started, watched, restarted, stopped.

Children die with the `run` process even when it is SIGKILLed (PR_SET_PDEATHSIG), their logs
go to `STATE_DIR/logs/`, and a worker that exits while the batch runs is started again (a
Celery worker can exit on a Redis restart mid-task; FACTS.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from rcbatch.errors import ServiceUnavailable
from rcbatch.lifetime import die_with_parent

_LISTENING = re.compile(r"listening on (http://\S+)")
log = structlog.get_logger("rcbatch.run")


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    """Starts children with a shared environment and keeps the workers alive."""

    log_dir: Path
    env: Mapping[str, str]
    children: list[Child] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start_simulator(self, options: Sequence[str], timeout: float = 20.0,
                        port: int = 0) -> str:
        """Start `rcbatch simulate` on loopback (`port` 0: a free one); returns its base URL."""
        argv = [sys.executable, "-m", "rcbatch", "simulate", "--port", str(port), *options]
        child = Child("simulator", argv, dict(self.env), self.log_dir / "simulator.log")
        proc = subprocess.Popen(argv, env=child.env, stdout=subprocess.PIPE,
                                stderr=self._open_log(child.log_path),
                                preexec_fn=die_with_parent(), start_new_session=True)
        child.process = proc
        self.children.append(child)
        url = read_listening_url(proc, timeout)
        if url is None:
            raise ServiceUnavailable(f"the simulator did not start; see {child.log_path}")
        # Keep reading its stdout so a chatty simulator never blocks on a full pipe.
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        return url

    def start_workers(self, count: int, concurrency: int) -> None:
        """Start `count` Celery workers. None runs beat: every worker runs the clock that
        sends the reconciler's and the schedules' nudges, one at a time under a lease in
        Redis (worker/lease.py)."""
        for n in range(count):
            # Celery warns a root user once per process start; the user of `run` did not
            # choose how the workers run, so the warning would only be noise in their logs.
            argv = [sys.executable, "-W", "ignore::celery.exceptions.SecurityWarning",
                    "-m", "rcbatch", "worker", "--concurrency", str(concurrency),
                    "--hostname", f"run{n}-{os.getpid()}@%h", "--without-gossip",
                    "--without-mingle"]
            child = Child(f"worker-{n}", argv, dict(self.env),
                          self.log_dir / f"worker-{n}.log")
            self._spawn(child)
            self.children.append(child)

    def check(self) -> None:
        """Restart any worker that has exited."""
        for child in self.children:
            proc = child.process
            if child.name.startswith("worker") and proc and proc.poll() is not None:
                child.restarts += 1
                log.warning("worker_restarted", worker=child.name, exit_code=proc.returncode,
                            restarts=child.restarts)
                self._spawn(child)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child (warm shutdown), SIGKILL what is left after `grace`."""
        for child in self.children:
            if child.process and child.process.poll() is None:
                _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(5)
            # a worker's pool children may outlive its main process by a moment: `run`
            # returns only once every process it started is gone
            if not wait_group_gone(child.process.pid, deadline):
                _signal_group(child.process, signal.SIGKILL)
                wait_group_gone(child.process.pid, time.monotonic() + 5)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv, env=child.env, stdout=subprocess.DEVNULL,
            stderr=self._open_log(child.log_path), preexec_fn=die_with_parent(),
            start_new_session=True)

    def _open_log(self, path: Path) -> IO[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("ab")
        self._logs.append(handle)
        return handle


def read_listening_url(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The URL a starting simulator prints ("listening on http://..."), or None on timeout."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            match = _LISTENING.search(proc.stdout.readline().decode(errors="replace"))
            if match:
                return match.group(1)
    return None


def _drain(stream: IO[bytes] | None) -> None:
    if stream is not None:
        for _ in iter(stream.readline, b""):
            pass


def wait_group_gone(pgid: int, deadline: float) -> bool:
    """Wait until no process is left in process group `pgid`; False at `deadline`."""
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # only a process of another user, which is not ours
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
