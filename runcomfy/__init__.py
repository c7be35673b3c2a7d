"""RunComfy's Model API: the client, the catalogue of the four models, preflight, simulator.

    from rcbatch.runcomfy import RunComfyClient, validate, MODELS

The names below are loaded on first use, so `from rcbatch.runcomfy import catalogue` (the
producer's only need) does not import the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rcbatch.runcomfy.answers import (
        JobState,
        Output,
        ResultAnswer,
        StatusAnswer,
        SubmitAnswer,
    )
    from rcbatch.runcomfy.catalogue import (
        MODELS,
        Issue,
        ModelSpec,
        get_model,
        input_model,
        validate,
    )
    from rcbatch.runcomfy.client import DEFAULT_BASE_URL, Download, RunComfyClient

_HOMES = {
    "rcbatch.runcomfy.answers": ("JobState", "Output", "ResultAnswer", "StatusAnswer",
                                 "SubmitAnswer"),
    "rcbatch.runcomfy.catalogue": ("MODELS", "Issue", "ModelSpec", "get_model", "input_model",
                                   "validate"),
    "rcbatch.runcomfy.client": ("DEFAULT_BASE_URL", "Download", "RunComfyClient"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "DEFAULT_BASE_URL", "MODELS", "Download", "Issue", "JobState", "ModelSpec", "Output",
    "ResultAnswer", "RunComfyClient", "StatusAnswer", "SubmitAnswer", "get_model",
    "input_model", "validate",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for."""
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME_OF[name]), name)
