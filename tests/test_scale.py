"""The real pipeline on a few hundred thousand generated rows: it says what it does as it goes,
and every output a pull request shows stays within its bound (docs/architecture.md)."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import yaml

from mlops_template.evaluate import MAX_CURVE_POINTS

from .conftest import REPO, clone_repository, sh

pytestmark = pytest.mark.slow

ROWS = 300_000
MAX_IMAGE_BYTES = 150_000


def synthetic_csv():
    """The benchmark's generator: 16 numeric and 4 categorical columns, gaps, three classes."""
    spec = importlib.util.spec_from_file_location(
        "bench_pipeline", REPO / "benchmarks" / "pipeline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_csv


def test_pipeline_on_300k_rows_keeps_outputs_bounded(tmp_path):
    clone = clone_repository(tmp_path / "repo")
    synthetic_csv()(clone / "data" / "raw" / "synthetic.csv", ROWS)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"] = {"csv": "data/raw/synthetic.csv", "target": "label"}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    log = sh("dvc", "repro", cwd=clone)

    assert f"read {ROWS:,} rows x 21 columns" in log
    assert "fitting random_forest on 225,000 rows x 20 features (n_jobs=-1)" in log
    assert "fitted; evaluating on 75,000 test rows" in log
    assert "train stage done" in log
    schema = json.loads((clone / "data/processed/schema.json").read_text())
    assert schema["rows"] == {"train": 225_000, "test": 75_000}
    test = pd.read_parquet(clone / "data/processed/test.parquet")
    assert len(test) == 75_000
    plots = clone / "plots"
    lines = {path.name: len(path.read_text().splitlines()) for path in plots.glob("*.csv")}
    assert lines == {
        "confusion.csv": 1 + 3 * 3,
        "importance.csv": 1 + 20,
        "roc.csv": lines["roc.csv"],
        "precision_recall.csv": lines["precision_recall.csv"],
    }
    assert 2 < lines["roc.csv"] <= 1 + MAX_CURVE_POINTS
    assert 2 < lines["precision_recall.csv"] <= 1 + MAX_CURVE_POINTS
    assert pd.read_csv(plots / "confusion.csv")["count"].sum() == 75_000
    for image in (plots / "images").glob("*.png"):
        assert image.stat().st_size <= MAX_IMAGE_BYTES, image
    assert (clone / "metrics.json").stat().st_size < 1_000
    assert (clone / "models/serving/metadata.json").is_file()
