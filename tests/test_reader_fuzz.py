"""Fuzzing what `rcbatch validate --no-preflight` reads: any bytes give problems, never a crash.

Arbitrary and structured CSV/JSONL bytes go through `read_and_check` (the entry the CLI calls);
the only exceptions allowed are rcbatch's `InputError` family (the item cap). A few nasty files
also go through the installed CLI: exit 0 or 2, one-line errors, no traceback.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcbatch.errors import InputError
from rcbatch.producer.spec import CheckResult, read_and_check

T2I = "bytedance/dreamina-4-0/text-to-image"
EDIT = "bytedance/dreamina-4-0/edit"
I2V = "bytedance/dreamina-3-0/image-to-video"
SEQ = "bytedance/seedream-4-5/edit-sequential"
FIELDS = ["prompt", "width×height", "scale", "force_single", "image_urls", "images",
          "number_of_frames", "resolution", "seed", "sequential_image_generation_options",
          "id", "model", "sweep", "zip", "repeat"]
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

_ODD_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "\ufeff", "\ud800", "NaN", "Infinity", "-0", "1e999",
                     "9" * 400, "[", "]", "{}", '{"a":', "|", "a|b|", '"', '""', "\r", "\u2028",
                     "https://example.com/a.jpg", "http://127.0.0.1/a.png", "ftp://x/y"]))
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30),
                                                           max_value=10**30),
                     st.floats(), _ODD_TEXT)
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_ODD_TEXT, inner, max_size=4)), max_leaves=10)
_SWEEP = st.one_of(_JSON, st.dictionaries(st.sampled_from(FIELDS), st.lists(_JSON, max_size=5),
                                          max_size=3))
_ROW = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from([T2I, EDIT, I2V, SEQ, "", "nope/x"]), _JSON),
    **{name: _JSON for name in FIELDS if name not in ("model", "sweep", "zip")},
    "sweep": _SWEEP, "zip": _SWEEP, "repeat": st.one_of(st.integers(-2, 2000), _JSON),
})


def _check(paths: list[Path | str], **options: Any) -> CheckResult | None:
    """read_and_check, allowing only the InputError family; None when it raised one."""
    try:
        result = read_and_check(paths, max_items=500, **options)
    except InputError as exc:
        assert "\n" not in str(exc)
        return None
    for problem in [*result.problems, *result.warnings]:
        assert "\n" not in str(problem) and "\r" not in str(problem)
    return result


def _mangle(data: bytes, how: int) -> bytes:
    """Damage well-formed bytes the ways real files are damaged."""
    if how == 1:
        return b"\xef\xbb\xbf" + data
    if how == 2:
        return data.replace(b",", b",\x00", 1)
    if how == 3:
        return data[: len(data) // 2] + b"\xff\xc3(" + data[len(data) // 2:]
    if how == 4:
        return data.replace(b"\n", b"\r\n")
    if how == 5:
        return data[: max(0, len(data) - 7)]
    return data


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(blob=st.binary(max_size=600), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_random_bytes(fuzz_dir: Path, blob: bytes, suffix: str) -> None:
    path = fuzz_dir / f"random{suffix}"
    path.write_bytes(blob)
    _check([path])
    _check(["-"], stdin=io.BytesIO(blob))


@FUZZ
@given(rows=st.lists(st.one_of(_ROW, _JSON), max_size=5), how=st.integers(0, 5),
       blank=st.booleans())
def test_structured_jsonl(fuzz_dir: Path, rows: list[Any], how: int, blank: bool) -> None:
    lines = [json.dumps(row, ensure_ascii=bool(how % 2)) for row in rows]
    if blank:
        lines.insert(len(lines) // 2, "  ")
    data = _mangle(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), how)
    path = fuzz_dir / "structured.jsonl"
    path.write_bytes(data)
    result = _check([path], sweep={"scale": [0.5, 2]} if how == 3 else None)
    if result is not None and how == 0:
        assert {p.line for p in result.problems} <= set(range(1, len(lines) + 2))


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@FUZZ
@given(columns=st.lists(st.one_of(st.sampled_from(FIELDS), _ODD_TEXT), min_size=1, max_size=6,
                        unique=True),
       cells=st.lists(st.lists(st.one_of(_ODD_TEXT, _JSON.map(_cell)), max_size=7),
                      max_size=5),
       how=st.integers(0, 5))
def test_structured_csv(fuzz_dir: Path, columns: list[str], cells: list[list[str]],
                        how: int) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(cells)
    data = _mangle(out.getvalue().encode("utf-8", "surrogatepass"), how)
    path = fuzz_dir / "structured.csv"
    path.write_bytes(data)
    _check([path], default_model=T2I if how == 2 else None, repeat=3 if how == 4 else None)


def test_deep_nesting_and_huge_numbers_are_problems(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"model": "' + T2I + '", "prompt": ' + "[" * 100_000 + "]" * 100_000
                    + "}\n" + '{"model": "' + T2I + '", "scale": ' + "9" * 5000 + "}\n"
                    + '{"model": "' + T2I + '", "scale": 1e400, "prompt": "x"}\n')
    result = _check([path])
    assert result is not None and [p.line for p in result.problems][:1] == [1]
    assert {p.line for p in result.problems} == {1, 2, 3}


# --- through the installed CLI ----------------------------------------------------------------

_RCBATCH = Path(sys.executable).with_name("rcbatch")

#: file -> its bytes; only the valid ones exit 0 (a NUL inside a prompt is text like any other)
VALID = {"valid.jsonl", "nul_in_prompt.csv"}
_FILES: dict[str, bytes] = {
    "nul_in_prompt.csv": b"model,prompt\n" + T2I.encode() + b",a\x00b\n",
    "nul_in_number.csv": b"model,prompt,scale\n" + T2I.encode() + b",a,0.\x005\n",
    "bad_utf8.jsonl": b'{"model": "' + T2I.encode() + b'", "prompt": "\xff\xfe"}\n',
    "bom_nested.jsonl": b"\xef\xbb\xbf" + json.dumps(
        {"model": T2I, "prompt": {"a": [[[{"b": None}]]]}, "sweep": {"scale": [[1], {}]}}
    ).encode() + b"\n",
    "huge_numbers.jsonl": b'{"model": "' + T2I.encode() + b'", "prompt": "p", "scale": '
                          + b"1" * 5000 + b', "repeat": 1e308}\n',
    "random.csv": bytes(range(256)) * 3,
    "valid.jsonl": json.dumps({"model": T2I, "prompt": "a fox"}).encode() + b"\n",
    "sweep_cap.csv": b'model,prompt,sweep\n' + T2I.encode()
                     + b',p,"{""scale"": ' + json.dumps(list(range(10))).encode().replace(
                         b'"', b'""') + b', ""prompt"": ' + json.dumps(
                         [str(i) for i in range(10)] * 2000).encode().replace(b'"', b'""')
                     + b'}"\n',
}


@pytest.mark.skipif(not _RCBATCH.exists(), reason="the rcbatch script is not installed")
@pytest.mark.parametrize("valid", [True, False])
def test_the_cli_exits_0_or_2_without_a_traceback(tmp_path: Path, valid: bool) -> None:
    paths = []
    for name in sorted(n for n in _FILES if (n in VALID) == valid):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(_FILES[name])
    done = subprocess.run([str(_RCBATCH), "validate", *map(str, paths), "--no-preflight"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == (0 if valid else 2), done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    if not valid:
        lines = done.stderr.splitlines()
        assert lines[-1].startswith("rcbatch: error: ")
        # every bad file has its own FILE:LINE: FIELD: message lines
        assert {line.split(":", 1)[0] for line in lines[:-1]} == set(map(str, paths))
