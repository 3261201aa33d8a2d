"""MLflow: an embedded store in the repository by default, or the server in MLFLOW_TRACKING_URI."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from mlops_template.evaluate import Evaluation
    from mlops_template.params import TrainParams

log = logging.getLogger(__name__)

LOCAL_STORE = "mlflow.db"
DEFAULT_EXPERIMENT = "mlops-template"
REACH_TIMEOUT_SECONDS = 5


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store in `root` that `mlflow ui` opens as is."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / LOCAL_STORE).resolve()}"


def check_reachable(uri: str) -> None:
    """Fail fast, with the address, when a tracking server does not answer its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=REACH_TIMEOUT_SECONDS) as response:
            response.read(64)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"MLFLOW_TRACKING_URI: cannot reach the MLflow server at {uri} ({reason}); "
            "start it, fix the address, or unset the variable to use the local store"
        ) from None


def open_store(uri: str) -> str:
    """Import MLflow and open (or create) the store and experiment; returns the experiment id.

    The train stage runs this in a thread while it fits: importing MLflow and creating a new
    SQLite store take several seconds that need not wait for the model.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow
    import mlflow.sklearn
    import skops.io  # noqa: F401  (imported here for the same reason)

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    return experiment.experiment_id


def log_run(
    experiment_id: str,
    params: TrainParams,
    raw_params: dict[str, Any],
    pipeline: Pipeline,
    evaluation: Evaluation,
    example: pd.DataFrame,
    images: list[Path],
    commit: str,
) -> str:
    """Record params, metrics, plots and the model (with signature and input example)."""
    from importlib.metadata import version

    import mlflow
    import pandas as pd
    import skops.io
    from mlflow.models import infer_signature

    probabilities = pd.DataFrame(
        pipeline.predict_proba(example), columns=evaluation.classes, index=example.index
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags({"git_commit": commit, "mlflow.source.git.commit": commit})
        mlflow.log_params(
            {
                "model": params.model,
                "random_state": params.random_state,
                "target": raw_params["data"]["target"],
                "test_size": raw_params["process"]["test_size"],
                **{f"{params.model}.{key}": value for key, value in params.hyperparameters.items()},
            }
        )
        mlflow.log_metrics(evaluation.metrics)
        for image in images:
            mlflow.log_artifact(str(image), artifact_path="plots")
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, probabilities),
            input_example=example,
            # skops (MLflow's safe format) asks which non-standard types to trust on load. This
            # run just fitted the model in this process, so the types it contains are its own.
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)),
            # Named explicitly: inferring them loads the model in a subprocess, seconds per run.
            pip_requirements=[
                f"{package}=={version(package)}"
                for package in ("scikit-learn", "pandas", "numpy", "joblib")
            ],
        )
    log.info("logged MLflow run %s to %s", run.info.run_id, mlflow.get_tracking_uri())
    return run.info.run_id
