"""Cost estimates per model, for `validate`'s preview and the `--max-cost` budget.

RunComfy's pages give no prices, so these defaults are ESTIMATES in USD per job, chosen on
the high side so a budget is not overshot; override them with RCBATCH_PRICES, a JSON object
{model id: USD per job}. Where the API reports the real cost (`include_cost=true`), the
manifest records it beside the estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_PRICES: dict[str, float] = {
    "bytedance/dreamina-4-0/text-to-image": 0.03,
    "bytedance/dreamina-4-0/edit": 0.03,
    "bytedance/dreamina-3-0/image-to-video": 0.30,   # 121 frames at 720P
    "bytedance/seedream-4-5/edit-sequential": 0.04,  # per generated image
}
FALLBACK_PRICE = 0.10


def estimate(model: str, body: Mapping[str, Any],
             prices: Mapping[str, float] | None = None) -> float:
    """The estimated USD cost of one job."""
    table = {**DEFAULT_PRICES, **(prices or {})}
    price = table.get(model, FALLBACK_PRICE)
    if model.endswith("image-to-video"):
        price *= 2 if body.get("number_of_frames") == 241 else 1
        price *= 1.5 if body.get("resolution") == "1080P" else 1
    elif model.endswith("edit-sequential"):
        count = body.get("sequential_image_generation_options", 3)
        price *= count if isinstance(count, int) and count > 0 else 3
    return round(price, 6)
