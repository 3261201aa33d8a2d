"""Real remote stores on 127.0.0.1 for the session: moto's S3 server and an `mlflow server` whose
artifacts live in it, started by the same code as `make stack-up`, each in its own process group
and stopped by it. A clone of the repository whose pipeline ran against them.

Skip them locally with `pytest -m "not remote"`; `make test` runs them.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops_template import processes, stack
from tests.conftest import clone_repository, project_env, sh

STACK_KEYS = stack.Credentials(*stack.STACK_CREDENTIALS)
_buckets = itertools.count()


@dataclass
class S3:
    """A running S3 endpoint and the keys it takes."""

    url: str
    credentials: stack.Credentials
    pid: int

    def client(self, credentials: stack.Credentials | None = None):
        """A boto3 client for this endpoint."""
        return stack.s3_client(self.url, credentials or self.credentials)

    def new_bucket(self, stem: str) -> str:
        """Create a bucket of its own for one test."""
        name = f"{stem}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, through the S3 API."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def env(self) -> dict[str, str]:
        """AWS variables for this endpoint's keys (what a user exports)."""
        return {
            "AWS_ACCESS_KEY_ID": self.credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_access_key,
            "AWS_DEFAULT_REGION": stack.REGION,
        }


@dataclass
class MLflowServer:
    """A running MLflow tracking server."""

    url: str
    pid: int
    log: Path
    bucket: str


def start_s3(directory: Path, check_credentials: bool = False) -> S3:
    """Moto's S3 server on a free port, logging into `directory`."""
    process, url = stack.start_s3(
        processes.free_port(), directory / "s3.log", check_credentials=check_credentials
    )
    credentials = stack.create_s3_user(url) if check_credentials else STACK_KEYS
    return S3(url, credentials, process.pid)


def start_mlflow(
    s3: S3, directory: Path, bucket: str, registry_uri: str | None = None
) -> MLflowServer:
    """`mlflow server` on a free port: backend in `directory`, artifacts in `bucket`."""
    log = directory / "mlflow.log"
    process, url = stack.start_mlflow(
        processes.free_port(),
        f"sqlite:///{directory / 'mlflow.db'}",
        f"s3://{bucket}/mlflow",
        stack.mlflow_environment(s3.url, s3.credentials),
        log,
        registry_uri=registry_uri,
    )
    return MLflowServer(url, process.pid, log, bucket)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """An S3 endpoint that takes any key (as the stack's)."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        processes.stop(server.pid)


@pytest.fixture(scope="session")
def mlflow_server(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """An MLflow tracking server whose artifacts go to the S3 endpoint, proxied."""
    server = start_mlflow(s3, tmp_path_factory.mktemp("mlflow"), s3.new_bucket("mlflow"))
    try:
        yield server
    finally:
        processes.stop(server.pid)


@pytest.fixture(scope="session")
def trained(mlflow_server: MLflowServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone whose pipeline ran with MLFLOW_TRACKING_URI pointing at the server.

    Tests that change it work on a copy (`copy_of`).
    """
    clone = clone_repository(tmp_path_factory.mktemp("trained") / "repo")
    sh("dvc", "repro", cwd=clone, env=project_env(MLFLOW_TRACKING_URI=mlflow_server.url))
    return clone


def copy_of(repository: Path, destination: Path) -> Path:
    """A copy of a working tree, git, DVC cache and outputs included."""
    shutil.copytree(repository, destination, symlinks=True)
    return destination
