"""The package as a user installs it: a wheel built from the checkout, installed with plain pip
into a fresh virtualenv (no lock file, no constraints of ours), then one simulated batch run
from a folder outside the checkout.

This is the only test that does not import the code under test: it drives the installed
`rcbatch` command of the fresh venv, exactly as a user who ran `pip install rcbatch` would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of our settings, no venv of the checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RCBATCH_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel` builds from a copy of the checkout's tracked files (setuptools
    would otherwise reuse a stale build/ folder of the checkout)."""
    source = tmp_path_factory.mktemp("source") / "rcbatch"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():  # the layer links rcbatch/worker -> ../worker, ...
            target.symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, target)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(source)], check=True, env=_clean_env())
    (found,) = dist.glob("rcbatch-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed by plain pip (dependencies resolved by pip)."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(home)
    subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, env=_clean_env())
    yield home / "bin"


def test_the_wheel_holds_one_top_level_package_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert top == {"rcbatch"}
    assert "rcbatch/py.typed" in names
    for layer in ("worker", "producer", "config", "runcomfy", "cli"):
        assert f"rcbatch/{layer}/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/"))]


def test_plain_pip_install_runs_a_simulated_sweep_outside_the_checkout(
        installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "somewhere"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "sweep.jsonl", work / "sweep.jsonl")
    env = _clean_env(HOME=str(tmp_path / "home"), PATH=f"{installed}:{os.environ['PATH']}")

    version = subprocess.run(["rcbatch", "--version"], cwd=work, env=env, capture_output=True,
                             text=True, check=True)
    assert version.stdout.startswith("rcbatch ")
    as_module = subprocess.run([str(installed / "python"), "-m", "rcbatch", "--help"], cwd=work,
                               env=env, capture_output=True, text=True)
    assert as_module.returncode == 0 and "run" in as_module.stdout

    done = subprocess.run(["rcbatch", "run", "sweep.jsonl", "--simulate", "--no-preflight",
                           "--name", "from-pip"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr

    status = subprocess.run(["rcbatch", "status", "from-pip", "--json"], cwd=work, env=env,
                            capture_output=True, text=True, check=True)
    doc = json.loads(status.stdout)
    assert doc["state"] == "finished" and doc["counts"]["completed"] == doc["total"] > 0
    _assert_manifest_verified(Path(doc["manifest"].removeprefix("file://")), doc["total"])


def _assert_manifest_verified(manifest: Path, total: int) -> None:
    """Every manifest line completed, and every output's bytes match its recorded sha256."""
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == total
    bucket = manifest.parent.parent
    for line in lines:
        assert line["status"] == "completed" and line["outputs"]
        for output in line["outputs"]:
            data = (bucket / output["key"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output["sha256"]
            assert len(data) == output["bytes"]
