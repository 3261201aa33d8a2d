"""The train stage and `mlops register` against a real MLflow server with artifacts in S3.

A second, "fragile" server (its registry in a SQLite file of its own, its artifacts in a bucket of
their own) is broken on purpose: the registry locked, the bucket gone, the server killed mid-run.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mlops_template import processes
from mlops_template.files import sha256
from mlops_template.plots import IMAGE_NAMES
from tests.conftest import REPO, fails, project_env, sh, snapshot
from tests.remote.conftest import S3, MLflowServer, copy_of, start_mlflow

pytestmark = [pytest.mark.slow, pytest.mark.remote]

MODEL_NAME = yaml.safe_load((REPO / "params.yaml").read_text())["registry"]["model_name"]
# A stage failure is one `error:` line from the stage, then DVC's own summary.
STAGE_ERROR = re.compile(r"^error: (.*)$", re.MULTILINE)


def run_of(client: MlflowClient, model: Path):
    """The run that logged this model file (found by its sha256 tag)."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.model_sha256 = '{sha256(model)}'")
    assert len(runs) == 1, runs
    return runs[0]


def predictions(repository: Path, model) -> np.ndarray:
    """The model's probabilities on the repository's test split."""
    from mlops_template.dataset import read_schema, read_split

    schema = read_schema(repository / "data/processed/schema.json")
    features, _ = read_split(repository / "data/processed/test.parquet", schema)
    return model.predict_proba(features)


def test_train_logs_the_run_to_the_server_with_its_artifacts_in_the_bucket(
    trained: Path, mlflow_server: MLflowServer, s3: S3
) -> None:
    run = run_of(MlflowClient(mlflow_server.url), trained / "models/model.joblib")

    assert run.data.metrics == json.loads((trained / "metrics.json").read_text())
    assert run.data.params["model"] == "random_forest"
    keys = s3.keys(mlflow_server.bucket, "mlflow/")
    prefix = f"mlflow/{run.info.experiment_id}/{run.info.run_id}/artifacts/plots/"
    assert {f"{prefix}{name}" for name in IMAGE_NAMES} <= set(keys)
    model_files = {key.rsplit("/", 1)[1] for key in keys if "/models/" in key}
    assert {"MLmodel", "model.skops", "input_example.json"} <= model_files
    assert not (trained / "mlflow.db").exists(), "nothing went to a local store"


def test_register_sets_the_alias_and_the_registry_model_predicts_like_the_pipeline(
    trained: Path, mlflow_server: MLflowServer
) -> None:
    env = project_env(MLFLOW_TRACKING_URI=mlflow_server.url)
    model = trained / "models/model.joblib"
    run = run_of(MlflowClient(mlflow_server.url), model)

    out = sh("mlops", "register", "--alias", "candidate", cwd=trained, env=env)

    assert f"registered: {MODEL_NAME} version 1 (run {run.info.run_id})" in out
    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version_by_alias(MODEL_NAME, "candidate")
    assert version.version == "1"
    assert version.run_id == run.info.run_id
    lock = yaml.safe_load((trained / "dvc.lock").read_text())["stages"]
    recorded = {
        f"dvc.{dep['path']}": dep["md5"]
        for stage in ("process", "train")
        for dep in lock[stage]["deps"]
    }
    assert {key: version.tags[key] for key in recorded} == recorded
    assert "dvc.data/processed" in recorded
    assert version.tags["model_sha256"] == sha256(model)
    assert version.tags["git_commit"] == run.data.tags["git_commit"]

    import mlflow.sklearn

    mlflow.set_tracking_uri(mlflow_server.url)
    served = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@candidate")
    expected = predictions(trained, joblib.load(model))
    np.testing.assert_array_equal(predictions(trained, served), expected)

    again = sh("mlops", "register", "--alias", "candidate", cwd=trained, env=env)
    assert f"already registered: {MODEL_NAME} version 1" in again
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 1


def test_register_logs_a_run_for_a_model_the_store_has_not_seen(
    trained: Path, mlflow_server: MLflowServer, tmp_path: Path
) -> None:
    """A model pulled from the DVC remote, trained with another store: logged, then registered."""
    repository = copy_of(trained, tmp_path / "pulled")
    params = yaml.safe_load((repository / "params.yaml").read_text())
    params["registry"]["model_name"] = "pulled-model"
    (repository / "params.yaml").write_text(yaml.safe_dump(params))
    env = project_env(MLFLOW_TRACKING_URI=mlflow_server.url, MLFLOW_EXPERIMENT_NAME="elsewhere")

    out = sh("mlops", "register", cwd=repository, env=env)

    assert "registered: pulled-model version 1" in out
    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version("pulled-model", "1")
    run = client.get_run(version.run_id)
    assert run.data.tags["mlops.logged_by"] == "mlops register"
    assert client.get_experiment(run.info.experiment_id).name == "elsewhere"
    assert run.data.metrics == json.loads((repository / "metrics.json").read_text())


# --- failures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fragile(
    s3: S3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[MLflowServer, Path]]:
    """A server with its registry in a file of its own, its artifacts in a bucket of their own."""
    directory = tmp_path_factory.mktemp("fragile")
    registry = directory / "registry.db"
    server = start_mlflow(s3, directory, s3.new_bucket("fragile"), f"sqlite:///{registry}")
    MlflowClient(server.url).search_registered_models()  # the registry's tables exist
    try:
        yield server, registry
    finally:
        processes.stop(server.pid)


def stage_error(output: str) -> str:
    """The one error line the failed stage printed (and no traceback)."""
    assert "Traceback" not in output, output
    lines = STAGE_ERROR.findall(output)
    assert len(lines) == 1, output
    return lines[0]


def test_registry_unavailable_fails_register_in_one_line_and_never_training(
    trained: Path, fragile: tuple[MLflowServer, Path], tmp_path: Path
) -> None:
    """Registering is a step of its own: a registry that is down fails it, and only it."""
    server, registry = fragile
    repository = copy_of(trained, tmp_path / "repository")
    env = project_env(MLFLOW_TRACKING_URI=server.url)
    lock = sqlite3.connect(registry, timeout=1)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # the registry's database, locked by someone else
        sh("dvc", "repro", "--force", "--single-item", "train", cwd=repository, env=env)
        started = time.monotonic()
        # Each request waits about 20 s for the locked database before the server answers 503;
        # no client retries, so the test waits for one.
        no_retries = env | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        output = fails("mlops", "register", cwd=repository, env=no_retries)
        seconds = time.monotonic() - started
    finally:
        lock.rollback()
        lock.close()
    [error] = [line for line in output.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: MLflow model registry at {server.url}: "), output
    assert "Traceback" not in output
    assert seconds < 120
    client = MlflowClient(server.url)
    run_of(client, repository / "models/model.joblib")  # the training run was logged
    assert client.search_registered_models() == []


def test_a_tracking_server_answering_errors_fails_the_stage_and_keeps_the_outputs(
    trained: Path, fragile: tuple[MLflowServer, Path], s3: S3, tmp_path: Path
) -> None:
    server, _ = fragile
    bucket = s3.client()
    for key in s3.keys(server.bucket):  # the artifact store gone: every upload answers 500
        bucket.delete_object(Bucket=server.bucket, Key=key)
    bucket.delete_bucket(Bucket=server.bucket)
    repository = copy_of(trained, tmp_path / "repository")
    before = snapshot(repository)
    env = project_env(MLFLOW_TRACKING_URI=server.url)

    output = fails("dvc", "repro", "--force", "--single-item", "train", cwd=repository, env=env)

    assert stage_error(output).startswith(f"MLflow store {server.url}: could not log the run")
    assert snapshot(repository) == before
    assert sh("git", "status", "--porcelain", cwd=repository) == ""


def test_a_tracking_server_that_dies_mid_run_fails_the_stage_and_keeps_the_outputs(
    trained: Path, fragile: tuple[MLflowServer, Path], tmp_path: Path
) -> None:
    server, _ = fragile
    repository = copy_of(trained, tmp_path / "repository")
    before = snapshot(repository)
    requests_before = server.log.read_text().count("experiments/get-by-name")
    repro = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=repository,
        env=project_env(MLFLOW_TRACKING_URI=server.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # The stage has opened its experiment on the server: now the server goes away.
        deadline = time.monotonic() + 120
        while server.log.read_text().count("experiments/get-by-name") == requests_before:
            assert repro.poll() is None, repro.stdout.read()
            assert time.monotonic() < deadline, "the stage never reached the server"
            time.sleep(0.05)
        processes.stop(server.pid)
        output, _ = repro.communicate(timeout=300)
    finally:
        if repro.poll() is None:
            processes.stop(repro.pid)
    assert repro.returncode != 0, output
    assert stage_error(output).startswith(f"MLflow store {server.url}")
    assert snapshot(repository) == before
    assert sh("git", "status", "--porcelain", cwd=repository) == ""
