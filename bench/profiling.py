"""Profiling real `rcbatch worker` processes with py-spy, a sampling profiler.

A bench run with `--profile DIR` attaches two `py-spy record --subprocesses` to every
worker's main process once the workers are up (so pool children are sampled too), and stops
them when the cluster stops. Each writes one collapsed-stack file per worker in DIR (py-spy's
"raw" format: `frame;frame;... count` per line), one per way of sampling (`MODES`):

- `spy-N.txt`, every thread py-spy sees running: time blocked in a socket read for Redis'
  reply or an HTTP answer still counts, as it does for the worker's throughput (wall time);
- `gil-N.txt`, only the thread holding the GIL (`--gil`): Python's CPU, without those
  waits, and without work done with the GIL released (hashing, file writes, syscalls).

`report(DIR)` then tells, for each, where the samples went: the share of the worker main
processes (Celery's consumer) and of the pool children, the inclusive share of each area of
the code (steps, redis-py, httpx, buckets, Celery publish) and the top frames by own samples.

Sampling adds little to the processes it watches (cProfile, used before, made the workers ~4x
slower and blamed redis-py's parser for much of its own overhead), but py-spy itself takes
CPU on these 2 cores: a profiled run is slower, so read the shares, not its figures.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

#: samples per second per process and mode
RATE = 100
#: file prefix -> (what the samples are, py-spy's extra options)
MODES: dict[str, tuple[str, list[str]]] = {
    "spy": ("every running thread (wall time: waits on sockets count)", []),
    "gil": ("only the thread holding the GIL (CPU in Python; waits do not count)", ["--gil"]),
}

#: areas of the code, by a test on one frame; a sample counts for every area it passes
AREAS: dict[str, Callable[[str], bool]] = {
    "submit step (worker/submission.py submit)":
        lambda f: f.startswith("submit (worker/submission.py"),
    "poll step (worker/polling.py poll)": lambda f: f.startswith("poll (worker/polling.py"),
    "fetch step (worker/fetching.py fetch)": lambda f: f.startswith("fetch (worker/fetching.py"),
    "dispatch (claims; refills submit inline)":
        lambda f: f.startswith("dispatch (worker/submission.py"),
    "manifest rewrites": lambda f: f.startswith("write_manifest (worker/manifest.py"),
    "redis-py (commands, scripts, replies)": lambda f: "(redis/" in f,
    "RunComfy client (httpx, answers)": lambda f: "(runcomfy/client.py" in f,
    "buckets (write, fsync, rename)": lambda f: "(worker/bucket/" in f,
    "Celery publish (send_task)": lambda f: f.startswith("RcbatchCelery.send_task"),
    "structlog": lambda f: "(structlog/" in f,
}


class Spies:
    """py-spy recorders attached to running worker processes (and their children)."""

    def __init__(self, out_dir: Path, rate: int = RATE) -> None:
        self.out_dir, self.rate = out_dir, rate
        self.procs: list[subprocess.Popen[bytes]] = []

    def attach(self, pids: Iterable[int]) -> None:
        """Start one recorder per process id and mode."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for n, pid in enumerate(pids):
            for prefix, (_, options) in MODES.items():
                self.procs.append(subprocess.Popen(
                    [*self.command(pid, options), "-o", str(self.out_dir / f"{prefix}-{n}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def command(self, pid: int, options: list[str]) -> list[str]:
        """The py-spy command line sampling `pid` and its children (without `-o`)."""
        return [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid),
                "--subprocesses", "--nonblocking", "-r", str(self.rate), "--format", "raw",
                *options]

    def stop(self) -> None:
        """Stop every recorder; each writes its file as it exits."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


Sample = tuple[list[str], int]


def read_samples(out_dir: Path, prefix: str = "spy") -> list[Sample]:
    """Every (stack, count) of the `PREFIX-*.txt` files in `out_dir`."""
    samples = []
    for path in sorted(out_dir.glob(f"{prefix}-*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                samples.append((stack.split(";"), int(count)))
    return samples


def role(stack: list[str]) -> str:
    """"main" for a worker's main process, "child" for a pool child (one process frame
    more: py-spy names each process of the tree it followed)."""
    return "child" if sum(f.startswith("process ") for f in stack) >= 2 else "main"


def report(out_dir: Path, top: int = 25) -> str:
    """Where the samples of `out_dir` went, as text: one part per mode recorded."""
    parts = [_report_mode(read_samples(out_dir, prefix), about, top)
             for prefix, (about, _) in MODES.items()
             if any(out_dir.glob(f"{prefix}-*.txt"))]
    return "\n\n".join(parts)


def _report_mode(samples: list[Sample], about: str, top: int) -> str:
    total = sum(c for _, c in samples) or 1
    roles: collections.Counter[str] = collections.Counter()
    for stack, count in samples:
        roles[role(stack)] += count
    lines = [f"=== samples of {about}", "",
             f"{total} samples at {RATE}/s per process: worker main processes "
             f"{roles['main'] / total:.0%}, pool children {roles['child'] / total:.0%}",
             "", "inclusive share of all samples, by area of the code:"]
    for name, test in AREAS.items():
        hits = sum(c for stack, c in samples if any(test(f) for f in stack))
        lines.append(f"  {hits / total:6.1%}  {name}")
    for which in ("main", "child"):
        own: collections.Counter[str] = collections.Counter()
        for stack, count in samples:
            if role(stack) == which:
                own[stack[-1]] += count
        lines += ["", f"top frames by own samples ({which}):"]
        lines += [f"  {c / total:6.1%}  {frame[:120]}" for frame, c in own.most_common(top)]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path) -> Path:
    """Write `report.txt` into `out_dir`; its path."""
    path = out_dir / "report.txt"
    path.write_text(report(out_dir))
    return path


if __name__ == "__main__":
    sys.stdout.write(report(Path(sys.argv[1])))
