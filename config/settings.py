"""All of rcbatch's settings in one place, from `RCBATCH_*` environment variables and `.env`.

Read once at the edge with `load_settings()` and hand the object (or the parts a component
needs) down through constructors; nothing below the edge reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"


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
    state_dir: Path = Field(default=Path(".rcbatch"),
                            description="embedded Redis data and logs of processes `run` starts")

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
    schedules_file: Path | None = Field(
        default=None, description="JSON list of recurring runs (worker/schedules.py)")

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    def resolved_bucket_url(self) -> str:
        """The bucket URL, defaulting to a `bucket` folder inside the state folder."""
        if self.bucket_url:
            return self.bucket_url
        return (self.state_dir / "bucket").as_uri()

    def token_value(self) -> str | None:
        """The raw token, for the one place that sends it (the HTTP Authorization header)."""
        return self.runcomfy_api_token.get_secret_value() if self.runcomfy_api_token else None


def load_settings(**overrides: object) -> Settings:
    """Read the settings once; keyword overrides (from CLI flags) win over the environment."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
