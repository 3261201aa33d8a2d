"""Train stage: fit and evaluate the model, write model, metrics and plots, log to MLflow."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.files import atomic_directory, atomic_path, git_commit, sha256, write_json
from mlops_template.params import (
    DEFAULT_PARAMS,
    TrainParams,
    data_params,
    load_params,
    process_params,
    train_params,
)

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from mlops_template.evaluate import Evaluation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    """A fitted pipeline and its evaluation on the held-out rows."""

    pipeline: Pipeline
    evaluation: Evaluation


def fit_and_evaluate(
    schema: dict[str, Any],
    train: tuple[pd.DataFrame, pd.Series],
    test: tuple[pd.DataFrame, pd.Series],
    params: TrainParams,
) -> Trained:
    """Build the estimator and its preprocessing, fit on `train`, evaluate on `test`. No I/O."""
    from mlops_template.evaluate import evaluate
    from mlops_template.model import build_estimator, build_pipeline

    pipeline = build_pipeline(schema, build_estimator(params))
    try:
        pipeline.fit(*train)
    except ValueError as error:
        raise UserError(f"train.{params.model}: fitting failed: {error}") from None
    return Trained(pipeline, evaluate(pipeline, schema, *test, params.random_state))


def train(
    processed: Path,
    model_path: Path,
    metrics_path: Path,
    plots_dir: Path,
    params_path: Path = DEFAULT_PARAMS,
) -> dict[str, float]:
    """Run the stage. Params and the tracking server are checked before any work or output."""
    from mlops_template import tracking

    raw = load_params(params_path)
    params = train_params(raw)
    data, process = data_params(raw), process_params(raw)
    uri = tracking.tracking_uri(Path.cwd())
    tracking.check_reachable(uri)
    # The helper process is forked here, before pandas and scikit-learn are imported.
    with tracking.Tracker(uri) as tracker:
        import joblib

        from mlops_template.dataset import read_schema, read_split
        from mlops_template.plots import IMAGES, write_images, write_plot_data

        schema = read_schema(processed / "schema.json")
        test = read_split(processed / "test.csv", schema)
        trained = fit_and_evaluate(
            schema, read_split(processed / "train.csv", schema), test, params
        )
        evaluation = trained.evaluation
        # Everything is staged first and renamed into place only once MLflow has the run too.
        with (
            atomic_directory(plots_dir) as plots_staging,
            atomic_path(model_path) as model_staging,
            atomic_path(metrics_path) as metrics_staging,
        ):
            write_plot_data(evaluation, plots_staging)
            images = write_images(evaluation, plots_staging / IMAGES)
            joblib.dump(trained.pipeline, model_staging)
            write_json(metrics_staging, evaluation.metrics)
            tracker.log_run(
                tracking.RunRecord(
                    train=params,
                    data=data,
                    process=process,
                    pipeline=trained.pipeline,
                    metrics=evaluation.metrics,
                    classes=evaluation.classes,
                    input_example=input_example(test[0]),
                    images=tuple(images),
                    git_commit=git_commit(),
                    model_sha256=sha256(model_staging),
                )
            )
    log.info("%s: %s", params.model, ", ".join(f"{k}={v}" for k, v in evaluation.metrics.items()))
    return evaluation.metrics


def input_example(features: pd.DataFrame, rows: int = 3) -> pd.DataFrame:
    """A few complete test rows (any rows if none is complete) for MLflow's input example."""
    example = features.dropna().head(rows)
    return features.head(rows) if example.empty else example


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
