"""A real moto S3 server in its own process, on 127.0.0.1 and a free port, for tests.

    with MotoS3Server() as server:
        create_bucket(server.endpoint_url, "outputs")
        bucket = open_bucket("s3://outputs/run", s3_client=server.client())

The server accepts any credentials; `client()` passes fake ones explicitly, so nothing here reads
or needs real AWS settings. Code under test that builds its own client (from the environment)
needs fake AWS variables set by the fixture that uses this helper (see `FAKE_AWS_ENV`).
"""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

#: fake credentials and region for code that reads the environment (set them in a fixture)
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/rcbatch-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/rcbatch-test-aws-credentials",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MotoS3Server:
    """`python -m moto.server` as a child process; a context manager that stops it on exit."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 startup_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.endpoint_url = f"http://{host}:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoS3Server:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it answers HTTP; raise if it dies or never does."""
        command = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not answer on {self.endpoint_url}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (terminate, then kill if it lingers)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def reset(self) -> None:
        """Forget every bucket and object (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server with fake credentials (extra botocore Config).

        Without extra config the same client is handed out each time (making one is slow).
        """
        if config:
            return _make_client(self.endpoint_url, **config)
        return _shared_client(self.endpoint_url)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is up
        except OSError:
            return False


def create_bucket(endpoint_url: str, name: str) -> None:
    """Create an S3 bucket named `name` on the server at `endpoint_url`."""
    _shared_client(endpoint_url).create_bucket(Bucket=name)


def _make_client(endpoint_url: str, **config: Any) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, **config))


@functools.lru_cache(maxsize=8)
def _shared_client(endpoint_url: str) -> Any:
    # boto3 clients are thread-safe; building one costs ~0.2 s, so tests share them.
    return _make_client(endpoint_url)
