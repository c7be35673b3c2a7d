"""docker-compose.yml: no Docker engine runs here, so check what can be checked without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rcbatch.config import Settings

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
AWS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def test_the_file_has_every_service_the_deployment_needs() -> None:
    assert {"redis", "minio", "createbucket", "worker", "flower"} <= set(services())


def test_no_beat_service_is_needed_because_every_worker_can_be_the_clock() -> None:
    commands = [" ".join(s.get("command") or []) for s in services().values()]
    assert not [c for c in commands if " beat" in c or "--beat" in c or " -B" in c]


def test_every_variable_set_for_rcbatch_is_a_real_setting() -> None:
    fields = {f"RCBATCH_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "flower"):
        env = services()[name]["environment"]
        ours = {k for k in env if k.startswith("RCBATCH_")}
        assert ours, name
        assert ours <= fields, f"{name}: not settings: {sorted(ours - fields)}"
        assert set(env) - ours <= AWS, f"{name}: unexpected variables"


def test_redis_keeps_what_it_acknowledged() -> None:
    command = services()["redis"]["command"]
    text = " ".join(command)
    assert "--appendonly yes" in text and "--appendfsync everysec" in text
    assert "--maxmemory-policy noeviction" in text


def test_workers_run_the_rcbatch_worker_and_flower_uses_the_configured_app() -> None:
    assert services()["worker"]["command"][:2] == ["rcbatch", "worker"]
    assert "rcbatch.worker.celery_cli:app" in services()["flower"]["command"]
