"""Enqueue: `rcbatch submit` of a large JSONL against a raw redis-py pipeline writing the same rows.

    .venv/bin/python -m bench enqueue            # 100,000 rows
    .venv/bin/python -m bench enqueue --quick    # 2,000 rows
    .venv/bin/python -m bench.enqueue --rows 50000 --repeat 3 --profile /tmp/enqueue

Both sides run as fresh child processes of this one, so each pays its own interpreter start-up,
and the peak RSS is the child's own high-water mark (`ru_maxrss` from `wait4`):

- rcbatch: `python -m rcbatch submit --no-preflight --json FILE` (read, validate every row, give
  ids, register the batch in Redis, nudge a dispatch): what a user runs.
- raw: a 15-line script that reads the same file, parses each line and writes the same record
  rcbatch writes for an item (one HSET of the same fields, plus the ids on a pending list) with
  redis-py pipelines of 1,000 rows; no validation, no ids, no checks.

Redis is flushed before every run. Targets (issue 5): >= 10,000 rows/s, within 3 x the raw
pipeline's time, peak RSS under 200 MiB for 100,000 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import T2I, Services, machine
from bench.runner import parser, show
from bench.table import Section, at_least, at_most, info

FULL_ROWS = 100_000
QUICK_ROWS = 2_000
MIB = 1024 * 1024
RSS_LIMIT = 200 * MIB
RATE_TARGET = 10_000.0
RATIO_TARGET = 3.0

#: the raw baseline, run as `python -c` with argv [url, path]; same record as worker/state.py's
RAW_SCRIPT = """
import json, sys, time
import redis
url, path = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(url)
now = repr(time.time())
with open(path, "rb") as fh:
    pipe = client.pipeline(transaction=False)
    for n, line in enumerate(fh, 1):
        row = json.loads(line)
        model = row.pop("model")
        iid = f"raw-{n}"
        pipe.hset(f"raw:item:{iid}", mapping={
            "id": iid, "file": path, "line": str(n), "model": model,
            "input": json.dumps(row, ensure_ascii=False, separators=(",", ":")),
            "state": "pending", "attempts": "0", "seq": "0", "deliveries": "0",
            "registered_at": now, "estimate": "0.03"})
        pipe.rpush("raw:pending", iid)
        if n % 1000 == 0:
            pipe.execute()
    pipe.execute()
print(client.llen("raw:pending"))
"""


@dataclass(frozen=True)
class ChildRun:
    """One child process: wall seconds, CPU seconds, peak RSS bytes and its stdout."""

    seconds: float
    cpu: float
    peak_rss: int
    stdout: str


def write_rows(path: Path, rows: int) -> Path:
    """A JSONL of `rows` distinct, valid text-to-image rows without ids (ids get generated)."""
    with open(path, "w", encoding="utf-8") as fh:
        for k in range(rows):
            fh.write(json.dumps({"model": T2I, "prompt": f"a lighthouse at dusk, take {k}",
                                 "width×height": "1024x1024(1:1)", "force_single": True,
                                 "scale": 0.5}, ensure_ascii=False) + "\n")
    return path


def run_child(argv: list[str], env: dict[str, str]) -> ChildRun:
    """Run a child to its end, measuring it with `wait4`; RuntimeError when it fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            open(os.devnull, "rb") as stdin:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=stdin, stdout=out, stderr=err)
        # wait4 rather than Popen.wait: it also gives the child's own rusage (peak RSS)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:5])} exited {proc.returncode}: {stderr[-2000:]}")
    return ChildRun(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, stdout)


def submit_argv(path: Path, name: str, profile: Path | None = None) -> list[str]:
    """`python -m rcbatch submit ...` (under cProfile when `profile` is given)."""
    head = [sys.executable]
    if profile is not None:
        head += ["-m", "cProfile", "-o", str(profile), "-m", "rcbatch"]
    else:
        head += ["-m", "rcbatch"]
    return [*head, "submit", "--no-preflight", "--json", "--name", name, str(path)]


def child_env(svc: Services) -> dict[str, str]:
    """The environment of both children: the bench Redis, a scratch state folder and bucket."""
    state = svc.folder("enqueue-state")
    return {**os.environ, "RCBATCH_REDIS_URL": svc.redis_url, "RCBATCH_STATE_DIR": str(state),
            "RCBATCH_BUCKET_URL": svc.folder("enqueue-bucket").as_uri(),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def flush_sync(svc: Services) -> None:
    """Empty Redis and wait until the memory is freed (Valkey flushes lazily by default)."""
    client = svc.redis()
    try:
        client.execute_command("FLUSHALL", "SYNC")
    finally:
        client.close()


def used_memory(svc: Services) -> int:
    """Redis's used_memory in bytes."""
    client = svc.redis()
    try:
        memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
        return int(memory["used_memory"])
    finally:
        client.close()


@dataclass
class Side:
    """The best of a few runs of one side, and what it left in Redis."""

    runs: list[ChildRun]
    redis_bytes: int

    @property
    def best(self) -> ChildRun:
        """The fastest run (the machine is shared: slower runs waited for a CPU)."""
        return min(self.runs, key=lambda r: r.seconds)


def measure(svc: Services, argv_for: Any, repeat: int) -> Side:
    """Run a side `repeat` times on an empty Redis each time."""
    runs, grown = [], 0
    for n in range(repeat):
        flush_sync(svc)
        before = used_memory(svc)
        runs.append(run_child(argv_for(n), child_env(svc)))
        grown = used_memory(svc) - before
    return Side(runs, grown)


def run(svc: Services, *, rows: int, repeat: int = 1,
        profile: Path | None = None) -> Section:
    """Measure both sides on a `rows`-row file; the section with the issue's targets."""
    path = write_rows(svc.folder("enqueue") / f"rows-{rows}.jsonl", rows)
    ours = measure(svc, lambda n: submit_argv(path, f"bench-enqueue-{n}"), repeat)
    items = json.loads(ours.best.stdout)["items"]
    if items != rows:
        raise RuntimeError(f"rcbatch registered {items} items of {rows} rows")
    raw = measure(svc, lambda n: [sys.executable, "-c", RAW_SCRIPT, svc.redis_url, str(path)],
                  repeat)
    one = write_rows(svc.folder("enqueue") / "rows-1.jsonl", 1)
    startup = measure(svc, lambda n: submit_argv(one, f"bench-enqueue-one-{n}"), repeat)
    if profile is not None:  # one more run under cProfile, not counted in the figures
        measure(svc, lambda n: submit_argv(path, "bench-enqueue-profiled", profile), 1)
    return section(rows, repeat, ours, raw, startup.best.seconds)


def section(rows: int, repeat: int, ours: Side, raw: Side, startup: float) -> Section:
    """The figures and their targets."""
    mine, base = ours.best, raw.best
    rate, raw_rate = rows / mine.seconds, rows / base.seconds
    result = Section(
        "5. Enqueue: `rcbatch submit` vs a raw redis-py pipeline",
        f"{rows:,} text-to-image rows in one JSONL ({_file_mib(rows)}); best of {repeat} "
        f"run(s) each, child processes including interpreter start-up; embedded Redis "
        f"(append-only), loopback.")
    result.add(
        at_least("rcbatch submit: rows/s (read + validate + register + enqueue)", rate,
                 RATE_TARGET, "rows/s", digits=0),
        info("rcbatch submit: rows/s after start-up (wall - a 1-row submit's wall)",
             rows / max(1e-3, mine.seconds - startup), "rows/s", digits=0),
        info("raw pipeline: rows/s (parse + HSET + RPUSH)", raw_rate, "rows/s", digits=0),
        at_most("rcbatch time / raw pipeline time", mine.seconds / base.seconds,
                RATIO_TARGET, "x"),
        at_most("rcbatch submit: peak RSS", mine.peak_rss / MIB, RSS_LIMIT / MIB, "MiB",
                digits=1),
        info("raw pipeline: peak RSS", base.peak_rss / MIB, "MiB", digits=1),
        info("rcbatch submit: wall seconds", mine.seconds, "s"),
        info("rcbatch submit: CPU seconds (its own process)", mine.cpu, "s"),
        info("rcbatch submit of a 1-row file: wall seconds (start-up)", startup, "s"),
        info("raw pipeline: CPU seconds", base.cpu, "s"),
        info("Redis bytes per row, rcbatch", ours.redis_bytes / rows, "B", digits=0),
        info("Redis bytes per row, raw", raw.redis_bytes / rows, "B", digits=0),
    )
    if rows < FULL_ROWS:
        result.notes.append(f"Quick size ({rows:,} rows): start-up dominates; the targets are "
                            f"for {FULL_ROWS:,} rows.")
    return result


def _file_mib(rows: int) -> str:
    # about 180 bytes a row; the exact size does not matter for the figures
    return f"~{rows * 183 / MIB:.0f} MiB" if rows >= 10_000 else f"~{rows * 183 / 1024:.0f} KiB"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options: the shared ones (bench/runner.py) and this benchmark's own."""
    parse = parser("enqueue", "measurement 5: rcbatch submit vs a raw redis-py pipeline")
    parse.add_argument("--rows", type=int, help=f"rows in the file [{FULL_ROWS:,}; "
                                                 f"--quick: {QUICK_ROWS:,}]")
    parse.add_argument("--repeat", type=int, default=1, help="runs per side; the best counts")
    return parse.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    """Run the enqueue benchmark and print its table (with `--profile DIR`, also a cProfile
    of one more `rcbatch submit`, written to DIR/submit.prof)."""
    args = parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    profile = None
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        profile = args.profile / "submit.prof"
    started = time.monotonic()
    with Services(keep=args.keep) as svc:
        result = run(svc, rows=rows, repeat=max(1, args.repeat), profile=profile)
    show([result], f"enqueue{' --quick' if args.quick else ''}: "
                   f"{time.monotonic() - started:.0f} s on {machine()}")
    if profile is not None:
        _print_profile(profile)
    return 0


def _print_profile(path: Path) -> None:
    import pstats

    print(f"cProfile of `rcbatch submit` ({path}), top 25 by cumulative time:")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    raise SystemExit(main())
