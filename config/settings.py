"""All of rcbatch's settings in one place, from `RCBATCH_*` environment variables and `.env`.

Read once at the edge with `load_settings()` and hand the object (or the parts a component
needs) down through constructors; nothing below the edge reads the environment itself.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rcbatch.errors import InputError

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"


def default_state_dir() -> Path:
    """The per-user state folder: `$XDG_STATE_HOME/rcbatch`, else `~/.local/state/rcbatch`.

    Per user, not per working directory, so `status`, `cancel` and `ls` find a batch from
    any folder.
    """
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "rcbatch"


class Settings(BaseSettings):
    """Every setting, with the `RCBATCH_` prefix in the environment (e.g. RCBATCH_REDIS_URL)."""

    model_config = SettingsConfigDict(env_prefix="RCBATCH_", env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis for state and broker; unset: `run` starts an embedded one")
    runcomfy_api_token: SecretStr | None = Field(default=None, description="RunComfy API token")
    runcomfy_base_url: str = Field(default=DEFAULT_BASE_URL, description="Model API base URL")
    bucket_url: str | None = Field(
        default=None, description="file:///abs/path or s3://bucket/prefix; unset: STATE_DIR/bucket")
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint URL")
    state_dir: Path = Field(default_factory=default_state_dir,
                            description="embedded Redis data, logs of the processes `run` "
                                        "starts, the default bucket; per user by default")

    max_in_flight: int = Field(default=32, ge=1,
                               description="remote jobs in flight at once, across all workers")
    submit_rate: float = Field(default=20.0, gt=0,
                               description="submissions per second, across all workers")
    max_output_bytes: int = Field(default=2 * 1024**3, ge=1,
                                  description="largest output accepted for download")
    http_connect_timeout: float = Field(default=10.0, gt=0)
    http_read_timeout: float = Field(default=60.0, gt=0)
    preflight_concurrency: int = Field(default=8, ge=1)
    max_items: int = Field(
        default=100_000, ge=1,
        description="items one submission may expand to (sweeps and repeats included); "
                    "checked before anything is expanded")
    step_grace: float = Field(
        default=60.0, gt=0,
        description="seconds past a step's due time before the reconciler re-drives it")
    visibility_timeout: float = Field(
        default=900.0, ge=1,
        description="seconds before the Redis broker re-delivers an unacknowledged message; "
                    "countdowns and task time limits are kept below it (worker/celery_app.py)")
    log_level: str = Field(default="INFO")
    prices: dict[str, float] = Field(
        default_factory=dict, description="USD per job by model id, over config/prices.py's")
    retention: float = Field(
        default=3 * 86400, gt=0,
        description="seconds a finished batch's records stay in Redis; then only a small "
                    "tombstone is left (its manifest stays in the bucket)")
    models_dir: Path | None = Field(
        default=None, description="models added with `rcbatch models add`; unset: "
                                  "STATE_DIR/models")
    schedules_file: Path | None = Field(
        default=None, description="JSON list of recurring runs (worker/schedules.py)")

    @field_validator("runcomfy_base_url")
    @classmethod
    def _token_only_over_https(cls, value: str) -> str:
        """The token rides in every request's header: never in clear off this machine."""
        url = urlsplit(value)
        if url.scheme == "https" and url.hostname:
            return value
        if url.scheme == "http" and _is_loopback_host(url.hostname or ""):
            return value  # the local simulator
        raise ValueError(f"{_without_userinfo(value)!r} is not https: the API token would "
                         f"travel in clear (plain http only on loopback, for the simulator)")

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    def resolved_models_dir(self) -> Path:
        """Where `rcbatch models add` keeps the user's models."""
        return (self.models_dir or self.state_dir / "models").expanduser().absolute()

    def resolved_bucket_url(self) -> str:
        """The bucket URL, defaulting to a `bucket` folder inside the state folder."""
        if self.bucket_url:
            return self.bucket_url
        return (self.state_dir / "bucket").as_uri()

    def token_value(self) -> str | None:
        """The raw token, for the one place that sends it (the HTTP Authorization header)."""
        return self.runcomfy_api_token.get_secret_value() if self.runcomfy_api_token else None


def load_settings(**overrides: object) -> Settings:
    """Read the settings once; keyword overrides (from CLI flags) win over the environment.

    A bad setting is an InputError (exit 2) naming it. A `.env` in the current folder may set
    anything, but it may not send a token that comes from elsewhere to another API: a shared
    folder's `.env` could otherwise collect the token of whoever runs rcbatch there.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "RCBATCH_" + "_".join(str(p) for p in error["loc"]).upper()
        raise InputError(f"{name}: {error['msg'].removeprefix('Value error, ')}") from None
    _refuse_foreign_api_from_dotenv()
    return settings


def _refuse_foreign_api_from_dotenv(path: Path = Path(".env")) -> None:
    if not path.is_file():
        return
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    found = {k.upper(): v for k, v in dotenv_values(path).items()}
    moves_api = "RCBATCH_RUNCOMFY_BASE_URL" in found and (
        "RCBATCH_RUNCOMFY_BASE_URL" not in os.environ)
    token_elsewhere = "RCBATCH_RUNCOMFY_API_TOKEN" not in found and (
        "RCBATCH_RUNCOMFY_API_TOKEN" in os.environ)
    if moves_api and token_elsewhere:
        raise InputError(f"{path.absolute()} sets RCBATCH_RUNCOMFY_BASE_URL but your token "
                         f"comes from the environment; set both in the same place (refusing "
                         f"to send the token to an API a folder's .env chose)")


def _is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost, as a URL's host names them (the usual spellings)."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="",
                          fragment="").geturl()
