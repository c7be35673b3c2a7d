"""pytest fixtures for bucket tests: a moto S3 server over HTTP, and each kind of bucket.

Shared through tests/conftest.py:

    moto     (module) one moto S3 server, fake AWS credentials in the environment
    bucket   a fresh empty bucket of each kind in turn: local folder, memory, S3
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcbatch.worker.bucket import Bucket, MemoryBucket, S3Bucket, open_bucket
from tests.s3server import FAKE_AWS_ENV, MotoS3Server, create_bucket


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3Server]:
    """One moto S3 server for the module, with fake AWS credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        with MotoS3Server() as server:
            yield server


def new_s3_bucket(moto: MotoS3Server, prefix: str = "pre/fix") -> S3Bucket:
    """A fresh, empty S3 bucket under `prefix` (sharing one client: making one is slow)."""
    name = f"rcb-{uuid.uuid4().hex[:12]}"
    create_bucket(moto.endpoint_url, name)
    bucket = open_bucket(f"s3://{name}/{prefix}", s3_client=moto.client())
    assert isinstance(bucket, S3Bucket)
    return bucket


@pytest.fixture(params=["local", "memory", "s3"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Bucket:
    """Each kind of bucket in turn, empty."""
    if request.param == "local":
        return open_bucket((tmp_path / "my bucket").as_uri())
    if request.param == "memory":
        return MemoryBucket()
    return new_s3_bucket(request.getfixturevalue("moto"))
