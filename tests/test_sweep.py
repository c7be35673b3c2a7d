"""Sweeps expand into stable items: the same spec is the same item wherever it comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rcbatch.errors import InputError
from rcbatch.producer.spec import read_and_check
from rcbatch.producer.sweep import parse_cli_sweep

T2I = "bytedance/dreamina-4-0/text-to-image"
I2V = "bytedance/dreamina-3-0/image-to-video"
IMG = "https://example.com/a.jpg"


def write(tmp_path: Path, name: str, *rows: dict[str, object]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_a_3x3_sweep_gives_9_items_with_stable_ids(tmp_path: Path) -> None:
    row = {"model": T2I, "prompt": "x",
           "sweep": {"scale": [0.3, 0.5, 0.7], "prompt": ["a fox", "a whale", "a frog"]}}
    first = read_and_check([write(tmp_path, "a.jsonl", row)])
    again = read_and_check([write(tmp_path, "b.jsonl", row)])
    assert first.problems == [] and len(first.items) == 9
    ids = [i.item_id for i in first.items]
    assert len(set(ids)) == 9 and ids == [i.item_id for i in again.items]
    assert first.items[4].input == {"prompt": "a whale", "scale": 0.5}
    assert first.items[4].sweep == {"axes": {"scale": 0.5, "prompt": "a whale"}}


def test_the_same_spec_has_the_same_id_as_a_plain_row_or_from_the_command_line(
        tmp_path: Path) -> None:
    swept = read_and_check([write(tmp_path, "s.jsonl", {
        "model": T2I, "prompt": "p", "sweep": {"scale": [0.3, 0.7]}})])
    plain = read_and_check([write(tmp_path, "p.jsonl", {"model": T2I, "prompt": "p",
                                                        "scale": 0.7})])
    cli = read_and_check([write(tmp_path, "c.jsonl", {"model": T2I, "prompt": "p"})],
                         sweep=parse_cli_sweep(["scale=0.3,0.7"]))
    assert swept.items[1].item_id == plain.items[0].item_id
    assert [i.item_id for i in cli.items] == [i.item_id for i in swept.items]


def test_zip_pairs_lists_of_equal_length(tmp_path: Path) -> None:
    result = read_and_check([write(tmp_path, "z.jsonl", {
        "model": T2I, "zip": {"prompt": ["a", "b", "c"], "scale": [0.1, 0.2, 0.3]}})])
    assert [(i.input["prompt"], i.input["scale"]) for i in result.items] == [
        ("a", 0.1), ("b", 0.2), ("c", 0.3)]


def test_repeat_gives_distinct_seeds_that_do_not_change_between_reads(
        tmp_path: Path) -> None:
    row = {"model": I2V, "id": "clip", "image_urls": [IMG], "prompt": "pan", "repeat": 3}
    first = read_and_check([write(tmp_path, "r.jsonl", row)])
    again = read_and_check([write(tmp_path, "r2.jsonl", row)])
    seeds = [i.input["seed"] for i in first.items]
    assert len(set(seeds)) == 3 and seeds == [i.input["seed"] for i in again.items]
    assert len({i.item_id for i in first.items}) == 3
    assert all(i.item_id.startswith("clip-") for i in first.items)
    given = read_and_check([write(tmp_path, "g.jsonl", {**row, "seed": 40})])
    assert [i.input["seed"] for i in given.items] == [40, 41, 42]


def test_repeat_without_a_seed_field_still_gives_distinct_items(tmp_path: Path) -> None:
    result = read_and_check([write(tmp_path, "t.jsonl", {"model": T2I, "prompt": "p"})],
                            repeat=2)
    assert result.problems == []
    assert len({i.item_id for i in result.items}) == 2


@pytest.mark.parametrize(("row", "field", "fragment"), [
    ({"sweep": {"scale": []}}, "sweep.scale", "non-empty list"),
    ({"sweep": "not json"}, "sweep", "JSON object"),
    ({"zip": {"prompt": ["a"], "scale": [0.1, 0.2]}}, "zip", "same length"),
    ({"repeat": 0}, "repeat", "whole number"),
    ({"sweep": {"model": [T2I]}}, "sweep.model", "cannot be swept"),
    ({"sweep": {"scale": [0.1] * 200, "prompt": ["x"] * 100}}, "sweep", "limit"),
])
def test_a_malformed_sweep_is_one_clear_problem(tmp_path: Path, row: dict[str, object],
                                                field: str, fragment: str) -> None:
    result = read_and_check([write(tmp_path, "bad.jsonl", {"model": T2I, "prompt": "p",
                                                           **row})])
    assert result.items == []
    [problem] = result.problems
    assert (problem.line, problem.field) == (1, field) and fragment in problem.message


def test_an_invalid_value_in_a_sweep_is_reported_once(tmp_path: Path) -> None:
    result = read_and_check([write(tmp_path, "v.jsonl", {
        "model": T2I, "prompt": "p", "sweep": {"scale": [0.5, 3], "force_single": [1, 2]}})])
    # 4 expansions, but each bad value is one line: scale=3 (twice), force_single 1 and 2.
    assert len(result.problems) == len(set(result.problems))
    assert {p.field for p in result.problems} == {"scale", "force_single"}
    assert not any(p.field == "scale" and "0.5" in p.message for p in result.problems)


def test_csv_sweep_cells_hold_json(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text('model,prompt,sweep\n'
                    f'{T2I},p,"{{""scale"": [0.2, 0.4]}}"\n')
    result = read_and_check([path])
    assert result.problems == [] and [i.input["scale"] for i in result.items] == [0.2, 0.4]


def test_cli_sweep_values_are_json_when_they_parse() -> None:
    assert parse_cli_sweep(["scale=0.3,0.5", "prompt=a cat,a dog", "force_single=true"]) == {
        "scale": [0.3, 0.5], "prompt": ["a cat", "a dog"], "force_single": [True]}
    with pytest.raises(InputError):
        parse_cli_sweep(["scale"])


@pytest.mark.parametrize(("row", "field", "size"), [
    ({"zip": {"prompt": ["a"] * 20, "scale": [0.5] * 20}, "repeat": 600}, "zip", 12_000),
    ({"sweep": {"scale": [0.5] * 101, "prompt": ["a"] * 100}}, "sweep", 10_100),
    ({"sweep": {"scale": [0.5] * 11}, "zip": {"prompt": ["a"] * 10, "force_single": [True] * 10},
      "repeat": 100}, "sweep", 11_000),
])
def test_the_size_of_a_sweep_is_the_product_of_its_lengths(
        tmp_path: Path, row: dict[str, object], field: str, size: int) -> None:
    result = read_and_check([write(tmp_path, "n.jsonl", {"model": T2I, **row})])
    [problem] = result.problems
    assert (problem.field, problem.message) == (
        field, f"expands to {size} items; the limit per row is 10000")


def test_a_sweep_problem_naming_a_field_with_a_line_break_stays_on_one_line(
        tmp_path: Path) -> None:
    result = read_and_check([write(tmp_path, "nl.jsonl", {"model": T2I, "prompt": "p",
                                                          "sweep": {"a\rb": []}})])
    [problem] = result.problems
    assert str(problem).endswith(":1: sweep.a\\rb: must be a non-empty list of values")
