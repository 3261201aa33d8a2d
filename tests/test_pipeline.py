"""The whole pipeline through the real `dvc`, in a fresh clone of the committed repository.

The steps share one clone and run in order: a fresh run, a no-op run, a forced rerun, a param
change and an experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

pytestmark = pytest.mark.slow

# Outputs whose bytes must not depend on when or where the pipeline ran. The package is not one:
# its metadata records the commit it was built from.
STABLE_OUTPUTS = {
    "process": ["data/processed"],
    "train": ["models/model.joblib", "metrics.json", "plots"],
}


def sh(*args: str, cwd: Path) -> str:
    """Run a command with the project's environment first on PATH; fail with its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def out_hashes(lock_text: str) -> dict[str, str]:
    """{path: md5} of the stable outputs in a dvc.lock."""
    lock = yaml.safe_load(lock_text)
    return {
        out["path"]: out["md5"]
        for stage, paths in STABLE_OUTPUTS.items()
        for out in lock["stages"][stage]["outs"]
        if out["path"] in paths
    }


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of the committed repository: what a newcomer gets."""
    path = tmp_path_factory.mktemp("pipeline") / "repo"
    sh("git", "clone", "--quiet", str(REPO), str(path), cwd=REPO)
    sh("git", "config", "user.email", "test@example.com", cwd=path)
    sh("git", "config", "user.name", "test", cwd=path)
    return path


def test_fresh_run_reproduces_the_committed_lock(clone):
    committed = out_hashes((clone / "dvc.lock").read_text())
    assert set(committed) == {p for paths in STABLE_OUTPUTS.values() for p in paths}

    sh("dvc", "repro", cwd=clone)

    assert out_hashes((clone / "dvc.lock").read_text()) == committed, (
        "dvc.lock in git is not what the pipeline produces: run `make run` and commit dvc.lock, "
        "metrics.json and plots/"
    )
    assert sh("git", "status", "--porcelain", "--", "metrics.json", "plots", cwd=clone) == ""
    for path in (
        "models/serving/Model.py",
        "models/serving/metadata.json",
        "models/serving/sample_request.json",
        "mlflow.db",
    ):
        assert (clone / path).is_file(), path


def test_unchanged_pipeline_reruns_nothing(clone):
    output = sh("dvc", "repro", cwd=clone)
    assert "Running stage" not in output
    assert "Data and pipelines are up to date" in output


def test_forced_rerun_gives_the_same_bytes(clone):
    before = out_hashes((clone / "dvc.lock").read_text())
    model = (clone / "models/model.joblib").read_bytes()

    output = sh("dvc", "repro", "--force", cwd=clone)

    assert output.count("Running stage") == 3
    assert (clone / "models/model.joblib").read_bytes() == model
    assert out_hashes((clone / "dvc.lock").read_text()) == before


def test_train_param_change_reruns_train_and_package_only(clone):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    model = params["train"]["model"]
    old_metrics = json.loads((clone / "metrics.json").read_text())
    # Another value of the first hyperparameter that moves the metrics: a much smaller model.
    params["train"] = {
        **params["train"],
        "model": "decision_tree",
        "decision_tree": {"max_depth": 1, "min_samples_leaf": 1},
    }
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    output = sh("dvc", "repro", cwd=clone)

    assert "Stage 'process' didn't change, skipping" in output
    assert "Running stage 'train'" in output
    assert "Running stage 'package'" in output
    new_metrics = json.loads((clone / "metrics.json").read_text())
    assert new_metrics["accuracy"] < old_metrics["accuracy"]

    params_diff = json.loads(sh("dvc", "params", "diff", "--json", cwd=clone))
    assert params_diff["params.yaml"]["train.model"] == {"old": model, "new": "decision_tree"}
    metrics_diff = json.loads(sh("dvc", "metrics", "diff", "--json", cwd=clone))
    accuracy = metrics_diff["metrics.json"]["accuracy"]
    assert accuracy["old"] == old_metrics["accuracy"]
    assert accuracy["new"] == new_metrics["accuracy"]
    assert accuracy["diff"] == pytest.approx(new_metrics["accuracy"] - old_metrics["accuracy"])
    plots = sh("dvc", "plots", "diff", "--json", cwd=clone)
    assert "plots/images/confusion_matrix.png" in plots

    sh("git", "checkout", "--", "params.yaml", cwd=clone)
    sh("dvc", "repro", cwd=clone)


def test_experiments_run_with_set_params_and_show(clone):
    sh("dvc", "exp", "run", "--name", "shallow", "-S", "train.random_forest.max_depth=1", cwd=clone)
    table = json.loads(sh("dvc", "exp", "show", "--json", cwd=clone))
    experiments = [exp for entry in table for exp in (entry.get("experiments") or [])]
    [shallow] = [exp for exp in experiments if exp.get("name") == "shallow"]
    revision = shallow["revs"][0]["data"]
    assert revision["params"]["params.yaml"]["data"]["train"]["random_forest"]["max_depth"] == 1
    assert set(revision["metrics"]["metrics.json"]["data"]) >= {"accuracy", "log_loss"}
