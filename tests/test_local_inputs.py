"""Local image files as inputs: checked like fetched images, referenced by content hash,
uploaded once, pre-signed at submit; the simulator fetching the URLs it is sent; the
manifest and contact sheet of derived items."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from rcbatch.errors import ValidationFailed
from rcbatch.producer.derive import Selection, derive_items, parent_rows
from rcbatch.producer.local_inputs import files_of, upload
from rcbatch.producer.spec import read_and_check
from rcbatch.runcomfy.simulator import SimulatorConfig, SimulatorServer
from rcbatch.worker import contact_sheet
from rcbatch.worker.bucket import LocalBucket, MemoryBucket
from rcbatch.worker.bucket.inputs import (
    has_refs,
    input_ref,
    object_ref,
    presigned_body,
    serving_problem,
)
from rcbatch.worker.manifest import manifest_line

EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"


def picture(path: Path, size: tuple[int, int], fmt: str = "PNG") -> str:
    """A real image file; its sha256."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def spec_file(folder: Path, rows: list[dict[str, Any]]) -> Path:
    path = folder / "spec.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_local_path_becomes_a_reference_to_its_content(tmp_path: Path) -> None:
    digest = picture(tmp_path / "pics" / "a.png", (640, 480))
    spec = spec_file(tmp_path, [
        {"model": EDIT, "prompt": "one", "image_urls": ["pics/a.png"]},
        {"model": EDIT, "prompt": "two", "image_urls": [(tmp_path / "pics/a.png").as_uri()]},
    ])
    checked = read_and_check([spec])
    assert checked.ok, checked.problems
    assert [i.input["image_urls"] for i in checked.items] == [[input_ref(digest, "png")]] * 2
    assert checked.items[0].local_inputs[0].field == "image_urls[0]"
    assert [f.sha256 for f in files_of(checked.items)] == [digest]  # one file, two rows


def test_the_same_content_elsewhere_is_the_same_item(tmp_path: Path) -> None:
    picture(tmp_path / "a.png", (640, 480))
    picture(tmp_path / "copy" / "a.png", (640, 480))
    one = read_and_check([spec_file(tmp_path, [
        {"model": EDIT, "prompt": "x", "image_urls": ["a.png"]}])])
    other = read_and_check([spec_file(tmp_path / "copy", [
        {"model": EDIT, "prompt": "x", "image_urls": ["a.png"]}])])
    assert one.items[0].item_id == other.items[0].item_id


def test_local_files_are_judged_by_the_models_image_rules(tmp_path: Path) -> None:
    picture(tmp_path / "small.png", (200, 200))
    (tmp_path / "notes.png").write_text("not an image")
    spec = spec_file(tmp_path, [
        {"model": I2V, "prompt": "pan", "image_urls": ["small.png"]},
        {"model": EDIT, "prompt": "x", "image_urls": ["missing.png"]},
        {"model": EDIT, "prompt": "x", "image_urls": ["notes.png"]},
    ])
    problems = read_and_check([spec]).problems
    assert [(p.line, p.field) for p in problems] == [
        (1, "image_urls[0]"), (2, "image_urls[0]"), (3, "image_urls[0]")]
    assert "320" in problems[0].message  # i2v: shortest side at least 320 px
    assert "no file" in problems[1].message and "missing.png" in problems[1].message
    assert "not an image" in problems[2].message


def test_each_file_is_uploaded_once_per_batch(tmp_path: Path) -> None:
    picture(tmp_path / "a.png", (640, 480))
    picture(tmp_path / "b.jpg", (640, 480), "JPEG")
    checked = read_and_check([spec_file(tmp_path, [
        {"model": EDIT, "prompt": "1", "image_urls": ["a.png", "b.jpg"]},
        {"model": EDIT, "prompt": "2", "image_urls": ["a.png"]}])])
    bucket = MemoryBucket()
    assert upload(bucket, "B1", files_of(checked.items)) == 2
    assert upload(bucket, "B1", files_of(checked.items)) == 0  # resumed: already there
    keys = bucket.list_keys("B1/inputs/")
    assert sorted(k.rsplit(".", 1)[1] for k in keys) == ["jpg", "png"]
    for key in keys:
        assert hashlib.sha256(bucket.get_bytes(key)).hexdigest() in key


def test_references_are_presigned_for_the_batch_and_plain_urls_kept() -> None:
    body = {"prompt": "x", "image_urls": [input_ref("a" * 64, "png"),
                                          "https://example.com/b.png",
                                          object_ref("P1/item-1/0.png")]}
    assert has_refs(body) and not has_refs({"image_urls": ["https://example.com/b.png"]})
    sent = presigned_body(body, "B1", lambda key: f"https://signed/{key}")
    assert sent["image_urls"] == [f"https://signed/B1/inputs/{'a' * 64}.png",
                                  "https://example.com/b.png", "https://signed/P1/item-1/0.png"]


def test_a_folder_bucket_cannot_serve_inputs_and_says_what_to_set(tmp_path: Path) -> None:
    problem = serving_problem(LocalBucket(tmp_path), api_on_loopback=True)
    assert problem is not None and "RCBATCH_BUCKET_URL" in problem and "s3://" in problem
    assert serving_problem(MemoryBucket(), api_on_loopback=False) is None


def test_run_refuses_local_files_with_a_folder_bucket_before_starting(tmp_path: Path) -> None:
    picture(tmp_path / "a.png", (640, 480))
    spec = spec_file(tmp_path, [{"model": EDIT, "prompt": "x", "image_urls": ["a.png"]}])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RCBATCH_STATE_DIR":
           str(tmp_path / "state"), "RCBATCH_RUNCOMFY_API_TOKEN": "t",
           "RCBATCH_BUCKET_URL": (tmp_path / "bucket").as_uri()}
    done = subprocess.run([sys.executable, "-m", "rcbatch", "run", str(spec)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "RCBATCH_BUCKET_URL" in done.stderr and "s3://" in done.stderr
    assert not (tmp_path / "state" / "redis").exists()


def test_manifest_line_shows_the_body_sent_its_local_files_and_parent() -> None:
    record = {"id": "i2v-1", "file": "P1/edit-1", "line": "0", "model": I2V, "state": "completed",
              "input": json.dumps({"image_urls": [object_ref("P1/edit-1/0.png")]}),
              "sent_input": json.dumps({"image_urls": ["https://signed/P1/edit-1/0.png"]}),
              "inputs": json.dumps([{"field": "image_urls[0]", "local_path": "/x/a.png",
                                     "sha256": "ab", "key": "B/inputs/ab.png"}]),
              "parent": json.dumps({"batch_id": "P1", "item_id": "edit-1", "output": 0,
                                    "key": "P1/edit-1/0.png"})}
    line = manifest_line(record)
    assert line["input"] == {"image_urls": ["https://signed/P1/edit-1/0.png"]}
    assert line["inputs"][0]["local_path"] == "/x/a.png"
    assert line["parent"]["item_id"] == "edit-1" and line["line"] == "P1/edit-1:0"
    page = contact_sheet.render("B", [line])
    assert "href='../P1/edit-1/0.png'" in page


def test_derived_rows_name_their_parent_output_and_are_checked() -> None:
    outputs = [{"key": "P1/e1/0.png", "content_type": "image/png"},
               {"key": "P1/e1/1.mp4", "content_type": "video/mp4"}]
    records = [{"id": "e1", "state": "completed", "outputs": json.dumps(outputs)},
               {"id": "e2", "state": "failed", "outputs": "[]"}]
    rows = parent_rows("P1", records, I2V, {"prompt": "pan"}, Selection())
    assert len(rows) == 1  # images of completed items only
    checked = derive_items(rows, sweep={"resolution": ["720P", "1080P"]},
                           allow_loopback_http=False)
    assert len(checked.items) == 2
    assert {json.dumps(i.parent) for i in checked.items} == {json.dumps(
        {"batch_id": "P1", "item_id": "e1", "output": 0, "key": "P1/e1/0.png"})}
    bad = parent_rows("P1", records, I2V, {"prompt": "pan", "number_of_frames": 7}, Selection())
    with pytest.raises(ValidationFailed) as failed:
        derive_items(bad, sweep={}, allow_loopback_http=False)
    assert "P1/e1:0: number_of_frames:" in str(failed.value.problems[0])


@pytest.fixture(scope="module")
def fetching_sim() -> Iterator[SimulatorServer]:
    config = SimulatorConfig(token="tok", duration=(0.01, 0.05), image_scale=0.05,
                             fetch_inputs=True, seed=3)
    with SimulatorServer(config) as server:
        yield server


def _finish(url: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": "Bearer tok"}
    rid = httpx.post(f"{url}/v1/models/{EDIT}", json=body, headers=headers).json()["request_id"]
    for _ in range(200):
        result: dict[str, Any] = httpx.get(f"{url}/v1/requests/{rid}/result",
                                           headers=headers).json()
        if result["status"] in ("succeeded", "failed"):
            return result
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def test_the_simulator_fetches_inputs_and_fails_jobs_whose_input_is_not_an_image(
        fetching_sim: SimulatorServer) -> None:
    url = fetching_sim.base_url
    image = f"{url}/_sim/inputs/640x480.png"
    expected = hashlib.sha256(httpx.get(image).content).hexdigest()
    assert _finish(url, {"prompt": "x", "image_urls": [image]})["status"] == "succeeded"
    failed = _finish(url, {"prompt": "x", "image_urls": [f"{url}/_sim/stats"]})
    assert failed["status"] == "failed" and "not an image" in failed["error"]["message"]
    missing = _finish(url, {"prompt": "x", "image_urls": [f"{url}/nowhere.png"]})
    assert "HTTP 404" in missing["error"]["message"]
    jobs = httpx.get(f"{url}/_sim/jobs").json()["jobs"]
    assert jobs[0]["inputs"][0]["sha256"] == expected
    assert jobs[0]["inputs"][0]["bytes"] == len(httpx.get(image).content)
