"""Profiling real `rcbatch worker` processes with py-spy, a sampling profiler.

A bench run with `--profile DIR` attaches `py-spy record --subprocesses` to every worker's
main process once the workers are up (so pool children are sampled too), and stops it when
the cluster stops: one collapsed-stack file per worker in DIR (`spy-N.txt`, py-spy's "raw"
format: `frame;frame;... count` per line). `report(DIR)` then tells where the samples went:
the share of the worker main processes (Celery's consumer) and of the pool children, the
inclusive share of each area of the code (steps, redis-py, httpx, buckets, Celery publish)
and the top frames by own samples.

Sampling adds almost nothing to the processes it watches (cProfile, used before, made the
workers ~4x slower and blamed redis-py's parser for much of its own overhead). Samples are
taken of threads that py-spy sees running; time blocked in a socket read for Redis' reply
still counts, as it does for the worker's throughput.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

#: samples per second per process
RATE = 200

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
        """Start one recorder per process id."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for pid in pids:
            out = self.out_dir / f"spy-{len(self.procs)}.txt"
            self.procs.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid),
                 "--subprocesses", "--nonblocking", "-r", str(self.rate), "--format", "raw",
                 "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

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


def read_samples(out_dir: Path) -> list[Sample]:
    """Every (stack, count) of the `spy-*.txt` files in `out_dir`."""
    samples = []
    for path in sorted(out_dir.glob("spy-*.txt")):
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
    """Where the samples of `out_dir` went, as text."""
    samples = read_samples(out_dir)
    total = sum(c for _, c in samples) or 1
    roles: collections.Counter[str] = collections.Counter()
    for stack, count in samples:
        roles[role(stack)] += count
    lines = [f"{total} samples at {RATE}/s per process: worker main processes "
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
