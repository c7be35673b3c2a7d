"""Local files as inputs and a batch derived from another's outputs, end to end: the installed
`rcbatch` in subprocesses, moto's S3 server over HTTP, the simulator as its own process
fetching every input URL it is sent (so it proves the pre-signed URLs work and carry the
right bytes)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.journeys import TOKEN, Shell, simulator
from tests.s3server import FAKE_AWS_ENV, MotoS3Server, create_bucket

pytestmark = pytest.mark.e2e
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
BUCKET = "chain"


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3Server]:
    with MotoS3Server() as server:
        create_bucket(server.endpoint_url, BUCKET)
        yield server


def picture(path: Path, size: tuple[int, int], fmt: str) -> str:
    """A real image file; its sha256."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 140, 90)).save(buffer, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def manifest(s3: MotoS3Server, url: str) -> list[dict[str, Any]]:
    """The lines of a manifest in the bucket, every output's bytes checked by sha256."""
    client = s3.client()
    key = url.removeprefix(f"s3://{BUCKET}/")
    lines = [json.loads(line) for line in client.get_object(
        Bucket=BUCKET, Key=key)["Body"].read().decode().splitlines()]
    for line in lines:
        for output in line["outputs"]:
            body = client.get_object(Bucket=BUCKET, Key=f"runs/{output['key']}")["Body"].read()
            assert hashlib.sha256(body).hexdigest() == output["sha256"], output["key"]
    return lines


def sim_jobs(url: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(f"{url}/_sim/jobs", timeout=10).json()["jobs"]
    return jobs


def last_manifest_url(stdout: str) -> str:
    return stdout.strip().splitlines()[-1].removeprefix("manifest: ")


def test_local_files_go_up_once_and_a_derived_batch_names_its_parents(
        s3: MotoS3Server, tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    shell = Shell(home, cwd, {**FAKE_AWS_ENV, "RCBATCH_BUCKET_URL": f"s3://{BUCKET}/runs",
                              "RCBATCH_S3_ENDPOINT_URL": s3.endpoint_url,
                              "RCBATCH_RUNCOMFY_API_TOKEN": TOKEN})
    shared = picture(cwd / "pics" / "harbour.png", (1024, 768), "PNG")
    other = picture(cwd / "pics" / "dunes.jpg", (800, 800), "JPEG")
    spec = shell.write("edits.jsonl", [
        {"model": EDIT, "prompt": "at dusk", "image_urls": ["pics/harbour.png"],
         "force_single": True},
        {"model": EDIT, "prompt": "in snow", "image_urls": ["pics/harbour.png"],
         "force_single": True},
        {"model": EDIT, "prompt": "at noon", "image_urls": [(cwd / "pics/dunes.jpg").as_uri()],
         "force_single": True},
    ])
    with simulator(shell, "--fetch-inputs", "--duration", "0.1-0.3", "--image-scale", "0.2",
                   "--video-bytes", "20000") as url:
        shell.env["RCBATCH_RUNCOMFY_BASE_URL"] = url
        first = shell.run("run", spec.name, "--workers", "1")
        assert first.returncode == 0, first.stderr
        edits = manifest(s3, last_manifest_url(first.stdout))
        bid = last_manifest_url(first.stdout).split("/")[-2]

        # each local file once under inputs/, whatever number of rows used it
        uploaded = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{bid}/inputs/")
        names = sorted(o["Key"].rsplit("/", 1)[1] for o in uploaded["Contents"])
        assert names == sorted([f"{shared}.png", f"{other}.jpg"])
        # the API was sent pre-signed URLs it could fetch, carrying the local files' bytes
        fetched = {job["body_sha256"]: job["inputs"] for job in sim_jobs(url)}
        assert len(fetched) == 3
        assert sorted(i[0]["sha256"] for i in fetched.values()) == sorted([shared, shared, other])
        for line in edits:
            assert line["status"] == "completed"
            assert line["input"]["image_urls"][0].startswith(f"{s3.endpoint_url}/{BUCKET}/")
            (used,) = line["inputs"]
            assert used["field"] == "image_urls[0]"
            assert used["sha256"] in (shared, other)
            assert Path(used["local_path"]).is_file()
            assert used["key"] == f"{bid}/inputs/{used['sha256']}.{used['key'][-3:]}"

        derived = shell.run("derive", bid, "--model", I2V, "--set", "prompt=slow pan",
                            "--set", "number_of_frames=121", "--wait")
        assert derived.returncode == 0, derived.stderr
        videos = manifest(s3, last_manifest_url(derived.stdout))
        jobs = sim_jobs(url)

    outputs = {(line["item_id"], n): o for line in edits for n, o in enumerate(line["outputs"])}
    assert len(videos) == len(outputs) == 3
    for line in videos:
        assert line["status"] == "completed" and line["model"] == I2V
        assert line["outputs"][0]["content_type"].startswith("video/")
        parent = line["parent"]
        assert parent["batch_id"] == bid
        assert (parent["item_id"], parent["output"]) in outputs
        assert line["line"] == f"{bid}/{parent['item_id']}:{parent['output']}"
    # the video model fetched exactly the parents' stored outputs
    sent = sorted(j["inputs"][0]["sha256"] for j in jobs if j["model"] == I2V)
    assert sent == sorted(o["sha256"] for o in outputs.values())
