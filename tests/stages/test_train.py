"""Train stage: outputs, metrics, plots and the MLflow run, against real MLflow stores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mlops_template import tracking
from mlops_template.errors import UserError
from mlops_template.files import sha256
from mlops_template.plots import IMAGE_NAMES
from mlops_template.stages.process import process
from mlops_template.stages.train import train

from ..conftest import project_env

METRICS = {
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "roc_auc",
    "log_loss",
}


@pytest.fixture
def workdir(tmp_path, messy_csv, write_params, monkeypatch):
    """A processed dataset in tmp_path, which is also the working directory (like dvc repro)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(train={"model": "random_forest"})
    process(messy_csv, tmp_path / "processed", params)
    return tmp_path


def run_train(workdir: Path) -> dict[str, float]:
    return train(
        workdir / "processed",
        workdir / "model.joblib",
        workdir / "metrics.json",
        workdir / "plots",
        workdir / "params.yaml",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_outputs_and_the_local_mlflow_run(workdir):
    metrics = run_train(workdir)

    assert set(metrics) == METRICS
    assert json.loads((workdir / "metrics.json").read_text()) == metrics
    assert metrics["accuracy"] > 0.8, "the label is learnable from the length column"
    model = joblib.load(workdir / "model.joblib")
    assert list(model.classes_) == ["ant", "bee", "cat"]
    for name in ("confusion.csv", "roc.csv", "precision_recall.csv", "importance.csv"):
        assert not pd.read_csv(workdir / "plots" / name).empty, name
    importance = pd.read_csv(workdir / "plots" / "importance.csv")
    assert set(importance["feature"]) == {"length", "weight", "colour", "shape"}
    assert importance["feature"].iloc[0] == "length"
    for name in IMAGE_NAMES:
        assert (workdir / "plots" / "images" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics == metrics
    assert run.data.params["model"] == "random_forest"
    assert run.data.params["random_forest.max_depth"] == "3"
    assert "git_commit" in run.data.tags
    assert run.data.tags["model_sha256"] == sha256(workdir / "model.joblib")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {f"plots/{name}" for name in IMAGE_NAMES}
    [logged_model] = client.search_logged_models([run.info.experiment_id])
    assert logged_model.source_run_id == run.info.run_id
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    info = mlflow.models.get_model_info(f"models:/{logged_model.model_id}")
    assert info.signature is not None
    assert [c.name for c in info.signature.inputs] == ["length", "weight", "colour", "shape"]
    assert info.saved_input_example_info is not None


def test_permutation_importance_for_models_without_their_own(workdir, write_params):
    write_params(train={"model": "logistic_regression"})
    run_train(workdir)
    importance = pd.read_csv(workdir / "plots" / "importance.csv")
    assert importance["feature"].iloc[0] == "length"


def test_unreachable_tracking_server_fails_fast_and_writes_nothing(workdir, monkeypatch):
    address = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
    started = time.monotonic()
    with pytest.raises(UserError, match=f"cannot reach the MLflow server at {address}"):
        run_train(workdir)
    assert time.monotonic() - started < 30, "must not sit in retries"
    assert not (workdir / "model.joblib").exists()
    assert not (workdir / "metrics.json").exists()
    assert not (workdir / "plots").exists()


def test_bad_hyperparameter_fails_before_any_output(workdir, write_params):
    write_params(train={"model": "random_forest", "random_forest": {"n_trees": 10}})
    with pytest.raises(UserError, match=r"train\.random_forest\.n_trees"):
        run_train(workdir)
    assert not (workdir / "model.joblib").exists()
    leftovers = [path.name for path in workdir.iterdir() if "mlflow" in path.name]
    assert leftovers == [], "the MLflow store being created is discarded, staging and all"


def test_a_failure_to_log_the_run_fails_the_stage_and_publishes_nothing(workdir, monkeypatch):
    def full_disk(*args):
        raise OSError(28, "No space left on device")

    # The helper process is forked from this one, so it runs the patched function.
    monkeypatch.setattr(tracking, "record_run", full_disk)
    with pytest.raises(UserError, match=r"could not log the run: .*No space left on device"):
        run_train(workdir)
    for name in ("model.joblib", "metrics.json", "plots"):
        assert not (workdir / name).exists(), name


def test_a_logging_process_that_dies_fails_the_stage_instead_of_hanging(workdir, monkeypatch):
    monkeypatch.setattr(tracking, "record_run", lambda *args: os._exit(3))
    with pytest.raises(UserError, match=r"logging process exited \(code 3\)"):
        run_train(workdir)
    assert not (workdir / "metrics.json").exists()


def test_a_store_creation_cut_short_leaves_no_store(tmp_path):
    """Killed during MLflow's schema migrations, the new store is not left half-built."""
    store = tmp_path / "mlflow.db"
    staging = tmp_path / "staging"
    staging.mkdir()
    uri = f"sqlite:///{store}"
    creator = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from mlops_template.tracking import "
            "create_store; create_store(sys.argv[1], Path(sys.argv[2]))",
            uri,
            str(staging),
        ]
    )
    try:
        deadline = time.monotonic() + 120
        while not (staging / store.name).exists():
            assert creator.poll() is None, "the creator ended before it began the store"
            assert time.monotonic() < deadline, "the staged store never appeared"
            time.sleep(0.01)
    finally:
        creator.kill()
        creator.wait()
    assert not store.exists()

    tracking.create_store(uri, tmp_path / "staging")
    client = MlflowClient(tracking_uri=uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]


def outputs(workdir: Path) -> dict[str, bytes]:
    """{path: bytes} of the model, the metrics, every plot file and any staging left beside."""
    paths = [workdir / "model.joblib", workdir / "metrics.json", *workdir.glob("plots/**/*")]
    paths += [path for path in workdir.glob(".*.tmp") if "mlflow" not in path.name]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in paths if p.is_file()}


def logged_runs(workdir: Path) -> int:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def test_a_metric_undefined_on_the_test_split_fails_the_stage_and_replaces_nothing(workdir):
    run_train(workdir)
    last_good = outputs(workdir)
    test_file = workdir / "processed" / "test.parquet"
    test = pd.read_parquet(test_file)
    test[test["label"] != "cat"].to_parquet(test_file, index=False)

    with pytest.raises(
        UserError,
        match=r"^train: metrics? (\w+, )*roc_auc(, \w+)* (is|are) undefined on the test split: "
        r"class 'cat' has no test rows; add rows or merge rare classes$",
    ):
        run_train(workdir)

    assert outputs(workdir) == last_good
    assert logged_runs(workdir) == 1


def test_an_output_folder_that_cannot_be_written_is_found_before_fitting(workdir, monkeypatch):
    def fit(*args, **kwargs):
        raise AssertionError("fitted before the outputs were checked")

    monkeypatch.setattr("mlops_template.stages.train.fit_and_evaluate", fit)
    (workdir / "models").write_text("a file where the model's folder should be")
    with pytest.raises(UserError, match=r"models/model\.joblib: cannot write: .* not a directory"):
        train(
            workdir / "processed",
            workdir / "models" / "model.joblib",
            workdir / "metrics.json",
            workdir / "plots",
            workdir / "params.yaml",
        )
    assert not (workdir / "metrics.json").exists()
    assert not (workdir / "plots").exists()


def test_a_file_size_limit_while_writing_the_model_is_one_line_and_replaces_nothing(workdir):
    """The stage runs under a real RLIMIT_FSIZE: the plots fit under it, the model does not."""
    import resource

    run_train(workdir)
    last_good = outputs(workdir)
    largest_plot = max(path.stat().st_size for path in (workdir / "plots").rglob("*.*"))
    limit = (largest_plot + (workdir / "model.joblib").stat().st_size) // 2
    assert largest_plot < limit < (workdir / "model.joblib").stat().st_size

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [
            sys.executable, "-m", "mlops_template.cli", "train", "--processed", "processed",
            "--model", "model.joblib", "--metrics", "metrics.json", "--plots", "plots",
            "--params", "params.yaml",
        ],
        cwd=workdir, env=project_env(PYTHONDONTWRITEBYTECODE="1"), preexec_fn=limit_file_size,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "error: model.joblib: cannot write: File too large (errno 27)"
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert outputs(workdir) == last_good, "nothing replaced, no staging left"
    assert logged_runs(workdir) == 1
