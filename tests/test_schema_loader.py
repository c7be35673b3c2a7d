"""The schema loader: published model pages and schemas become the catalogue's models."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rcbatch.errors import InputError
from rcbatch.runcomfy import catalogue
from rcbatch.runcomfy.catalogue import (
    BUILT_IN,
    MODELS,
    ImageInfo,
    file_name,
    load_catalogue,
    read_published,
    store_model,
    use_models_dir,
    validate,
    validate_spec,
)
from rcbatch.runcomfy.preflight import Probe, judge
from rcbatch.runcomfy.simulator import SimulatorConfig
from rcbatch.runcomfy.simulator.outputs import SIM_MODELS

API_DOCS = Path("/work/shared/runcomfy-api")
PAGES = {"bytedance/dreamina-4-0/text-to-image": "dreamina-4-0-text-to-image.txt",
         "bytedance/dreamina-4-0/edit": "dreamina-4-0-edit.txt",
         "bytedance/dreamina-3-0/image-to-video": "dreamina-3-0-image-to-video.txt",
         "bytedance/seedream-4-5/edit-sequential": "seedream-4-5-edit-sequential.txt"}
T2V = "acme/motion-2-1/text-to-video"
IMG = "https://cdn.example.com/a.png"

SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Input", "required": ["prompt"],
    "properties": {
        "prompt": {"title": "Prompt", "type": "string", "maxLength": 500, "default": "a boat"},
        "duration": {"type": "integer", "enum": [5, 10], "default": 5},
        "cfg_scale": {"type": "float", "minimum": 0, "maximum": 10, "default": 5},
        "reference_images": {
            "type": "array", "items": {"type": "string", "format": "image_uri"},
            "minItems": 1, "maxItems": 3,
            "validations": [
                {"validation_rule": "shortest_side_pixels>=", "validation_value": 300,
                 "validation_error": "Reference images must be at least 300 px."},
                {"validation_rule": "width/height>=", "validation_value": "0.4",
                 "validation_error": "The aspect ratio must be within [1/2, 2].",
                 "x-rcbatch": {"message_rule": "width/height>=", "message_value": "1/2"}}]},
        "seed": {"type": "integer", "default": -1},
    },
}
OUTPUT = {"output": {"type": "object", "properties": {"video": {"type": "string"}}}}


def page(schema: dict[str, Any] = SCHEMA, model_id: str = T2V,
         output: dict[str, Any] | None = OUTPUT) -> str:
    """A model page in the published layout: the curl call, then the two schema blocks."""
    text = (f"curl --request POST \\\n  --url https://model-api.runcomfy.net/v1/models/"
            f"{model_id} \\\n  --data '{{\"prompt\": \"x\"}}'\n\nInput schema\n\n"
            f"{json.dumps(schema, indent=2, ensure_ascii=False)}\n")
    if output is not None:
        text += f"\nOutput schema\n\n{json.dumps(output, indent=2)}\n"
    return text


def changed(path: str, value: Any) -> dict[str, Any]:
    """SCHEMA with one property's key set (`"cfg_scale.pattern"`) or removed (value None)."""
    schema = copy.deepcopy(SCHEMA)
    name, key = path.split(".", 1)
    if value is None:
        del schema["properties"][name][key]
    else:
        schema["properties"][name][key] = value
    return schema


# -- the published pages -----------------------------------------------------------------------

@pytest.mark.skipif(not API_DOCS.is_dir(), reason="the API pages are not on this machine")
@pytest.mark.parametrize("model_id", list(PAGES))
def test_each_page_reads_into_the_built_in_model(model_id: str) -> None:
    read = read_published((API_DOCS / PAGES[model_id]).read_text(encoding="utf-8"),
                          source=PAGES[model_id]).spec
    built_in = MODELS[model_id]
    assert (read.model_id, read.output_kind, read.image_field, read.has_seed) == (
        built_in.model_id, built_in.output_kind, built_in.image_field, built_in.has_seed)
    assert list(read.fields) == list(built_in.fields)
    for name, field in read.fields.items():
        shipped = built_in.fields[name]
        assert (field.kind, field.required, field.default, field.enum, field.minimum,
                field.maximum, field.max_length, field.min_items, field.max_items) == (
            shipped.kind, shipped.required, shipped.default, shipped.enum, shipped.minimum,
            shipped.maximum, shipped.max_length, shipped.min_items, shipped.max_items)
        assert [(r.rule, r.value, r.message) for r in field.image_rules] == [
            (r.rule, r.value, r.message) for r in shipped.image_rules]


@pytest.mark.skipif(not API_DOCS.is_dir(), reason="the API pages are not on this machine")
def test_the_italian_page_names_its_model_by_the_curl_url() -> None:
    text = (API_DOCS / "dreamina-4-0-text-to-image.it.txt").read_text(encoding="utf-8")
    assert read_published(text, source="it").spec.model_id == (
        "bytedance/dreamina-4-0/text-to-image")


def test_the_built_in_quirks_are_data_in_the_shipped_files() -> None:
    edit = MODELS["bytedance/dreamina-4-0/edit"].fields["image_urls"].image_rules[3]
    assert (edit.value, edit.message_value) == (0.33, 1 / 3)
    seedream = MODELS["bytedance/seedream-4-5/edit-sequential"]
    assert [r.message_rule for r in seedream.fields["images"].image_rules][5:] == [
        "width_pixels<=", "height_pixels<="]
    assert [s.rule for s in seedream.fields["prompt"].soft_limits] == ["length<",
                                                                       "mentions_number"]
    assert "width×height" in MODELS["bytedance/dreamina-4-0/text-to-image"].fields
    assert [m.model_id for m in BUILT_IN] == sorted(PAGES)


# -- a fifth model -----------------------------------------------------------------------------

def test_a_page_gives_a_model_that_validates_with_its_limits() -> None:
    spec = read_published(page(), source="page.txt").spec
    assert (spec.model_id, spec.output_kind, spec.outputs, spec.image_field, spec.has_seed) == (
        T2V, "video", ("video",), "reference_images", True)
    good = {"prompt": "p", "duration": 10, "cfg_scale": 10, "reference_images": [IMG] * 3}
    assert validate_spec(spec, good) == []
    [issue] = validate_spec(spec, {**good, "cfg_scale": 10.5})
    assert (issue.field, issue.message) == ("cfg_scale", "must be at most 10, got 10.5")
    [issue] = validate_spec(spec, {**good, "reference_images": [IMG] * 4})
    assert issue.message == "must have at most 3 items, got 4"
    [issue] = validate_spec(spec, {**good, "duration": 7})
    assert issue.message == "must be one of 5, 10; got 7"


def test_image_rules_of_a_fifth_model_use_its_messages_and_readings() -> None:
    field = read_published(page(), source="p").spec.fields["reference_images"]
    assert judge(field, "r[0]", Probe(IMG, info=ImageInfo(300, 500, 1000))) == []
    [small] = judge(field, "r[0]", Probe(IMG, info=ImageInfo(299, 500, 1000)))
    assert (small.severity, small.message.split(" (")[0]) == (
        "error", "Reference images must be at least 300 px.")
    [between] = judge(field, "r[0]", Probe(IMG, info=ImageInfo(450, 1000, 1000)))
    assert between.severity == "warning"  # 0.45: the rule's 0.4 admits, the message's 1/2 not
    [below] = judge(field, "r[0]", Probe(IMG, info=ImageInfo(390, 1000, 1000)))
    assert below.severity == "error"


def test_a_bare_schema_needs_an_id_and_an_output_kind() -> None:
    bare = json.dumps(SCHEMA)
    with pytest.raises(InputError, match="no model id"):
        read_published(bare, source="s.json")
    with pytest.raises(InputError, match="images or videos"):
        read_published(bare, source="s.json", model_id="acme/thing/run")
    spec = read_published(bare, source="s.json", model_id="acme/thing/run", output="image").spec
    assert spec.output_kind == "image" and spec.outputs == ("image", "images")
    assert read_published(bare, source="s", model_id=T2V).spec.output_kind == "video"


def test_the_stored_document_reads_back_to_the_same_model(tmp_path: Path) -> None:
    published = read_published(page(), source="p")
    path = store_model(published, tmp_path, catalogue=load_catalogue([]))
    assert path.name == file_name(T2V) == "acme--motion-2-1--text-to-video.json"
    again = load_catalogue([tmp_path])[T2V]
    assert again == published.spec
    assert dict(again.fields) == dict(published.spec.fields)


@pytest.mark.parametrize(("schema", "output", "reason"), [
    (changed("reference_images.validations", [{"validation_rule": "duration_s<",
                                               "validation_value": 3,
                                               "validation_error": "m"}]), OUTPUT,
     "unknown validation rule 'duration_s<'"),
    (changed("seed.type", "object"), OUTPUT, "type 'object' has no check"),
    (changed("prompt.pattern", "^a"), OUTPUT, "'pattern' cannot be checked"),
    (changed("prompt.minLength", 3), OUTPUT, "'minLength' cannot be checked"),
    (changed("cfg_scale.maxLength", 3), OUTPUT, "'maxLength' cannot be checked on a number"),
    (changed("reference_images.items", {"type": "integer"}), OUTPUT, "only lists of image"),
    (changed("prompt.validations", [{"validation_rule": "width_pixels<",
                                     "validation_value": 9, "validation_error": "m"}]), OUTPUT,
     "validations apply to image lists only"),
    (changed("duration.enum", ["5", "10"]), OUTPUT, "enum must be a non-empty list of integer"),
    (changed("cfg_scale.maximum", "ten"), OUTPUT, "maximum must be a number"),
    (changed("reference_images.validations", [{"validation_rule": "width_pixels<",
                                               "validation_value": "wide",
                                               "validation_error": "m"}]), OUTPUT,
     "validation_value: must be a number"),
    ({**SCHEMA, "required": ["prompt", "negative_prompt"]}, OUTPUT,
     "required names fields that do not exist: negative_prompt"),
    (SCHEMA, {"output": {"properties": {"audio": {"type": "string"}}}},
     "rcbatch downloads only image, images, video, videos; got audio"),
    (changed("seed.x-rcbatch", {"soft_limits": [{"rule": "odd"}]}), OUTPUT,
     "a soft limit is"),
])
def test_what_cannot_be_checked_is_refused_with_the_reason(schema: dict[str, Any],
                                                           output: dict[str, Any],
                                                           reason: str) -> None:
    with pytest.raises(InputError, match=r"p\.txt: ") as refused:
        read_published(page(schema, output=output), source="p.txt")
    assert reason in str(refused.value)


def test_a_page_without_an_input_schema_is_refused() -> None:
    with pytest.raises(InputError, match="no input schema found"):
        read_published("just some text { not json", source="x.txt")


# -- the catalogue and its folders -------------------------------------------------------------

def test_user_models_come_after_the_built_in_ones(tmp_path: Path) -> None:
    store_model(read_published(page(), source="p"), tmp_path, catalogue=load_catalogue([]))
    found = load_catalogue([tmp_path])
    assert list(found) == [*sorted(PAGES), T2V]
    assert (found.source(T2V), found.source(sorted(PAGES)[0])) == ("user", "built-in")
    assert found.file_of(T2V) == tmp_path / file_name(T2V)


def test_a_model_id_is_taken_once(tmp_path: Path) -> None:
    published = read_published(page(), source="p")
    store_model(published, tmp_path, catalogue=load_catalogue([tmp_path]))
    with pytest.raises(InputError, match="already in the catalogue"):
        store_model(published, tmp_path, catalogue=load_catalogue([tmp_path]))
    store_model(published, tmp_path, catalogue=load_catalogue([tmp_path]), replace=True)
    shadow = read_published(page(model_id="bytedance/dreamina-4-0/edit"), source="p")
    with pytest.raises(InputError, match="built-in model"):
        store_model(shadow, tmp_path, catalogue=load_catalogue([tmp_path]), replace=True)


def test_broken_files_in_the_folder_are_skipped_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    shadow = read_published(page(model_id="bytedance/dreamina-4-0/edit"), source="p")
    (tmp_path / "shadow.json").write_text(json.dumps(shadow.document), encoding="utf-8")
    found = load_catalogue([tmp_path])
    assert list(found) == sorted(PAGES)
    assert found.source("bytedance/dreamina-4-0/edit") == "built-in"
    assert sorted(p.name for p in found.broken) == ["bad.json", "shadow.json"]
    assert "is built in" in found.broken[tmp_path / "shadow.json"]


@pytest.fixture
def user_folder(tmp_path: Path) -> Iterator[Path]:
    """A models folder with the fifth model, loaded into the process's catalogue for a test."""
    store_model(read_published(page(), source="p"), tmp_path, catalogue=load_catalogue([]))
    use_models_dir(tmp_path)
    yield tmp_path
    for path in tmp_path.glob("*.json"):
        path.unlink()
    use_models_dir(tmp_path)  # reloading an empty folder takes its models out again
    assert list(MODELS) == sorted(PAGES)


def test_the_process_catalogue_serves_user_models_to_every_reader(user_folder: Path) -> None:
    assert validate(T2V, {"prompt": "p", "cfg_scale": 10}) == []
    [issue] = validate(T2V, {"prompt": "p", "cfg_scale": 11})
    assert issue.message == "must be at most 10, got 11"
    assert catalogue.input_model(T2V).model_validate({"prompt": "p"}).to_body() == {
        "prompt": "p"}


def test_the_simulator_serves_a_user_model_by_its_output_schema(user_folder: Path) -> None:
    model = SIM_MODELS[T2V]
    plan = model.plan({"prompt": "p"}, SimulatorConfig(video_bytes=10))
    assert (model.kind, plan.key, [f.kind for f in plan.files]) == ("video", "video", ["video"])
    assert T2V in SIM_MODELS and SIM_MODELS.get("acme/none/x") is None


def test_an_unknown_model_names_the_closest_ones_and_how_to_add_one(user_folder: Path) -> None:
    [issue] = validate("acme/motion-2-0/text-to-video", {})
    assert "(did you mean 'acme/motion-2-1/text-to-video'" in issue.message  # the closest first
    assert issue.message.endswith("run `rcbatch models add FILE`")
    assert "\n" not in issue.message
