"""What a worker's pool child does as it starts, before its first task (worker/tasks.py
`_warm_up`, worker/wiring.py `warm_up`): the one-off set-up the first submits and downloads
of a batch would otherwise wait for. Real workers run it in every end-to-end test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from rcbatch.config import Settings
from rcbatch.worker import tasks
from rcbatch.worker.runtime import RecordingPublisher
from rcbatch.worker.wiring import build_runtime, warm_up


def settings_for(folder: Path) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:6399/0", bucket_url=folder.as_uri(),
                    runcomfy_api_token=SecretStr("tok-start-0123456789"))


def test_warm_up_builds_the_tls_context_and_opens_the_bucket_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(httpx, "create_ssl_context",
                        lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    settings = settings_for(tmp_path)
    rt = build_runtime(settings, RecordingPublisher(), state=fakeredis.FakeRedis())
    warm_up(rt, settings)
    assert len(built) == 1
    bucket = rt.buckets(settings.resolved_bucket_url())  # what the first fetch asks for
    assert rt.buckets.cache_info().hits == 1  # type: ignore[attr-defined]
    assert bucket.url == tmp_path.as_uri()


@pytest.fixture
def child(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The worker app's configuration as a pool child sees it, restored afterwards (Celery's
    settings object cannot lose an attribute again)."""
    before = getattr(tasks.app.conf, "rcbatch_settings", None)
    monkeypatch.setattr(tasks, "_runtime", None)
    yield tasks.app.conf
    tasks.app.conf.rcbatch_settings = before


def test_a_set_up_that_fails_is_logged_and_left_to_the_first_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: Any) -> None:
    child.rcbatch_settings = settings_for(tmp_path)

    def broken(*_: Any) -> None:
        raise OSError("no such device")

    monkeypatch.setattr(tasks, "warm_up", broken)
    with capture_logs() as logs:
        tasks._warm_up()  # a pool child that raised here would never take a task
    assert [(e["event"], e["error"]) for e in logs] == [("warm_up_failed", "OSError")]


def test_without_settings_a_child_sets_nothing_up(child: Any) -> None:
    child.rcbatch_settings = None
    tasks._warm_up()
    assert tasks._runtime is None
