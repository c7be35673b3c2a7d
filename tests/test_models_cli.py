"""`rcbatch models`, as a user runs it: a fifth model added from its page, shown, validated,
refused when its schema cannot be checked, and run end to end against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.journeys import verified_outputs
from tests.test_schema_loader import SCHEMA, T2V, changed, page

RCBATCH = str(Path(sys.executable).parent / "rcbatch")  # the venv running the tests
IMG = "https://cdn.example.com/in/a.png"


class User:
    """A user's shell: a home, a state folder, the installed `rcbatch`."""

    def __init__(self, root: Path) -> None:
        self.cwd = root / "work"
        self.cwd.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("RCBATCH_")}
        self.env = {**base, "HOME": str(root / "home"), "RCBATCH_STATE_DIR": str(root / "state"),
                    "RCBATCH_SUBMIT_RATE": "200"}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RCBATCH, *args], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def write(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.write_text(text, encoding="utf-8")
        return path

    def rows(self, name: str, *rows: dict[str, Any]) -> Path:
        return self.write(name, "".join(json.dumps({"model": T2V, **r}, ensure_ascii=False)
                                        + "\n" for r in rows))

    @property
    def models_dir(self) -> Path:
        return Path(self.env["RCBATCH_STATE_DIR"]) / "models"


@pytest.fixture
def user(tmp_path: Path) -> User:
    return User(tmp_path)


@pytest.fixture
def added(user: User) -> User:
    done = user.run("models", "add", str(user.write("motion.txt", page())))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"added {T2V} (video, 5 fields)")
    return user


def test_the_fifth_model_is_listed_and_shown(added: User) -> None:
    listed = added.run("models", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1].split() == [T2V, "video", "user"]
    assert "bytedance/dreamina-4-0/edit image built-in" in " ".join(listed.stdout.split())
    shown = added.run("models", "show", T2V)
    assert shown.returncode == 0, shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]
    assert "duration: integer, optional, one of 5, 10, default 5" in lines
    assert "cfg_scale: number, optional, from 0 to 10, default 5" in lines
    assert "rule: shortest_side_pixels>= 300: Reference images must be at least 300 px." in lines
    doc = json.loads(added.run("models", "show", T2V, "--json").stdout)
    assert (doc["kind"], doc["source"], doc["outputs"]) == ("video", "user", ["video"])


def test_rows_of_the_fifth_model_validate_at_the_boundary_and_fail_past_it(added: User) -> None:
    edge = {"prompt": "p" * 500, "duration": 10, "cfg_scale": 10,
            "reference_images": [IMG] * 3}
    ok = added.run("validate", "--no-preflight", str(added.rows("edge.jsonl", edge)))
    assert ok.returncode == 0, ok.stderr
    assert "1 items valid" in ok.stdout and T2V in ok.stdout
    past = added.rows("past.jsonl", {**edge, "cfg_scale": 10.5},
                      {**edge, "reference_images": [IMG] * 4}, {**edge, "prompt": "p" * 501},
                      {**edge, "duration": 7})
    bad = added.run("validate", "--no-preflight", str(past))
    assert bad.returncode == 2
    assert f"{past}:1: cfg_scale: must be at most 10, got 10.5" in bad.stderr
    assert f"{past}:2: reference_images: must have at most 3 items, got 4" in bad.stderr
    assert f"{past}:3: prompt: must be at most 500 characters, got 501" in bad.stderr
    assert f"{past}:4: duration: must be one of 5, 10; got 7" in bad.stderr


def test_a_row_naming_an_unknown_model_gets_the_closest_names_and_the_add_hint(
        added: User) -> None:
    spec = added.write("typo.jsonl", json.dumps({"model": "acme/motion-2-0/text-to-video",
                                                 "prompt": "p"}) + "\n")
    done = added.run("validate", "--no-preflight", str(spec))
    assert done.returncode == 2
    [line] = [x for x in done.stderr.splitlines() if x.startswith(f"{spec}:1: model:")]
    assert "did you mean 'acme/motion-2-1/text-to-video'" in line
    assert line.endswith("`rcbatch models add FILE`")


@pytest.mark.parametrize(("schema", "reason"), [
    (changed("reference_images.validations", [{"validation_rule": "duration_s<",
                                               "validation_value": 3,
                                               "validation_error": "m"}]),
     "unknown validation rule 'duration_s<'"),
    (changed("seed.type", "object"), "type 'object' has no check"),
])
def test_a_schema_that_cannot_be_checked_is_refused_and_nothing_is_stored(
        user: User, schema: dict[str, Any], reason: str) -> None:
    done = user.run("models", "add", str(user.write("odd.txt", page(schema))))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("rcbatch: error: ") and reason in line
    assert not list(user.models_dir.glob("*.json"))
    assert T2V not in user.run("models", "list").stdout


def test_a_bare_schema_is_added_under_the_id_given(user: User) -> None:
    path = user.write("schema.json", json.dumps(SCHEMA))
    refused = user.run("models", "add", str(path))
    assert refused.returncode == 2 and "pass --id MODEL" in refused.stderr
    done = user.run("models", "add", str(path), "--id", "acme/still-1/text-to-image")
    assert done.returncode == 0, done.stderr
    again = user.run("models", "add", str(path), "--id", "acme/still-1/text-to-image")
    assert again.returncode == 2 and "--replace" in again.stderr
    built_in = user.run("models", "add", str(path), "--id", "bytedance/dreamina-4-0/edit")
    assert built_in.returncode == 2 and "built-in model" in built_in.stderr


def test_show_of_an_unknown_model_exits_2_with_the_hint(user: User) -> None:
    done = user.run("models", "show", "dreamina-4-0/edt")
    assert done.returncode == 2
    assert "did you mean 'bytedance/dreamina-4-0/edit'" in done.stderr
    assert "rcbatch models add" in done.stderr


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_fifth_model_runs_end_to_end_against_the_simulator(added: User) -> None:
    spec = added.rows("run.jsonl", *({"prompt": f"take {k}", "cfg_scale": 10, "seed": k,
                                      "reference_images": [IMG]} for k in range(3)))
    done = added.run("run", str(spec), "--simulate", "--no-preflight", "--name", "fifth",
                     "--simulate-args", "--duration 0.2-0.4 --video-bytes 20000", timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(added.run("status", "fifth", "--json").stdout)
    assert status["counts"]["completed"] == status["total"] == 3
    assert verified_outputs(status["manifest"]) == {"completed": 3}


def test_an_unknown_model_goes_through_unchecked_only_when_asked(user: User) -> None:
    row = {"model": "acme/unknown-9/text-to-image", "prompt": "x", "anything": 3}
    spec = user.write("unknown.jsonl", json.dumps(row) + "\n")
    refused = user.run("validate", str(spec), "--no-preflight")
    assert refused.returncode == 2 and "rcbatch models add" in refused.stderr
    allowed = user.run("validate", str(spec), "--no-preflight", "--unchecked-model", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["by_model"] == {"acme/unknown-9/text-to-image": 1}
    bad_id = user.write("bad.jsonl", json.dumps({**row, "model": "../etc"}) + "\n")
    assert user.run("validate", str(bad_id), "--no-preflight", "--unchecked-model").returncode == 2


def test_an_unchecked_item_is_marked_in_the_manifest() -> None:
    from rcbatch.producer.batch import _extra
    from rcbatch.producer.spec import ItemSpec
    from rcbatch.worker.manifest import manifest_line

    spec = ItemSpec("i", "f.jsonl", 1, "acme/unknown-9/text-to-image", {"prompt": "x"},
                    unchecked=True)
    record = {"id": "i", "file": "f.jsonl", "line": "1", "model": spec.model,
              "input": json.dumps(spec.input), "state": "pending", **_extra(spec, None, "b")}
    assert manifest_line(record)["unchecked_model"] is True
