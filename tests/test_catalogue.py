"""The model catalogue: the table matches the API pages, and `validate` reports every problem."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcbatch.runcomfy.catalogue import (
    INT64_MAX,
    INT64_MIN,
    MODELS,
    FieldSpec,
    ImageInfo,
    ImageRule,
    Issue,
    define_model,
    get_model,
    input_model,
    split_rule,
    validate,
    validate_spec,
)
from rcbatch.runcomfy.preflight import Probe, judge

T2I = "bytedance/dreamina-4-0/text-to-image"
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
SEEDREAM = "bytedance/seedream-4-5/edit-sequential"
API_DOCS = Path("/work/shared/runcomfy-api")
DOC_FILES = {T2I: "dreamina-4-0-text-to-image.txt", EDIT: "dreamina-4-0-edit.txt",
             I2V: "dreamina-3-0-image-to-video.txt", SEEDREAM: "seedream-4-5-edit-sequential.txt"}

IMG = "https://cdn.example.com/in/a.jpg"
VALID_ROWS: dict[str, dict[str, Any]] = {
    T2I: {"prompt": "a red fox", "width×height": "2560x1440(16:9)", "scale": 0.7,
          "force_single": True},
    EDIT: {"image_urls": [IMG, "https://cdn.example.com/in/b.png"], "prompt": "a boat",
           "width×height": "1024x1024(1:1)", "scale": 0.2, "force_single": False},
    I2V: {"image_urls": [IMG], "prompt": "waves", "number_of_frames": 241,
          "resolution": "1080P", "seed": 7},
    SEEDREAM: {"images": [IMG], "prompt": "Generate 3 images of a lighthouse",
               "resolution": "2K", "seed": 1, "sequential_image_generation_options": 3},
}


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]


def warnings_of(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "warning"]


def with_value(model_id: str, name: str, value: Any) -> dict[str, Any]:
    return {**VALID_ROWS[model_id], name: value}


def all_fields() -> list[tuple[str, FieldSpec]]:
    return [(m, f) for m, spec in MODELS.items() for f in spec.fields.values()]


def fields_with(attr: str) -> list[tuple[str, FieldSpec]]:
    return [(m, f) for m, f in all_fields() if getattr(f, attr) is not None]


def ids(cases: list[tuple[str, FieldSpec]]) -> list[str]:
    return [f"{m.split('/', 1)[1]}:{f.name}" for m, f in cases]


# -- the table against the pages ---------------------------------------------------------------

def load_schema(model_id: str) -> dict[str, Any]:
    text = (API_DOCS / DOC_FILES[model_id]).read_text(encoding="utf-8")
    start = text.index('{\n"type": "object"') if '{\n"type": "object"' in text else text.index(
        '{\n  "type": "object"')
    schema, _ = json.JSONDecoder().raw_decode(text, start)
    return schema


@pytest.mark.skipif(not API_DOCS.is_dir(), reason="the API pages are not on this machine")
@pytest.mark.parametrize("model_id", list(DOC_FILES))
def test_table_matches_the_page_schema(model_id: str) -> None:
    schema = load_schema(model_id)
    spec = get_model(model_id)
    assert list(spec.fields) == list(schema["properties"])
    assert set(spec.required) == set(schema["required"])
    kinds = {"string": "string", "integer": "integer", "float": "number", "boolean": "boolean",
             "array": "array"}
    for name, prop in schema["properties"].items():
        field = spec.fields[name]
        assert field.kind == kinds[prop["type"]]
        assert field.default == (tuple(prop["default"]) if isinstance(prop["default"], list)
                                 else prop["default"])
        assert field.enum == (tuple(prop["enum"]) if "enum" in prop else None)
        assert field.minimum == prop.get("minimum")
        assert field.maximum == prop.get("maximum")
        assert field.max_length == prop.get("maxLength")
        assert field.min_items == prop.get("minItems")
        assert field.max_items == prop.get("maxItems")
        assert field.item_format == prop.get("items", {}).get("format")
        assert field.description == prop.get("description", "")
        rules = [(r.rule, r.value, r.message) for r in field.image_rules]
        assert rules == [(v["validation_rule"], float(v["validation_value"]),
                          v["validation_error"]) for v in prop.get("validations", [])]


def test_the_traps_of_the_pages_are_kept() -> None:
    assert "width×height" in get_model(T2I).fields  # U+00D7, not the letter x
    assert get_model(EDIT).image_field == "image_urls"
    assert get_model(SEEDREAM).image_field == "images"
    assert "2048x2048(1:1)" in get_model(EDIT).fields["width×height"].enum  # type: ignore[operator]
    assert "2048x2048 (1:1)" in get_model(SEEDREAM).fields["resolution"].enum  # type: ignore[operator]
    aspect = get_model(SEEDREAM).fields["images"].image_rules[1]
    assert (aspect.rule, aspect.value) == ("width/height>", 0.625)
    assert aspect.message == "The aspect ratio range should be 1:16 to 16:1."


def test_per_model_facts() -> None:
    facts = {m: (s.output_kind, s.image_field, s.has_seed) for m, s in MODELS.items()}
    assert facts == {T2I: ("image", None, False), EDIT: ("image", "image_urls", False),
                     I2V: ("video", "image_urls", True), SEEDREAM: ("image", "images", True)}


def test_get_model_raises_key_error_naming_the_known_ids() -> None:
    with pytest.raises(KeyError, match="bytedance/dreamina-4-0/edit"):
        get_model("bytedance/nope")


def test_a_fifth_model_is_a_few_lines() -> None:
    spec = define_model("acme/tiny/upscale", "image",
                        FieldSpec("image_urls", "array", required=True, min_items=1,
                                  max_items=1, item_format="image_uri"),
                        FieldSpec("factor", "integer", default=2, enum=(2, 4)))
    assert (spec.image_field, spec.has_seed, spec.required) == ("image_urls", False,
                                                                 ("image_urls",))
    assert validate_spec(spec, {"image_urls": [IMG], "factor": 4}) == []
    assert [i.field for i in validate_spec(spec, {"factor": 3})] == ["factor", "image_urls"]


# -- valid rows --------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", list(VALID_ROWS))
def test_valid_rows_have_no_issues(model_id: str) -> None:
    assert validate(model_id, VALID_ROWS[model_id]) == []


@pytest.mark.parametrize("model_id", list(VALID_ROWS))
def test_only_required_fields_is_valid(model_id: str) -> None:
    row = {k: v for k, v in VALID_ROWS[model_id].items() if get_model(model_id).fields[k].required}
    assert validate(model_id, row) == []


def test_rcbatch_keys_model_and_id_are_not_input_fields() -> None:
    assert validate(T2I, {**VALID_ROWS[T2I], "model": T2I, "id": "x1"}) == []


# -- enums -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model_id", "field"), fields_with("enum"), ids=ids(fields_with("enum")))
def test_enum_first_and_last_accepted(model_id: str, field: FieldSpec) -> None:
    assert field.enum is not None
    for value in (field.enum[0], field.enum[-1]):
        assert validate(model_id, with_value(model_id, field.name, value)) == []


def near_miss(field: FieldSpec) -> Any:
    assert field.enum is not None
    if field.kind == "integer":
        return max(field.enum) + 1
    return field.enum[-1] + "!"


@pytest.mark.parametrize(("model_id", "field"), fields_with("enum"), ids=ids(fields_with("enum")))
def test_enum_near_miss_rejected_listing_the_allowed_values(model_id: str,
                                                           field: FieldSpec) -> None:
    assert field.enum is not None
    [issue] = validate(model_id, with_value(model_id, field.name, near_miss(field)))
    assert issue.field == field.name and issue.severity == "error"
    assert issue.message.startswith("must be one of ")
    assert all(repr(v) in issue.message for v in field.enum)


@pytest.mark.parametrize(("model_id", "name", "given", "wanted"), [
    (T2I, "width×height", "2048x2048 (1:1)", "2048x2048(1:1)"),
    (EDIT, "width×height", "4096×4096 (1:1)", "4096x4096(1:1)"),
    (SEEDREAM, "resolution", "2048x2048(1:1)", "2048x2048 (1:1)"),
    (I2V, "resolution", "720p", "720P"),
])
def test_size_enum_says_which_spelling_this_model_wants(model_id: str, name: str, given: str,
                                                        wanted: str) -> None:
    [issue] = validate(model_id, with_value(model_id, name, given))
    assert issue.message.endswith(f"(this model spells it {wanted!r})")


# -- numeric ranges, lengths, item counts ------------------------------------------------------

@pytest.mark.parametrize(("model_id", "field"), fields_with("minimum"),
                         ids=ids(fields_with("minimum")))
def test_minimum_is_inclusive(model_id: str, field: FieldSpec) -> None:
    assert field.minimum is not None
    assert validate(model_id, with_value(model_id, field.name, field.minimum)) == []
    below = field.minimum - 0.001
    [issue] = validate(model_id, with_value(model_id, field.name, below))
    assert (issue.field, issue.message) == (field.name, f"must be at least {field.minimum!r}, "
                                                        f"got {below!r}")


@pytest.mark.parametrize(("model_id", "field"), fields_with("maximum"),
                         ids=ids(fields_with("maximum")))
def test_maximum_is_inclusive(model_id: str, field: FieldSpec) -> None:
    assert field.maximum is not None
    assert validate(model_id, with_value(model_id, field.name, field.maximum)) == []
    above = field.maximum + 0.001
    [issue] = validate(model_id, with_value(model_id, field.name, above))
    assert (issue.field, issue.message) == (field.name, f"must be at most {field.maximum!r}, "
                                                        f"got {above!r}")


@pytest.mark.parametrize(("model_id", "field"), fields_with("max_length"),
                         ids=ids(fields_with("max_length")))
def test_max_length_boundary(model_id: str, field: FieldSpec) -> None:
    assert field.max_length == 800
    assert validate(model_id, with_value(model_id, field.name, "é" * 800)) == []
    [issue] = validate(model_id, with_value(model_id, field.name, "é" * 801))
    assert (issue.field, issue.message) == (field.name, "must be at most 800 characters, got 801")


def urls(count: int) -> list[str]:
    return [f"https://cdn.example.com/in/{n}.png" for n in range(count)]


@pytest.mark.parametrize(("model_id", "field"), fields_with("min_items"),
                         ids=ids(fields_with("min_items")))
def test_item_count_boundaries(model_id: str, field: FieldSpec) -> None:
    assert field.min_items == 1 and field.max_items is not None
    for count in (field.min_items, field.max_items):
        assert validate(model_id, with_value(model_id, field.name, urls(count))) == []
    [few] = validate(model_id, with_value(model_id, field.name, []))
    assert (few.field, few.message) == (field.name, "must have at least 1 item, got 0")
    [many] = validate(model_id, with_value(model_id, field.name, urls(field.max_items + 1)))
    noun = "item" if field.max_items == 1 else "items"
    assert many.message == f"must have at most {field.max_items} {noun}, got {field.max_items + 1}"


@pytest.mark.parametrize("model_id", [I2V, SEEDREAM])
def test_seed_must_fit_signed_64_bit(model_id: str) -> None:
    for seed in (INT64_MIN, -1, 0, INT64_MAX):
        assert validate(model_id, with_value(model_id, "seed", seed)) == []
    for seed in (INT64_MIN - 1, INT64_MAX + 1):
        [issue] = validate(model_id, with_value(model_id, "seed", seed))
        assert issue.field == "seed" and "signed 64-bit" in issue.message


# -- image URLs --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://cdn.example.com/a.png", "https://10.0.0.2:8443/a?x=1",
                                 "http://127.0.0.1:8000/a.png", "http://localhost/a.png",
                                 "http://[::1]:9000/a.png"])
def test_good_urls(url: str) -> None:
    assert validate(I2V, with_value(I2V, "image_urls", [url])) == []


@pytest.mark.parametrize("url", ["http://cdn.example.com/a.png", "ftp://cdn.example.com/a.png",
                                 "https:///a.png", "cdn.example.com/a.png",
                                 "data:image/png;base64,AAAA", "https://cdn.example.com/a b.png",
                                 "", "https://h:99999999/a.png"])
def test_bad_urls(url: str) -> None:
    [issue] = validate(EDIT, with_value(EDIT, "image_urls", [IMG, url]))
    assert issue.field == "image_urls[1]" and issue.severity == "error"


def test_loopback_http_can_be_refused() -> None:
    row = with_value(I2V, "image_urls", ["http://127.0.0.1:8000/a.png"])
    [issue] = validate(I2V, row, allow_loopback_http=False)
    assert issue.field == "image_urls[0]" and "https://" in issue.message


def test_list_item_must_be_a_string() -> None:
    [issue] = validate(SEEDREAM, with_value(SEEDREAM, "images", [IMG, 5]))
    assert (issue.field, issue.message) == ("images[1]", "must be an image URL string, got 5")


# -- types -------------------------------------------------------------------------------------

WRONG_VALUES: dict[str, list[Any]] = {
    "string": [5, None, ["a"], True, {"a": 1}],
    "integer": ["121", 121.0, True, None, 1.5],
    "number": ["0.5", True, False, None, [0.5]],
    "boolean": ["true", 1, 0, None, "false"],
    "array": [IMG, {"0": IMG}, None, 3],
}


@pytest.mark.parametrize(("model_id", "field"), all_fields(), ids=ids(all_fields()))
def test_wrong_types_are_rejected(model_id: str, field: FieldSpec) -> None:
    for value in WRONG_VALUES[field.kind]:
        [issue] = validate(model_id, with_value(model_id, field.name, value))
        assert issue.field == field.name and issue.message.startswith("must be ")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected(value: float) -> None:
    [issue] = validate(T2I, with_value(T2I, "scale", value))
    assert (issue.field, issue.message) == ("scale", f"must be a finite number, got {value!r}")


def test_null_for_an_optional_field_points_at_the_default() -> None:
    [issue] = validate(I2V, with_value(I2V, "seed", None))
    assert issue.message == "must be an integer, got null (leave the field out to use the " \
                            "default -1)"


def test_integer_scale_is_a_number() -> None:
    assert validate(T2I, with_value(T2I, "scale", 1)) == []


# -- unknown things, missing things, all at once -----------------------------------------------

@pytest.mark.parametrize(("model_id", "given", "hint"), [
    (T2I, "widthxheight", "width×height"),
    (T2I, "width_x_height", "width×height"),
    (SEEDREAM, "image_urls", "images"),
    (EDIT, "images", "image_urls"),
    (SEEDREAM, "width×height", "resolution"),
    (I2V, "promt", "prompt"),
    (SEEDREAM, "sequential_image_generation_option", "sequential_image_generation_options"),
])
def test_unknown_field_with_did_you_mean(model_id: str, given: str, hint: str) -> None:
    issues = validate(model_id, {**VALID_ROWS[model_id], given: "x"})
    [issue] = [i for i in issues if i.field == given]
    assert issue.severity == "error"
    assert f"unknown field for {model_id}; did you mean {hint!r}?" in issue.message


def test_unknown_field_without_a_close_match() -> None:
    [issue] = validate(T2I, {**VALID_ROWS[T2I], "negative_prompt": "x"})
    assert "did you mean" not in issue.message and "prompt, width×height" in issue.message


def test_seed_is_unknown_to_dreamina_4() -> None:
    [issue] = validate(T2I, {**VALID_ROWS[T2I], "seed": 3})
    assert issue.field == "seed" and issue.message.startswith("unknown field")


@pytest.mark.parametrize("model_id", ["bytedance/dreamina-5-0/edit", "", 3, None])
def test_unknown_model_lists_the_known_ids(model_id: Any) -> None:
    [issue] = validate(model_id, {"prompt": "x"})
    assert issue.field == "model"
    assert all(known in issue.message for known in MODELS)


def test_unknown_model_suggests_the_full_id() -> None:
    [issue] = validate("dreamina-4-0/edit", {})
    assert "did you mean 'bytedance/dreamina-4-0/edit'?" in issue.message


@pytest.mark.parametrize("model_id", list(MODELS))
def test_missing_required_fields(model_id: str) -> None:
    issues = validate(model_id, {})
    assert [(i.field, i.message) for i in issues] == [
        (name, "required field is missing") for name in get_model(model_id).required]


def test_every_problem_is_reported_at_once() -> None:
    row = {"images": ["http://example.com/a.png", IMG], "prompt": 5, "resolution": "8K",
           "seed": True, "sequential_image_generation_options": 0, "steps": 30}
    issues = validate(SEEDREAM, row)
    assert [i.field for i in issues] == ["images[0]", "prompt", "resolution", "seed",
                                         "sequential_image_generation_options", "steps"]
    assert all(i.severity == "error" for i in issues)


def test_a_row_that_is_not_an_object() -> None:
    [issue] = validate(T2I, ["prompt"])  # type: ignore[arg-type]
    assert issue.field == "row"


# -- description-only limits: warnings ---------------------------------------------------------

def test_i2v_prompt_under_800_is_a_description_warning() -> None:
    assert validate(I2V, with_value(I2V, "prompt", "a" * 799)) == []
    [issue] = validate(I2V, with_value(I2V, "prompt", "a" * 800))
    assert issue.severity == "warning" and issue.field == "prompt"
    assert issue.message.startswith("The prompt should be less than 800 characters.")


def test_seedream_prompt_under_600_is_a_description_warning() -> None:
    assert validate(SEEDREAM, with_value(SEEDREAM, "prompt", "2 " + "a" * 597)) == []
    issues = validate(SEEDREAM, with_value(SEEDREAM, "prompt", "2 " + "a" * 598))
    assert [(i.severity, i.message[:46]) for i in issues] == [
        ("warning", "The prompt should be less than 600 characters.")]


@pytest.mark.parametrize(("prompt", "warns"), [
    ("Generate 3 images of a cat", False), ("two views of a cat", False),
    ("a single portrait", False), ("a cat on a mat", True), ("someone at the window", True),
])
def test_seedream_prompt_should_name_a_count(prompt: str, warns: bool) -> None:
    issues = validate(SEEDREAM, with_value(SEEDREAM, "prompt", prompt))
    assert errors(issues) == []
    assert bool(warnings_of(issues)) is warns
    if warns:
        assert issues[0].message.startswith("Your prompt needs to contain the number of images")


def test_empty_prompt_is_only_a_warning() -> None:
    [issue] = validate(T2I, with_value(T2I, "prompt", "  "))
    assert (issue.severity, issue.message) == ("warning", "is empty")


# -- image rules on a fake ImageInfo -----------------------------------------------------------

SCALE = {"file_size_mb": 1_000_000, "width/height": 10_000, "width_pixels": 1,
         "height_pixels": 1, "shortest_side_pixels": 1, "longest_side_pixels": 1}


def image_with(subject: str, knob: int) -> ImageInfo:
    """A 1000×1000 1 MB image with only `subject` changed: bytes, pixels, or width at h=10000."""
    if subject == "file_size_mb":
        return ImageInfo(1000, 1000, knob)
    if subject == "width/height":
        return ImageInfo(knob, 10_000, 1_000_000)
    return {"width_pixels": ImageInfo(knob, 1000, 1_000_000),
            "height_pixels": ImageInfo(1000, knob, 1_000_000),
            "shortest_side_pixels": ImageInfo(knob, 2 * knob, 1_000_000),
            "longest_side_pixels": ImageInfo(knob, knob // 2, 1_000_000)}[subject]


def readings(rule: ImageRule) -> list[tuple[str, float]]:
    """Every reading of `rule`: as written, as its message says, and MB read as MiB."""
    found = [(rule.rule, rule.value)]
    if rule.message_rule is not None and rule.message_value is not None:
        found.append((rule.message_rule, rule.message_value))
    if rule.subject == "file_size_mb":
        found.append((rule.rule, rule.value * 1_048_576 / 1_000_000))
    return found


def boundary(subject: str, rule: str, value: float) -> tuple[int, int]:
    """(last knob that keeps `rule value`, first knob that breaks it), found by stepping."""
    reading = ImageRule(rule, value, "m")
    centre = int(value * SCALE[subject])
    for knob in range(centre - 3, centre + 4):
        here, after = (reading.check(image_with(subject, k)) for k in (knob, knob + 1))
        if here != after:
            return (knob, knob + 1) if here else (knob + 1, knob)
    raise AssertionError(f"no boundary for {rule}{value}")


IMAGE_RULES = [(m, f, r) for m, f in all_fields() for r in f.image_rules]


def image_issues(field: FieldSpec, info: ImageInfo, rule: ImageRule) -> list[Issue]:
    issues = judge(field, f"{field.name}[0]", Probe("https://x/a.png", info=info))
    return [i for i in issues if i.message.startswith(rule.message)]


@pytest.mark.parametrize(("model_id", "field", "rule"), IMAGE_RULES,
                         ids=[f"{m.split('/', 1)[1]}:{r.rule}{r.value:g}"
                              for m, _f, r in IMAGE_RULES])
def test_image_rule_boundary(model_id: str, field: FieldSpec, rule: ImageRule) -> None:
    pairs = [boundary(rule.subject, r, v) for r, v in readings(rule)]
    upper = split_rule(rule.rule)[1] in ("<", "<=", "≤")
    # accepted by every reading: no issue at all
    good = image_with(rule.subject, (min if upper else max)(ok for ok, _ in pairs))
    assert rule.check(good) and rule.verdict(good) == "ok"
    assert image_issues(field, good, rule) == []
    # broken by every reading: an error with the documented message
    hard = image_with(rule.subject, (max if upper else min)(bad for _, bad in pairs))
    assert rule.verdict(hard) == "error"
    [issue] = image_issues(field, hard, rule)
    assert (issue.field, issue.severity) == (f"{field.name}[0]", "error")
    # each reading's own boundary: accepted (perhaps with a warning), and the next value
    # rejected by that reading: a warning unless every reading rejects it
    for ok, bad in pairs:
        assert rule.verdict(image_with(rule.subject, ok)) != "error"
        expected = "error" if image_with(rule.subject, bad) == hard else "warning"
        assert rule.verdict(image_with(rule.subject, bad)) == expected
    ok, bad = pairs[0]  # `check` is the rule as written
    assert rule.check(image_with(rule.subject, ok))
    assert not rule.check(image_with(rule.subject, bad))


def test_file_size_boundary_in_bytes() -> None:
    rule = get_model(I2V).fields["image_urls"].image_rules[0]  # file_size_mb< 4.7
    assert rule.verdict(ImageInfo(9, 9, 4_699_999)) == "ok"
    assert rule.verdict(ImageInfo(9, 9, 4_700_000)) == "warning"  # 4.7 MB, but 4.48 MiB
    assert rule.verdict(ImageInfo(9, 9, 4_928_307)) == "warning"
    assert rule.verdict(ImageInfo(9, 9, 4_928_308)) == "error"  # over 4.7 MiB too


def test_edit_aspect_between_0_33_and_one_third_only_warns() -> None:
    field = get_model(EDIT).fields["image_urls"]
    assert image_issues(field, ImageInfo(3334, 10_000, 1000), field.image_rules[3]) == []
    for width in (3330, 3300):  # width/height 0.333 and 0.33: the value admits, 1/3 does not
        [issue] = image_issues(field, ImageInfo(width, 10_000, 1000), field.image_rules[3])
        assert issue.severity == "warning"
    [issue] = image_issues(field, ImageInfo(3299, 10_000, 1000), field.image_rules[3])
    assert issue.severity == "error"


def test_seedream_6000_pixels_only_warns() -> None:
    field = get_model(SEEDREAM).fields["images"]
    rule = field.image_rules[5]
    assert [i.severity for i in image_issues(field, ImageInfo(6000, 5000, 1000), rule)] == [
        "warning"]
    assert [i.severity for i in image_issues(field, ImageInfo(6001, 5000, 1000), rule)] == [
        "error"]


def test_seedream_aspect_between_the_value_and_the_message_only_warns() -> None:
    field = get_model(SEEDREAM).fields["images"]
    rule = field.image_rules[1]
    [warn] = image_issues(field, ImageInfo(500, 1000, 1000), rule)  # 0.5: inside 1:16, below 0.625
    assert warn.severity == "warning" and "the API decides" in warn.message
    [err] = image_issues(field, ImageInfo(50, 1000, 1000), rule)  # 0.05: below 1:16
    assert err.severity == "error"
    assert err.message == "The aspect ratio range should be 1:16 to 16:1. (got 50×1000 px, " \
                          "width/height 0.050)"


def test_unknown_file_size_is_not_checked_but_said() -> None:
    field = get_model(I2V).fields["image_urls"]
    issues = judge(field, "image_urls[0]", Probe("https://x/a.png", info=ImageInfo(800, 600)))
    assert [(i.severity, i.message[:35]) for i in issues] == [
        ("warning", "File size must be less than 4.7 MB.")]


# -- typed models ------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", list(VALID_ROWS))
def test_input_model_round_trips_a_valid_row(model_id: str) -> None:
    model = input_model(model_id)
    typed = model.model_validate(VALID_ROWS[model_id])
    assert typed.to_body() == VALID_ROWS[model_id]
    assert list(typed.to_body()) == list(VALID_ROWS[model_id])


def test_input_model_gives_typed_access_to_width_x_height() -> None:
    typed = input_model(T2I).model_validate({**VALID_ROWS[T2I], "model": T2I, "id": "a"})
    assert typed.width_x_height == "2560x1440(16:9)"  # type: ignore[attr-defined]
    assert typed.to_body()["width×height"] == "2560x1440(16:9)"
    defaults = input_model(T2I).model_validate({"prompt": "p"})
    assert (defaults.scale, defaults.force_single) == (0.5, False)  # type: ignore[attr-defined]
    assert defaults.to_body() == {"prompt": "p"}


@pytest.mark.parametrize(("model_id", "bad"), [
    (T2I, {"prompt": "p", "scale": 1.5}), (T2I, {"prompt": "p", "scale": math.nan}),
    (T2I, {"prompt": "p", "widthxheight": "1024x1024(1:1)"}), (T2I, {"prompt": "x" * 801}),
    (I2V, {"image_urls": [IMG], "prompt": "p", "number_of_frames": 121.0}),
    (I2V, {"image_urls": [IMG, IMG], "prompt": "p"}),
    (SEEDREAM, {"images": [IMG], "prompt": "p", "sequential_image_generation_options": True}),
    (SEEDREAM, {"images": [IMG], "prompt": "p", "sequential_image_generation_options": 2,
                "seed": INT64_MAX + 1}),
])
def test_input_model_rejects_what_validate_rejects(model_id: str, bad: dict[str, Any]) -> None:
    assert errors(validate(model_id, bad))
    with pytest.raises(pydantic.ValidationError):
        input_model(model_id).model_validate(bad)


# -- never raises ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)
FIELD_NAMES = st.sampled_from(sorted({f.name for _m, f in all_fields()} | {"model", "id"}))


@settings(max_examples=300, deadline=None)
@given(model_id=st.sampled_from([*MODELS, "x/y"]) | st.text(max_size=20),
       row=st.dictionaries(FIELD_NAMES | st.text(max_size=12), JSON, max_size=8))
def test_validate_never_raises(model_id: str, row: dict[str, Any]) -> None:
    issues = validate(model_id, row)
    assert all(isinstance(i, Issue) and i.field and i.message for i in issues)


@settings(max_examples=100, deadline=None)
@given(row=JSON)
def test_validate_never_raises_on_non_objects(row: Any) -> None:
    assert isinstance(validate(SEEDREAM, row), list)
