"""The processes a waiting command runs a batch with: Redis, workers, maybe the simulator.

`rcbatch run`, and `retry`/`resume`/`submit` with `--wait`, all start the same set here and
stop every one of them when the block ends, whatever ended it.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcbatch.cli.embedded_redis import ensure_redis
from rcbatch.cli.supervisor import Supervisor
from rcbatch.config import Settings
from rcbatch.errors import InputError
from rcbatch.worker.state import Store


@dataclass
class Session:
    """What a waiting command works with while its processes run."""

    settings: Settings  # with the Redis URL and API base URL the workers use
    store: Store
    supervisor: Supervisor

    def runtime(self) -> Any:
        """A runtime whose publisher sends real Celery messages to the workers."""
        from rcbatch.worker.celery_app import configure
        from rcbatch.worker.tasks import CeleryPublisher
        from rcbatch.worker.wiring import build_runtime

        configure(self.settings)
        return build_runtime(self.settings, CeleryPublisher())


@contextmanager
def session(settings: Settings, token: str, *, simulate: bool, workers: int = 2,
            concurrency: int = 2, sim_options: Sequence[str] = ()) -> Iterator[Session]:
    """Start Redis (or use RCBATCH_REDIS_URL), the simulator when asked, and `workers`."""
    from rcbatch.worker.connection import check_redis, redis_client

    with ExitStack() as stack:
        redis_url, server = ensure_redis(settings.redis_url, settings.state_dir)
        if server is not None:
            stack.callback(server.stop)
        client = redis_client(redis_url)
        check_redis(client)
        sup = Supervisor(settings.state_dir / "logs", child_env(settings, redis_url, token))
        stack.callback(sup.stop)
        base_url = settings.runcomfy_base_url
        if simulate:
            base_url = _start_simulator(sup, settings, token, sim_options)
        sup.start_workers(workers, concurrency)
        run_settings = settings.model_copy(update={"redis_url": redis_url,
                                                   "runcomfy_base_url": base_url})
        yield Session(run_settings, Store(client, retention=settings.retention), sup)


def _start_simulator(sup: Supervisor, settings: Settings, token: str,
                     options: Sequence[str]) -> str:
    """The simulator keeps its jobs in the state folder, so Ctrl-C and the same command
    again finds the jobs it had accepted."""
    # The token goes through the environment, never the command line (ps shows it).
    sup.env = {**sup.env, "RCBATCH_SIMULATOR_TOKEN": token}
    state = settings.state_dir / "simulator"
    port = _simulator_port(state / "port")
    base_url = sup.start_simulator(["--state", str(state), *options], port=port)
    sup.env = {**sup.env, "RCBATCH_RUNCOMFY_BASE_URL": base_url}
    return base_url


def _simulator_port(saved: Path) -> int:
    """The port the simulator of this state folder had, when it is free: output URLs that
    workers saved before a restart name it. Another free port otherwise (saved for next time).
    """
    try:
        wanted = int(saved.read_text())
    except (OSError, ValueError):
        wanted = 0
    for port in (wanted, 0) if wanted else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(str(chosen))
        return chosen
    return 0


def simulator_token(settings: Settings) -> str:
    """The token a simulated run uses without a real one: the same for every run of one state
    folder, so a run started again finds the jobs the simulator kept for it."""
    digest = hashlib.sha256(str(settings.state_dir).encode()).hexdigest()[:16]
    return f"sim-{digest}"


def token_for(settings: Settings, *, simulate: bool) -> str:
    """The API token of a run: the configured one, else the simulator's; InputError if none."""
    token = settings.token_value() or (simulator_token(settings) if simulate else None)
    if not token:
        raise InputError("RCBATCH_RUNCOMFY_API_TOKEN is not set (or use --simulate)")
    return token


def child_env(settings: Settings, redis_url: str, token: str) -> dict[str, str]:
    """The environment of every process a session starts: the settings it resolved."""
    env = dict(os.environ)
    env.update({
        "RCBATCH_REDIS_URL": redis_url,
        "RCBATCH_RUNCOMFY_API_TOKEN": token,
        "RCBATCH_RUNCOMFY_BASE_URL": settings.runcomfy_base_url,
        "RCBATCH_BUCKET_URL": settings.resolved_bucket_url(),
        "RCBATCH_STATE_DIR": str(settings.state_dir),
        "RCBATCH_MAX_IN_FLIGHT": str(settings.max_in_flight),
        "RCBATCH_SUBMIT_RATE": str(settings.submit_rate),
    })
    if settings.s3_endpoint_url:
        env["RCBATCH_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env
