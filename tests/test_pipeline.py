"""The whole pipeline through the real `dvc`, in a fresh clone of the committed repository.

The steps share one clone and run in order: a fresh run, a no-op run, a forced rerun, a param
change and an experiment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, clone_repository, fails, project_env, sh, snapshot

pytestmark = pytest.mark.slow

STALE_LOCK = (
    "dvc.lock in git is not what `dvc repro` writes for the committed code and params:\n  {}\n"
    "Run `make run` and commit dvc.lock, metrics.json and plots/ with the change."
)


def lock_entries(lock_text: str) -> dict[str, object]:
    """Every recorded fact of a dvc.lock, flattened: {'train outs models/model.joblib': {...}}."""
    entries: dict[str, object] = {}
    for name, stage in yaml.safe_load(lock_text)["stages"].items():
        entries[f"{name} cmd"] = stage["cmd"]
        entries[f"{name} params"] = stage.get("params")
        for section in ("deps", "outs"):
            for item in stage.get(section, []):
                entries[f"{name} {section} {item['path']}"] = item
    return entries


def lock_differences(committed: str, produced: str) -> list[str]:
    """What differs between two dvc.lock files, one line per entry."""
    old, new = lock_entries(committed), lock_entries(produced)
    return [
        f"{key}: {'not in git' if key not in old else 'gone' if key not in new else 'changed'}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def out_hashes(lock_text: str) -> dict[str, str]:
    """{path: md5} of every output in a dvc.lock."""
    return {
        out["path"]: out["md5"]
        for stage in yaml.safe_load(lock_text)["stages"].values()
        for out in stage["outs"]
    }


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of the committed repository: what a newcomer gets."""
    return clone_repository(tmp_path_factory.mktemp("pipeline") / "repo")


def test_fresh_run_reproduces_the_committed_lock(clone):
    """A newcomer's `make run` changes nothing in git and leaves DVC with nothing to do."""
    committed = (clone / "dvc.lock").read_text()

    sh("dvc", "repro", cwd=clone)

    differences = lock_differences(committed, (clone / "dvc.lock").read_text())
    assert not differences, STALE_LOCK.format("\n  ".join(differences))
    assert sh("git", "status", "--porcelain", cwd=clone) == ""
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)
    for path in (
        "models/serving/Model.py",
        "models/serving/contract.py",
        "models/serving/metadata.json",
        "models/serving/sample_request.json",
        "mlflow.db",
    ):
        assert (clone / path).is_file(), path


def test_bytecode_beside_the_code_changes_nothing(clone):
    """Importing the serving code (from src/, or `make serve` from the package) writes
    __pycache__/ where PYTHONDONTWRITEBYTECODE is unset; DVC must not see it as a change."""
    for folder in ("src/mlops_template/serving", "models/serving"):
        cache = clone / folder / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / "Model.cpython-311.pyc").write_bytes(b"bytecode")
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)


def test_the_lock_check_names_what_is_stale():
    lock = (REPO / "dvc.lock").read_text()
    data = yaml.safe_load(lock)
    data["stages"]["train"]["deps"][1]["md5"] = "0" * 32
    path = data["stages"]["train"]["deps"][1]["path"]
    assert lock_differences(lock, lock) == []
    assert lock_differences(lock, yaml.safe_dump(data)) == [f"train deps {path}: changed"]


def test_unchanged_pipeline_reruns_nothing(clone):
    output = sh("dvc", "repro", cwd=clone)
    assert "Running stage" not in output
    assert "Data and pipelines are up to date" in output


# --- a failed run loses nothing ---------------------------------------------------------------


def failing_repro(clone: Path, *args: str) -> str:
    """`dvc repro` that must fail; its output."""
    return fails("dvc", "repro", *args, cwd=clone)


def edit_params(clone: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params[section][key] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_csv(clone: Path, text: str) -> None:
    (clone / "data" / "raw" / "penguins.csv").write_text(text)


def header_only(clone: Path) -> None:
    csv = clone / "data" / "raw" / "penguins.csv"
    write_csv(clone, csv.read_text().splitlines()[0] + "\n")


def one_class(clone: Path) -> None:
    csv = clone / "data" / "raw" / "penguins.csv"
    lines = csv.read_text().splitlines()
    write_csv(clone, "\n".join([lines[0], *[line for line in lines[1:] if "Adelie" in line]]))


def two_row_class(clone: Path) -> None:
    # Two rows of a new class, and a test_size at which the stratified split gives it no test
    # row (at 0.25 it happens to get one).
    csv = clone / "data" / "raw" / "penguins.csv"
    lines = csv.read_text().splitlines()
    rare = [line.replace("Adelie", "Dodo", 1) for line in lines[1:3]]
    write_csv(clone, "\n".join([*lines, *rare]) + "\n")
    edit_params(clone, "process", "test_size", 0.2)


def repeated_column(clone: Path) -> None:
    csv = clone / "data" / "raw" / "penguins.csv"
    header, *rows = csv.read_text().splitlines()
    write_csv(clone, "\n".join([header.replace(",year", ",island"), *rows]) + "\n")


BAD_INPUTS = {
    # case: (what the user does, the files they edited, what the error names)
    "unknown model": (
        lambda clone: edit_params(clone, "train", "model", "gradient_magic"),
        "params.yaml",
        r"train\.model 'gradient_magic' is not supported",
    ),
    "out-of-range hyperparameter": (
        lambda clone: edit_params(
            clone, "train", "random_forest", {"n_estimators": 100, "max_depth": -1}
        ),
        "params.yaml",
        r"params\.yaml: train\.random_forest: .*max_depth",
    ),
    "bad batch limit": (
        lambda clone: edit_params(clone, "package", "max_batch_rows", 0),
        "params.yaml",
        r"package\.max_batch_rows must be a whole number of at least 1",
    ),
    "bad test_size": (
        lambda clone: edit_params(clone, "process", "test_size", 1.5),
        "params.yaml",
        r"process\.test_size must be between 0 and 1",
    ),
    "missing CSV": (
        lambda clone: edit_params(clone, "data", "csv", "data/raw/missing.csv"),
        "params.yaml",
        r"No such file or directory: .*data/raw/missing\.csv",
    ),
    "CSV with no rows": (header_only, "data/raw/penguins.csv", r"has a header but no rows"),
    "target column missing": (
        lambda clone: edit_params(clone, "data", "target", "beak_colour"),
        "params.yaml",
        r"column 'beak_colour' is not in the CSV",
    ),
    "one class only": (one_class, "data/raw/penguins.csv", r"needs at least two classes, found 1"),
    # Passed the count check once, then both rows went to train and roc_auc was NaN.
    "a class of two rows": (
        two_row_class,
        "data/raw/penguins.csv params.yaml",
        r"class 'Dodo' has 2 rows, too few to split with process.test_size=0.2: the split puts "
        r"none in test",
    ),
    "a repeated column name": (
        repeated_column,
        "data/raw/penguins.csv",
        r"repeats the column name 'island'",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_failed_run_leaves_the_last_good_outputs(clone, case):
    """DVC deletes a stage's outputs before running it, unless they persist: they must."""
    edit, edited, message = BAD_INPUTS[case]
    before = snapshot(clone)
    edit(clone)
    try:
        output = failing_repro(clone)
        assert re.search(message, output), output
        assert "Traceback" not in output
        after = snapshot(clone)
        assert sorted(after) == sorted(before)
        assert [path for path in before if after[path] != before[path]] == []
        changed = sh("git", "status", "--porcelain", cwd=clone).split()
        assert changed == [word for path in edited.split() for word in ("M", path)]
    finally:
        sh("git", "checkout", "--", "params.yaml", "data/raw", cwd=clone)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_stage_leaves_the_last_good_outputs(clone, signal_name):
    """Ctrl-C (SIGINT to the process group) or SIGTERM to the stage, while it trains."""
    before = snapshot(clone)
    repro = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=clone,
        env=project_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # As in a terminal: a job started in the background by a script inherits SIGINT ignored,
        # and Python keeps it ignored, so the test sets the disposition Ctrl-C finds.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        stage = wait_for_stage(repro.pid, "mlops train")
        time.sleep(1.0)  # inside the stage: reading, fitting or writing
        if signal_name == "SIGINT":
            os.killpg(repro.pid, signal.SIGINT)
        else:
            os.kill(stage, signal.SIGTERM)
        output, _ = repro.communicate(timeout=120)
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
            repro.wait()
    assert repro.returncode != 0, output
    assert "Traceback" not in output
    after = snapshot(clone)
    assert [path for path in before if after.get(path) != before[path]] == []
    assert sh("git", "status", "--porcelain", "--ignored", "--", ".", cwd=clone).count(".tmp") == 0
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)


def wait_for_stage(session: int, command: str, timeout: float = 60) -> int:
    """PID of the process running `command` in `session` (not a child it forked), once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                argv = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # stat fields after the name: state, ppid, pgrp, session, ...
            if command in argv and int(fields[3]) == session and not argv.startswith("/bin/sh"):
                found[int(stat.parent.name)] = int(fields[1])
        stages = [pid for pid, parent in found.items() if parent not in found]
        if stages:
            return stages[0]
        time.sleep(0.05)
    raise AssertionError(f"{command} did not start within {timeout} s")


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


def test_register_with_the_local_store_once_per_model(clone):
    """`make register` without a tracking server: the local store's registry, same rules."""
    sh("dvc", "repro", cwd=clone)  # the committed params' model, after the experiments above
    name = yaml.safe_load((clone / "params.yaml").read_text())["registry"]["model_name"]

    first = sh("mlops", "register", "--alias", "candidate", cwd=clone)
    again = sh("mlops", "register", "--alias", "candidate", cwd=clone)

    assert re.search(
        rf"^registered: {name} version (\d+) \(run \w+\); alias 'candidate'", first, re.M
    )
    version = re.search(r"version (\d+)", first)[1]
    assert f"already registered: {name} version {version}" in again


def test_register_refuses_a_model_the_lock_does_not_describe(clone, tmp_path):
    model = clone / "models" / "model.joblib"
    original = model.read_bytes()
    model.write_bytes(original + b"\0")
    try:
        output = fails("mlops", "register", cwd=clone)
    finally:
        model.write_bytes(original)
    assert output.strip() == (
        "error: dvc.lock does not record models/model.joblib as it is now: run `dvc repro` so "
        "that the hashes the version is tagged with are this model's"
    )
