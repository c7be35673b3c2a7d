"""Peer (b): one asyncio process that submits, polls and downloads, with no durability.

In the style of the OpenAI cookbook's parallel request processor: one process, one HTTP
client, a coroutine per job throttled by a semaphore (here: jobs in flight, as rcbatch's
`max_in_flight`), a few retries on transport errors, results written as they come. Each job
polls /result at a fixed interval (1 s), then downloads its outputs into a folder. Nothing
survives the process: a crash loses every job in flight.

`python -m bench.asyncio_poller JOBS.jsonl OUT_DIR --base-url URL [--max-in-flight N]
[--interval S]` reads jobs (`{"model", "body", "key"}` per line), takes the token from
RCBATCH_RUNCOMFY_API_TOKEN, and prints one JSON document: each stored job
(`request_id`, `model`, `stored`, `polls`) and the process's CPU seconds.
`run_peer` runs it that way from a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:  # the poller process itself imports nothing of rcbatch
    from bench.harness import Services
    from bench.pipeline import Outcome
    from rcbatch.producer.spec import ItemSpec

INTERVAL = 1.0
ATTEMPTS = 3
_TERMINAL = {"succeeded", "failed", "cancelled", "completed"}


class Poller:
    """Runs jobs through the API with at most `max_in_flight` at once."""

    def __init__(self, client: httpx.AsyncClient, out_dir: Path, max_in_flight: int,
                 interval: float) -> None:
        self.client, self.out_dir, self.interval = client, out_dir, interval
        self.slots = asyncio.Semaphore(max_in_flight)

    async def run(self, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every job, concurrently; the stored ones."""
        done = await asyncio.gather(*(self.one(job) for job in jobs))
        return [d for d in done if d is not None]

    async def one(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Submit, poll until terminal, download: one job."""
        async with self.slots:
            answer = await self.call("POST", f"/v1/models/{job['model']}", json=job["body"])
            rid = answer["request_id"]
            polls = 0
            while True:
                await asyncio.sleep(self.interval)
                result = await self.call("GET", f"/v1/requests/{rid}/result")
                polls += 1
                if result.get("status") in _TERMINAL:
                    break
            if result.get("status") != "succeeded":
                return None
            await self.download(job["key"], output_urls(result.get("output")))
            return {"request_id": rid, "model": job["model"], "stored": time.time(),
                    "polls": polls}

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One API request, retried on transport errors and 5xx/429 (never on a submit
        whose answer was lost: the cookbook would retry it, paying twice)."""
        for attempt in range(ATTEMPTS):
            try:
                response = await self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 == ATTEMPTS:
                    raise
            else:
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()
                    data: dict[str, Any] = response.json()
                    return data
            await asyncio.sleep(0.5 * 2 ** attempt)
        raise RuntimeError(f"{method} {path}: no answer after {ATTEMPTS} attempts")

    async def download(self, key: str, urls: list[str]) -> None:
        """Each output into OUT_DIR/KEY/N.EXT."""
        folder = self.out_dir / key
        folder.mkdir(parents=True, exist_ok=True)
        for n, url in enumerate(urls):
            response = await self.client.get(url)
            response.raise_for_status()
            (folder / f"{n}.{url.rsplit('.', 1)[-1]}").write_bytes(response.content)


def output_urls(output: Any) -> list[str]:
    """Every URL in a /result `output` object (single values and lists)."""
    values = output.values() if isinstance(output, dict) else []
    urls: list[str] = []
    for value in values:
        urls += value if isinstance(value, list) else [value]
    return [u for u in urls if isinstance(u, str)]


async def process(base_url: str, token: str, jobs: Sequence[dict[str, Any]], out_dir: Path,
                  max_in_flight: int, interval: float) -> list[dict[str, Any]]:
    """Run every job; the stored ones."""
    limits = httpx.Limits(max_connections=min(max_in_flight, 200))
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"},
                                 limits=limits) as client:
        return await Poller(client, out_dir, max_in_flight, interval).run(jobs)


def main(argv: list[str] | None = None) -> int:
    """Run the jobs of a JSONL file; print what was stored and the CPU it took, as JSON."""
    parse = argparse.ArgumentParser(prog="python -m bench.asyncio_poller",
                                    description=__doc__.split("\n\n")[0] if __doc__ else "")
    parse.add_argument("jobs", type=Path)
    parse.add_argument("out_dir", type=Path)
    parse.add_argument("--base-url", required=True)
    parse.add_argument("--max-in-flight", type=int, default=100)
    parse.add_argument("--interval", type=float, default=INTERVAL)
    args = parse.parse_args(argv)
    jobs = [json.loads(line) for line in args.jobs.read_text().splitlines() if line.strip()]
    token = os.environ.get("RCBATCH_RUNCOMFY_API_TOKEN", "")
    started, cpu = time.time(), time.process_time()  # after start-up, as rcbatch's workers
    stored = asyncio.run(process(args.base_url, token, jobs, args.out_dir,
                                 args.max_in_flight, args.interval))
    json.dump({"stored": stored, "started": started, "cpu": time.process_time() - cpu},
              sys.stdout)
    return 0


def run_peer(svc: Services, specs: Sequence[ItemSpec], *, cap: int, max_in_flight: int,
             timeout: float, interval: float = INTERVAL) -> Outcome:
    """Run the specs through this poller in its own process (the simulator already reset)."""
    from bench.harness import TOKEN
    from bench.pipeline import Stored, outcome_of

    folder = svc.folder(f"asyncio-{time.monotonic_ns()}")
    jobs = folder / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"model": s.model, "body": s.input, "key": s.item_id})
                            + "\n" for s in specs))
    argv = [sys.executable, "-m", "bench.asyncio_poller", str(jobs), str(folder / "out"),
            "--base-url", svc.sim.base_url, "--max-in-flight", str(max_in_flight),
            "--interval", str(interval)]
    done = subprocess.run(argv, env={**os.environ, "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN},
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the asyncio poller failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    stored = [Stored(r["request_id"], r["model"], r["stored"], r["polls"])
              for r in report["stored"]]
    return outcome_of(svc, stored, started=report["started"], cap=cap, cpu=report["cpu"])


if __name__ == "__main__":
    raise SystemExit(main())
