"""Reading JSONL and CSV input files into rows: formats, line numbers, coercion, bad bytes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcbatch.producer.reader import MAX_LINE_BYTES, coerce_cell, read_rows
from rcbatch.producer.spec import check_rows, read_and_check

DATA = Path(__file__).parent / "data"
GOOD, BAD = DATA / "good", DATA / "bad"
T2I = "bytedance/dreamina-4-0/text-to-image"
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
SEQ = "bytedance/seedream-4-5/edit-sequential"
E1 = "https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/usecase5-1-1-input.jpg"
E2 = "https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/usecase5-1-2-input.jpg"
S = "https://playgrounds-storage-public.runcomfy.net/tools/7250/media-files/input-1-{}.png"


def write(path: Path, text: str) -> Path:
    """Write `text` as UTF-8 exactly as given (no newline translation)."""
    path.write_bytes(text.encode("utf-8"))
    return path


def only_problem(path: Path, **kwargs: Any) -> tuple[int, str, str]:
    """(line, field, message) of the single problem reading `path` gives."""
    result = read_rows(path, **kwargs)
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    return problem.line, problem.field, problem.message


# --- good files ------------------------------------------------------------------------------

def test_csv_rows_have_their_physical_start_lines_and_coerced_values() -> None:
    result = read_rows(GOOD / "all_models.csv")
    assert result.problems == []
    assert [row.line for row in result.rows] == [2, 3, 5, 6, 7]  # row 3 spans lines 3-4
    assert [row.data for row in result.rows] == [
        {"model": T2I, "id": "poster-1", "prompt": "A beautiful girl is walking on the street",
         "width×height": "2560x1440(16:9)", "scale": 0.5, "force_single": True},
        {"model": T2I, "prompt": 'A lighthouse at dawn, "oil painting"\nwith a second line'},
        {"model": EDIT, "id": "edit-boat", "prompt": "A beautiful girl is sitting on the boat",
         "scale": 0.8, "force_single": False, "image_urls": [E1, E2]},
        {"model": I2V, "id": "7",
         "prompt": "the woman is standing beside the boats, her feet soaked in water",
         "image_urls": [E1], "number_of_frames": 241, "resolution": "1080P", "seed": 42},
        {"model": SEQ, "prompt": "Generate 3 images of the man riding a motor cycle on the road",
         "images": [S.format(1), S.format(2), S.format(3)], "resolution": "2048x2048 (1:1)",
         "seed": 54519385, "sequential_image_generation_options": 3},
    ]


def test_jsonl_keeps_json_values_and_skips_blank_lines() -> None:
    result = read_rows(GOOD / "all_models.jsonl")
    assert result.problems == []
    assert [row.line for row in result.rows] == [1, 3, 4, 5, 6]
    assert result.rows[3].data["id"] == 7  # JSONL values are not coerced
    assert result.rows[0].data["force_single"] is True


def test_utf8_bom_is_stripped(tmp_path: Path) -> None:
    result = read_rows(GOOD / "bom.csv")
    assert result.problems == []
    assert result.rows[0].data == {"model": T2I, "prompt": "A cat with a BOM", "scale": 1}
    bom_jsonl = tmp_path / "bom.jsonl"
    bom_jsonl.write_bytes(b'\xef\xbb\xbf{"prompt": "x"}\n')
    assert read_rows(bom_jsonl).rows[0].data == {"prompt": "x"}


def test_display_name_is_the_file_of_rows_and_problems() -> None:
    result = read_rows(BAD / "too_few_cells.csv", display_name="mine.csv")
    assert str(result.problems[0]).startswith("mine.csv:2: ")
    assert read_rows(GOOD / "bom.csv", display_name="b.csv").rows[0].file == "b.csv"


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".json-lines", ".JSONL"])
def test_jsonl_suffixes(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"in{suffix}", '{"prompt": "a"}\n')
    assert read_rows(path).rows[0].data == {"prompt": "a"}


# --- default model ----------------------------------------------------------------------------

def test_default_model_fills_in_and_a_row_value_wins(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "m.jsonl",
                  f'{{"prompt": "a"}}\n{{"model": "{EDIT}", "prompt": "b"}}\n')
    csv_file = write(tmp_path / "m.csv", f"model,prompt,scale\n,a,0.5\n{EDIT},b,1\n")
    for path in (jsonl, csv_file):
        rows = read_rows(path, default_model=T2I).rows
        assert [row.data["model"] for row in rows] == [T2I, EDIT]
    assert "model" not in read_rows(jsonl).rows[0].data


def test_csv_cells_follow_the_kinds_of_the_default_model(tmp_path: Path) -> None:
    path = write(tmp_path / "k.csv", "prompt,scale,force_single\na,0.25,Yes\n")
    assert read_rows(path, default_model=T2I).rows[0].data == {
        "model": T2I, "prompt": "a", "scale": 0.25, "force_single": True}
    # with no (known) model the kinds are unknown and cells stay text for validate() to judge
    assert read_rows(path).rows[0].data == {"prompt": "a", "scale": "0.25", "force_single": "Yes"}


# --- CSV cell coercion ------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "cell", "value"), [
    ("integer", "121", 121), ("integer", " -1 ", -1), ("integer", "+7", 7),
    ("number", "0.5", 0.5), ("number", "1", 1), ("number", "1e-3", 0.001), ("number", ".5", 0.5),
    ("boolean", "TRUE", True), ("boolean", "no", False), ("boolean", "1", True),
    ("boolean", "0", False), ("boolean", "Yes", True), ("boolean", "false", False),
    ("array", f'["{E1}", "{E2}"]', [E1, E2]), ("array", f"{E1} | {E2}|", [E1, E2]),
    ("array", E1, [E1]), ("string", "  spaced  ", "  spaced  "), (None, "12", "12"),
])
def test_coerce_cell_accepts(kind: str | None, cell: str, value: Any) -> None:
    result = coerce_cell(kind, cell)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(("kind", "cell", "expected"), [
    ("integer", "1.5", "expected an integer, got '1.5'"),
    ("integer", "1e3", "expected an integer"), ("integer", "١٢", "expected an integer"),
    ("integer", "9" * 5000, "too many digits"),
    ("number", "abc", "expected a number, got 'abc'"), ("number", "nan", "expected a number"),
    ("number", "inf", "expected a number"), ("number", "1e999", "expected a number"),
    ("number", "1_000", "expected a number"),
    ("boolean", "maybe", "expected a boolean"), ("boolean", "2", "expected a boolean"),
    ("array", '["a", ', "JSON array is not valid"), ("array", "[NaN]", "JSON array"),
    ("array", '["\\ud800"]', "JSON array"),
])
def test_coerce_cell_rejects_with_the_expected_type(kind: str, cell: str, expected: str) -> None:
    with pytest.raises(ValueError, match="expected") as info:
        coerce_cell(kind, cell)
    assert expected in str(info.value)


def test_a_bad_cell_is_reported_and_left_out_of_the_row(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", f"model,prompt,scale\n{T2I},a,half\n")
    result = read_rows(path)
    assert [str(p) for p in result.problems] == [
        f"{path}:2: scale: expected a number, got 'half'"]
    assert result.rows[0].data == {"model": T2I, "prompt": "a"}
    assert result.rows[0].rejected_fields == {"scale"}


def test_empty_cells_are_not_given(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", f"model,id,prompt,scale,image_urls\n{T2I}, ,a,  ,\n")
    assert read_rows(path).rows[0].data == {"model": T2I, "prompt": "a"}


# --- CSV structure ------------------------------------------------------------------------------

def test_csv_blank_and_all_empty_rows_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", f"model,prompt\n\n{T2I},a\r\n,\n \n{T2I},b\n")
    result = read_rows(path)
    assert [(row.line, row.data["prompt"]) for row in result.rows] == [(3, "a"), (6, "b")]
    assert result.problems == []


def test_csv_header_names_are_trimmed(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", f" model , prompt\n{T2I},a\n")
    assert read_rows(path).rows[0].data == {"model": T2I, "prompt": "a"}


def test_csv_unclosed_quote_names_the_line_it_opens_on() -> None:
    path = BAD / "unclosed_quote.csv"
    assert only_problem(path) == (3, "(row)",
                                  'a quoted cell starting on this line is never closed '
                                  '(missing ")')
    assert [row.line for row in read_rows(path).rows] == [2]


def test_csv_reading_goes_on_after_a_bad_record() -> None:
    result = read_rows(BAD / "stray_quote.csv")
    assert [(p.line, p.field) for p in result.problems] == [(2, "(row)")]
    assert [row.line for row in result.rows] == [3]


def test_csv_line_too_long_inside_a_row_drops_only_that_row(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_bytes(b"model,prompt\n" + f"{T2I},".encode() + b"x" * (MAX_LINE_BYTES + 5)
                     + f"\n{T2I},ok\n".encode())
    result = read_rows(path)
    assert [(p.line, p.field) for p in result.problems] == [(2, "(row)")]
    assert [row.line for row in result.rows] == [3]


# --- JSONL structure ----------------------------------------------------------------------------

def test_jsonl_syntax_error_gives_the_column() -> None:
    line, field, message = only_problem(BAD / "not_json.jsonl")
    assert (line, field) == (2, "(row)")
    assert message == ("not valid JSON: Expecting property name enclosed in double quotes "
                       "at column 69")


@pytest.mark.parametrize(("text", "kind"), [
    ("[1, 2]", "an array"), ("42", "a number"), ('"s"', "a string"), ("null", "null"),
    ("true", "true/false"), ("NaN", "NaN/Infinity"),
])
def test_jsonl_line_must_be_an_object(tmp_path: Path, text: str, kind: str) -> None:
    path = write(tmp_path / "o.jsonl", text + "\n")
    assert only_problem(path) == (1, "(row)", f"expected a JSON object, got {kind}")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1E400"])
def test_jsonl_non_finite_numbers_are_rejected(tmp_path: Path, number: str) -> None:
    path = write(tmp_path / "n.jsonl", f'{{"prompt": "a", "scale": {number}}}\n')
    assert only_problem(path) == (1, "scale",
                                  "NaN and Infinity are not allowed; use a finite number")
    assert read_rows(path).rows[0].data == {"prompt": "a"}


def test_jsonl_nested_non_finite_names_the_top_field(tmp_path: Path) -> None:
    path = write(tmp_path / "n.jsonl", '{"image_urls": ["a", [NaN]]}\n')
    assert only_problem(path)[:2] == (1, "image_urls")


def test_jsonl_duplicate_keys_are_a_problem(tmp_path: Path) -> None:
    assert only_problem(BAD / "duplicate_keys.jsonl") == (
        1, "prompt", "duplicate key in one JSON object; keep only one")
    nested = write(tmp_path / "d.jsonl", '{"x": {"k": 1, "k": 2}}\n')
    assert only_problem(nested)[:2] == (1, "k")


def test_jsonl_lone_surrogate_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", '{"prompt": "bad \\ud800 text", "ok": "\\u00e9"}\n')
    line, field, message = only_problem(path)
    assert (line, field) == (1, "prompt") and "surrogate" in message
    assert read_rows(path).rows[0].data == {"ok": "é"}


def test_jsonl_too_deep_or_too_long_numbers_are_problems(tmp_path: Path) -> None:
    deep = write(tmp_path / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    assert only_problem(deep)[:2] == (1, "(row)")
    digits = write(tmp_path / "digits.jsonl", '{"seed": ' + "9" * 5000 + "}\n")
    line, field, message = only_problem(digits)
    assert (line, field) == (1, "(row)") and message.startswith("not valid JSON: ")


def test_a_pretty_printed_json_array_is_one_problem() -> None:
    assert only_problem(BAD / "json_array_pretty.jsonl")[:2] == (1, "(file)")


# --- huge lines, encodings, odd files ----------------------------------------------------------

def test_a_10_mb_line_is_refused_without_holding_it_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    size = 10 * 1024 * 1024
    with open(path, "wb") as fh:
        fh.write(b'{"prompt": "first"}\n')
        fh.write(b'{"prompt": "' + b"x" * (size - 14) + b'"}\n')
        fh.write(b'{"prompt": "last"}\n')
    tracemalloc.start()
    try:
        result = read_rows(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [str(p) for p in result.problems] == [
        f"{path}:2: (row): the line is {size} bytes long; the limit is {MAX_LINE_BYTES} bytes"]
    assert [row.line for row in result.rows] == [1, 3]
    assert peak < 4 * MAX_LINE_BYTES


def test_a_line_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edge.jsonl"
    body = b'{"prompt": "' + b"x" * (MAX_LINE_BYTES - 15) + b'"}'
    path.write_bytes(body + b"\r\n")
    assert len(body) + 1 == MAX_LINE_BYTES
    assert read_rows(path).problems == []


def test_invalid_utf8_names_the_line() -> None:
    for name, line in (("invalid_utf8.jsonl", 2), ("invalid_utf8.csv", 3)):
        result = read_rows(BAD / name)
        assert [(p.line, p.field) for p in result.problems] == [(line, "(row)")]
        assert "not valid UTF-8 (byte 0xe9" in result.problems[0].message
        assert len(result.rows) == 1  # the other rows are still read


def test_utf16_file_is_one_problem() -> None:
    assert only_problem(BAD / "utf16.csv") == (1, "(file)", "the file is UTF-16; save it as UTF-8")


def test_unsupported_and_unreadable_files(tmp_path: Path) -> None:
    assert only_problem(BAD / "unsupported.txt")[:2] == (1, "(file)")
    (tmp_path / "dir.csv").mkdir()
    line, field, message = only_problem(tmp_path / "dir.csv")
    assert (line, field) == (1, "(file)") and message.startswith("cannot read the file")
    assert only_problem(tmp_path / "missing.jsonl")[2].startswith("cannot read the file")


def test_many_rows_stream(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for n in range(20_000):
            fh.write(json.dumps({"model": T2I, "prompt": f"p{n}"}) + "\n")
    result = read_rows(path)
    assert len(result.rows) == 20_000 and result.rows[-1].line == 20_000


# --- fuzzing ----------------------------------------------------------------------------------

_TOKENS = [b'"', b",", b"\n", b"\r\n", b"\r", b"[", b"]", b"{", b"}", b":", b"NaN", b"1e999",
           b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\x00", b"model", b"prompt", b"scale",
           b"image_urls", b'"model"', T2I.encode(), b"0.5", b"true", b"|", b"\\ud800", b" "]
_FUZZ_BYTES = st.one_of(st.binary(max_size=400),
                        st.lists(st.sampled_from(_TOKENS), max_size=60).map(b"".join))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the fuzz tests rewrite files in (module-scoped: hypothesis reruns the body)."""
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=_FUZZ_BYTES, suffix=st.sampled_from([".csv", ".jsonl"]),
       model=st.sampled_from([None, T2I, EDIT]))
def test_read_rows_never_raises_on_arbitrary_bytes(fuzz_dir: Path, blob: bytes, suffix: str,
                                                    model: str | None) -> None:
    path = fuzz_dir / f"input{suffix}"
    path.write_bytes(blob)
    result = read_rows(path, default_model=model)
    lines = blob.count(b"\n") + 1
    for problem in result.problems:
        assert "\n" not in str(problem) and "\r" not in str(problem)
        assert 1 <= problem.line <= lines
        str(problem).encode("utf-8")  # printable: no lone surrogates
    for row in result.rows:
        assert 1 <= row.line <= lines and isinstance(row.data, dict)
    checked = check_rows(result.rows)
    assert all("\n" not in str(problem) for problem in checked.problems)


# --- standard input ---------------------------------------------------------------------------

def test_dash_reads_jsonl_from_stdin_and_names_it_stdin() -> None:
    text = ('\n\n' + json.dumps({"model": T2I, "prompt": "a"}) + '\n'
            + json.dumps({"model": T2I, "prompt": "b", "scale": 7}) + '\n')
    result = read_and_check(["-"], stdin=io.BytesIO(text.encode()))
    assert [(i.file, i.line, i.input["prompt"]) for i in result.items] == [("<stdin>", 3, "a")]
    [problem] = result.problems
    assert str(problem).startswith("<stdin>:4: scale: must be at most 1")


def test_dash_reads_csv_from_stdin_when_it_does_not_open_a_json_object() -> None:
    text = "\ufeffmodel,prompt,scale\r\n" + f"{T2I},a cat,0.5\r\n" + f"{T2I},a dog,x\r\n"
    result = read_and_check(["-"], stdin=io.BytesIO(text.encode()))
    assert [(i.line, i.input) for i in result.items] == [(2, {"prompt": "a cat", "scale": 0.5})]
    assert [str(p) for p in result.problems] == ["<stdin>:3: scale: expected a number, got 'x'"]


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "the file is empty"),
    (b"\n \n", "the file is empty"),
    ("model\n".encode("utf-16"), "UTF-16"),
])
def test_empty_or_utf16_stdin_is_one_problem(data: bytes, fragment: str) -> None:
    result = read_and_check(["-"], stdin=io.BytesIO(data))
    [problem] = result.problems
    assert problem.file == "<stdin>" and fragment in problem.message


def test_an_over_long_first_line_on_stdin_is_skipped_like_in_a_file() -> None:
    text = b'{"prompt": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n' + json.dumps(
        {"model": T2I, "prompt": "b"}).encode() + b"\n"
    result = read_and_check(["-"], stdin=io.BytesIO(text))
    assert [p.line for p in result.problems] == [1] and "bytes long" in result.problems[0].message
    assert [i.line for i in result.items] == [2]


def test_dash_without_a_stream_reads_the_process_stdin() -> None:
    code = ("from rcbatch.producer.spec import read_and_check; "
            "r = read_and_check(['-']); print(len(r.items), [str(p) for p in r.problems])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, input=json.dumps({"model": T2I, "prompt": "a"}) + "\n{")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("1 ['<stdin>:2: (row): not valid JSON")


def test_a_submission_from_stdin_gets_a_fresh_default_batch_name(tmp_path: Path) -> None:
    from rcbatch.producer.batch import default_name

    files = [tmp_path / "a.jsonl"]
    assert default_name(files) == default_name(files)
    first, second = default_name([Path("-")]), default_name([Path("-")])
    assert first.startswith("stdin-") and first != second
