"""The local RunComfy Model API simulator, over real HTTP on loopback with plain httpx."""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from rcbatch.cli import cmd_simulate
from rcbatch.runcomfy import catalogue
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.runcomfy.simulator.engine import Engine, Job
from rcbatch.runcomfy.simulator.outputs import OutputPlan

T2I = "bytedance/dreamina-4-0/text-to-image"
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
SEQ = "bytedance/seedream-4-5/edit-sequential"
TOKEN = "test-token-abc"
FAST: dict[str, Any] = {"duration": (0.05, 0.2), "image_scale": 0.05, "seed": 7}
TERMINAL = {"succeeded", "failed", "cancelled"}


class Sim:
    """A running simulator and an authenticated httpx client for it."""

    def __init__(self, server: SimulatorServer, client: httpx.Client,
                 plain: httpx.Client) -> None:
        self.server, self.client, self.url = server, client, server.base_url
        self.plain = plain  # no token: output URLs are public, like a CDN's

    def submit(self, model: str, body: dict[str, Any]) -> httpx.Response:
        """POST a body to a model."""
        return self.client.post(f"/v1/models/{model}", json=body)

    def submit_ok(self, model: str, body: dict[str, Any]) -> str:
        """Submit, expect 200, return the request id."""
        answer = self.submit(model, body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["request_id"])

    def status(self, request_id: str) -> dict[str, Any]:
        """GET /status as JSON."""
        return dict(self.client.get(f"/v1/requests/{request_id}/status").json())

    def wait(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll /result until the job is terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = dict(self.client.get(f"/v1/requests/{request_id}/result").json())
            if result["status"] in TERMINAL:
                return result
            time.sleep(0.02)
        raise AssertionError(f"{request_id} did not finish")

    def stats(self) -> dict[str, Any]:
        """GET /_sim/stats (no token)."""
        return dict(self.plain.get(f"{self.url}/_sim/stats").json())

    def jobs(self) -> list[dict[str, Any]]:
        """GET /_sim/jobs."""
        return list(self.plain.get(f"{self.url}/_sim/jobs").json()["jobs"])


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    """One simulator for the module; each test resets it to the options it needs."""
    with SimulatorServer(SimulatorConfig(**FAST)) as running:
        yield running


@pytest.fixture(scope="module")
def plain() -> Iterator[httpx.Client]:
    """A client without the token (creating an httpx client is slow: share one)."""
    with httpx.Client(timeout=5.0) as client:
        yield client


@pytest.fixture
def start(server: SimulatorServer, plain: httpx.Client) -> Iterator[Callable[..., Sim]]:
    """Reset the simulator to FAST plus the given options; a client for it."""
    clients: list[httpx.Client] = []

    def _start(client_token: str = TOKEN, timeout: float = 5.0, **options: Any) -> Sim:
        answer = plain.post(f"{server.base_url}/_sim/reset", json={**FAST, **options})
        assert answer.status_code == 200, answer.text
        client = httpx.Client(base_url=server.base_url, timeout=timeout,
                              headers={"Authorization": f"Bearer {client_token}"})
        clients.append(client)
        return Sim(server, client, plain)

    yield _start
    for client in clients:
        client.close()


def image_size(data: bytes) -> tuple[int, int]:
    """Pixel size of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


# -- each model, end to end ----------------------------------------------------------------

def edit_body(sim: Sim) -> dict[str, Any]:
    """A Dreamina edit body whose input is one of the simulator's own sample images."""
    return {"prompt": "make it blue", "image_urls": [f"{sim.url}/_sim/inputs/1024x768.jpg"],
            "width×height": "2304x1728(4:3)"}


@pytest.mark.parametrize(("model", "body", "key", "count", "size"), [
    (T2I, {"prompt": "a cat", "width×height": "2560x1440(16:9)"}, "images", 2, (128, 72)),
    (T2I, {"prompt": "a cat", "force_single": True}, "image", 1, (102, 102)),
    (EDIT, None, "images", 2, (115, 86)),
    (SEQ, {"prompt": "Generate 3 images", "images": ["https://example.com/a.png"],
           "sequential_image_generation_options": 5, "resolution": "2K"}, "images", 3, (102, 102)),
    (SEQ, {"prompt": "Generate 1 image", "images": ["https://example.com/a.png"],
           "sequential_image_generation_options": 1, "resolution": "1440x2560 (9:16)"},
     "images", 1, (72, 128)),
])
def test_image_models_run_to_downloadable_images_of_the_requested_size(
        start: Callable[..., Sim], model: str, body: dict[str, Any] | None, key: str,
        count: int, size: tuple[int, int]) -> None:
    sim = start()
    result = sim.wait(sim.submit_ok(model, body or edit_body(sim)))
    assert result["status"] == "succeeded"
    urls = result["output"][key]
    urls = [urls] if isinstance(urls, str) else urls
    assert len(urls) == count
    for url in urls:
        download = sim.plain.get(url)
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        assert int(download.headers["content-length"]) == len(download.content)
        assert image_size(download.content) == size


def test_video_model_serves_an_mp4_of_the_configured_size(start: Callable[..., Sim]) -> None:
    sim = start(video_bytes=300_000)
    body = {"prompt": "waves", "image_urls": ["https://example.com/a.jpg"]}
    result = sim.wait(sim.submit_ok(I2V, body))
    url = result["output"]["video"]
    head = sim.plain.head(url)
    assert head.headers["content-type"] == "video/mp4"
    assert head.headers["content-length"] == "300000"
    download = sim.plain.get(url)
    assert len(download.content) == 300_000
    assert download.content[4:8] == b"ftyp"
    assert sim.plain.get(url).content == download.content  # the same bytes every time


def test_jpeg_outputs_when_asked(start: Callable[..., Sim]) -> None:
    sim = start(image_format="jpeg")
    url = sim.wait(sim.submit_ok(T2I, {"prompt": "a", "force_single": True}))["output"]["image"]
    download = sim.plain.get(url)
    assert url.endswith(".jpg") and download.headers["content-type"] == "image/jpeg"
    assert image_size(download.content) == (102, 102)


def test_submit_answer_and_result_have_the_documented_shape(start: Callable[..., Sim]) -> None:
    sim = start()
    answer = sim.submit(T2I, {"prompt": "a cat"}).json()
    rid = answer["request_id"]
    assert answer["status_url"] == f"{sim.url}/v1/requests/{rid}/status"
    assert answer["result_url"] == f"{sim.url}/v1/requests/{rid}/result"
    assert answer["cancel_url"] == f"{sim.url}/v1/requests/{rid}/cancel"
    sim.wait(rid)
    status = sim.status(rid)
    assert status["status"] == "completed" and "queue_position" not in status
    result = sim.client.get(f"/v1/requests/{rid}/result", params={"include_cost": "true"}).json()
    assert result["status"] == "succeeded"
    assert isinstance(result["cost"], float) and result["cost"] > 0
    assert result["created_at"] <= result["finished_at"]
    assert result["finished_at"].endswith("Z")


# -- the concurrency cap, the queue and cancel ---------------------------------------------

def test_queue_positions_are_true_and_cancel_only_takes_queued_jobs(
        start: Callable[..., Sim]) -> None:
    sim = start(concurrency=2, duration=(30, 30))
    ids = [sim.submit_ok(T2I, {"prompt": f"p{i}"}) for i in range(5)]
    states = [sim.status(rid) for rid in ids]
    assert [s["status"] for s in states] == ["in_progress"] * 2 + ["in_queue"] * 3
    assert [s.get("queue_position") for s in states] == [None, None, 1, 2, 3]

    cancelled = sim.client.post(f"/v1/requests/{ids[3]}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["outcome"] == "cancelled"
    assert sim.status(ids[3])["status"] == "cancelled"
    assert sim.status(ids[4])["queue_position"] == 2

    refused = sim.client.post(f"/v1/requests/{ids[0]}/cancel")
    assert refused.status_code == 202
    assert refused.json()["outcome"] == "not_cancellable"
    assert sim.status(ids[0])["status"] == "in_progress"
    assert sim.wait(ids[3])["status"] == "cancelled"


def test_each_token_has_its_own_cap_and_queue(start: Callable[..., Sim]) -> None:
    sim = start(concurrency=1, duration=(30, 30))
    first = sim.submit_ok(T2I, {"prompt": "a"})
    queued = sim.submit_ok(T2I, {"prompt": "b"})
    other = httpx.Client(base_url=sim.url, headers={"Authorization": "Bearer someone-else"})
    with other:
        mine = other.post(f"/v1/models/{T2I}", json={"prompt": "c"}).json()["request_id"]
        assert other.get(f"/v1/requests/{mine}/status").json()["status"] == "in_progress"
        stolen = other.get(f"/v1/requests/{first}/status")
    assert stolen.status_code == 403 and stolen.json()["error_code"] == 403001
    assert sim.status(queued)["queue_position"] == 1


def test_cap_holds_and_freed_slots_go_to_the_next_job_at_once(start: Callable[..., Sim]) -> None:
    sim = start(concurrency=2)
    ids = [sim.submit_ok(T2I, {"prompt": f"p{i}"}) for i in range(5)]
    seen_in_progress = []
    deadline = time.monotonic() + 10
    while (stats := sim.stats())["completed"] < 5 and time.monotonic() < deadline:
        seen_in_progress.append(stats["in_progress"])
        time.sleep(0.01)
    assert stats["completed"] == 5
    assert max(seen_in_progress) <= 2 and stats["peak_in_progress"] == 2
    jobs = sorted(sim.jobs(), key=lambda j: j["index"])
    assert [j["request_id"] for j in jobs] == ids
    finishes = {j["finished"] for j in jobs}
    starts = [j["started"] for j in jobs]
    assert starts == sorted(starts)  # first in, first out
    assert all(s in finishes for s in starts[2:])  # a queued job starts as a slot frees
    for job in jobs:
        overlapping = [o for o in jobs if o["started"] <= job["started"] < o["finished"]]
        assert len(overlapping) <= 2
    makespan = max(finishes) - min(j["created"] for j in jobs)
    assert stats["ideal_makespan"] == pytest.approx(makespan, abs=1e-5)


def test_a_running_job_cannot_be_cancelled_and_still_completes(
        start: Callable[..., Sim]) -> None:
    sim = start(duration=(0.3, 0.3))
    rid = sim.submit_ok(T2I, {"prompt": "a"})
    answer = sim.client.post(f"/v1/requests/{rid}/cancel").json()
    assert answer["outcome"] == "not_cancellable"
    assert sim.wait(rid)["status"] == "succeeded"


def _job(index: int, duration: float, owner: str = "o", at: float = 0.0) -> Job:
    return Job(index=index, request_id=f"r{index}", owner=owner, model_id=T2I, body={},
               outputs=OutputPlan("images", ()), duration=duration, will_fail=False, created=at)


@pytest.mark.parametrize("step", [None, 0.01, 0.5, 1.0])
def test_schedule_does_not_depend_on_how_often_the_engine_is_advanced(step: float | None) -> None:
    now = [0.0]
    engine = Engine(capacity=2, clock=lambda: now[0])
    jobs = [_job(i, d) for i, d in enumerate([1.0, 2.0, 1.0, 1.5, 1.0])]
    for job in jobs:
        engine.add(job)
    while step is not None and now[0] < 10:
        now[0] += step
        engine.advance()
    engine.advance(10.0)
    assert [(j.started, j.finished) for j in jobs] == [
        (0.0, 1.0), (0.0, 2.0), (1.0, 2.0), (2.0, 3.5), (2.0, 3.0)]


@pytest.mark.parametrize("seed", range(20))
def test_queue_positions_match_a_naive_count_under_random_cancels(seed: int) -> None:
    rng, now = random.Random(seed), [0.0]
    engine = Engine(capacity=rng.randint(1, 3), clock=lambda: now[0])
    jobs: list[Job] = []
    for _ in range(60):
        now[0] += rng.random() * 0.5
        engine.advance()
        if rng.random() < 0.6:
            job = _job(len(jobs), rng.uniform(0.1, 2.0), owner=rng.choice("ab"), at=now[0])
            engine.add(job)
            jobs.append(job)
        elif jobs:
            engine.cancel(rng.choice(jobs), now[0])
        for owner in "ab":
            queued = [j for j in jobs if j.owner == owner and j.state == "queued"]
            assert [engine.queue_position(j) for j in queued] == list(range(1, len(queued) + 1))
            running = sum(j.owner == owner and j.state == "running" for j in jobs)
            assert running == engine.capacity if queued else running <= engine.capacity


# -- errors --------------------------------------------------------------------------------

def test_unknown_request_id_is_404_and_unknown_model_400(start: Callable[..., Sim]) -> None:
    sim = start()
    for method, path in [("GET", "status"), ("GET", "result"), ("POST", "cancel")]:
        answer = sim.client.request(method, f"/v1/requests/no-such-id/{path}")
        assert (answer.status_code, answer.json()["error_code"]) == (404, 404001)
    answer = sim.submit("bytedance/nope", {"prompt": "a"})
    assert (answer.status_code, answer.json()["error_code"]) == (400, 400001)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer wrong-token", "Basic abc"])
def test_missing_or_wrong_token_is_401(start: Callable[..., Sim], header: str | None) -> None:
    sim = start(token=TOKEN)
    headers = {"Authorization": header} if header else {}
    answer = sim.plain.post(f"{sim.url}/v1/models/{T2I}", json={"prompt": "a"}, headers=headers)
    assert answer.status_code == 401 and answer.json()["error_code"] == 400004
    assert sim.stats()["submits"] == 0


def test_configured_token_is_accepted_and_never_shown() -> None:
    config = SimulatorConfig(token="s3cret-value", **FAST)
    with SimulatorServer(config) as server:
        headers = {"Authorization": "Bearer s3cret-value"}
        answer = httpx.post(f"{server.base_url}/v1/models/{T2I}", json={"prompt": "a"},
                            headers=headers)
        shown = [httpx.get(f"{server.base_url}/_sim/{name}").text for name in ("config", "jobs")]
    assert answer.status_code == 200
    assert '"token":"<set>"' in shown[0]
    assert all("s3cret-value" not in text for text in [repr(config), *shown])


def _catalogue_message(model: str, body: dict[str, Any], field: str) -> str:
    issues = [i for i in catalogue.validate(model, body) if i.field == field]
    return f"{field}: {issues[0].message}"


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x" * 801}, "prompt"),
    ({"prompt": "a", "scale": 2}, "scale"),
    ({"prompt": "a", "width×height": "800x600"}, "width×height"),
])
def test_invalid_body_is_422_with_the_documented_message(
        start: Callable[..., Sim], body: dict[str, Any], field: str) -> None:
    sim = start()
    answer = sim.submit(T2I, body)
    assert answer.status_code == 422
    error = answer.json()
    assert error["error_message"] == _catalogue_message(T2I, body, field)
    assert error["detail"][0]["loc"] == ["body", field]
    assert sim.stats()["submits"] == 0 and sim.stats()["rejected_submits"] == 1


def test_non_object_body_is_422(start: Callable[..., Sim]) -> None:
    sim = start()
    answer = sim.client.post(f"/v1/models/{T2I}", content=b"[1, 2]")
    assert answer.status_code == 422
    assert answer.json()["error_message"].startswith("body: ")


def test_warnings_pass_unless_strict(start: Callable[..., Sim]) -> None:
    body = {"prompt": "x" * 900, "image_urls": ["https://example.com/a.jpg"]}
    assert start().submit(I2V, body).status_code == 200
    assert start(strict=True).submit(I2V, body).status_code == 422


# -- injected faults -----------------------------------------------------------------------

def test_fail_5xx_answers_503(start: Callable[..., Sim]) -> None:
    sim = start(fail_5xx=1.0)
    assert sim.submit(T2I, {"prompt": "a"}).status_code == 503
    assert sim.client.get("/v1/requests/x/status").status_code == 503
    stats = sim.stats()
    assert stats["submits"] == 0 and stats["faults"]["fail_5xx"] == 2


def test_fail_429_answers_with_retry_after(start: Callable[..., Sim]) -> None:
    answer = start(fail_429=1.0, retry_after=1).submit(T2I, {"prompt": "a"})
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "1"


def test_slow_answer_exceeds_the_client_read_timeout(start: Callable[..., Sim]) -> None:
    sim = start(slow=1.0, slow_seconds=0.6, timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        sim.submit(T2I, {"prompt": "a"})
    stats = sim.stats()
    assert stats["faults"]["slow"] == 1 and stats["submits"] == 1


def test_dropped_connection_gets_no_answer_and_creates_no_job(start: Callable[..., Sim]) -> None:
    sim = start(drop=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        sim.submit(T2I, {"prompt": "a"})
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        sim.client.get("/v1/requests/x/status")
    stats = sim.stats()
    assert stats["submits"] == 0 and stats["faults"]["drop"] == 2


def test_lost_submit_creates_the_job_but_drops_the_answer(start: Callable[..., Sim]) -> None:
    sim = start(lost_submit=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        sim.submit(T2I, {"prompt": "a"})
    stats = sim.stats()
    assert stats["submits"] == 1 and stats["lost_submits"] == 1
    (job,) = sim.jobs()
    assert sim.wait(job["request_id"])["status"] == "succeeded"


def test_job_fail_ends_failed_with_an_error_object(start: Callable[..., Sim]) -> None:
    sim = start(job_fail=1.0)
    rid = sim.submit_ok(T2I, {"prompt": "a"})
    result = sim.wait(rid)
    assert result["status"] == "failed" and "output" not in result
    assert isinstance(result["error"], dict) and result["error"]["message"]
    assert sim.status(rid)["status"] == "completed"
    assert sim.stats()["failed"] == 1


@pytest.mark.parametrize(("permanent", "codes"), [(1.0, [404, 404, 404]),
                                                 (0.0, [404, 404, 200])])
def test_output_404_is_permanent_or_for_the_first_fetches(
        start: Callable[..., Sim], permanent: float, codes: list[int]) -> None:
    sim = start(output_404=1.0, output_404_permanent=permanent, output_404_fetches=2)
    url = sim.wait(sim.submit_ok(T2I, {"prompt": "a", "force_single": True}))["output"]["image"]
    assert [sim.plain.get(url).status_code for _ in range(3)] == codes


def test_truncated_output_sends_half_its_content_length(start: Callable[..., Sim]) -> None:
    sim = start(output_truncate=1.0, video_bytes=2_000_000)
    body = {"prompt": "waves", "image_urls": ["https://example.com/a.jpg"]}
    url = sim.wait(sim.submit_ok(I2V, body))["output"]["video"]
    received = 0
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)), \
            sim.plain.stream("GET", url) as response:
        assert response.headers["content-length"] == "2000000"
        for chunk in response.iter_raw():
            received += len(chunk)
    assert received == 1_000_000
    assert sim.stats()["faults"]["output_truncate"] == 1


# -- stats, reset, determinism -------------------------------------------------------------

def test_stats_count_submits_duplicates_polls_and_downloads(start: Callable[..., Sim]) -> None:
    sim = start()
    first = sim.submit_ok(T2I, {"prompt": "a", "scale": 0.5})
    sim.submit_ok(T2I, {"scale": 0.5, "prompt": "a"})  # the same body, keys reordered
    sim.submit_ok(T2I, {"prompt": "b"})
    sim.submit_ok(EDIT, {"prompt": "a", "scale": 0.5,
                         "image_urls": [f"{sim.url}/_sim/inputs/512x512.png"]})
    for _ in range(3):
        sim.status(first)
    result = sim.wait(first)
    sim.plain.get(result["output"]["images"][0])
    stats = sim.stats()
    assert stats["submits"] == 4 and stats["duplicate_submits"] == 1
    assert stats["status_polls"] == 3 and stats["result_polls"] >= 1
    assert stats["downloads"] == 1
    assert stats["first_submit_at"] is not None


def test_reset_clears_state_and_options_do_not_accumulate(start: Callable[..., Sim]) -> None:
    sim = start()
    rid = sim.submit_ok(T2I, {"prompt": "a"})
    assert sim.plain.post(f"{sim.url}/_sim/reset", json={"fail_5xx": 1.0}).status_code == 200
    assert sim.stats()["submits"] == 0
    assert sim.client.get(f"/v1/requests/{rid}/status").status_code == 503
    assert sim.plain.post(f"{sim.url}/_sim/reset", json={"concurrency": 3}).status_code == 200
    assert sim.client.get(f"/v1/requests/{rid}/status").status_code == 404
    assert sim.plain.post(f"{sim.url}/_sim/reset", json={"port": 1}).status_code == 400
    assert sim.plain.post(f"{sim.url}/_sim/reset", json={"fail_429": 2}).status_code == 400


def _run_sequence(seed: int) -> tuple[list[Any], list[int]]:
    config = SimulatorConfig(seed=seed, duration=(30, 60), job_fail=0.5, output_404=0.5,
                             fail_5xx=0.3)
    with SimulatorServer(config) as server:
        client = httpx.Client(base_url=server.base_url,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        sim = Sim(server, client, client)
        codes = [sim.submit(T2I, {"prompt": f"p{i}"}).status_code for i in range(12)]
        jobs = sorted(sim.jobs(), key=lambda j: j["index"])
        sim.client.close()
    fates = [(j["duration"], j["will_fail"], [o["gone"] for o in j["outputs"]]) for j in jobs]
    return fates, codes


def test_same_seed_gives_same_durations_and_faults() -> None:
    first, again, other = (_run_sequence(seed) for seed in (11, 11, 12))
    assert first == again
    assert first[0] != other[0]
    assert {200, 503} <= set(first[1])


# -- sample inputs -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["640x480.png", "320x900.jpg"])
def test_sample_inputs_are_real_images_with_head_and_range(
        start: Callable[..., Sim], name: str) -> None:
    sim = start()
    url = f"{sim.url}/_sim/inputs/{name}"
    full = sim.plain.get(url)
    width, height = (int(v) for v in name.split(".")[0].split("x"))
    assert image_size(full.content) == (width, height)
    assert sim.plain.head(url).headers["content-length"] == str(len(full.content))
    part = sim.plain.get(url, headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == full.content[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(full.content)}"
    tail = sim.plain.get(url, headers={"Range": "bytes=-5"})
    assert tail.content == full.content[-5:]
    beyond = sim.plain.get(url, headers={"Range": f"bytes={len(full.content)}-"})
    assert beyond.status_code == 416


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_sample_inputs_can_be_padded_to_a_file_size(start: Callable[..., Sim], ext: str) -> None:
    sim = start()
    padded = sim.plain.get(f"{sim.url}/_sim/inputs/100x50.{ext}", params={"bytes": 300_000})
    assert len(padded.content) >= 300_000
    assert image_size(padded.content) == (100, 50)


# -- the CLI command -----------------------------------------------------------------------

def test_cli_help_lists_the_options() -> None:
    result = CliRunner().invoke(cmd_simulate.simulate, ["--help"])
    assert result.exit_code == 0
    for option in ("--port", "--token", "--concurrency", "--duration", "--seed", "--fail-5xx",
                   "--lost-submit", "--output-truncate", "--video-bytes", "--image-scale"):
        assert option in result.output


def test_cli_options_become_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SimulatorConfig] = []
    monkeypatch.setattr(cmd_simulate, "run_forever", seen.append)
    args = ["--port", "0", "--concurrency", "2", "--duration", "0.5-2", "--seed", "5",
            "--fail-429", "0.25", "--time-scale", "0.1", "--token", "t"]
    result = CliRunner().invoke(cmd_simulate.simulate, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.port, config.concurrency, config.duration, config.seed) == (0, 2, (0.5, 2), 5)
    assert (config.fail_429, config.time_scale, config.token) == (0.25, 0.1, "t")
    assert config.host == "127.0.0.1"


@pytest.mark.parametrize("args", [["--duration", "3-1"], ["--duration", "abc"],
                                  ["--fail-5xx", "1.5"], ["--concurrency", "0"]])
def test_cli_rejects_bad_options(args: list[str]) -> None:
    result = CliRunner().invoke(cmd_simulate.simulate, args)
    assert result.exit_code == 2
