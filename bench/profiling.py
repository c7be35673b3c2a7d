"""Profiling real `rcbatch worker` processes with cProfile (py-spy and pyinstrument are not here).

`python -m bench.profiling OUT_DIR [rcbatch worker options]` runs `rcbatch worker` with
cProfile on in the main process and in every pool child (started in `worker_process_init`,
written in `worker_process_shutdown`), one `.prof` file per process in OUT_DIR. `ProfiledWorkers`
starts such workers in place of tests/cluster.py's; `report` prints the top functions of all
files merged. A bench run with `--profile DIR` uses them.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from tests.cluster import Workers

_profiler: cProfile.Profile | None = None


def _dump(out_dir: Path, role: str) -> None:
    if _profiler is not None:
        _profiler.disable()
        _profiler.dump_stats(str(out_dir / f"{role}-{os.getpid()}.prof"))


def _install(out_dir: Path) -> None:
    from celery.signals import worker_process_init, worker_process_shutdown

    def start(**_: Any) -> None:
        global _profiler
        _profiler = cProfile.Profile(time.process_time)
        _profiler.enable()

    def stop(**_: Any) -> None:
        _dump(out_dir, "child")

    worker_process_init.connect(start, weak=False)
    worker_process_shutdown.connect(stop, weak=False)


def main(argv: list[str] | None = None) -> int:
    """Run `rcbatch worker ARGS` with every process profiled into OUT_DIR (the first arg)."""
    global _profiler
    args = list(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.pop(0))
    out_dir.mkdir(parents=True, exist_ok=True)
    _install(out_dir)
    from rcbatch.cli import main as rcbatch_main

    _profiler = cProfile.Profile(time.process_time)
    _profiler.enable()
    try:
        rcbatch_main(["worker", *args])
    except SystemExit:
        pass
    finally:
        _dump(out_dir, "main")
    return 0


class ProfiledWorkers(Workers):
    """tests/cluster.py's workers, each run under `python -m bench.profiling`."""

    def __init__(self, *args: Any, out_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out_dir = out_dir

    def command(self, n: int) -> list[str]:
        """Worker `n` run under `python -m bench.profiling OUT_DIR`."""
        return [sys.executable, "-m", "bench.profiling", str(self.out_dir), "--concurrency",
                str(self.concurrency), "--hostname", f"bench{n}-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle"]


def report(out_dir: Path, role: str = "child", top: int = 40, sort: str = "tottime") -> str:
    """The `top` functions of every `role-*.prof` in `out_dir`, merged, as text."""
    files = sorted(str(p) for p in out_dir.glob(f"{role}-*.prof"))
    if not files:
        return f"(no {role} profiles in {out_dir})\n"
    buffer = io.StringIO()
    stats = pstats.Stats(files[0], stream=buffer)
    for extra in files[1:]:
        stats.add(extra)
    stats.strip_dirs().sort_stats(sort).print_stats(top)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
