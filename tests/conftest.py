"""Shared fixtures: a real SeaweedFS S3 server for the session, and stores over every backend.

S3 tests run against a real server rather than a mock because the S3 backend's correctness rests on
server behaviour (conditional writes, listing order, ETags) that a mock would only restate. One
`weed mini` serves the whole session (it starts in about a second); each test gets its own prefix
in a shared bucket, because SeaweedFS turns every bucket into a collection that takes a volume slot
of its own, and a few dozen buckets would exhaust the slots on a small disk.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.objectstore import ObjectStore
from cowfs.objectstore.local import LocalStore
from cowfs.testing.seaweed import SeaweedServer
from tests.raycluster import ray_cluster  # noqa: F401 - the session's Ray cluster

SHARED_BUCKET = "cowfs-test"

#: Variables that would steer boto3 away from the test server if inherited from the developer's
#: shell; the ones the server needs are set explicitly instead.
_STRAY_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """One SeaweedFS for the whole session, with `SHARED_BUCKET` already made."""
    with SeaweedServer() as server:
        server.make_bucket(SHARED_BUCKET)
        yield server


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 (and so every S3Store the test opens) at the session's server."""
    for name in _STRAY_AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    env = seaweed.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_url(s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    """A fresh, empty `s3://` store location, private to this test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60].strip("-")
    return f"s3://{SHARED_BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "s3"])
def objectstore(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """An opened, empty store on each backend; S3 starts SeaweedFS only when first needed."""
    if request.param == "local":
        store: ObjectStore = LocalStore(tmp_path / "store", create=True)
    else:
        from cowfs.objectstore.s3 import S3Store

        store = S3Store(request.getfixturevalue("s3_url"), create=True)
    try:
        yield store
    finally:
        store.close()


pytest_plugins = ["tests.lakeenv"]
