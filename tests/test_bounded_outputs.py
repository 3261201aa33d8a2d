"""Evaluation outputs stay the same size whatever the number of test rows, and are deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_template.evaluate import MAX_CURVE_POINTS, curve_data, evaluate
from mlops_template.model import build_estimator, build_pipeline
from mlops_template.params import TrainParams
from mlops_template.plots import write_images, write_plot_data
from mlops_template.stages.process import infer_schema

from .conftest import messy_frame

ROWS = 120_000
CLASSES = ["ant", "bee", "cat"]
# What the report and `dvc plots` are shown, at most, whatever the data (docs/architecture.md).
MAX_IMAGE_BYTES = 150_000


@pytest.fixture(scope="module")
def large_test_split():
    """A logistic regression fitted on a small frame, and a large test split."""
    small = messy_frame(300)
    schema = infer_schema(small, "label")
    pipeline = build_pipeline(schema, build_estimator(TrainParams("logistic_regression", 0)))
    pipeline.fit(small.drop(columns="label"), small["label"])
    large = messy_frame(ROWS, seed=1)
    return pipeline, schema, large.drop(columns="label"), large["label"]


def test_curves_keep_at_most_the_bound_and_their_ends():
    rng = np.random.default_rng(0)
    actual = rng.choice(CLASSES, ROWS)
    probabilities = rng.dirichlet([1, 1, 1], ROWS)

    roc, pr = curve_data(actual, probabilities, CLASSES)

    for curve in (roc, pr):
        assert 900 <= len(curve) <= MAX_CURVE_POINTS
    assert roc.iloc[0].tolist() == [0.0, 0.0]
    assert roc.iloc[-1].tolist() == [1.0, 1.0]
    assert roc["fpr"].is_monotonic_increasing
    assert roc["tpr"].is_monotonic_increasing
    assert pr["recall"].iloc[-1] == 0.0, "the curve still ends where precision-recall ends"


def test_short_curves_are_kept_whole():
    actual = np.array(["no", "yes", "no", "yes"])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])
    roc, _ = curve_data(actual, probabilities, ["no", "yes"])
    assert len(roc) < MAX_CURVE_POINTS
    assert roc.iloc[-1].tolist() == [1.0, 1.0]


def test_importance_uses_a_seeded_sample_of_the_configured_size(large_test_split, monkeypatch):
    pipeline, schema, features, actual = large_test_split
    from sklearn import inspection

    seen = []
    real = inspection.permutation_importance

    def spy(estimator, sample, *args, **kwargs):
        seen.append(sample.index.to_numpy().copy())
        return real(estimator, sample, *args, **kwargs)

    monkeypatch.setattr(inspection, "permutation_importance", spy)
    first = evaluate(pipeline, schema, features, actual, random_state=3, importance_rows=500)
    again = evaluate(pipeline, schema, features, actual, random_state=3, importance_rows=500)
    evaluate(pipeline, schema, features, actual, random_state=4, importance_rows=500)

    assert [len(rows) for rows in seen] == [500, 500, 500]
    np.testing.assert_array_equal(seen[0], seen[1])
    assert not np.array_equal(seen[0], seen[2]), "the sample follows train.random_state"
    pd.testing.assert_frame_equal(first.importance, again.importance)
    assert first.importance_method == "permutation"
    assert len(first.importance) == 4


def test_plot_files_are_bounded_and_identical_across_runs(large_test_split, tmp_path):
    pipeline, schema, features, actual = large_test_split
    outputs = []
    for name in ("first", "second"):
        result = evaluate(pipeline, schema, features, actual, random_state=0)
        write_plot_data(result, tmp_path / name)
        write_images(result, tmp_path / name / "images")
        outputs.append(
            {
                p.relative_to(tmp_path / name): p.read_bytes()
                for p in (tmp_path / name).rglob("*")
                if p.is_file()
            }
        )

    first, second = outputs
    assert first == second
    lines = {str(path): data.count(b"\n") for path, data in first.items() if path.suffix == ".csv"}
    assert lines["confusion.csv"] == 1 + len(CLASSES) ** 2
    assert lines["importance.csv"] == 1 + len(schema["features"])
    assert lines["roc.csv"] <= 1 + MAX_CURVE_POINTS
    assert lines["precision_recall.csv"] <= 1 + MAX_CURVE_POINTS
    confusion = pd.read_csv(tmp_path / "first" / "confusion.csv")
    assert confusion["count"].sum() == ROWS
    for path, data in first.items():
        if path.suffix == ".png":
            assert len(data) <= MAX_IMAGE_BYTES, path


def test_the_evaluation_predicts_the_test_split_once(large_test_split, monkeypatch):
    pipeline, schema, features, actual = large_test_split
    calls = []
    real = type(pipeline).predict_proba

    def counting(self, frame):
        calls.append(len(frame))
        return real(self, frame)

    monkeypatch.setattr(type(pipeline), "predict_proba", counting)
    evaluate(pipeline, schema, features, actual, random_state=0, importance_rows=50)
    assert calls.count(ROWS) == 1
