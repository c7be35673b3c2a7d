"""The command line as users and scripts see it: exit codes, one-line errors, `run` and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer

T2I = "bytedance/dreamina-4-0/text-to-image"
TOKEN = "cli-test-token-8d1e2f"


def rcbatch(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rcbatch", *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def write_rows(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"model": T2I, "prompt": f"p{k}", "force_single": True,
                                        "width×height": "1024x1024(1:1)"}) + "\n"
                            for k in range(n)))
    return path


def test_validate_counts_items_and_exits_0(tmp_path: Path) -> None:
    done = rcbatch("validate", str(write_rows(tmp_path / "ok.jsonl", 3)), "--json",
                   "--no-preflight")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["items"] == 3 and doc["by_model"] == {T2I: 3} and doc["errors"] == []


def test_bad_rows_give_one_line_each_and_exit_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"model": T2I, "prompt": "x", "scale": 3})
                    + '\n{"model": "nope"}\n[1]\n')
    done = rcbatch("validate", str(path), "--no-preflight")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"{path}:1: scale: ")
    assert lines[1].startswith(f"{path}:2: model: ")
    assert lines[2].startswith(f"{path}:3: ")
    assert lines[-1] == "rcbatch: error: 3 problems in 3 rows; nothing was enqueued"
    assert "Traceback" not in done.stderr


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = rcbatch("validate", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_submit_without_a_redis_url_enqueues_nothing(tmp_path: Path) -> None:
    env = {"RCBATCH_REDIS_URL": ""}
    done = rcbatch("submit", str(write_rows(tmp_path / "a.jsonl", 1)), "--no-preflight",
                   env=env)
    assert done.returncode == 2 and "RCBATCH_REDIS_URL" in done.stderr


def test_an_unreachable_redis_exits_3(tmp_path: Path) -> None:
    env = {"RCBATCH_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = rcbatch("status", "whatever", env=env)
    assert done.returncode == 3 and done.stderr.startswith("rcbatch: error: Redis")


def test_status_of_an_unknown_batch_exits_2(redis_url: str) -> None:
    done = rcbatch("status", "no-such-batch", env={"RCBATCH_REDIS_URL": redis_url})
    assert done.returncode == 2 and "no batch" in done.stderr


def test_every_command_has_help() -> None:
    for command in ("run", "submit", "validate", "status", "watch", "manifest", "retry",
                    "cancel", "worker", "simulate", "pause", "resume"):
        done = rcbatch(command, "--help")
        assert done.returncode == 0 and "Usage:" in done.stdout, command


@pytest.mark.e2e
def test_run_interrupted_and_run_again_pays_for_nothing_twice(tmp_path: Path) -> None:
    """Ctrl-C halfway, then the same command: every item done once, nothing left running."""
    config = SimulatorConfig(token=TOKEN, concurrency=3, duration=(0.8, 1.5), seed=5,
                             image_scale=0.02)
    spec = write_rows(tmp_path / "sweep.jsonl", 18)
    state = tmp_path / "state"
    with SimulatorServer(config) as sim:
        env = {"RCBATCH_RUNCOMFY_BASE_URL": sim.base_url, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN,
               "RCBATCH_STATE_DIR": str(state), "RCBATCH_REDIS_URL": "",
               "RCBATCH_MAX_IN_FLIGHT": "6"}
        first = subprocess.Popen([sys.executable, "-m", "rcbatch", "run", str(spec),
                                  "--workers", "1"], env={**os.environ, **env},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for_completed(sim.base_url, 5)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        assert "Resume with the same command" in err
        done_before = httpx.get(f"{sim.base_url}/_sim/stats").json()["completed"]
        assert 0 < done_before < 18
        second = rcbatch("run", str(spec), "--workers", "1", env=env, timeout=240)
        assert second.returncode == 0, second.stderr
        assert "already known" in second.stderr
        stats = httpx.get(f"{sim.base_url}/_sim/stats").json()
    assert stats["duplicate_submits"] == 0
    assert stats["submits"] == 18
    manifest = Path(second.stdout.strip().removeprefix("manifest: file://"))
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert len(lines) == 18 and {x["status"] for x in lines} == {"completed"}
    assert _leftover_processes(state) == []


def _wait_for_completed(url: str, n: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/_sim/stats").json()["completed"] >= n:
            return
        time.sleep(0.2)
    raise AssertionError("the first run made no progress")


def _leftover_processes(state: Path) -> list[str]:
    """Processes whose command line or environment mentions this run's state folder."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(state) in cmdline or str(state).encode() in environ:
            found.append(cmdline)
    return found
