"""Files of the state folder kept to this user: private folders, and the embedded Redis's
password, made once at random and reused (see rcbatch/cli/embedded_redis.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from rcbatch.errors import ServiceUnavailable


def private_dir(path: Path) -> None:
    """Make `path` (and missing parents) a folder only this user can enter: a new one is
    made 0700, and an existing one of ours is set to 0700 (another user's is left alone)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    chmod_if_ours(path, 0o700)


def state_password(path: Path) -> str:
    """The password kept at `path` (0600), made once at random when there is none yet.

    It is written to a temporary file and linked into place, so two processes starting at
    once agree on one password and nobody reads a half-written file.
    """
    existing = read_password(path)
    if existing:
        chmod_if_ours(path, 0o600)
        return existing
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):  # another process was first: use its
            os.link(temporary, path)
    finally:
        temporary.unlink()
    password = read_password(path)
    if not password:
        raise ServiceUnavailable(f"could not keep a Redis password in {path}")
    return password


def read_password(path: Path) -> str | None:
    """The password kept at `path`, None when there is none."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def chmod_if_ours(path: Path, mode: int) -> None:
    """Set `mode` on `path` if this user owns it (never through a symlink)."""
    with contextlib.suppress(FileNotFoundError):
        info = path.lstat()
        if info.st_uid == os.geteuid() and (info.st_mode & 0o7777) != mode \
                and not path.is_symlink():
            path.chmod(mode)
