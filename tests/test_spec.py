"""Rows to validated items: the bad/good corpus, ids, duplicates, problem lines, fuzzing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcbatch.errors import Problem, ValidationFailed
from rcbatch.producer.reader import Row
from rcbatch.producer.spec import ItemSpec, check_rows, read_and_check, stable_id
from rcbatch.runcomfy import catalogue

DATA = Path(__file__).parent / "data"
GOOD, BAD = DATA / "good", DATA / "bad"
T2I = "bytedance/dreamina-4-0/text-to-image"
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
SEQ = "bytedance/seedream-4-5/edit-sequential"
E1 = "https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/usecase5-1-1-input.jpg"
E2 = "https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/usecase5-1-2-input.jpg"
S = "https://playgrounds-storage-public.runcomfy.net/tools/7250/media-files/input-1-{}.png"

#: bad file -> every problem it must give, as (line, field, text the message contains)
BAD_CASES: dict[str, list[tuple[int, str, str]]] = {
    "unclosed_quote.csv": [(3, "(row)", "never closed")],
    "stray_quote.csv": [(2, "(row)", "bad quoting")],
    "invalid_utf8.jsonl": [(2, "(row)", "not valid UTF-8")],
    "invalid_utf8.csv": [(3, "(row)", "not valid UTF-8")],
    "utf16.csv": [(1, "(file)", "UTF-16")],
    "empty.csv": [(1, "(file)", "the file is empty")],
    "empty.jsonl": [(1, "(file)", "the file is empty")],
    "header_only.csv": [(1, "(file)", "header but no rows")],
    "bad_header.csv": [(1, "(header)", "column 3 has no name"),
                       (1, "prompt", "duplicate column name (columns 2 and 4)")],
    "unknown_column.csv": [(2, "promt", "unknown field for " + T2I + "; did you mean 'prompt'?"),
                           (2, "prompt", "required field is missing")],
    "missing_model.jsonl": [(1, "model", "missing")],
    "unknown_model.jsonl": [(1, "model", "unknown model 'bytedance/dreamina-9-9/text-to-image'")],
    "wrong_types.csv": [(2, "scale", "expected a number, got 'abc'"),
                        (2, "force_single", "expected a boolean"),
                        (3, "number_of_frames", "expected an integer, got '1.5'")],
    "wrong_types.jsonl": [(1, "scale", "must be a number, got the string '0.5'"),
                          (2, "number_of_frames", "must be an integer, got 121.5")],
    "enum_violation.jsonl": [(1, "width×height", "must be one of '1024x1024(1:1)', ")],
    "range_violation.jsonl": [(1, "scale", "must be at most 1, got 1.5")],
    "nan.jsonl": [(1, "scale", "NaN"), (2, "scale", "NaN"), (3, "scale", "NaN")],
    "duplicate_ids.jsonl": [(2, "id", "duplicate id 'cat': already used at {dir}/"
                                      "duplicate_ids.jsonl:1")],
    "duplicate_input.csv": [(3, "(row)", "same input as {dir}/duplicate_input.csv:2; give each "
                                         "an id or use a sweep with repeat")],
    "duplicate_keys.jsonl": [(1, "prompt", "duplicate key")],
    "bad_id.jsonl": [(1, "id", "may use only letters A-Z and a-z, digits 0-9, '.', '_' and '-'")],
    "http_image.jsonl": [(1, "image_urls[0]", "must be an https:// URL")],
    "not_url_image.jsonl": [(1, "image_urls[0]", "must be an https:// URL")],
    "json_array.jsonl": [(1, "(row)", "expected a JSON object, got an array")],
    "json_array_pretty.jsonl": [(1, "(file)", "JSON array")],
    "not_object.jsonl": [(2, "(row)", "got a number"), (3, "(row)", "got a string")],
    "not_json.jsonl": [(2, "(row)", "not valid JSON")],
    "too_many_cells.csv": [(2, "(row)", "the row has 3 cells but the header has 2")],
    "too_few_cells.csv": [(2, "(row)", "the row has 2 cells but the header has 3")],
    "unsupported.txt": [(1, "(file)", "unsupported file type '.txt'")],
}


def test_every_bad_file_has_a_case() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_CASES)


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_file_gives_one_line_problems_at_the_right_place(name: str) -> None:
    path = BAD / name
    result = read_and_check([path])
    expected = BAD_CASES[name]
    assert [(p.line, p.field) for p in result.problems] == [(ln, fd) for ln, fd, _ in expected]
    for problem, (_line, _field, text) in zip(result.problems, expected, strict=True):
        assert text.format(dir=BAD) in problem.message
        assert problem.file == str(path)
        assert str(problem) == f"{path}:{problem.line}: {problem.field}: {problem.message}"
        assert "\n" not in str(problem)
        assert problem.message.strip()


def test_a_10_mb_line_is_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    with open(path, "wb") as fh:
        fh.write(f"model,prompt\n{T2I},".encode() + b"x" * 10_000_000 + b"\n")
        fh.write(f"{T2I},fine\n".encode())
    result = read_and_check([path])
    assert [str(p) for p in result.problems] == [
        f"{path}:2: (row): the line is 10000037 bytes long; the limit is 1048576 bytes"]
    assert [item.line for item in result.items] == [3]


# --- good files ------------------------------------------------------------------------------

CSV_BODIES: list[dict[str, Any]] = [
    {"prompt": "A beautiful girl is walking on the street", "width×height": "2560x1440(16:9)",
     "scale": 0.5, "force_single": True},
    {"prompt": 'A lighthouse at dawn, "oil painting"\nwith a second line'},
    {"prompt": "A beautiful girl is sitting on the boat", "scale": 0.8, "force_single": False,
     "image_urls": [E1, E2]},
    {"prompt": "the woman is standing beside the boats, her feet soaked in water",
     "image_urls": [E1], "number_of_frames": 241, "resolution": "1080P", "seed": 42},
    {"prompt": "Generate 3 images of the man riding a motor cycle on the road",
     "images": [S.format(1), S.format(2), S.format(3)], "resolution": "2048x2048 (1:1)",
     "seed": 54519385, "sequential_image_generation_options": 3},
]


def test_good_csv_gives_exact_bodies() -> None:
    result = read_and_check([GOOD / "all_models.csv"])
    assert result.problems == []
    assert [item.input for item in result.items] == CSV_BODIES
    assert [item.model for item in result.items] == [T2I, T2I, EDIT, I2V, SEQ]
    assert [item.line for item in result.items] == [2, 3, 5, 6, 7]
    ids = [item.item_id for item in result.items]
    assert ids[0] == "poster-1" and ids[2] == "edit-boat" and ids[3] == "7"
    assert ids[1].startswith("t2i-") and ids[4].startswith("seq-")
    scale, force_single = result.items[0].input["scale"], result.items[0].input["force_single"]
    assert type(scale) is float and force_single is True
    assert type(result.items[3].input["number_of_frames"]) is int


def test_good_jsonl_gives_exact_bodies() -> None:
    result = read_and_check([GOOD / "all_models.jsonl"])
    assert result.problems == []
    assert len(result.items) == 5
    first = result.items[0]
    assert first == ItemSpec("poster-1", str(GOOD / "all_models.jsonl"), 1, T2I, {
        "prompt": "A beautiful girl is walking on the street",
        "width×height": "2560x1440(16:9)", "scale": 0.5, "force_single": True})
    assert result.items[3].item_id == "7"  # an integer id becomes a string
    assert result.items[4].input == CSV_BODIES[4] | {
        "images": [S.format(1), S.format(2), S.format(3)]}


def test_good_files_together_count_by_model() -> None:
    result = read_and_check([GOOD / "all_models.jsonl", GOOD / "bom.csv"])
    assert result.ok and result.problems == []
    assert result.summary() == {"items": 6, "by_model": {T2I: 3, EDIT: 1, I2V: 1, SEQ: 1}}
    answer = result.as_json()
    assert answer["errors"] == [] and answer["items"] == 6
    json.dumps(answer)


def test_defaults_are_not_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n', encoding="utf-8")
    result = read_and_check([path], default_model=T2I)
    assert [(item.model, item.input) for item in result.items] == [(T2I, {"prompt": "a"})]


# --- stable ids ------------------------------------------------------------------------------

def test_same_spec_in_csv_and_jsonl_gets_the_same_ids() -> None:
    from_csv = read_and_check([GOOD / "same_spec.csv"])
    from_jsonl = read_and_check([GOOD / "same_spec.jsonl"])
    assert from_csv.problems == [] and from_jsonl.problems == []
    assert [i.input for i in from_csv.items] == [i.input for i in from_jsonl.items]
    ids = [item.item_id for item in from_csv.items]
    assert ids == [item.item_id for item in from_jsonl.items]
    assert [i.split("-")[0] for i in ids] == ["t2i", "edit", "i2v", "seq"]
    assert all(len(i.split("-")[1]) == 16 for i in ids)


def test_stable_id_is_the_documented_hash() -> None:
    import hashlib
    body = {"prompt": "é", "scale": 0.5}
    canonical = '{"prompt":"é","scale":0.5}'
    digest = hashlib.sha256(f"{T2I}\n{canonical}".encode()).hexdigest()[:16]
    assert stable_id(T2I, body) == f"t2i-{digest}"
    assert stable_id(T2I, {"scale": 0.5, "prompt": "é"}) == stable_id(T2I, body)
    assert stable_id(EDIT, body) != stable_id(T2I, body)


def test_same_spec_across_files_is_a_duplicate_naming_the_earlier_row() -> None:
    csv_path, jsonl_path = GOOD / "same_spec.csv", GOOD / "same_spec.jsonl"
    result = read_and_check([csv_path, jsonl_path])
    assert [str(p) for p in result.problems] == [
        f"{jsonl_path}:{n}: (row): same input as {csv_path}:{n + 1}; give each an id or use "
        "a sweep with repeat" for n in range(1, 5)]


# --- ids -------------------------------------------------------------------------------------

def row(data: dict[str, Any], line: int = 1, file: str = "f.jsonl") -> Row:
    """A row of a T2I model unless `data` says otherwise."""
    return Row(file, line, {"model": T2I, "prompt": "a"} | data)


@pytest.mark.parametrize(("given", "item_id"), [
    ("cat", "cat"), (12, "12"), (-3, "-3"), ("a.b_c-D9", "a.b_c-D9"), ("x" * 128, "x" * 128),
])
def test_valid_ids(given: Any, item_id: str) -> None:
    result = check_rows([row({"id": given})])
    assert result.problems == [] and result.items[0].item_id == item_id
    assert "id" not in result.items[0].input and "model" not in result.items[0].input


@pytest.mark.parametrize(("given", "message"), [
    ("", "must not be empty"), ("x" * 129, "is 129 characters long; the limit is 128"),
    ("a b", "may use only letters"), ("a/b", "may use only letters"), ("é", "may use only"),
    ("..", "must contain a letter or a digit"), (True, "must be a string or an integer"),
    (1.5, "must be a string or an integer"), (["a"], "must be a string or an integer"),
])
def test_invalid_ids(given: Any, message: str) -> None:
    result = check_rows([row({"id": given})])
    assert result.items == []
    assert [(p.field, p.message.startswith(message)) for p in result.problems] == [("id", True)]


def test_duplicate_ids_across_files_name_the_earlier_file_and_line(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.jsonl"
    first.write_text(f"id,model,prompt\nx,{T2I},a\n", encoding="utf-8")
    second.write_text(f'{{"id": "y", "model": "{T2I}", "prompt": "b"}}\n'
                      f'{{"id": "x", "model": "{T2I}", "prompt": "c"}}\n', encoding="utf-8")
    result = read_and_check([first, second])
    assert [str(p) for p in result.problems] == [
        f"{second}:2: id: duplicate id 'x': already used at {first}:2"]
    assert [item.item_id for item in result.items] == ["x", "y"]


def test_identical_rows_with_ids_are_fine() -> None:
    result = check_rows([row({"id": "a"}), row({"id": "b"}, line=2)])
    assert result.problems == [] and len(result.items) == 2


def test_a_duplicate_id_is_reported_even_when_the_later_row_has_other_errors() -> None:
    result = check_rows([row({"id": "a"}), row({"id": "a", "model": "nope"}, line=2)])
    assert sorted(p.field for p in result.problems) == ["id", "model"]


# --- model and catalogue issues ---------------------------------------------------------------

def test_unknown_model_lists_the_known_ones() -> None:
    result = read_and_check([BAD / "unknown_model.jsonl"])
    assert all(model in result.problems[0].message for model in (T2I, EDIT, I2V, SEQ))
    assert [p.field for p in check_rows([row({"model": 5})]).problems] == ["model"]


def test_missing_model_comes_from_the_default(tmp_path: Path) -> None:
    assert read_and_check([BAD / "missing_model.jsonl"], default_model=T2I).ok


def test_issue_severity_maps_to_problems_and_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_validate(model_id: str, body: Any, *, allow_loopback_http: bool = True) -> list[Any]:
        return [catalogue.Issue(field="prompt", message="long\nprompt", severity="warning")]

    monkeypatch.setattr(catalogue, "validate", fake_validate)
    result = check_rows([row({})])
    assert result.problems == [] and len(result.items) == 1
    assert [str(w) for w in result.warnings] == ["f.jsonl:1: prompt: long\\nprompt"]


def test_loopback_flag_reaches_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def fake_validate(model_id: str, body: Any, *, allow_loopback_http: bool = True) -> list[Any]:
        seen.append(allow_loopback_http)
        return []

    monkeypatch.setattr(catalogue, "validate", fake_validate)
    check_rows([row({})], allow_loopback_http=False)
    read_and_check([GOOD / "bom.csv"], allow_loopback_http=False)
    assert seen == [False, False]


def test_fields_the_reader_rejected_are_not_reported_twice() -> None:
    result = check_rows([Row("f.csv", 2, {"model": T2I}, frozenset({"prompt"}))])
    assert result.items == [] and result.problems == []


def test_field_names_with_control_characters_print_on_one_line() -> None:
    result = check_rows([row({"bad\nname": 1})])
    assert result.problems and all("\n" not in str(p) for p in result.problems)


def test_raise_if_invalid() -> None:
    check_rows([row({})]).raise_if_invalid()
    with pytest.raises(ValidationFailed) as info:
        read_and_check([BAD / "too_few_cells.csv"]).raise_if_invalid()
    assert info.value.problems[0].line == 2


def test_problems_are_sorted_by_file_order_then_line(tmp_path: Path) -> None:
    late, early = tmp_path / "z.jsonl", tmp_path / "a.csv"
    late.write_text('{"prompt": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    early.write_text("prompt\nx,y\n", encoding="utf-8")
    result = read_and_check([late, early])
    assert [(p.file, p.line) for p in result.problems] == [
        (str(late), 1), (str(late), 2), (str(early), 2)]


# --- fuzzing ----------------------------------------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
_FIELDS = ["prompt", "width×height", "scale", "force_single", "image_urls", "images",
           "number_of_frames", "resolution", "seed", "sequential_image_generation_options"]
_ROW = st.fixed_dictionaries(
    {}, optional={"model": st.one_of(st.sampled_from([T2I, EDIT, I2V, SEQ, ""]), _JSON),
                  "id": st.one_of(st.text(max_size=6), st.integers(), _JSON),
                  **{name: _JSON for name in _FIELDS}},
).flatmap(lambda base: st.dictionaries(st.text(max_size=8), _JSON, max_size=3).map(
    lambda extra: extra | base))


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(_ROW, max_size=4))
def test_check_rows_never_raises_on_json_like_rows(rows: list[dict[str, Any]]) -> None:
    result = check_rows([Row("f.jsonl", n, data) for n, data in enumerate(rows, start=1)])
    for problem in [*result.problems, *result.warnings]:
        assert isinstance(problem, Problem) and "\n" not in str(problem)
    ids = [item.item_id for item in result.items]
    assert len(ids) == len(set(ids))
    for item in result.items:
        assert item.model in catalogue.MODELS
        assert not any(isinstance(v, float) and math.isnan(v) for v in item.input.values())



def test_warnings_do_not_block_the_item() -> None:
    result = check_rows([Row("f.jsonl", 1, {"model": SEQ, "images": [S.format(1)],
                                            "prompt": "a cat on a sofa",
                                            "sequential_image_generation_options": 2})])
    assert result.problems == [] and len(result.items) == 1
    assert [w.field for w in result.warnings] == ["prompt"]


# --- one line per distinct problem ------------------------------------------------------------

def test_a_problem_every_item_of_a_swept_row_shares_is_reported_once_with_a_count(
        tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"model": EDIT, "prompt": "p", "image_urls": ["ftp://x/a.jpg"],
                                "sweep": {"scale": [0.2, 0.4], "force_single": [True, False]}})
                    + "\n")
    result = read_and_check([path])
    [problem] = result.problems
    assert str(problem).startswith(f"{path}:1: image_urls[0]: must be an https:// URL")
    assert problem.message.endswith(" (all 4 items of this row)")
    assert problem.as_dict()["count"] == 4
    with pytest.raises(ValidationFailed, match=r"^1 problem in 1 row"):
        result.raise_if_invalid()


def test_a_problem_some_items_of_a_row_share_says_how_many(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"model": T2I, "prompt": "p",
                                "sweep": {"scale": [0.5, 3], "force_single": [True, False]}})
                    + "\n")
    [problem] = read_and_check([path]).problems
    assert problem.field == "scale"
    assert problem.message.endswith(" (2 of 4 items of this row)")


def test_problems_found_per_item_later_are_merged_per_row(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"model": EDIT, "prompt": "p", "image_urls": [E1],
                                "sweep": {"scale": [0.2, 0.4, 0.6]}}) + "\n"
                    + json.dumps({"model": EDIT, "prompt": "q", "image_urls": [E2]}) + "\n")
    result = read_and_check([path])
    assert result.problems == [] and len(result.items) == 4
    # what preflight gives without network: one problem per item, for the same URL
    per_item = [Problem(i.file, i.line, "image_urls[0]", "could not fetch image: connection "
                        "failed") for i in result.items]
    result.add_problems(per_item, [])
    assert [str(p) for p in result.problems] == [
        f"{path}:1: image_urls[0]: could not fetch image: connection failed "
        "(all 3 items of this row)",
        f"{path}:2: image_urls[0]: could not fetch image: connection failed"]
    assert [p.as_dict().get("count", 1) for p in result.problems] == [3, 1]
