"""The catalogue of RunComfy models rcbatch supports: their inputs, limits and validation.

`MODELS` is one declarative table transcribed from the API pages; `validate` reports every
problem of a row at once; `input_model` gives a typed pydantic model per endpoint.
"""

from rcbatch.runcomfy.catalogue.spec import (
    FieldKind,
    FieldSpec,
    ImageRule,
    Issue,
    ModelSpec,
    OutputKind,
    Severity,
    SoftLimit,
    split_rule,
)
from rcbatch.runcomfy.catalogue.table import (
    DREAMINA_SIZES,
    MODELS,
    SEEDREAM_RESOLUTIONS,
    define_model,
)
from rcbatch.runcomfy.catalogue.typed import ModelInput, input_model, python_name
from rcbatch.runcomfy.catalogue.validate import (
    INT64_MAX,
    INT64_MIN,
    LOOPBACK_HOSTS,
    RESERVED_FIELDS,
    check_value,
    get_model,
    url_problem,
    validate,
    validate_spec,
)
from rcbatch.runcomfy.imageinfo import ImageInfo

__all__ = [
    "DREAMINA_SIZES",
    "INT64_MAX",
    "INT64_MIN",
    "LOOPBACK_HOSTS",
    "MODELS",
    "RESERVED_FIELDS",
    "SEEDREAM_RESOLUTIONS",
    "FieldKind",
    "FieldSpec",
    "ImageInfo",
    "ImageRule",
    "Issue",
    "ModelInput",
    "ModelSpec",
    "OutputKind",
    "Severity",
    "SoftLimit",
    "check_value",
    "define_model",
    "get_model",
    "input_model",
    "python_name",
    "split_rule",
    "url_problem",
    "validate",
    "validate_spec",
]
