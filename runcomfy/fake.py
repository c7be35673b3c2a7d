"""An in-memory RunComfy Model API for unit tests, plugged into the client as an httpx transport.

    import httpx
    from rcbatch.runcomfy.client import RunComfyClient
    from rcbatch.runcomfy.fake import FakeRunComfy

    fake = FakeRunComfy()
    client = RunComfyClient("test-token", transport=httpx.MockTransport(fake))
    # (or simply: client = fake.client())
    sub = await client.submit("bytedance/dreamina-4-0/text-to-image", {"prompt": "a cat"})
    await client.result(sub.request_id)        # in_progress: every poll advances a job a step
    answer = await client.result(sub.request_id)   # succeeded, one PNG output on the fake CDN
    async with client.download(answer.outputs[0].url) as d:
        data = b"".join([c async for c in d.aiter_bytes()])

    fake.fail_next("submit", status=429, headers={"Retry-After": "3"})   # next submit: 429
    fake.fail_next("status", times=2, exc=httpx.ReadTimeout("slow"))     # next 2 polls raise
    fake.fail_next("submit", exc=httpx.ReadTimeout("lost"), after_processing=True)
    #   ^ the job IS created, then the answer is lost: the client raises SubmitUncertain
    fake.finish(request_id, error={"message": "NSFW"})   # end a job now (failed, here)
    fake.calls("submit"), fake.submitted_bodies, fake.counts["download"]   # what was asked

Jobs follow the documented vocabularies: /status says in_queue, in_progress, completed,
cancelled; /result says in_queue, in_progress, succeeded, failed, cancelled. With
`auto_advance=True` (the default) every /status or /result poll first moves a job one step:
in_queue -> in_progress -> finished; with False, jobs move only by `start` and `finish`.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from rcbatch.runcomfy.addresses import AddressPolicy, StaticResolver
from rcbatch.runcomfy.client import DEFAULT_BASE_URL, RunComfyClient

FakeEndpoint = Literal["submit", "status", "result", "cancel", "download"]
_JOB_ENDPOINTS: tuple[FakeEndpoint, ...] = ("status", "result", "cancel")

DEFAULT_MODELS = frozenset({
    "bytedance/dreamina-4-0/text-to-image", "bytedance/dreamina-4-0/edit",
    "bytedance/dreamina-3-0/image-to-video", "bytedance/seedream-4-5/edit-sequential"})
#: a valid 1x1 PNG, served for image outputs
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
#: the start of an MP4 file, served for video outputs
MP4_STUB = bytes.fromhex("000000186674797069736f6d0000020069736f6d69736f32") + b"\0" * 64


@dataclass
class FakeJob:
    """One job as the fake keeps it; `state` uses /result's words."""

    request_id: str
    model: str
    body: dict[str, Any]
    state: str = "in_queue"
    outputs: list[str] = field(default_factory=list)
    error: Any = None
    #: from creation to end, as /result's timestamps tell it
    seconds: float = 30.0


@dataclass
class _Fault:
    status: int
    body: Any
    headers: dict[str, str]
    exc: Exception | None
    after_processing: bool


#: where the fake CDN's name resolves (a documentation-range-like public address)
FAKE_CDN_ADDRESS = "93.184.215.14"
#: every job's creation time on /result
_CREATED = datetime(2025, 1, 1, tzinfo=UTC)


class FakeRunComfy:
    """The fake API: call it with an httpx.Request (an `httpx.MockTransport` handler)."""

    def __init__(self, *, base_url: str = DEFAULT_BASE_URL,
                 cdn_url: str = "https://cdn.fake-runcomfy.test", token: str | None = None,
                 models: frozenset[str] | None = DEFAULT_MODELS, auto_advance: bool = True,
                 cost: float = 0.03,
                 error_for: Callable[[str, dict[str, Any]], Any] | None = None) -> None:
        """`token`: the one accepted Bearer token (None: any non-empty one); `models`: the
        known model ids (None: any); `error_for(model, body)`: the error a job will fail with,
        or None for success."""
        self.base = httpx.URL(base_url)
        self.cdn = httpx.URL(cdn_url)
        self.token, self.models, self.auto_advance = token, models, auto_advance
        self.cost, self.error_for = cost, error_for
        self.jobs: dict[str, FakeJob] = {}
        #: output URL -> (bytes, content type); tests may add or remove entries
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[tuple[FakeEndpoint, httpx.Request]] = []
        self.counts: Counter[str] = Counter()
        self._faults: dict[str, deque[_Fault]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def client(self, token: str = "fake-token-0123456789", **kwargs: Any) -> RunComfyClient:
        """A RunComfyClient wired to this fake."""
        # the CDN's name resolves to a public address without DNS; downloads connect to it
        resolver = StaticResolver({self.cdn.host: [FAKE_CDN_ADDRESS]})
        kwargs.setdefault("addresses", AddressPolicy(resolver=resolver))
        return RunComfyClient(token, str(self.base), transport=httpx.MockTransport(self),
                              **kwargs)

    # --- what tests control -------------------------------------------------------------

    def fail_next(self, endpoint: FakeEndpoint, times: int = 1, *, status: int = 500,
                  body: Any = None, headers: dict[str, str] | None = None,
                  exc: Exception | None = None, after_processing: bool = False) -> None:
        """Answer the next `times` calls of `endpoint` with `status`/`body` (a dict is sent as
        JSON, str/bytes as is), or raise `exc` instead; with `after_processing`, the call is
        handled first (a submit creates its job) and then `exc` replaces the answer."""
        fault = _Fault(status, body, dict(headers or {}), exc, after_processing)
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend([fault] * times)

    def start(self, request_id: str) -> None:
        """Move a queued job to in_progress."""
        with self._lock:
            job = self.jobs[request_id]
            if job.state == "in_queue":
                job.state = "in_progress"

    def finish(self, request_id: str, *, outputs: list[str] | None = None,
               error: Any = None, seconds: float | None = None) -> None:
        """End a job now: failed with `error` when given, else succeeded with `outputs`
        (default: one file on the fake CDN, served by downloads); /result's timestamps say
        it took `seconds` (default 30)."""
        with self._lock:
            job = self.jobs[request_id]
            if seconds is not None:
                job.seconds = seconds
            if error is not None:
                job.state, job.error = "failed", error
                return
            job.state = "succeeded"
            job.outputs = list(outputs) if outputs is not None else self._default_output(job)

    def cancel_remotely(self, request_id: str) -> None:
        """Cancel a job as if someone did it outside this program."""
        with self._lock:
            self.jobs[request_id].state = "cancelled"

    def forget(self, request_id: str) -> None:
        """Drop a job, as after the API's retention: its id then answers 404."""
        with self._lock:
            self.jobs.pop(request_id, None)

    # --- what tests inspect -------------------------------------------------------------

    def calls(self, endpoint: FakeEndpoint) -> list[httpx.Request]:
        """The requests received for one endpoint, oldest first (faults included)."""
        return [r for e, r in self.requests if e == endpoint]

    @property
    def submitted_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every submit received."""
        return [json.loads(r.content) for r in self.calls("submit")]

    # --- the transport side -------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        """Handle one request (the MockTransport hook)."""
        with self._lock:
            endpoint, handler = self._route(request)
            if endpoint is None:
                return _json(404, {"detail": "Not Found"})
            self.requests.append((endpoint, request))
            self.counts[endpoint] += 1
            fault = self._pop_fault(endpoint)
            if fault is not None and not fault.after_processing:
                return _fault_answer(fault)
            response = self._authorized(request, endpoint) or handler()
            if fault is not None:
                return _fault_answer(fault)
            return response

    def _route(self, request: httpx.Request) -> tuple[FakeEndpoint | None,
                                                      Callable[[], httpx.Response]]:
        # a download connects to the address its host was checked to have: the URL asked
        # for is the connected one with the Host header's name back in it
        url = request.url.copy_with(netloc=request.headers["Host"].encode("ascii"))
        if (url.scheme, url.host, url.port) == (self.cdn.scheme, self.cdn.host, self.cdn.port):
            return "download", lambda: self._download(str(url))
        prefix = self.base.path.rstrip("/")
        path = url.path[len(prefix):] if url.path.startswith(prefix) else ""
        parts = path.strip("/").split("/")
        if request.method == "POST" and parts[:2] == ["v1", "models"] and len(parts) > 2:
            return "submit", lambda: self._submit("/".join(parts[2:]), request.content)
        if len(parts) == 4 and parts[:2] == ["v1", "requests"]:
            rid, include_cost = parts[2], url.params.get("include_cost") == "true"
            for action in _JOB_ENDPOINTS:
                wanted = "POST" if action == "cancel" else "GET"
                if parts[3] == action and request.method == wanted:
                    return action, lambda: self._on_job(parts[3], rid, include_cost)
        return None, lambda: _json(404, {"detail": "Not Found"})

    def _pop_fault(self, endpoint: str) -> _Fault | None:
        queue = self._faults.get(endpoint)
        return queue.popleft() if queue else None

    def _authorized(self, request: httpx.Request, endpoint: str) -> httpx.Response | None:
        if endpoint == "download":
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and given and (self.token is None or given == self.token):
            return None
        return _json(401, {"error_code": 400004, "error_message": "invalid or missing token"})

    def _submit(self, model: str, content: bytes) -> httpx.Response:
        if self.models is not None and model not in self.models:
            return _json(400, {"error_code": 400001,
                               "error_message": f"Invalid model identifier: {model}"})
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _json(422, {"detail": [{"loc": ["body"], "msg": "a JSON object is required",
                                           "type": "type_error"}]})
        rid = f"fakereq-{next(self._ids):06d}"
        self.jobs[rid] = FakeJob(rid, model, body)
        return _json(200, {"request_id": rid, **self._urls(rid)})

    def _on_job(self, action: str, rid: str, include_cost: bool) -> httpx.Response:
        job = self.jobs.get(rid)
        if job is None:
            return _json(404, {"error_code": 404001,
                               "error_message": f"request {rid} not found"})
        if action == "cancel":
            return self._cancel(job)
        if self.auto_advance:
            self._advance(job)
        if action == "status":
            return _json(200, self._status_body(job))
        return _json(200, self._result_body(job, include_cost))

    def _advance(self, job: FakeJob) -> None:
        if job.state == "in_queue":
            job.state = "in_progress"
        elif job.state == "in_progress":
            error = self.error_for(job.model, job.body) if self.error_for else None
            self.finish(job.request_id, error=error)

    def _status_body(self, job: FakeJob) -> dict[str, Any]:
        finished = job.state in ("succeeded", "failed")
        body: dict[str, Any] = {"request_id": job.request_id,
                                "status": "completed" if finished else job.state,
                                **self._urls(job.request_id)}
        if job.state == "in_queue":
            queued = [j for j in self.jobs.values() if j.state == "in_queue"]
            body["queue_position"] = queued.index(job)
        return body

    def _result_body(self, job: FakeJob, include_cost: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": job.request_id, "status": job.state,
                                "created_at": _CREATED.isoformat()}
        if job.state == "succeeded":
            body["output"] = _output_object(job.outputs)
        if job.state == "failed":
            body["error"] = job.error
        if job.state in ("succeeded", "failed", "cancelled"):
            body["finished_at"] = (_CREATED + timedelta(seconds=job.seconds)).isoformat()
            if include_cost:
                body["cost"] = self.cost if job.state == "succeeded" else 0.0
        return body

    def _cancel(self, job: FakeJob) -> httpx.Response:
        outcome = "cancelled" if job.state in ("in_queue", "cancelled") else "not_cancellable"
        if job.state == "in_queue":
            job.state = "cancelled"
        return _json(202, {"request_id": job.request_id, "status": job.state,
                           "outcome": outcome})

    def _download(self, url: str) -> httpx.Response:
        found = self.files.get(url)
        if found is None:
            return httpx.Response(404, text="NoSuchKey")
        data, content_type = found
        return httpx.Response(200, content=data, headers={"Content-Type": content_type})

    def _default_output(self, job: FakeJob) -> list[str]:
        video = "video" in job.model
        url = str(self.cdn.join(f"/outputs/{job.request_id}/0.{'mp4' if video else 'png'}"))
        self.files[url] = (MP4_STUB, "video/mp4") if video else (PNG_1X1, "image/png")
        return [url]

    def _urls(self, rid: str) -> dict[str, str]:
        root = str(self.base).rstrip("/") + f"/v1/requests/{rid}"
        return {"status_url": f"{root}/status", "result_url": f"{root}/result",
                "cancel_url": f"{root}/cancel"}


def _output_object(urls: list[str]) -> dict[str, list[str]]:
    videos = [u for u in urls if u.rsplit(".", 1)[-1].lower() in ("mp4", "webm", "mov")]
    images = [u for u in urls if u not in videos]
    return {**({"images": images} if images else {}), **({"videos": videos} if videos else {})}


def _fault_answer(fault: _Fault) -> httpx.Response:
    if fault.exc is not None:
        raise fault.exc
    if isinstance(fault.body, dict | list):
        return httpx.Response(fault.status, json=fault.body, headers=fault.headers)
    content = fault.body.encode() if isinstance(fault.body, str) else (fault.body or b"")
    return httpx.Response(fault.status, content=content, headers=fault.headers)


def _json(status: int, body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(status, json=body)
