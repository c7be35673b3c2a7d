"""Caps on what one submission may expand to: refused from the axis lengths, before the work."""

from __future__ import annotations

import inspect
import json
import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from rcbatch.config import Settings
from rcbatch.errors import InputError
from rcbatch.producer.spec import read_and_check

T2I = "bytedance/dreamina-4-0/text-to-image"
RCBATCH = [sys.executable, "-m", "rcbatch"]


def write(path: Path, *rows: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def axes(count: int, length: int = 10) -> dict[str, list[int]]:
    return {f"axis{k}": list(range(length)) for k in range(count)}


def test_a_sweep_past_the_row_cap_is_refused_without_building_it(tmp_path: Path) -> None:
    path = write(tmp_path / "big.jsonl", {"model": T2I, "prompt": "p", "sweep": axes(5)})
    tracemalloc.start()
    try:
        result = read_and_check([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [problem] = result.problems
    assert str(problem) == (f"{path}:1: sweep: expands to 100000 items; the limit per row "
                            "is 10000")
    assert result.items == []
    # 100,000 combinations built would take tens of MB; sized from 5 lengths, almost nothing.
    assert peak < 5_000_000


def _limit_memory() -> None:
    limit = 1 << 30  # 1 GiB of address space: ample for the CLI, far short of 10^10 rows
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_ten_axis_sweep_exits_2_naming_the_row_under_a_memory_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "ten.jsonl", {"model": T2I, "prompt": "p", "sweep": axes(10)})
    done = subprocess.run([*RCBATCH, "validate", str(path), "--no-preflight"],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_memory, env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == (f"{path}:1: sweep: expands to 10000000000 items; "
                                           "the limit per row is 10000")
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr


def test_the_default_item_cap_is_the_settings_default() -> None:
    default = inspect.signature(read_and_check).parameters["max_items"].default
    assert default == Settings().max_items == 100_000


def test_the_submission_is_refused_at_the_row_that_passes_max_items(tmp_path: Path) -> None:
    rows = [{"model": T2I, "prompt": f"p{k}"} for k in range(3)]
    path = write(tmp_path / "a.jsonl", *rows,
                 {"model": T2I, "prompt": "s", "sweep": {"scale": [0.1, 0.2, 0.3]}})
    with pytest.raises(InputError) as caught:
        read_and_check([path], max_items=5)
    message = str(caught.value)
    assert message.startswith(f"{path}:4: sweep: ")
    assert "RCBATCH_MAX_ITEMS" in message and "5 items" in message
    assert "\n" not in message


def test_max_items_counts_across_files_and_command_line_repeats(tmp_path: Path) -> None:
    first = write(tmp_path / "one.jsonl", {"model": T2I, "prompt": "a"})
    second = write(tmp_path / "two.jsonl", {"model": T2I, "prompt": "b"},
                   {"model": T2I, "prompt": "c"})
    assert len(read_and_check([first, second], repeat=2, max_items=6).items) == 6
    with pytest.raises(InputError) as caught:
        read_and_check([first, second], repeat=2, max_items=5)
    assert str(caught.value).startswith(f"{second}:2: repeat: ")


def test_exactly_max_items_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "z.jsonl", {"model": T2I,
                                        "zip": {"scale": [0.1, 0.2], "prompt": ["a", "b"]},
                                        "repeat": 2})
    result = read_and_check([path], max_items=4)
    assert result.problems == [] and len(result.items) == 4


def test_the_cli_refuses_past_rcbatch_max_items_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "many.jsonl",
                 *({"model": T2I, "prompt": f"p{k}"} for k in range(30)))
    done = subprocess.run([*RCBATCH, "validate", str(path), "--no-preflight"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RCBATCH_MAX_ITEMS": "10"})
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"rcbatch: error: {path}:11: (row): ") and "RCBATCH_MAX_ITEMS" in line
