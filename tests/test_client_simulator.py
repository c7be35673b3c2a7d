"""The client against the simulator over real HTTP: every model runs, cancel behaves as WIRE.md
says, and each injected fault class reaches the client as the right error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from rcbatch.errors import (
    AccountError,
    ApiRejected,
    JobFailed,
    OutputLost,
    RateLimited,
    RetryLater,
    SubmitUncertain,
    TransportError,
)
from rcbatch.runcomfy.answers import JobState
from rcbatch.runcomfy.client import RunComfyClient
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer

TOKEN = "client-sim-token-42ab"
T = TypeVar("T")
IMG = "https://example.com/in.jpg"
BODIES = {
    "bytedance/dreamina-4-0/text-to-image": {"prompt": "a fox", "force_single": True,
                                             "width×height": "1024x1024(1:1)"},
    "bytedance/dreamina-4-0/edit": {"image_urls": [IMG], "prompt": "night"},
    "bytedance/dreamina-3-0/image-to-video": {"image_urls": [IMG], "prompt": "pan"},
    "bytedance/seedream-4-5/edit-sequential": {"images": [IMG], "prompt": "Generate 2 images",
                                               "sequential_image_generation_options": 2},
}


def run(fn: Callable[[RunComfyClient], Awaitable[T]], base_url: str, token: str = TOKEN,
        **kwargs: Any) -> T:
    async def go() -> T:
        async with RunComfyClient(token, base_url, **kwargs) as client:
            return await fn(client)
    return asyncio.run(go())


async def until_done(client: RunComfyClient, request_id: str, limit: float = 20) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        answer = await client.result(request_id)
        if answer.state.is_terminal:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError("job never finished")


@pytest.fixture(scope="module")
def sim() -> Any:
    config = SimulatorConfig(token=TOKEN, concurrency=2, duration=(0.05, 0.15),
                             image_scale=0.02, video_bytes=50_000)
    with SimulatorServer(config) as server:
        yield server


@pytest.mark.parametrize("model", sorted(BODIES))
def test_each_model_runs_to_an_output(sim: Any, model: str) -> None:
    async def go(client: RunComfyClient) -> tuple[Any, bytes, str | None]:
        sub = await client.submit(model, BODIES[model])
        answer = await until_done(client, sub.request_id)
        async with client.download(answer.outputs[0].url) as download:
            data = b"".join([c async for c in download.aiter_bytes()])
            return answer, data, download.content_type

    answer, data, content_type = run(go, sim.base_url)
    assert answer.state is JobState.SUCCEEDED and answer.outputs
    kind = "video" if "video" in model else "image"
    assert answer.outputs[0].kind == kind and content_type.startswith(kind)  # type: ignore[union-attr]
    assert len(data) > 0


def test_cancel_of_a_queued_job_and_of_a_running_one(sim: Any) -> None:
    async def go(client: RunComfyClient) -> tuple[str, str, JobState]:
        body = {**BODIES["bytedance/dreamina-4-0/text-to-image"]}
        ids = [(await client.submit("bytedance/dreamina-4-0/text-to-image",
                                    {**body, "prompt": f"p{k}"})).request_id
               for k in range(3)]  # cap 2: the third waits in_queue
        queued = await client.cancel(ids[2])
        running = await client.cancel(ids[0])
        final = await until_done(client, ids[0])
        return queued.outcome, running.outcome, final.state

    queued, running, final = run(go, sim.base_url)
    assert queued == "cancelled" and running == "not_cancellable"
    assert final is JobState.SUCCEEDED


def test_refused_token_and_rejected_body(sim: Any) -> None:
    model = "bytedance/dreamina-4-0/text-to-image"
    with pytest.raises(AccountError):
        run(lambda c: c.submit(model, {"prompt": "x"}), sim.base_url, token="wrong-token-123")
    with pytest.raises(ApiRejected, match="scale"):
        run(lambda c: c.submit(model, {"prompt": "x", "scale": 2}), sim.base_url)


FAULTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"fail_5xx": 1.0}, RetryLater, "submit"),
    ({"fail_429": 1.0}, RateLimited, "submit"),
    ({"drop": 1.0}, SubmitUncertain, "submit"),
    ({"lost_submit": 1.0}, SubmitUncertain, "submit"),
    ({"slow": 1.0, "slow_seconds": 2.0}, SubmitUncertain, "submit"),
    ({"job_fail": 1.0}, JobFailed, "result"),
    ({"output_404": 1.0}, OutputLost, "download"),
    ({"output_truncate": 1.0}, RetryLater, "download"),
]


@pytest.mark.parametrize(("faults", "error", "where"), FAULTS,
                         ids=[next(iter(f)) for f, _, _ in FAULTS])
def test_each_injected_fault_reaches_the_client_as_the_right_error(
        faults: dict[str, Any], error: type[Exception], where: str) -> None:
    config = SimulatorConfig(token=TOKEN, duration=(0.02, 0.05), image_scale=0.02, seed=3,
                             **faults)
    model = "bytedance/dreamina-4-0/text-to-image"
    timeout = httpx.Timeout(connect=2, read=0.5, write=2, pool=2)

    async def go(client: RunComfyClient) -> None:
        sub = await client.submit(model, BODIES[model])
        if where == "submit":
            return
        answer = await until_done(client, sub.request_id)
        async with client.download(answer.outputs[0].url) as download:
            async for _ in download.aiter_bytes():
                pass

    with SimulatorServer(config) as server, pytest.raises(error) as caught:
        run(go, server.base_url, timeout=timeout)
    assert TOKEN not in str(caught.value)


def test_a_closed_port_is_a_transport_error_before_sending() -> None:
    with pytest.raises(TransportError):
        run(lambda c: c.submit("bytedance/dreamina-4-0/text-to-image", {"prompt": "x"}),
            "http://127.0.0.1:1")
