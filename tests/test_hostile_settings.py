"""Where the token may go, and what a scheduled run may fetch: the settings and schedule
findings of the security review, each through the installed command or the real code path."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rcbatch.config import Settings
from rcbatch.errors import InputError
from rcbatch.runcomfy.fake import FakeRunComfy
from rcbatch.worker.bucket import MemoryBucket
from rcbatch.worker.runtime import RecordingPublisher, Runtime
from rcbatch.worker.schedule_tasks import fire_schedules
from rcbatch.worker.state import Store
from tests.journeys import Shell, rows


@pytest.fixture
def shell(tmp_path: Path) -> Shell:
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return Shell(tmp_path / "home", tmp_path / "work")


def test_a_plain_http_api_off_loopback_is_refused_at_start_up(shell: Shell) -> None:
    spec = shell.write("x.jsonl", rows(1))
    done = shell.run("validate", str(spec), "--no-preflight",
                     RCBATCH_RUNCOMFY_BASE_URL="http://api.example.net",
                     RCBATCH_RUNCOMFY_API_TOKEN="tok-abcdef")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("rcbatch: error: RCBATCH_RUNCOMFY_BASE_URL: ")
    assert "not https" in done.stderr and "Traceback" not in done.stderr


def test_the_simulator_on_loopback_may_use_plain_http() -> None:
    assert Settings(runcomfy_base_url="http://127.0.0.1:8189").runcomfy_base_url
    assert Settings(runcomfy_base_url="https://model-api.runcomfy.net").runcomfy_base_url


def test_a_folder_env_file_cannot_send_the_environment_token_elsewhere(shell: Shell) -> None:
    (shell.cwd / ".env").write_text("RCBATCH_RUNCOMFY_BASE_URL=https://collector.example\n")
    spec = shell.write("x.jsonl", rows(1))
    done = shell.run("validate", str(spec), "--no-preflight",
                     RCBATCH_RUNCOMFY_API_TOKEN="tok-abcdef")
    assert done.returncode == 2
    assert ".env sets RCBATCH_RUNCOMFY_BASE_URL but your token comes from the environment" \
        in done.stderr
    assert "tok-abcdef" not in done.stderr


def test_a_folder_env_file_that_holds_both_token_and_api_is_fine(shell: Shell) -> None:
    (shell.cwd / ".env").write_text("RCBATCH_RUNCOMFY_BASE_URL=https://api.example\n"
                                    "RCBATCH_RUNCOMFY_API_TOKEN=tok-abcdef\n")
    spec = shell.write("x.jsonl", rows(1))
    assert shell.run("validate", str(spec), "--no-preflight").returncode == 0


def _fire(redis_url: str, tmp_path: Path, spec_url: str, bucket: MemoryBucket) -> Store:
    from rcbatch.worker.wiring import redis_client

    sched = tmp_path / "schedules.json"
    sched.write_text(json.dumps([{"name": "nightly", "cron": "* * * * *", "spec": spec_url}]))
    settings = Settings(redis_url=redis_url, schedules_file=sched, state_dir=tmp_path)
    store = Store(redis_client(redis_url))
    store.redis.set("rcb:schedule:nightly:since", str(datetime.now(UTC).timestamp() - 120))
    rt = Runtime(store=store, client=FakeRunComfy().client(), buckets=lambda _u: bucket,
                 publisher=RecordingPublisher())
    fire_schedules(rt, settings)
    return store


def test_a_scheduled_run_refuses_plain_http_images_like_submit_does(
        redis_url: str, tmp_path: Path) -> None:
    spec = tmp_path / "nightly.jsonl"
    spec.write_text(json.dumps({"model": "bytedance/dreamina-4-0/edit", "prompt": "x",
                                "image_urls": ["http://127.0.0.1:9/internal.png"]}) + "\n")
    with pytest.raises(InputError):
        _fire(redis_url, tmp_path, str(spec), MemoryBucket())


def test_a_scheduled_spec_from_the_bucket_leaves_no_temp_file(
        redis_url: str, tmp_path: Path) -> None:
    bucket = MemoryBucket()
    bucket.put_bytes("nightly.jsonl", (json.dumps(
        {"model": "bytedance/dreamina-4-0/text-to-image", "prompt": "x"}) + "\n").encode(),
        content_type="application/jsonl")
    before = set(Path(tempfile.gettempdir()).glob("*.jsonl"))
    store = _fire(redis_url, tmp_path, "s3://b/specs/nightly.jsonl", bucket)
    assert len(store.all_batches()) == 1
    assert set(Path(tempfile.gettempdir()).glob("*.jsonl")) == before
