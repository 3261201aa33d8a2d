"""Train stage: fit and evaluate the model, write model, metrics and plots, log to MLflow."""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.files import (
    atomic_directory,
    atomic_path,
    check_writable,
    git_commit,
    sha256,
    write_json,
)
from mlops_template.params import (
    DEFAULT_PARAMS,
    TrainParams,
    data_params,
    load_params,
    process_params,
    train_params,
)
from mlops_template.progress import Stopwatch

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from mlops_template.evaluate import Evaluation

log = logging.getLogger(__name__)

# Estimators whose fit spreads over cores with their own n_jobs (gradient boosting uses OpenMP
# threads, limited by threadpoolctl; the others fit on one core).
PARALLEL_MODELS = ("random_forest",)


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
    clock: Stopwatch | None = None,
) -> Trained:
    """Build the estimator and its preprocessing, fit on `train`, evaluate on `test`. No I/O.

    Fitting and evaluating use `params.n_jobs` cores (the forest's n_jobs, the OpenMP threads of
    gradient boosting); the returned model is set to predict on one core, as a server wants it.
    The fitted model does not depend on the number of cores.
    """
    from threadpoolctl import threadpool_limits

    from mlops_template.evaluate import evaluate
    from mlops_template.model import build_estimator, build_pipeline

    clock = clock or Stopwatch()
    estimator = build_estimator(params)
    pipeline = build_pipeline(schema, estimator)
    cores = params.model in PARALLEL_MODELS and "n_jobs" not in params.hyperparameters
    if cores:
        estimator.set_params(n_jobs=params.n_jobs)
    features, labels = train
    log.info(
        "fitting %s on %s rows x %d features (n_jobs=%d) [%s]",
        params.model, f"{len(features):,}", len(features.columns), params.n_jobs, clock,
    )  # fmt: skip
    # All cores is every library's default: only a limit needs threadpoolctl (which inspects every
    # loaded native library, a tenth of a second).
    limits = threadpool_limits(params.n_jobs) if params.n_jobs > 0 else contextlib.nullcontext()
    with limits:
        try:
            pipeline.fit(features, labels)
        except ValueError as error:
            raise UserError(f"train.{params.model}: fitting failed: {error}") from None
        log.info("fitted; evaluating on %s test rows [%s]", f"{len(test[0]):,}", clock)
        evaluation = evaluate(pipeline, schema, *test, params.random_state, params.importance_rows)
    if cores:
        estimator.set_params(n_jobs=None)
    # Gradient boosting records the thread count its binning ran with; it is not used to predict,
    # and left in place it would make the model file differ between machines with different cores.
    bin_mapper = getattr(estimator, "_bin_mapper", None)
    if bin_mapper is not None and hasattr(bin_mapper, "n_threads"):
        bin_mapper.n_threads = None
    log.info("evaluated [%s]", clock)
    return Trained(pipeline, evaluation)


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
    check_writable(model_path, metrics_path, plots_dir)
    uri = tracking.tracking_uri(Path.cwd())
    tracking.check_reachable(uri)
    # The helper process is forked here, before pandas and scikit-learn are imported.
    with tracking.Tracker(uri) as tracker:
        import joblib

        from mlops_template.dataset import (
            SCHEMA_FILE,
            TEST_FILE,
            TRAIN_FILE,
            read_schema,
            read_split,
        )
        from mlops_template.plots import IMAGES, write_images, write_plot_data

        clock = Stopwatch()
        schema = read_schema(processed / SCHEMA_FILE)
        test = read_split(processed / TEST_FILE, schema)
        train_split = read_split(processed / TRAIN_FILE, schema)
        log.info(
            "read %s train and %s test rows [%s]",
            f"{len(train_split[0]):,}",
            f"{len(test[0]):,}",
            clock,
        )
        trained = fit_and_evaluate(schema, train_split, test, params, clock)
        del train_split
        evaluation = trained.evaluation
        # Everything is staged first and renamed into place only once MLflow has the run too.
        # Each output's staging is entered just before it is written, so a failed write unwinds
        # through that output's first and is reported as that output's.
        with contextlib.ExitStack() as outputs:
            plots_staging = outputs.enter_context(atomic_directory(plots_dir))
            write_plot_data(evaluation, plots_staging)
            images = write_images(evaluation, plots_staging / IMAGES)
            model_staging = outputs.enter_context(atomic_path(model_path))
            joblib.dump(trained.pipeline, model_staging)
            metrics_staging = outputs.enter_context(atomic_path(metrics_path))
            write_json(metrics_staging, evaluation.metrics)
            log.info("wrote the model, metrics and plots; logging the run to MLflow [%s]", clock)
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
    log.info("train stage done [%s]", clock)
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
