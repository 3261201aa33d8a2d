"""Train stage: fit and evaluate the model, write model, metrics and plots, log to MLflow."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.files import atomic_directory, atomic_path, git_commit, write_json
from mlops_template.params import DEFAULT_PARAMS, TrainParams, load_params, train_params

if TYPE_CHECKING:
    from sklearn.base import ClassifierMixin

    from mlops_template.tracking import Tracker

log = logging.getLogger(__name__)


def train(
    processed: Path,
    model_path: Path,
    metrics_path: Path,
    plots_dir: Path,
    params_path: Path = DEFAULT_PARAMS,
) -> dict[str, float]:
    """Run the stage. Params and the tracking server are checked before any work or output."""
    from mlops_template import tracking
    from mlops_template.model import build_estimator

    raw = load_params(params_path)
    params = train_params(raw)
    uri = tracking.tracking_uri(Path.cwd())
    tracking.check_reachable(uri)
    with tracking.Tracker(uri) as tracker:
        estimator = build_estimator(params)
        return _fit_evaluate_write(
            processed, model_path, metrics_path, plots_dir, raw, params, estimator, tracker
        )


def _fit_evaluate_write(
    processed: Path,
    model_path: Path,
    metrics_path: Path,
    plots_dir: Path,
    raw: dict[str, Any],
    params: TrainParams,
    estimator: ClassifierMixin,
    tracker: Tracker,
) -> dict[str, float]:
    """Fit, evaluate, stage all outputs, log the run to MLflow, then publish."""
    import joblib

    from mlops_template.dataset import read_schema, read_split
    from mlops_template.evaluate import evaluate
    from mlops_template.model import build_pipeline
    from mlops_template.plots import IMAGES, write_images, write_plot_data

    schema = read_schema(processed / "schema.json")
    features, labels = read_split(processed / "train.csv", schema)
    test_features, test_labels = read_split(processed / "test.csv", schema)
    pipeline = build_pipeline(schema, estimator)
    try:
        pipeline.fit(features, labels)
    except ValueError as error:
        raise UserError(f"train.{params.model}: fitting failed: {error}") from None
    evaluation = evaluate(pipeline, schema, test_features, test_labels, params.random_state)

    # Everything is staged first and renamed into place only once MLflow has the run too.
    with (
        atomic_directory(plots_dir) as plots_staging,
        atomic_path(model_path) as model_staging,
        atomic_path(metrics_path) as metrics_staging,
    ):
        write_plot_data(evaluation, plots_staging)
        images = write_images(evaluation, plots_staging / IMAGES)
        joblib.dump(pipeline, model_staging)
        write_json(metrics_staging, evaluation.metrics)
        example = test_features.dropna().head(3)
        if example.empty:
            example = test_features.head(3)
        tracker.log_run(params, raw, pipeline, evaluation, example, images, git_commit())
    log.info("%s: %s", params.model, ", ".join(f"{k}={v}" for k, v in evaluation.metrics.items()))
    return evaluation.metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the stage's command-line options (paths come from dvc.yaml)."""
    parser.add_argument("--processed", type=Path, required=True, help="output of the process stage")
    parser.add_argument(
        "--model", type=Path, required=True, help="where to write the fitted pipeline"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="where to write metrics.json")
    parser.add_argument(
        "--plots", type=Path, required=True, help="directory for plot data and images"
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops train`."""
    train(args.processed, args.model, args.metrics, args.plots, args.params)
    return 0
