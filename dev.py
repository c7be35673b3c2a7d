#!/usr/bin/env python3
"""Set up the project and run it: `python3 dev.py demo` or `python3 dev.py test [pytest args]`.

Needs only Python >= 3.11 and access to PyPI. Creates `.venv/`, installs the package with the
pinned versions of `requirements.lock` (again only when pyproject.toml or the lock changed),
then runs the demo sweep against the local simulator, or the whole test suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".rcbatch-installed"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "requirements.lock"):
        path = ROOT / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_env() -> None:
    """Create the virtualenv and install the project into it when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"rcbatch needs Python >= 3.11 (this is {sys.version.split()[0]})")
    if not (BIN / "python").exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _fingerprint():
        return
    print("installing rcbatch and its dependencies into .venv ...", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    lock = ["-c", str(ROOT / "requirements.lock")] if (ROOT / "requirements.lock").exists() else []
    subprocess.run([*pip, *lock, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_fingerprint())


def ensure_browser() -> None:
    """Debian's Chromium for the contact-sheet test (installed with apt when missing)."""
    if shutil.which("chromium") or not shutil.which("apt-get"):
        return
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        print("note: chromium is missing and cannot be installed here; "
              "the contact-sheet browser test will be skipped", file=sys.stderr)
        return
    print("installing Debian's chromium for the contact-sheet test ...", file=sys.stderr)
    quiet = {"stdout": subprocess.DEVNULL, "env": {**os.environ,
                                                     "DEBIAN_FRONTEND": "noninteractive"}}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, **quiet)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "chromium"], check=False, **quiet)


def main(argv: list[str]) -> int:
    """Dispatch `demo` and `test`."""
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_env()
    os.chdir(ROOT)
    if argv[0] == "setup":
        return 0
    if argv[0] == "demo":
        cmd = [str(BIN / "rcbatch"), "run", "examples/sweep.jsonl", "--simulate", *argv[1:]]
    else:
        ensure_browser()
        cmd = [str(BIN / "python"), "-m", "pytest", *argv[1:]]
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
