"""The catalogue of RunComfy models rcbatch supports: their inputs, limits and validation.

Every model is its published input schema (`schema.py` reads a saved API page or the JSON):
four ship built in, `rcbatch models add` stores more in the user's models folder, which a
command adds with `use_models_dir` (or `load_catalogue` for a catalogue of one's own).
`MODELS` is the process's catalogue; `validate` reports every problem of a row at once;
`input_model` gives a typed pydantic model per endpoint.
"""

from rcbatch.runcomfy.catalogue.registry import (
    Catalogue,
    built_in_models,
    file_name,
    load_catalogue,
    read_schema_file,
    store_model,
)
from rcbatch.runcomfy.catalogue.schema import PublishedModel, read_published, spec_from_schema
from rcbatch.runcomfy.catalogue.spec import (
    OUTPUT_KEYS,
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
    BUILT_IN,
    DREAMINA_SIZES,
    MODELS,
    SEEDREAM_RESOLUTIONS,
    define_model,
    use_models_dir,
)
from rcbatch.runcomfy.catalogue.typed import ModelInput, input_model, python_name
from rcbatch.runcomfy.catalogue.validate import (
    INT64_MAX,
    INT64_MIN,
    LOOPBACK_HOSTS,
    RESERVED_FIELDS,
    check_value,
    get_model,
    unknown_model_issue,
    url_problem,
    validate,
    validate_spec,
)
from rcbatch.runcomfy.imageinfo import ImageInfo

__all__ = [
    "BUILT_IN",
    "DREAMINA_SIZES",
    "INT64_MAX",
    "INT64_MIN",
    "LOOPBACK_HOSTS",
    "MODELS",
    "OUTPUT_KEYS",
    "RESERVED_FIELDS",
    "SEEDREAM_RESOLUTIONS",
    "Catalogue",
    "FieldKind",
    "FieldSpec",
    "ImageInfo",
    "ImageRule",
    "Issue",
    "ModelInput",
    "ModelSpec",
    "OutputKind",
    "PublishedModel",
    "Severity",
    "SoftLimit",
    "built_in_models",
    "check_value",
    "define_model",
    "file_name",
    "get_model",
    "input_model",
    "load_catalogue",
    "python_name",
    "read_published",
    "read_schema_file",
    "spec_from_schema",
    "split_rule",
    "store_model",
    "unknown_model_issue",
    "url_problem",
    "use_models_dir",
    "validate",
    "validate_spec",
]
