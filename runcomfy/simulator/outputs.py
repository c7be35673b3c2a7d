"""What each simulated model produces: how many files, of what kind and size, and the price.

The output shapes follow the model pages' output schema; the counts are the simulator's choice
(the pages do not fix them):

- Dreamina 4.0 text-to-image and edit: `{"image": url}` when `force_single` is true, otherwise
  `{"images": [url, url]}` (always two images).
- Seedream 4.5 edit-sequential: `{"images": [...]}` with
  `min(sequential_image_generation_options, 3)` images.
- Dreamina 3.0 image-to-video: `{"video": url}`.
- Any other catalogued model (a user's, `rcbatch models add`): one file of its output kind,
  under the first key its output schema declares (`image`/`images`, `video`/`videos`); image
  sizes are read off the body's first `WxH` value, like the size enums above.

Prices (`?include_cost=true`) are invented round numbers, not RunComfy's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rcbatch.runcomfy.simulator.config import SimulatorConfig

OutputKind = Literal["image", "video"]
GoneMode = Literal["no", "permanent", "transient"]

_SIZE = re.compile(r"^\s*(\d{1,5})\s*x\s*(\d{1,5})")
_NAMED_SIZES = {"2K": 2048, "4K": 4096}
DEFAULT_SIZE = (2048, 2048)
IMAGE_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
IMAGE_EXTENSIONS = {"png": "png", "jpeg": "jpg"}


@dataclass(eq=False)
class OutputFile:
    """One output file of a job; `gets` counts the GET fetches it has answered."""

    n: int
    kind: OutputKind
    ext: str
    content_type: str
    width: int = 0
    height: int = 0
    size_bytes: int = 0
    gone: GoneMode = "no"
    gone_fetches: int = 0
    gets: int = 0

    def is_missing_now(self) -> bool:
        """True while this output answers 404 (permanently, or for its first fetches)."""
        if self.gone == "permanent":
            return True
        return self.gone == "transient" and self.gets < self.gone_fetches


@dataclass(frozen=True)
class OutputPlan:
    """The output key (`image`, `images` or `video`) and the files behind it."""

    key: str
    files: tuple[OutputFile, ...]


def parse_size(value: Any, default: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int]:
    """Pixel size of a size enum: "2048x2048(1:1)", "2048x2048 (1:1)", "2K", "4K"."""
    if isinstance(value, str):
        if value.strip().upper() in _NAMED_SIZES:
            side = _NAMED_SIZES[value.strip().upper()]
            return side, side
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)), int(match.group(2))
    return default


def _images(size: tuple[int, int], count: int, config: SimulatorConfig) -> tuple[OutputFile, ...]:
    width = max(1, round(size[0] * config.image_scale))
    height = max(1, round(size[1] * config.image_scale))
    fmt = config.image_format
    return tuple(
        OutputFile(n, "image", IMAGE_EXTENSIONS[fmt], IMAGE_CONTENT_TYPES[fmt], width, height)
        for n in range(count)
    )


def _dreamina_image(body: Mapping[str, Any], config: SimulatorConfig) -> OutputPlan:
    size = parse_size(body.get("width×height"))
    if body.get("force_single") is True:
        return OutputPlan("image", _images(size, 1, config))
    return OutputPlan("images", _images(size, 2, config))


def _seedream_sequential(body: Mapping[str, Any], config: SimulatorConfig) -> OutputPlan:
    size = parse_size(body.get("resolution"))
    wanted = body.get("sequential_image_generation_options", 3)
    count = min(wanted, 3) if isinstance(wanted, int) and wanted >= 1 else 1
    return OutputPlan("images", _images(size, count, config))


def _dreamina_video(body: Mapping[str, Any], config: SimulatorConfig) -> OutputPlan:
    video = OutputFile(0, "video", "mp4", "video/mp4", size_bytes=config.video_bytes)
    return OutputPlan("video", (video,))


@dataclass(frozen=True)
class SimModel:
    """A model the simulator runs: its output kind, output plan and price."""

    model_id: str
    kind: OutputKind
    plan: Callable[[Mapping[str, Any], SimulatorConfig], OutputPlan]
    unit_price: float

    def cost(self, body: Mapping[str, Any], outputs: int) -> float:
        """Invented price in USD: per image, or per video scaled by length and resolution."""
        if self.kind == "image":
            return round(self.unit_price * outputs, 4)
        frames = 2 if body.get("number_of_frames") == 241 else 1
        hd = 1.5 if body.get("resolution") == "1080P" else 1.0
        return round(self.unit_price * frames * hd, 4)


BUILT_IN_MODELS: dict[str, SimModel] = {
    m.model_id: m
    for m in (
        SimModel("bytedance/dreamina-4-0/text-to-image", "image", _dreamina_image, 0.03),
        SimModel("bytedance/dreamina-4-0/edit", "image", _dreamina_image, 0.03),
        SimModel("bytedance/dreamina-3-0/image-to-video", "video", _dreamina_video, 0.25),
        SimModel("bytedance/seedream-4-5/edit-sequential", "image", _seedream_sequential, 0.04),
    )
}
_UNIT_PRICES: dict[OutputKind, float] = {"image": 0.03, "video": 0.25}


def catalogued_model(model_id: str, kind: OutputKind, keys: tuple[str, ...]) -> SimModel:
    """A SimModel for a model known only by its schema: one output under its first key."""
    key = keys[0] if keys else kind

    def plan(body: Mapping[str, Any], config: SimulatorConfig) -> OutputPlan:
        if kind == "video":
            video = OutputFile(0, "video", "mp4", "video/mp4", size_bytes=config.video_bytes)
            return OutputPlan(key, (video,))
        sizes = (parse_size(v, (0, 0)) for v in body.values())
        size = next((s for s in sizes if s != (0, 0)), DEFAULT_SIZE)
        return OutputPlan(key, _images(size, 1, config))

    return SimModel(model_id, kind, plan, _UNIT_PRICES[kind])


class SimModels(Mapping[str, SimModel]):
    """The models the simulator serves: the built-in four, and every other model the
    catalogue knows (`rcbatch simulate --models-dir` adds the user's)."""

    def __init__(self, built_in: Mapping[str, SimModel]) -> None:
        self._built_in = dict(built_in)
        self._derived: dict[tuple[str, str, tuple[str, ...]], SimModel] = {}

    def __getitem__(self, model_id: str) -> SimModel:
        if model_id in self._built_in:
            return self._built_in[model_id]
        from rcbatch.runcomfy import catalogue  # only a user's model needs the catalogue

        spec = catalogue.MODELS[model_id]
        shape = (model_id, spec.output_kind, spec.outputs)
        if shape not in self._derived:  # a model replaced on disk gets a new plan
            self._derived[shape] = catalogued_model(model_id, spec.output_kind, spec.outputs)
        return self._derived[shape]

    def __iter__(self) -> Iterator[str]:
        from rcbatch.runcomfy import catalogue

        yield from self._built_in
        yield from (m for m in catalogue.MODELS if m not in self._built_in)

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: model id -> what the simulator makes of it
SIM_MODELS: SimModels = SimModels(BUILT_IN_MODELS)
