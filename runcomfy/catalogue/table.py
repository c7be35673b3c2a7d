"""The process's model catalogue: the four built-in schema files, plus the user's models.

The built-in models are the published input schemas of /work/shared/runcomfy-api/*.txt,
verbatim, in `runcomfy/catalogue/models/*.json`; what the pages contradict or only say in prose
is data in their `x-rcbatch` blocks (see `schema.py`). `MODELS` is the one catalogue every
reader shares (validation, preflight, sweeps, the simulator); a command adds the user's models
folder to it with `use_models_dir` before reading rows.
"""

from __future__ import annotations

import os
from types import MappingProxyType

from rcbatch.runcomfy.catalogue.registry import Catalogue, built_in_models
from rcbatch.runcomfy.catalogue.spec import FieldSpec, ModelSpec, OutputKind

#: the models that ship with rcbatch, in file order
BUILT_IN: tuple[ModelSpec, ...] = built_in_models()

#: every catalogued model by its endpoint id (the path after /v1/models/): the built-in ones,
#: then those of the folders given to `use_models_dir`
MODELS: Catalogue = Catalogue(BUILT_IN)


def use_models_dir(*folders: str | os.PathLike[str]) -> Catalogue:
    """Add (or reload) the user's models from `folders` into `MODELS`; returns `MODELS`."""
    for folder in folders:
        MODELS.add_dir(folder)
    return MODELS


def _enum_of(model_id: str, field: str) -> tuple[str, ...]:
    enum = MODELS[model_id].fields[field].enum
    assert enum is not None, f"{model_id}.{field} lost its enum"
    return tuple(enum)


DREAMINA_SIZES = _enum_of("bytedance/dreamina-4-0/text-to-image", "width×height")
SEEDREAM_RESOLUTIONS = _enum_of("bytedance/seedream-4-5/edit-sequential", "resolution")


def define_model(model_id: str, output_kind: OutputKind, *fields: FieldSpec,
                 title: str = "") -> ModelSpec:
    """A ModelSpec written in code (tests, experiments); its image field and seed flag are
    read off its fields. Real models are schema files: see `schema.py`."""
    by_name = MappingProxyType({f.name: f for f in fields})
    image_fields = [f.name for f in fields if f.item_format == "image_uri"]
    return ModelSpec(model_id=model_id, fields=by_name, output_kind=output_kind,
                     image_field=image_fields[0] if image_fields else None,
                     has_seed="seed" in by_name, title=title)
