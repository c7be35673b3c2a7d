"""`python -m bench NAME|all [--quick] [options]`: run benchmarks by name, each printing its table.

`all` runs every benchmark of `ALL` in turn (each with its own Redis and simulator), passing
the options on, and ends with one summary table of every figure that has a target. A name
runs that benchmark alone with the options it takes (`python -m bench NAME --help`).
Benchmarks are imported by module name when run, so one that fails to import or to run does
not stop the others; the exit status is 1 when any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

#: name -> what it measures, in the order `all` runs them
ALL = {
    "makespan": "1. makespan / ideal at the API's cap (N=2,000, C=100, 1-3 s)",
    "peers": "2. rcbatch vs a naive Celery poller and an asyncio poller (N=200)",
    "polling": "3. polls per job and detection latency (1-3 s, and a 30-120 s mix)",
    "overhead": "4. the overhead ceiling: zero-duration jobs, no cap",
    "enqueue": "5. rcbatch submit of a large JSONL vs a raw redis-py pipeline",
    "streaming": "6. a large output streamed into the local bucket and S3",
    "scale": "7. Redis bytes per item and broker messages",
}
#: run by name only (long, and with options of their own)
BY_NAME_ONLY = {"chaos": "the chaos run: workers and Redis killed under every fault class",
                "retention": "Redis memory over 30 nightly batches whose records expire"}


def usage() -> str:
    """The help text: every benchmark's name and what it measures."""
    lines = [__doc__ or "", "benchmarks (`all` runs the first group):"]
    lines += [f"  {name:<10} {about}" for name, about in ALL.items()]
    lines += [f"  {name:<10} {about}" for name, about in BY_NAME_ONLY.items()]
    return "\n".join(lines)


def run_one(name: str, args: list[str]) -> int:
    """Import `bench.NAME` and call its `main(args)`; 1 if it could not run."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ImportError as exc:
        print(f"bench {name}: not available ({exc})", file=sys.stderr)
        return 1
    try:
        status = module.main(args)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        traceback.print_exc()
        status = 1
    return int(status or 0)


def main(argv: list[str] | None = None) -> int:
    """Run `all` or one benchmark by name."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name != "all":
        if name not in ALL and name not in BY_NAME_ONLY:
            print(f"bench: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
            return 2
        return run_one(name, rest)
    return run_all(rest)


def run_all(args: list[str]) -> int:
    """Every benchmark of `ALL` in turn, then the summary of targets."""
    from bench.runner import PRINTED
    from bench.table import summary

    failed = []
    for name in ALL:
        started = time.monotonic()
        print(f"\n## bench {name}\n", flush=True)
        if run_one(name, args) != 0:
            failed.append(name)
        print(f"_(bench {name}: {time.monotonic() - started:.0f} s)_", flush=True)
    print("\n## Summary of targets\n\n" + summary(PRINTED), flush=True)
    print(f"_all: {len(ALL) - len(failed)} of {len(ALL)} benchmarks ran_", flush=True)
    if failed:
        print(f"failed or missing: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
