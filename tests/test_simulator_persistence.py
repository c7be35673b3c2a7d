"""The simulator with a state path keeps its jobs across a stop and a start (also a SIGKILL):
the old request ids answer status, result and cancel, their outputs still download, and the
schedule goes on as if the simulator had never stopped."""

from __future__ import annotations

import itertools
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rcbatch.errors import InputError
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.runcomfy.simulator.outputs import SIM_MODELS
from rcbatch.runcomfy.simulator.state import SimState

T2I = "bytedance/dreamina-4-0/text-to-image"
I2V = "bytedance/dreamina-3-0/image-to-video"
TOKEN = "persist-token-7f3e"
RCBATCH = Path(sys.executable).with_name("rcbatch")
TERMINAL = {"succeeded", "failed", "cancelled"}
VIDEO_BODY = {"prompt": "waves", "image_urls": ["https://example.com/a.jpg"]}


class Api:
    """An authenticated client of one running simulator."""

    def __init__(self, base_url: str, plain: httpx.Client) -> None:
        self.url, self.plain = base_url, plain  # plain: no token, output URLs are public
        self.http = httpx.Client(base_url=base_url, timeout=5.0,
                                 headers={"Authorization": f"Bearer {TOKEN}"})

    def submit(self, model: str, body: dict[str, Any]) -> str:
        answer = self.http.post(f"/v1/models/{model}", json=body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["request_id"])

    def status(self, rid: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/requests/{rid}/status")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def result(self, rid: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/requests/{rid}/result")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def cancel(self, rid: str) -> str:
        return str(self.http.post(f"/v1/requests/{rid}/cancel").json()["outcome"])

    def wait(self, rid: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.result(rid)
            if result["status"] in TERMINAL:
                return result
            time.sleep(0.02)
        raise AssertionError(f"{rid} did not finish")

    def downloads(self, result: dict[str, Any]) -> list[bytes]:
        """The bytes of every output URL of a succeeded result (URLs need no token)."""
        urls = [u for value in result["output"].values()
                for u in (value if isinstance(value, list) else [value])]
        assert all(u.startswith(self.url) for u in urls)
        answers = [self.plain.get(u) for u in urls]
        assert all(a.status_code == 200 for a in answers)
        return [a.content for a in answers]

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_sim/stats").json())

    def close(self) -> None:
        self.http.close()


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds(result: dict[str, Any], start: str, end: str) -> float:
    return (moment(result[end]) - moment(result[start])).total_seconds()


@pytest.fixture(scope="module")
def plain() -> Iterator[httpx.Client]:
    """A client without the token (creating an httpx client is slow: share one)."""
    with httpx.Client(timeout=5.0) as client:
        yield client


# -- in process: a clean stop and start ----------------------------------------------------

@pytest.fixture
def config(tmp_path: Path) -> SimulatorConfig:
    return SimulatorConfig(token=TOKEN, concurrency=1, duration=(0.4, 0.4), image_scale=0.02,
                           video_bytes=20_000, seed=11, state_path=tmp_path / "simulator")


def test_old_request_ids_answer_after_a_restart(config: SimulatorConfig,
                                                 plain: httpx.Client) -> None:
    with SimulatorServer(config) as sim:
        api = Api(sim.base_url, plain)
        first = api.submit(T2I, {"prompt": "a cat", "width×height": "1024x1024(1:1)"})
        before = api.downloads(api.wait(first))
        queued = [api.submit(I2V, {**VIDEO_BODY, "prompt": f"take {n}"}) for n in range(7)]
        assert api.cancel(queued[-1]) == "cancelled"
        api.close()

    with SimulatorServer(config) as sim:
        api = Api(sim.base_url, plain)
        positions = [api.status(rid).get("queue_position") for rid in queued[:-1]]
        assert api.cancel(queued[-2]) == "cancelled"  # still queued: 5 jobs of 0.4 s before it
        waiting = [p for p in positions if p is not None]  # FIFO kept: 1, 2, ... at the end
        assert positions[len(positions) - len(waiting):] == list(range(1, len(waiting) + 1))
        assert api.status(queued[-1])["status"] == "cancelled"
        assert api.cancel(queued[-1]) == "not_cancellable"
        assert api.status(first)["status"] == "completed"
        assert api.downloads(api.result(first)) == before
        late = api.submit(T2I, {"prompt": "after the restart"})
        listing = api.http.get("/_sim/jobs").json()["jobs"]
        assert [j["index"] for j in listing if j["request_id"] == late] == [8]
        video = api.wait(queued[0])
        assert video["status"] == "succeeded" and len(api.downloads(video)[0]) == 20_000
        stats = api.stats()
        assert (stats["submits"], stats["jobs"], stats["restored_jobs"]) == (9, 9, 8)
        assert stats["cancelled"] == 2 and stats["completed"] >= 2
        api.close()


def test_a_job_in_progress_ends_at_its_planned_end_and_downtime_counts(
        config: SimulatorConfig, plain: httpx.Client) -> None:
    with SimulatorServer(config) as sim:
        api = Api(sim.base_url, plain)
        running, queued = api.submit(T2I, {"prompt": "one"}), api.submit(T2I, {"prompt": "two"})
        api.close()
    time.sleep(0.5)  # `running` ends while the simulator is down, `queued` starts then

    with SimulatorServer(config) as sim:
        api = Api(sim.base_url, plain)
        assert api.status(running)["status"] == "completed"
        first, second = api.result(running), api.wait(queued)
        assert seconds(first, "created_at", "finished_at") == pytest.approx(0.4, abs=1e-5)
        assert second["started_at"] == first["finished_at"]
        assert seconds(second, "started_at", "finished_at") == pytest.approx(0.4, abs=1e-5)
        api.close()


def test_a_reset_forgets_the_saved_jobs(config: SimulatorConfig, plain: httpx.Client) -> None:
    with SimulatorServer(config) as sim:
        api = Api(sim.base_url, plain)
        rid = api.submit(T2I, {"prompt": "forgotten"})
        assert api.http.post("/_sim/reset", json={}).status_code == 200
        api.close()
    with SimulatorServer(config) as sim:
        api = Api(sim.base_url, plain)
        assert api.http.get(f"/v1/requests/{rid}/status").status_code == 404
        assert api.stats()["restored_jobs"] == 0
        api.close()


def test_a_state_in_use_is_refused(config: SimulatorConfig, plain: httpx.Client) -> None:
    with SimulatorServer(config), pytest.raises(InputError, match="in use"):
        SimulatorServer(config)
    with SimulatorServer(config) as sim:  # the lock went with the first simulator
        assert plain.get(f"{sim.base_url}/_sim/stats").status_code == 200


# -- the engine's schedule after restarts, on a fake clock ---------------------------------

def schedule(sim: SimState) -> dict[str, tuple[str, float | None, float | None]]:
    return {j.request_id: (j.state, j.started, j.finished) for j in sim.engine.jobs()}


def test_restored_schedule_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    now = [100.0]
    clocks: dict[str, Any] = {"clock": lambda: now[0], "wall_clock": lambda: 1e9 + now[0]}
    config = SimulatorConfig(concurrency=2, duration=(0.5, 2.0), seed=4, job_fail=0.3,
                             output_404=1.0, state_path=tmp_path / "db.sqlite3")
    original, rng = SimState(config, **clocks), random.Random(1)
    for n in range(80):
        now[0] += rng.uniform(0, 0.4)
        original.engine.advance()
        jobs = list(original.engine.jobs())
        if jobs and rng.random() < 0.2:
            original.cancel(rng.choice(jobs), now[0])
        else:
            job = original.create_job(rng.choice("ab"), SIM_MODELS[I2V],
                                      {**VIDEO_BODY, "prompt": f"n{n % 50}"}, now[0])
            job.outputs.files[0].gets += n % 3
            original.fetched(job)
    original.close()

    for capacity in (2, 3, 3, 1):  # the same, a larger, again, and a smaller cap
        now[0] += 1.5  # down for a while: jobs end and start meanwhile
        restored = SimState(config.with_overrides({"concurrency": capacity}), **clocks)
        original.engine.set_capacity(capacity, restored.engine.now())
        assert schedule(restored) == schedule(original)
        gets = {j.request_id: j.outputs.files[0].gets for j in original.engine.jobs()}
        assert {j.request_id: j.outputs.files[0].gets for j in restored.engine.jobs()} == gets
        assert restored.stats.snapshot(restored.engine, 4) | {"restored_jobs": 0} == (
            original.stats.snapshot(original.engine, 4))
        restored.close()
    original.engine.advance(now[0] + 60)
    restored.engine.advance(now[0] + 60)
    assert schedule(restored) == schedule(original)
    assert {j.state for j in restored.engine.jobs()} == {"succeeded", "failed", "cancelled"}


# -- a simulator process killed with SIGKILL -----------------------------------------------

class Process:
    """`rcbatch simulate --state ...` in a subprocess; `url` once it listens."""

    def __init__(self, state: Path, log: Path) -> None:
        argv = [str(RCBATCH), "simulate", "--port", "0", "--state", str(state),
                "--concurrency", "1", "--duration", "0.3-0.3", "--image-scale", "0.02",
                "--video-bytes", "10000", "--seed", "5"]
        env = {**os.environ, "RCBATCH_SIMULATOR_TOKEN": TOKEN}
        with log.open("ab") as err:
            self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
        self.url = self._listening_url(log)

    def _listening_url(self, log: Path, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.1)[0]:
                line = self.proc.stdout.readline().decode()
                if "listening on " in line:
                    return line.split("listening on ", 1)[1].strip()
        self.stop()
        raise AssertionError(f"the simulator did not start: {log.read_text()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def test_jobs_survive_a_sigkill(tmp_path: Path, processes: list[Process],
                               plain: httpx.Client) -> None:
    state, log = tmp_path / "state", tmp_path / "simulator.log"
    processes.append(Process(state, log))
    api = Api(processes[0].url, plain)
    done = api.submit(I2V, VIDEO_BODY)
    before = api.downloads(api.wait(done))
    later = [api.submit(T2I, {"prompt": f"cat {n}"}) for n in range(4)]
    assert api.cancel(later[-1]) == "cancelled"
    second = subprocess.run([str(RCBATCH), "simulate", "--port", "0", "--state", str(state)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 2 and "in use by another simulator" in second.stderr
    processes[0].kill()
    api.close()

    processes.append(Process(state, log))
    api = Api(processes[1].url, plain)
    assert api.downloads(api.result(done)) == before
    assert api.status(later[-1])["status"] == "cancelled"
    results = [api.wait(rid) for rid in later[:-1]]
    assert [r["status"] for r in results] == ["succeeded"] * 3
    for previous, following in itertools.pairwise(results):
        assert following["started_at"] == previous["finished_at"]  # FIFO, one at a time
    assert all(len(api.downloads(r)) == 2 for r in results)
    assert api.cancel(later[0]) == "not_cancellable"
    stats = api.stats()
    assert (stats["submits"], stats["completed"], stats["cancelled"]) == (5, 4, 1)
    api.close()
