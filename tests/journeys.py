"""A person at a shell: the installed `rcbatch` command in subprocesses, a home folder of their
own (so the per-user state folder is theirs), and the simulator as a separate server over HTTP
whose `/_sim/stats` outlives the commands that used it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

RCBATCH = str(Path(sys.executable).parent / "rcbatch")
T2I = "bytedance/dreamina-4-0/text-to-image"
TOKEN = "journey-token-3b9d"


def rows(n: int, tag: str = "p") -> list[dict[str, object]]:
    """`n` text-to-image rows, each its own item."""
    return [{"model": T2I, "prompt": f"{tag} {k}", "force_single": True,
             "width×height": "1024x1024(1:1)"} for k in range(n)]


def _default_sigint() -> None:
    """Ctrl-C reaches the child even when the test suite runs in the background (where the
    shell starts jobs with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Shell:
    """One user's shell: a home, a working folder, environment variables."""

    home: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)

    def environ(self, **extra: str) -> dict[str, str]:
        """The child's environment: ours without RCBATCH_* settings, then the shell's."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("RCBATCH_")}
        return {**base, "HOME": str(self.home), "XDG_STATE_HOME": str(self.home / "state"),
                **self.env, **extra}

    def write(self, name: str, items: list[dict[str, object]]) -> Path:
        """A JSONL spec file in the working folder."""
        path = self.cwd / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
        return path

    def run(self, *args: str, timeout: float = 300,
            **extra: str) -> subprocess.CompletedProcess[str]:
        """`rcbatch ARGS` to its end."""
        return subprocess.run([RCBATCH, *args], cwd=self.cwd, env=self.environ(**extra),
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_default_sigint)

    def start(self, *args: str, **extra: str) -> subprocess.Popen[str]:
        """`rcbatch ARGS` in the background (like `&` in a second terminal)."""
        return subprocess.Popen([RCBATCH, *args], cwd=self.cwd, env=self.environ(**extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)

    def status(self, batch: str) -> dict[str, Any]:
        """`rcbatch status BATCH --json`."""
        done = self.run("status", batch, "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               every: float = 0.3) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for an API that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def simulator(shell: Shell, *options: str, port: int = 0) -> Iterator[str]:
    """`rcbatch simulate` as its own server process; yields its base URL."""
    proc = subprocess.Popen([RCBATCH, "simulate", "--port", str(port), "--token", TOKEN,
                             *options], cwd=shell.cwd, env=shell.environ(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.strip().rpartition(" ")[2]
        assert url.startswith("http://127.0.0.1:"), line
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def stats(url: str) -> dict[str, int]:
    """The simulator's counters."""
    doc: dict[str, int] = httpx.get(f"{url}/_sim/stats", timeout=10).json()
    return doc


def verified_outputs(manifest_url: str) -> dict[str, int]:
    """Per manifest status, how many items; every stored output's bytes checked by sha256."""
    import hashlib

    manifest = Path(manifest_url.removeprefix("file://"))
    bucket = manifest.parent.parent
    seen: dict[str, int] = {}
    for line in manifest.read_text().splitlines():
        doc = json.loads(line)
        seen[doc["status"]] = seen.get(doc["status"], 0) + 1
        for output in doc["outputs"] or []:
            data = (bucket / output["key"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output["sha256"], output["key"]
    return seen


def survivors(home: Path) -> list[str]:
    """Command lines of processes still running with this shell's home (what a command
    started and left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"HOME={home}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found
