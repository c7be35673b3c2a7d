"""Every knob of the simulator in one dataclass, with the defaults the CLI documents."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DurationRange = tuple[float, float]

#: the fault rates, each a probability in [0, 1] drawn from the seeded RNG
FAULT_RATES = (
    "fail_5xx", "fail_429", "slow", "drop", "lost_submit", "job_fail", "output_404",
    "output_truncate", "refuse", "reset",
)

#: fields a running simulator may not change through `POST /_sim/reset`
FIXED_AT_START = frozenset({"host", "port", "public_url", "access_log", "state_path",
                            "models_dir"})


def parse_duration(text: str) -> DurationRange:
    """Parse `MIN-MAX` (or a single number) in seconds, e.g. "0.05-0.2" -> (0.05, 0.2)."""
    low, sep, high = text.strip().partition("-")
    try:
        bounds = (float(low), float(high) if sep else float(low))
    except ValueError:
        raise ValueError(f"expected MIN-MAX in seconds, e.g. 1-3, got {text!r}") from None
    _check_range("duration", bounds)
    return bounds


def _check_range(name: str, bounds: DurationRange) -> None:
    low, high = bounds
    if not 0 <= low <= high:
        raise ValueError(f"{name}: need 0 <= MIN <= MAX, got {low}-{high}")


def _tuples(value: Any) -> Any:
    """JSON has no tuples: turn lists (also inside a mapping) back into duration pairs."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: a rate must be within [0, 1], got {value}")


@dataclass(frozen=True)
class SimulatorConfig:
    """Options of the local RunComfy Model API simulator.

    Durations are seconds of real time: a job's duration is drawn uniformly from its model's
    range (`duration` overrides every model; otherwise `model_durations`, then the image/video
    defaults) and multiplied by `time_scale`. Every random draw comes from `seed`; without one a
    seed is picked at start and reported by `GET /_sim/stats`, so any run can be replayed.
    """

    host: str = "127.0.0.1"
    port: int = 0
    #: the one accepted Bearer token; None accepts any non-empty token (one account per token)
    token: str | None = field(default=None, repr=False)
    #: per-token cap on jobs in progress; the rest wait in_queue, first in first out
    concurrency: int = 4
    duration: DurationRange | None = None
    image_duration: DurationRange = (1.0, 3.0)
    video_duration: DurationRange = (3.0, 6.0)
    model_durations: Mapping[str, DurationRange] = field(default_factory=dict)
    time_scale: float = 1.0
    seed: int | None = None
    #: generated output images are this fraction of the requested size (fast tests)
    image_scale: float = 1.0
    image_format: Literal["png", "jpeg"] = "png"
    video_bytes: int = 1024 * 1024
    # Fault injection: rates in [0, 1].
    fail_5xx: float = 0.0
    fail_429: float = 0.0
    retry_after: int = 1
    slow: float = 0.0
    slow_seconds: float = 10.0
    drop: float = 0.0
    #: like `drop`, but the connection is reset (TCP RST) instead of closed
    reset: float = 0.0
    lost_submit: float = 0.0
    job_fail: float = 0.0
    output_404: float = 0.0
    #: share of 404 outputs that never come back; the others recover after `output_404_fetches`
    output_404_permanent: float = 1.0
    output_404_fetches: int = 2
    output_truncate: float = 0.0
    #: share of bodies a content filter refuses (HTTP 400); decided per body, as a filter would
    refuse: float = 0.0
    #: also reject bodies the catalogue only warns about (the stricter reading of the pages)
    strict: bool = False
    #: fetch every input image URL of an accepted body, as the real API does: its sha256 and
    #: size are kept with the job, and a URL not answering 200 with an image fails the job
    fetch_inputs: bool = False
    #: base of the URLs the simulator hands out; default: the URL the client called
    public_url: str | None = None
    access_log: bool = False
    #: keep the jobs across restarts in this folder (`simulator.sqlite3` in it) or database
    #: file (a path ending in .sqlite3, .sqlite or .db); None keeps them in memory only
    state_path: str | os.PathLike[str] | None = None
    #: the folder of the user's models (`rcbatch models add`), served beside the built-in
    #: four; `rcbatch simulate` loads it into the catalogue (`catalogue.use_models_dir`)
    models_dir: str | None = None

    def __post_init__(self) -> None:
        for name in (*FAULT_RATES, "output_404_permanent"):
            _check_rate(name, getattr(self, name))
        for name in ("image_duration", "video_duration"):
            _check_range(name, getattr(self, name))
        if self.duration is not None:
            _check_range("duration", self.duration)
        for model_id, bounds in self.model_durations.items():
            _check_range(f"model_durations[{model_id}]", bounds)
        self._check_numbers()

    def _check_numbers(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.time_scale <= 0 or not 0 < self.image_scale <= 4:
            raise ValueError("time_scale must be > 0 and image_scale within (0, 4]")
        if self.video_bytes < 0 or self.slow_seconds < 0 or self.retry_after < 0:
            raise ValueError("video_bytes, slow_seconds and retry_after must be >= 0")
        if self.output_404_fetches < 1:
            raise ValueError("output_404_fetches must be at least 1")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be png or jpeg, got {self.image_format!r}")

    def duration_range(self, model_id: str, kind: str) -> DurationRange:
        """The (min, max) duration of one job of `model_id`, before `time_scale`."""
        if self.duration is not None:
            return self.duration
        if model_id in self.model_durations:
            return self.model_durations[model_id]
        return self.video_duration if kind == "video" else self.image_duration

    def with_overrides(self, overrides: Mapping[str, Any]) -> SimulatorConfig:
        """A copy with some fields replaced (validated); JSON lists become tuples."""
        known = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - (known - FIXED_AT_START))
        if bad:
            raise ValueError(f"cannot override: {', '.join(bad)}")
        fixed = {k: _tuples(v) for k, v in overrides.items()}
        return dataclasses.replace(self, **fixed)

    def public_summary(self) -> dict[str, Any]:
        """The options as JSON, without the token (only whether one is set)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["token"] = "<set>" if self.token else None
        data["model_durations"] = dict(self.model_durations)
        data["state_path"] = None if self.state_path is None else os.fspath(self.state_path)
        return data
