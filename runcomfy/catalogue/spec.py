"""The shapes the model table is written in: fields, image rules, description-only limits.

Rule strings are kept exactly as the API pages spell them (`file_size_mb<`, `width/height≥`),
and are parsed here into a measured subject and a comparison.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rcbatch.runcomfy.imageinfo import ImageInfo

FieldKind = Literal["string", "integer", "number", "boolean", "array"]
OutputKind = Literal["image", "video"]
#: the keys of a result's `output` object, and the kind of file each holds
OUTPUT_KEYS: dict[str, OutputKind] = {"image": "image", "images": "image", "video": "video",
                                      "videos": "video"}
#: row keys that belong to rcbatch (the model id and the item id), not to the model's input
RESERVED_FIELDS = frozenset({"model", "id"})
Severity = Literal["error", "warning"]
Verdict = Literal["ok", "warning", "error"]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "≤": operator.le, ">=": operator.ge, "≥": operator.ge,
    "<": operator.lt, ">": operator.gt,
}

#: what each rule subject measures; file sizes are read both as MB (10^6) and MiB (2^20)
#: because the pages never say which they mean
_SUBJECTS: dict[str, Callable[[ImageInfo], tuple[float, ...] | None]] = {
    "file_size_mb": lambda i: None if i.size_bytes is None else (
        i.size_bytes / 1_000_000, i.size_bytes / 1_048_576),
    "width_pixels": lambda i: (float(i.width),),
    "height_pixels": lambda i: (float(i.height),),
    "shortest_side_pixels": lambda i: (float(i.shortest_side),),
    "longest_side_pixels": lambda i: (float(i.longest_side),),
    "width/height": lambda i: (i.aspect,),
}


def split_rule(rule: str) -> tuple[str, str]:
    """`"width/height≥"` -> `("width/height", "≥")`; ValueError for a rule we cannot measure."""
    for op in sorted(_OPERATORS, key=len, reverse=True):
        subject = rule[: -len(op)]
        if rule.endswith(op) and subject in _SUBJECTS:
            return subject, op
    raise ValueError(f"unknown image rule {rule!r}")


@dataclass(frozen=True)
class ImageRule:
    """One `validations` entry of an image field, verbatim from the page.

    `message_rule`/`message_value` record what the message itself says when it disagrees with
    the rule's value (Seedream: value 0.625, message "1:16 to 16:1"). Such a rule only errors
    when every reading fails; failing some readings is a warning (README: the API decides).
    """

    rule: str
    value: float
    message: str
    message_rule: str | None = None
    message_value: float | None = None

    def __post_init__(self) -> None:
        split_rule(self.rule)
        object.__setattr__(self, "value", float(self.value))  # the edit page writes "0.33"
        if self.message_rule is not None:
            split_rule(self.message_rule)
            object.__setattr__(self, "message_value", float(self.message_value or 0))

    @property
    def subject(self) -> str:
        """What is measured: `file_size_mb`, `width_pixels`, `width/height`, ..."""
        return split_rule(self.rule)[0]

    def measurable(self, info: ImageInfo) -> bool:
        """False when `info` lacks what this rule needs (a file size the server never sent)."""
        return _SUBJECTS[self.subject](info) is not None

    def check(self, info: ImageInfo) -> bool:
        """The rule exactly as written (MB = 10^6 bytes); True when it cannot be measured."""
        measured = _SUBJECTS[self.subject](info)
        return measured is None or _holds(self.rule, measured[0], self.value)

    def verdict(self, info: ImageInfo) -> Verdict:
        """Judge every reading: all hold -> "ok", none holds -> "error", a split -> "warning".

        Readings: the rule as written, what its message says, and for file sizes MB as 10^6
        or 2^20 bytes. An unmeasurable rule is "ok" here (preflight says it was not checked).
        """
        measured = _SUBJECTS[self.subject](info)
        if measured is None:
            return "ok"
        readings = [(self.rule, self.value)]
        if self.message_rule is not None and self.message_value is not None:
            readings.append((self.message_rule, self.message_value))
        outcomes = {_holds(rule, m, v) for rule, v in readings for m in measured}
        return "ok" if outcomes == {True} else "error" if outcomes == {False} else "warning"


def _holds(rule: str, measured: float, value: float) -> bool:
    return _OPERATORS[split_rule(rule)[1]](measured, value)


_NUMBER_WORDS = ("one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|"
                 "fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|single|pair")
_MENTIONS_NUMBER = re.compile(rf"\d|\b(?:{_NUMBER_WORDS})\b", re.IGNORECASE)


@dataclass(frozen=True)
class SoftLimit:
    """A limit written only in a field's description: breaking it is a warning, not an error.

    Rules: `length<` (fewer than `value` characters) and `mentions_number` (the text names a
    count, in digits or words).
    """

    rule: Literal["length<", "mentions_number"]
    value: float | None
    message: str

    def check(self, text: str) -> bool:
        """True when `text` keeps this limit."""
        if self.rule == "length<":
            return self.value is None or len(text) < self.value
        return bool(_MENTIONS_NUMBER.search(text))


@dataclass(frozen=True)
class FieldSpec:
    """One input field of one model, as the page's JSON schema declares it."""

    name: str
    kind: FieldKind
    required: bool = False
    default: Any = None  # the page's default (for required fields only an example)
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    item_format: str | None = None  # "image_uri": each item is an image URL
    image_rules: tuple[ImageRule, ...] = ()
    description: str = ""
    title: str = ""
    soft_limits: tuple[SoftLimit, ...] = ()
    image_formats: tuple[str, ...] | None = None  # from the description, e.g. ("JPEG", "PNG")


@dataclass(frozen=True)
class ModelSpec:
    """One hosted model: its endpoint id, its input fields and what it produces."""

    model_id: str
    fields: Mapping[str, FieldSpec] = field(hash=False)
    output_kind: OutputKind
    image_field: str | None  # the field holding input image URLs, if any
    has_seed: bool
    title: str = ""
    #: the `output` keys the model's output schema declares (`image`, `images`, `video`, ...)
    outputs: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        """Names of the required fields, in table order."""
        return tuple(name for name, spec in self.fields.items() if spec.required)


@dataclass(frozen=True)
class Issue:
    """One problem with one row: the field (e.g. `image_urls[1]`), a message, and a severity.

    Warnings never block a job; errors do.
    """

    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        label = "warning: " if self.severity == "warning" else ""
        return f"{self.field}: {label}{self.message}"


def is_finite_number(value: object) -> bool:
    """True for an int or a finite float (bool excluded: JSON true is not a number)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
