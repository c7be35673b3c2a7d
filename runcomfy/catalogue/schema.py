"""Reading a model's published input schema into a ModelSpec: the one way models are defined.

The input is what RunComfy publishes per model: a saved API page (its "Input schema" and
"Output schema" JSON blocks, the endpoint read off the curl URL) or the bare input-schema JSON.
What the page leaves unsaid or says twice lives beside the schema in `x-rcbatch` blocks, never
in code:

- top level: `model_id`, `title`, `output` (`image` or `video`: the published output schema
  lists every key for every model, so it rarely tells);
- a property: `soft_limits` (limits only written in the description: warnings) and
  `image_formats` (e.g. `["JPEG", "PNG"]`);
- a `validations` entry: `message_rule`/`message_value`, what its message says when it
  contradicts the rule (`"1/3"` and other fractions allowed); breaking only one reading warns.

Anything the validator has no check for (an unknown type, rule, keyword or output key) is
refused with the reason: a limit rcbatch would silently skip is worse than no model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from rcbatch.errors import InputError
from rcbatch.runcomfy.catalogue.spec import (
    OUTPUT_KEYS,
    RESERVED_FIELDS,
    FieldKind,
    FieldSpec,
    ImageRule,
    ModelSpec,
    OutputKind,
    SoftLimit,
    split_rule,
)

EXTENSION = "x-rcbatch"
#: published type names -> the validator's kinds (the pages write `float` for numbers)
KINDS: dict[str, FieldKind] = {"string": "string", "integer": "integer", "number": "number",
                               "float": "number", "boolean": "boolean", "array": "array"}
#: property keywords that carry no rule (read for display, or ignored)
_INERT_KEYS = frozenset({"title", "description", "default", "examples", "type", "items",
                         "validations", EXTENSION})
_RULE_KEYS = {"enum": "enum", "minimum": "minimum", "maximum": "maximum",
              "maxLength": "max_length", "minItems": "min_items", "maxItems": "max_items"}
#: which keywords each kind can check
_ALLOWED_RULES: dict[str, frozenset[str]] = {
    "string": frozenset({"enum", "maxLength"}),
    "integer": frozenset({"enum", "minimum", "maximum"}),
    "number": frozenset({"enum", "minimum", "maximum"}),
    "boolean": frozenset({"enum"}),
    "array": frozenset({"minItems", "maxItems"}),
}
_ITEM_FORMATS = frozenset({"image_uri"})
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)+")
_ENDPOINT = re.compile(r"/v1/models/(" + MODEL_ID.pattern + ")")


@dataclass(frozen=True)
class PublishedModel:
    """A model read from its published schema: the spec, and the document to store for it.

    `document` is the input schema with the decided `model_id` and `output` written into its
    top-level `x-rcbatch` block, so that reading it again gives the same spec.
    """

    spec: ModelSpec
    document: Mapping[str, Any]


def read_published(text: str, *, source: str, model_id: str | None = None,
                   output: OutputKind | None = None) -> PublishedModel:
    """Read a saved model page or a bare input-schema JSON (InputError naming why when it cannot).

    `model_id` and `output` override what the text says (the bare JSON names neither unless
    its `x-rcbatch` block does).
    """
    schema, output_schema = find_schemas(text, source)
    extension = dict(_mapping(schema.get(EXTENSION, {}), f"{source}: {EXTENSION}"))
    model_id = model_id or extension.get("model_id") or _endpoint_of(text)
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
        raise InputError(f"{source}: no model id: the page names no /v1/models/... endpoint "
                            f"and the schema has no {EXTENSION}.model_id (pass --id MODEL)"
                            if model_id is None else f"{source}: bad model id {model_id!r}")
    keys = output_keys(output_schema, source) if output_schema is not None else None
    kind = decide_output(model_id, output or extension.get("output"), keys, source)
    extension.update(model_id=model_id, output=kind)
    if keys is not None:
        extension["outputs"] = [k for k in keys if OUTPUT_KEYS[k] == kind]
    document = {**schema, EXTENSION: extension}
    return PublishedModel(spec_from_schema(document, source=source, outputs=keys), document)


def find_schemas(text: str, source: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The input schema (an object with `properties`) and the output schema (`output`) in text."""
    found = list(_json_objects(text))
    inputs = [o for o in found if "properties" in o]
    outputs = [o for o in found if "output" in o and "properties" not in o]
    if not inputs:
        raise InputError(f"{source}: no input schema found (a JSON object with "
                            f"\"properties\"); save the model's API page or its input schema")
    return inputs[0], outputs[0] if outputs else None


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object in `text`: the whole text, or the blocks of a page."""
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        return [whole]
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = text.find("{", end)
    return found


def _endpoint_of(text: str) -> str | None:
    match = _ENDPOINT.search(text)
    return match.group(1) if match else None


def output_keys(output_schema: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The keys of the published output schema's `output.properties` (all must be known)."""
    where = f"{source}: output schema"
    block = _mapping(output_schema.get("output"), f"{where}: output")
    keys = tuple(_mapping(block.get("properties"), f"{where}: output.properties"))
    unknown = [k for k in keys if k not in OUTPUT_KEYS]
    if unknown or not keys:
        raise InputError(f"{where}: rcbatch downloads only {', '.join(OUTPUT_KEYS)}; "
                            f"got {', '.join(unknown) or 'nothing'}")
    return keys


def decide_output(model_id: str, declared: Any, keys: tuple[str, ...] | None,
                  source: str) -> OutputKind:
    """Image or video: as declared, else as the output schema says, else as the id says."""
    kinds = {OUTPUT_KEYS[k] for k in keys or ()}
    if declared is not None:
        if declared not in ("image", "video") or (kinds and declared not in kinds):
            raise InputError(f"{source}: output {declared!r} is not one of "
                                f"{' or '.join(sorted(kinds or {'image', 'video'}))}")
        return "image" if declared == "image" else "video"
    if len(kinds) == 1:
        return "image" if kinds == {"image"} else "video"
    words = set(re.split(r"[^a-z]+", model_id.rsplit("/", 1)[-1].lower()))
    if "video" in words:
        return "video"
    if words & {"image", "edit", "upscale", "img"}:
        return "image"
    raise InputError(f"{source}: cannot tell whether {model_id} makes images or videos; "
                        f"pass --output image|video (or set {EXTENSION}.output)")


def spec_from_schema(schema: Mapping[str, Any], *, source: str,
                     outputs: tuple[str, ...] | None = None) -> ModelSpec:
    """The ModelSpec of an input schema whose `x-rcbatch` names the model id and output kind."""
    extension = _mapping(schema.get(EXTENSION, {}), f"{source}: {EXTENSION}")
    model_id, kind = extension.get("model_id"), extension.get("output")
    if not isinstance(model_id, str) or kind not in ("image", "video"):
        raise InputError(f"{source}: {EXTENSION} must name model_id and output")
    if schema.get("type") != "object":
        raise InputError(f"{source}: the input schema's type must be \"object\", got "
                            f"{schema.get('type')!r}")
    properties = _mapping(schema.get("properties"), f"{source}: properties")
    required = _required(schema, properties, source)
    fields = [field_from_property(name, prop, required=name in required,
                                  where=f"{source}: {name}")
              for name, prop in properties.items()]
    by_name = MappingProxyType({f.name: f for f in fields})
    images = [f.name for f in fields if f.item_format == "image_uri"]
    declared = outputs or _outputs_of(extension, source)
    wanted = tuple(k for k in declared or OUTPUT_KEYS if OUTPUT_KEYS[k] == kind)
    return ModelSpec(model_id=model_id, fields=by_name, output_kind=kind,
                     image_field=images[0] if images else None, has_seed="seed" in by_name,
                     title=str(extension.get("title", "")), outputs=wanted)


def _outputs_of(extension: Mapping[str, Any], source: str) -> tuple[str, ...]:
    keys = extension.get("outputs", [])
    if not isinstance(keys, list) or not all(k in OUTPUT_KEYS for k in keys):
        raise InputError(f"{source}: {EXTENSION}.outputs must list output keys "
                         f"({', '.join(OUTPUT_KEYS)})")
    return tuple(keys)


def _required(schema: Mapping[str, Any], properties: Mapping[str, Any],
              source: str) -> frozenset[str]:
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise InputError(f"{source}: required must be a list of field names")
    missing = [r for r in required if r not in properties]
    if missing:
        raise InputError(f"{source}: required names fields that do not exist: "
                            f"{', '.join(missing)}")
    return frozenset(required)


def field_from_property(name: str, prop: Any, *, required: bool, where: str) -> FieldSpec:
    """One FieldSpec from one `properties` entry; InputError naming what cannot be checked."""
    prop = _mapping(prop, where)
    if not name or name in RESERVED_FIELDS:
        raise InputError(f"{where}: the field name {name!r} is rcbatch's own row key")
    given = prop.get("type")
    kind = KINDS.get(given) if isinstance(given, str) else None
    if kind is None:
        raise InputError(f"{where}: type {given!r} has no check in rcbatch "
                            f"(known: {', '.join(KINDS)})")
    _refuse_unchecked(kind, prop, where)
    rules = {_RULE_KEYS[k]: v for k, v in prop.items() if k in _RULE_KEYS}
    _check_rule_values(kind, rules, where)
    extension = _mapping(prop.get(EXTENSION, {}), f"{where}: {EXTENSION}")
    return FieldSpec(
        name, kind, required=required, default=_frozen(prop.get("default")),
        enum=tuple(rules["enum"]) if "enum" in rules else None,
        minimum=rules.get("minimum"), maximum=rules.get("maximum"),
        max_length=rules.get("max_length"), min_items=rules.get("min_items"),
        max_items=rules.get("max_items"), item_format=_item_format(kind, prop, where),
        image_rules=tuple(_image_rule(v, f"{where}: validations[{i}]")
                          for i, v in enumerate(_list(prop.get("validations", []), where))),
        description=str(prop.get("description", "")), title=str(prop.get("title", "")),
        soft_limits=tuple(_soft_limit(s, f"{where}: soft_limits")
                          for s in _list(extension.get("soft_limits", []), where)),
        image_formats=_formats(extension.get("image_formats"), where),
    )


def _refuse_unchecked(kind: str, prop: Mapping[str, Any], where: str) -> None:
    for key in prop:
        if key in _INERT_KEYS or key.startswith("x-") or key in _ALLOWED_RULES[kind]:
            continue
        raise InputError(f"{where}: {key!r} cannot be checked on a {kind} field")
    if prop.get("validations") and kind != "array":
        raise InputError(f"{where}: validations apply to image lists only")


def _check_rule_values(kind: str, rules: Mapping[str, Any], where: str) -> None:
    number = (int,) if kind == "integer" else (int, float)
    for key in ("minimum", "maximum"):
        if key in rules and not _is(rules[key], number):
            raise InputError(f"{where}: {key} must be a number, got {rules[key]!r}")
    for key in ("max_length", "min_items", "max_items"):
        if key in rules and not (_is(rules[key], (int,)) and rules[key] >= 0):
            raise InputError(f"{where}: {key} must be a whole number >= 0")
    enum = rules.get("enum")
    if enum is not None:
        types = {"string": (str,), "integer": (int,), "number": (int, float),
                 "boolean": (bool,)}[kind]
        if not isinstance(enum, list) or not enum or not all(
                isinstance(v, bool) if kind == "boolean" else _is(v, types) for v in enum):
            raise InputError(f"{where}: enum must be a non-empty list of {kind} values")


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def _item_format(kind: str, prop: Mapping[str, Any], where: str) -> str | None:
    if kind != "array":
        return None
    items = _mapping(prop.get("items"), f"{where}: items")
    fmt = items.get("format")
    if items.get("type") != "string" or fmt not in _ITEM_FORMATS or set(items) - {
            "type", "format"}:
        raise InputError(f"{where}: only lists of image URLs (items {{\"type\": \"string\", "
                            f"\"format\": \"image_uri\"}}) can be checked, got {dict(items)}")
    return str(fmt)


def _image_rule(entry: Any, where: str) -> ImageRule:
    entry = _mapping(entry, where)
    rule, message = entry.get("validation_rule"), entry.get("validation_error")
    if not isinstance(rule, str) or not isinstance(message, str):
        raise InputError(f"{where}: needs validation_rule and validation_error strings")
    _rule_name(rule, where)
    value = number_of(entry.get("validation_value"), f"{where}: validation_value")
    extension = _mapping(entry.get(EXTENSION, {}), f"{where}: {EXTENSION}")
    message_rule = extension.get("message_rule")
    if message_rule is None:
        return ImageRule(rule, value, message)
    _rule_name(message_rule, f"{where}: {EXTENSION}.message_rule")
    return ImageRule(rule, value, message, message_rule,
                     number_of(extension.get("message_value"), f"{where}: message_value"))


def _rule_name(rule: Any, where: str) -> None:
    try:
        split_rule(rule)
    except (ValueError, TypeError):
        raise InputError(f"{where}: unknown validation rule {rule!r}; rcbatch can measure "
                            f"file_size_mb, width_pixels, height_pixels, shortest_side_pixels, "
                            f"longest_side_pixels and width/height with < <= > >= ≤ ≥") from None


def number_of(value: Any, where: str) -> float:
    """A rule value: a JSON number, or a string such as "0.33", "3" or "1/3"."""
    if _is(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            pass
    raise InputError(f"{where}: must be a number, got {value!r}")


def _soft_limit(entry: Any, where: str) -> SoftLimit:
    entry = _mapping(entry, where)
    rule, message = entry.get("rule"), entry.get("message")
    if rule not in ("length<", "mentions_number") or not isinstance(message, str):
        raise InputError(f"{where}: a soft limit is {{rule: length< or mentions_number, "
                            f"value, message}}, got {dict(entry)}")
    value = entry.get("value")
    return SoftLimit(rule, None if value is None else number_of(value, where), message)


def _formats(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: image_formats must be a list of names like \"JPEG\"")
    return tuple(v.upper() for v in value)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: must be a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(f"{where}: must be a JSON list, got {type(value).__name__}")
    return value
