"""RunComfy's Model API: the client, the catalogue of the four models, preflight, simulator.

    from rcbatch.runcomfy import RunComfyClient, validate, MODELS
"""

from rcbatch.runcomfy.answers import JobState, Output, ResultAnswer, StatusAnswer, SubmitAnswer
from rcbatch.runcomfy.catalogue import MODELS, Issue, ModelSpec, get_model, input_model, validate
from rcbatch.runcomfy.client import DEFAULT_BASE_URL, Download, RunComfyClient

__all__ = [
    "DEFAULT_BASE_URL", "MODELS", "Download", "Issue", "JobState", "ModelSpec", "Output",
    "ResultAnswer", "RunComfyClient", "StatusAnswer", "SubmitAnswer", "get_model",
    "input_model", "validate",
]
