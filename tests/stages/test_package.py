"""Package stage: the directory the image serves, and the pins that keep the model loadable."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.metadata import version

import joblib
import pytest

from mlops_template.errors import UserError
from mlops_template.params import train_params
from mlops_template.serving.contract import PackageMetadata
from mlops_template.stages.package import build_package, pinned_version, serving_sources
from mlops_template.stages.process import process
from mlops_template.stages.train import train

from ..conftest import REPO, params_dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A processed and trained messy dataset (trained once for the module)."""
    import yaml

    from ..conftest import messy_frame

    workdir = tmp_path_factory.mktemp("trained")
    messy_frame().to_csv(workdir / "raw.csv", index=False)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params_dict()))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        process(workdir / "raw.csv", workdir / "processed", workdir / "params.yaml")
        train(
            workdir / "processed",
            workdir / "model.joblib",
            workdir / "metrics.json",
            workdir / "plots",
            workdir / "params.yaml",
        )
    return workdir


def package(workdir, out, requirements=REPO / "requirements" / "serve.lock"):
    return build_package(
        workdir / "model.joblib",
        workdir / "processed",
        workdir / "metrics.json",
        requirements,
        out,
        max_batch_rows=500,
        estimator=train_params(params_dict()).estimator_class,
    )


def test_package_contents_and_metadata(trained, tmp_path):
    out = tmp_path / "serving"
    metadata = package(trained, out)

    names = sorted(p.name for p in out.iterdir())
    expected = {
        "Model.py",
        "model.joblib",
        "metadata.json",
        "requirements.txt",
        "sample_request.json",
        "seldon-deployment.yaml",
    } | {p.name for p in serving_sources()}
    assert set(names) == expected
    model_bytes = (out / "model.joblib").read_bytes()
    assert model_bytes == (trained / "model.joblib").read_bytes()
    assert metadata == PackageMetadata.read(out)
    assert metadata.model_sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert metadata.classes == ("ant", "bee", "cat")
    assert metadata.feature_names == ["length", "weight", "colour", "shape"]
    assert metadata.metrics == json.loads((trained / "metrics.json").read_text())
    assert metadata.estimator == "RandomForestClassifier"
    assert metadata.max_batch_rows == 500
    assert metadata.versions["scikit-learn"] == version("scikit-learn")
    assert (out / "requirements.txt").read_text() == (REPO / "requirements/serve.lock").read_text()


def test_package_bytes_depend_on_the_inputs_only(trained, tmp_path, monkeypatch):
    """Built twice, from two directories that are not even the same git checkout: same bytes."""
    first, second = tmp_path / "one" / "serving", tmp_path / "two" / "serving"
    package(trained, first)
    monkeypatch.chdir(tmp_path)  # outside any repository: no commit to record
    package(trained, second)
    files = sorted(path.name for path in first.iterdir())
    assert files == sorted(path.name for path in second.iterdir())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert not any(commit in (first / name).read_text(errors="replace") for name in files)


def test_sample_request_is_answerable_by_the_model(trained, tmp_path):
    import pandas as pd

    package(trained, tmp_path / "serving")
    request = json.loads((tmp_path / "serving" / "sample_request.json").read_text())
    rows = pd.DataFrame(request["data"]["ndarray"], columns=request["data"]["names"])
    assert len(rows) == 2
    assert not rows.isna().any().any()
    model = joblib.load(trained / "model.joblib")
    assert model.predict_proba(rows).shape == (2, 3)


def test_serving_lock_must_pin_the_training_scikit_learn(trained, tmp_path):
    lock = tmp_path / "serve.lock"
    lock.write_text("seldon-core==1.17.1\nscikit-learn==1.0.2 \\\n    --hash=sha256:abc\n")
    with pytest.raises(UserError, match=r"pins scikit-learn 1\.0\.2 but the model was trained"):
        package(trained, tmp_path / "serving", requirements=lock)
    assert not (tmp_path / "serving").exists()


def test_pinned_version_reads_hashed_lock_lines():
    lock = "numpy==1.26.4 \\\n    --hash=sha256:00\nscikit-learn==1.9.1 ; python_version >= '3.11'"
    assert pinned_version(lock, "scikit-learn") == "1.9.1"
    assert pinned_version(lock, "numpy") == "1.26.4"
    assert pinned_version(lock, "pandas") is None
    assert pinned_version((REPO / "requirements/serve.lock").read_text(), "seldon-core") == "1.17.1"


def test_training_reference_records_shares_and_decile_bins():
    import numpy as np
    import pandas as pd

    from mlops_template.serving.contract import Bins, Reference
    from mlops_template.stages.package import training_reference

    schema = {
        "classes": ["a", "b", "c"],
        "features": [
            {"name": "size", "kind": "numeric"},
            {"name": "legs", "kind": "numeric"},
            {"name": "empty", "kind": "numeric"},
            {"name": "colour", "kind": "categorical", "categories": ["red"]},
        ],
    }
    features = pd.DataFrame({
        "size": [float(v) for v in range(1, 101)],     # ten values per decile
        "legs": [2.0] * 60 + [4.0] * 30 + [np.nan] * 10,  # repeated deciles merge
        "empty": [np.nan] * 100,                         # nothing to cut: no bins
        "colour": ["red"] * 75 + [None] * 25,
    })  # fmt: skip
    labels = pd.Series(["a"] * 50 + ["b"] * 50)  # no "c" in training

    reference = training_reference(features, labels, schema)

    assert reference.class_shares == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert reference.missing_shares == {"size": 0.0, "legs": 0.1, "empty": 1.0, "colour": 0.25}
    assert set(reference.bins) == {"size", "legs"}
    size = reference.bins["size"]
    assert len(size.edges) == 9
    assert size.shares == (0.1,) * 10
    # searchsorted "right": each edge belongs to the bin above it; the bins hold what they say.
    counts = np.bincount(np.searchsorted(size.edges, features["size"], "right"), minlength=10)
    assert tuple(counts / 100) == size.shares
    assert reference.bins["legs"] == Bins(edges=(2.0, 4.0), shares=(0.0, 0.666667, 0.333333))
    assert Reference.from_dict(reference.to_dict()) == reference
