"""Streaming: one large output through a real worker into the local bucket and into S3.

    .venv/bin/python -m bench streaming            # a 1 GiB video output
    .venv/bin/python -m bench streaming --quick    # 32 MiB
    .venv/bin/python -m bench.streaming --size-mib 256 --targets local --profile /tmp/prof

One `rcbatch worker` (one pool child, so the child that streams is known) stores a single
image-to-video item whose output the simulator serves at the wanted size (`video_bytes`,
produced chunk by chunk, never held). A small item first warms the child up (its runtime, HTTP
and S3 clients, the multipart path), then every worker process's peak RSS is reset
(/proc/PID/clear_refs) and the big item runs. Figures:

- throughput: output bytes / (item seen in `fetching` -> item `finished_at`), sampled every
  20 ms; it includes the sha256, the writes and the final fsync (local) or the part uploads and
  the completion (S3);
- the worker's peak RSS growth: max over the worker's pool processes of peak - RSS before;
- the reference: a plain (sync) httpx streaming GET of the same URL from this process, bytes
  thrown away (`/dev/null`), on the same loopback, right after; the same with httpx's async
  client (what the worker uses) for context;
- the store's own ceiling, with no download at all, stored the way the bucket stores: the
  same number of bytes written from memory into the bucket's folder with the same progressive
  writeback, then fsynced (local), or sent as 8 MiB parts by boto3 to the same S3 server, as
  many at once as the bucket sends (S3).

Targets (issue 6): RSS growth <= 64 MiB for 1 GiB; throughput >= 50 % of the plain download.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    I2V,
    Sampler,
    Services,
    group_cpu,
    group_pids,
    peak_rss,
    process_cpu,
    reset_peak,
    rss,
)
from bench.pipeline import Knobs, RcbatchCluster
from bench.runner import conclude, parser
from bench.table import Figure, Section, at_least, at_most, info
from rcbatch.producer.batch import register_batch
from rcbatch.producer.spec import ItemSpec
from rcbatch.worker import keys
from rcbatch.worker.bucket.local import WRITEBACK_EVERY
from rcbatch.worker.bucket.s3 import PARTS_IN_FLIGHT

MIB = 1024 * 1024
FULL_BYTES = 1024 * MIB
QUICK_BYTES = 32 * MIB
WARM_BYTES = 24 * MIB  # over one S3 part (8 MiB): the warm-up takes the multipart path too
PART = 8 * MIB
RSS_GROWTH_LIMIT = 64 * MIB
SHARE_TARGET = 50.0
#: runs of the local target at full size (the reference download's speed moves by half
#: between minutes on this VM); the median run by share of the reference is reported
LOCAL_RUNS = 3
S3_BUCKET = "bench"


@dataclass
class Target:
    """Where the output goes, and how fast that store takes bytes with no download at all."""

    name: str
    label: str
    bucket_url: str
    ceiling: Callable[[int], float]
    server_pid: int | None = None
    #: the local bucket's folder (for spotting the temp file while it is written)
    folder: Path | None = None


@dataclass(frozen=True)
class Stream:
    """One big output stored by the worker, and the references for the same bytes."""

    target: Target
    size: int
    seconds: float
    growth: int
    main_growth: int
    worker_cpu: float
    server_cpu: float
    plain_seconds: float
    plain_async_seconds: float
    ceiling_seconds: float
    #: local: seconds from the temp file holding every byte to `finished_at` (fsync, rename)
    tail: float | None
    #: throughput / plain download of every run of this target, when it ran more than once
    shares: tuple[float, ...] = ()

    def rate(self, seconds: float) -> float:
        """MiB/s for this output's size over `seconds`."""
        return self.size / MIB / seconds


# --- the worker side -------------------------------------------------------------------------


def video_spec(svc: Services, tag: str) -> ItemSpec:
    """One image-to-video item (its output size is the simulator's `video_bytes`)."""
    body = {"image_urls": [f"{svc.sim.base_url}/_sim/inputs/64x64.jpg"],
            "prompt": f"slow pan, {tag}", "number_of_frames": 121, "seed": 7}
    return ItemSpec(f"v-{tag}", "bench.jsonl", 1, I2V, body)


def submit(cluster: RcbatchCluster, spec: ItemSpec, bucket_url: str) -> str:
    """Register a one-item batch storing into `bucket_url` and nudge a dispatch."""
    from rcbatch.worker.tasks import CeleryPublisher

    reg = register_batch(cluster.store, [spec], name=spec.item_id, bucket_url=bucket_url,
                         sources=["bench"])
    CeleryPublisher().dispatch()
    return reg.batch_id


def fetch_started(cluster: RcbatchCluster, bid: str, iid: str, timeout: float) -> float:
    """Wall time at which the item was first seen fetching (or already done), polled at 20 ms."""
    key = keys.item(bid, iid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = cluster.store.redis.hget(key, "state")
        if state in (keys.FETCHING.encode(), keys.COMPLETED.encode(), keys.FAILED.encode()):
            return time.time()
        time.sleep(0.02)
    raise TimeoutError(f"item {iid} never reached fetching: {cluster.store.item(bid, iid)}")


def probe(pids: list[int], folder: Path | None) -> Callable[[], dict[str, Any]]:
    """A sampler probe: time, RSS of each worker process, size of the bucket's temp file."""
    def sample() -> dict[str, Any]:
        temp = max((p.stat().st_size for p in folder.glob("*/*/.rcbtmp-*")), default=0) \
            if folder is not None else 0
        return {"t": time.time(), "rss": {pid: rss(pid) for pid in pids}, "temp": temp}
    return sample


def stream_one(svc: Services, cluster: RcbatchCluster, target: Target, size: int,
               timeout: float, run: int = 0) -> Stream:
    """Warm the worker up, store one `size`-byte output, then measure the references."""
    svc.sim.reset(video_bytes=min(WARM_BYTES, size), duration=[0.05, 0.05])
    cluster.wait(submit(cluster, video_spec(svc, f"warm-{target.name}-{run}"), target.bucket_url),
                 timeout)
    svc.sim.reset(video_bytes=size, duration=[0.05, 0.05])
    pids = [pid for group in cluster.pgids for pid in group_pids(group)]
    before = {pid: rss(pid) for pid in pids}
    for pid in pids:
        reset_peak(pid)
    servers = [p for p in (svc.sim.pid, target.server_pid) if p]
    cpu0 = group_cpu(cluster.pgids), sum(process_cpu(p) for p in servers)
    spec = video_spec(svc, f"big-{target.name}-{run}")  # a new item each run
    with Sampler(probe(pids, target.folder), every=0.05) as sampler:
        bid = submit(cluster, spec, target.bucket_url)
        started = fetch_started(cluster, bid, spec.item_id, timeout)
        cluster.wait(bid, timeout)
    cpu = group_cpu(cluster.pgids) - cpu0[0], sum(process_cpu(p) for p in servers) - cpu0[1]
    item = cluster.store.item(bid, spec.item_id) or {}
    check_stored(item, size)
    finished = float(item["finished_at"])
    growth = {pid: max([peak_rss(pid)] + [s["rss"].get(pid, 0) for s in sampler.samples])
              - before[pid] for pid in pids}
    mains = set(cluster.pgids)
    url = json.loads(item["output_urls"])[0]["url"]
    return Stream(target, size, finished - started,
                  max(g for pid, g in growth.items() if pid not in mains),
                  max(g for pid, g in growth.items() if pid in mains), cpu[0], cpu[1],
                  plain_download(url, size), plain_async_download(url, size),
                  target.ceiling(size), _tail(sampler.samples, size, finished, target))


def _tail(samples: list[dict[str, Any]], size: int, finished: float,
          target: Target) -> float | None:
    if target.folder is None:
        return None
    whole = [s["t"] for s in samples if s["temp"] >= size]
    return finished - min(whole) if whole else None


def check_stored(item: dict[str, str], size: int) -> None:
    """RuntimeError unless the item completed with one output of `size` bytes."""
    outputs = json.loads(item.get("outputs") or "[]")
    if item.get("state") != keys.COMPLETED or [o.get("bytes") for o in outputs] != [size]:
        raise RuntimeError(f"the big item did not store {size} bytes: {item}")


# --- the references --------------------------------------------------------------------------


def plain_download(url: str, size: int) -> float:
    """Seconds for a plain httpx streaming GET of `url`, every byte written to /dev/null."""
    got = 0
    with httpx.Client(timeout=60) as client, open(os.devnull, "wb") as sink:
        started = time.perf_counter()
        with client.stream("GET", url) as answer:
            answer.raise_for_status()
            for chunk in answer.iter_bytes():
                sink.write(chunk)
                got += len(chunk)
        seconds = time.perf_counter() - started
    _check_size(got, size)
    return seconds


def plain_async_download(url: str, size: int) -> float:
    """The same with httpx's async client, as the worker downloads."""
    async def go() -> tuple[int, float]:
        got = 0
        async with httpx.AsyncClient(timeout=60) as client:
            started = time.perf_counter()
            async with client.stream("GET", url) as answer:
                answer.raise_for_status()
                async for chunk in answer.aiter_bytes():
                    got += len(chunk)
            return got, time.perf_counter() - started

    got, seconds = asyncio.run(go())
    _check_size(got, size)
    return seconds


def _check_size(got: int, size: int) -> None:
    if got != size:
        raise RuntimeError(f"a reference download got {got} of {size} bytes")


def disk_ceiling(folder: Path) -> Callable[[int], float]:
    """Seconds to write `size` bytes from memory into `folder` and fsync them, starting the
    writeback every `WRITEBACK_EVERY` bytes as the local bucket does."""
    def measure(size: int) -> float:
        block = os.urandom(MIB)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder) as fh:
            started, advised, kicked = time.perf_counter(), 0, 0
            for _ in range(size // MIB):
                fh.write(block)
                if fh.tell() - kicked >= WRITEBACK_EVERY:
                    fh.flush()
                    end = fh.tell()
                    os.posix_fadvise(fh.fileno(), advised, end - advised,
                                     os.POSIX_FADV_DONTNEED)
                    advised, kicked = kicked, end
            fh.write(block[:size % MIB])
            fh.flush()
            os.fsync(fh.fileno())
            return time.perf_counter() - started
    return measure


def s3_ceiling(endpoint: str) -> Callable[[int], float]:
    """Seconds for boto3 to send `size` bytes as 8 MiB parts, `PARTS_IN_FLIGHT` at a time (as
    the S3 bucket does), and complete."""
    def measure(size: int) -> float:
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
            aws_secret_access_key="testing", config=Config(s3={"addressing_style": "path"}))
        block, key = os.urandom(PART), "ceiling/object"
        started = time.perf_counter()
        upload = client.create_multipart_upload(Bucket=S3_BUCKET, Key=key)["UploadId"]

        def send(number: int) -> dict[str, Any]:
            body = block[:min(PART, size - (number - 1) * PART)]
            answer = client.upload_part(Bucket=S3_BUCKET, Key=key, UploadId=upload,
                                        PartNumber=number, Body=body)
            return {"ETag": answer["ETag"], "PartNumber": number}

        with ThreadPoolExecutor(PARTS_IN_FLIGHT) as pool:
            parts = list(pool.map(send, range(1, -(-size // PART) + 1)))
        client.complete_multipart_upload(Bucket=S3_BUCKET, Key=key, UploadId=upload,
                                         MultipartUpload={"Parts": parts})
        seconds = time.perf_counter() - started
        client.delete_object(Bucket=S3_BUCKET, Key=key)
        return seconds
    return measure


# --- running it ------------------------------------------------------------------------------


Chosen = tuple[list[Target], dict[str, str]]


@contextmanager
def targets_for(svc: Services, names: tuple[str, ...]) -> Iterator[Chosen]:
    """The targets asked for, with moto's S3 server running when S3 is one of them; also the
    workers' extra environment."""
    local = svc.root / "streaming-local-bucket"
    found = {"local": Target("local", "local bucket (file://, fsync)", local.as_uri(),
                             disk_ceiling(local), folder=local)}
    if "s3" not in names:
        yield [found[n] for n in names], {}
        return
    from tests.s3server import FAKE_AWS_ENV, MotoS3Server, create_bucket

    with MotoS3Server() as server:
        create_bucket(server.endpoint_url, S3_BUCKET)
        moto = getattr(server, "_process", None)  # its pid, for the server's CPU seconds
        found["s3"] = Target("s3", f"S3 (moto server, 8 MiB parts, {PARTS_IN_FLIGHT} at once)",
                             f"s3://{S3_BUCKET}/streaming", s3_ceiling(server.endpoint_url),
                             server_pid=moto.pid if moto is not None else None)
        env = {**FAKE_AWS_ENV, "RCBATCH_S3_ENDPOINT_URL": server.endpoint_url}
        yield [found[n] for n in names], env


def run(svc: Services, *, size: int, targets: tuple[str, ...] = ("local", "s3"),
        timeout: float = 900.0, profile: Path | None = None) -> Section:
    """Stream one `size`-byte output to each target; the section with the issue's targets.

    With `profile`, the worker is sampled by py-spy (bench/profiling.py), its files in there.
    """
    results: list[Stream] = []
    with targets_for(svc, targets) as (chosen, env):
        knobs = Knobs(workers=1, concurrency=1, extra_env=tuple(env.items()),
                      profile_dir=str(profile or ""))
        with RcbatchCluster(svc, knobs, "streaming") as cluster:
            for target in chosen:
                runs = LOCAL_RUNS if target.name == "local" and size >= FULL_BYTES else 1
                results.append(_median(
                    [_stream_and_clean(svc, cluster, target, size, timeout, run)
                     for run in range(runs)]))
    return section(results, size)


def _stream_and_clean(svc: Services, cluster: RcbatchCluster, target: Target, size: int,
                      timeout: float, run: int) -> Stream:
    stream = stream_one(svc, cluster, target, size, timeout, run)
    if target.folder is not None:  # 1 GiB of scratch space
        shutil.rmtree(target.folder, ignore_errors=True)
    return stream


def _share(r: Stream) -> float:
    """Throughput over the plain download's, in %."""
    return 100 * r.plain_seconds / r.seconds


def _median(runs: list[Stream]) -> Stream:
    """The median run by share of the reference, carrying every run's share."""
    ranked = sorted(runs, key=_share)
    median = ranked[len(ranked) // 2]
    return replace(median, shares=tuple(_share(r) for r in runs)) if len(runs) > 1 else median


def section(results: list[Stream], size: int) -> Section:
    """The figures, per target."""
    result = Section(
        "6. Streaming: one large output through a worker",
        f"One {size / MIB:,.0f} MiB video output served by the simulator, stored by one "
        f"`rcbatch worker --concurrency 1`; throughput from `fetching` to `finished_at`; "
        f"reference: plain httpx GET to /dev/null of the same URL, right after each run. "
        f"At full size the local target runs {LOCAL_RUNS} times: its figures are those of the "
        f"median run by share of the reference.")
    for r in results:
        result.add(*figures(r))
    if size < FULL_BYTES:
        result.notes.append(f"Quick size ({size / MIB:,.0f} MiB): fixed costs (task pick-up, "
                            f"connection) weigh more; the targets are for 1 GiB.")
    return result


def figures(r: Stream) -> list[Figure]:
    """The figures of one target."""
    name = r.target.label
    ceiling = min(r.rate(r.plain_seconds), r.rate(r.ceiling_seconds))
    out = [
        info(f"{name}: throughput", r.rate(r.seconds), "MiB/s", digits=0),
        info(f"{name}: plain httpx download (sync), same URL", r.rate(r.plain_seconds),
             "MiB/s", digits=0),
        at_least(f"{name}: throughput / plain download", _share(r), SHARE_TARGET, "%",
                 digits=0),
        at_most(f"{name}: worker (pool child) peak RSS growth", r.growth / MIB,
                RSS_GROWTH_LIMIT / MIB, "MiB", digits=1),
        info(f"{name}: worker main process peak RSS growth", r.main_growth / MIB, "MiB",
             digits=1),
        info(f"{name}: plain httpx download (async, as the worker)",
             r.rate(r.plain_async_seconds), "MiB/s", digits=0),
        info(f"{name}: the store alone, no download (ceiling)", r.rate(r.ceiling_seconds),
             "MiB/s", digits=0),
        info(f"{name}: throughput / min(plain download, store ceiling)",
             100 * r.rate(r.seconds) / ceiling, "%", digits=0),
        info(f"{name}: worker CPU seconds", r.worker_cpu, "s", digits=1),
        info(f"{name}: server CPU seconds (simulator + store)", r.server_cpu, "s", digits=1),
    ]
    if r.tail is not None:
        out.append(info(f"{name}: of which after the last byte was written (fsync, rename)",
                        r.tail, "s", digits=2))
    if r.shares:
        runs = len(r.shares)
        out += [info(f"{name}: throughput / plain download, lowest of the {runs} runs",
                     min(r.shares), "%", digits=0),
                info(f"{name}: throughput / plain download, highest of the {runs} runs",
                     max(r.shares), "%", digits=0)]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options: the shared ones (bench/runner.py) and this benchmark's own."""
    parse = parser("streaming", "measurement 6: a large output into the local bucket and S3")
    parse.add_argument("--size-mib", type=int, help=f"output size [{FULL_BYTES // MIB}; "
                                                     f"--quick: {QUICK_BYTES // MIB}]")
    parse.add_argument("--targets", default="local,s3", help="local, s3 or both [local,s3]")
    return parse.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    """Run the streaming benchmark and print its table."""
    args = parse_args(argv)
    size = args.size_mib * MIB if args.size_mib else QUICK_BYTES if args.quick else FULL_BYTES
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not targets or not set(targets) <= {"local", "s3"}:
        raise SystemExit(f"unknown target in {args.targets!r}: use local and/or s3")
    started = time.monotonic()
    with Services(keep=args.keep) as svc:
        result = run(svc, size=size, targets=targets, profile=args.profile)
    conclude("streaming", [result], started=started, quick=args.quick, profile=args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
