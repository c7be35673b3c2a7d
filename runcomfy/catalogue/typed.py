"""Typed pydantic input models, one per endpoint, built from the table.

For typed access to a row that `validate` has passed; `validate` stays the authority for
messages. `width×height` is reachable as `width_x_height` and serialised back under its alias.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from rcbatch.runcomfy.catalogue.spec import FieldSpec
from rcbatch.runcomfy.catalogue.validate import INT64_MAX, INT64_MIN, RESERVED_FIELDS, get_model

_BASE_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float,
                               "boolean": bool, "array": list[Any]}


class ModelInput(BaseModel):
    """Base of every generated input model: strict types, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_reserved(cls, data: Any) -> Any:
        # `model` and `id` are rcbatch's row keys, not part of the body sent to the API
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in RESERVED_FIELDS}
        return data

    def to_body(self) -> dict[str, Any]:
        """The JSON body for the API: the API's field names, only the fields that were given."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


def python_name(field_name: str) -> str:
    """A Python identifier for an API field name (`width×height` -> `width_x_height`)."""
    return re.sub(r"\W", "_", field_name.replace("×", "_x_"))


def _strict_int(value: Any) -> Any:
    # Literal[121, 241] alone would accept 121.0 and True; the wire wants a JSON integer
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _annotation(field: FieldSpec) -> Any:
    if field.kind == "array" and field.item_format == "image_uri":
        return list[str]
    if field.enum is None:
        return _BASE_TYPES[field.kind]
    choices: Any = Literal.__getitem__(field.enum)
    if field.kind == "integer":
        return Annotated[choices, BeforeValidator(_strict_int)]
    return choices


def _field_info(field: FieldSpec) -> Any:
    name = python_name(field.name)
    is_int = field.kind == "integer" and field.enum is None
    return Field(
        ... if field.required else field.default,
        alias=field.name if name != field.name else None,
        title=field.title or None, description=field.description or None,
        ge=field.minimum if field.minimum is not None else (INT64_MIN if is_int else None),
        le=field.maximum if field.maximum is not None else (INT64_MAX if is_int else None),
        min_length=field.min_items,
        max_length=field.max_items if field.kind == "array" else field.max_length,
        allow_inf_nan=False if field.kind == "number" else None,
    )


@functools.cache
def input_model(model_id: str) -> type[ModelInput]:
    """The pydantic model of `model_id`'s input body (KeyError for an unknown model)."""
    spec = get_model(model_id)
    definitions: dict[str, Any] = {
        python_name(f.name): (_annotation(f), _field_info(f)) for f in spec.fields.values()}
    class_name = "".join(part.title() for part in re.split(r"[^0-9a-zA-Z]+", model_id)) + "Input"
    return create_model(class_name, __base__=ModelInput, __doc__=f"Input of {model_id}.",
                        **definitions)
