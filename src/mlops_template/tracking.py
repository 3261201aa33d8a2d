"""MLflow: an embedded store in the repository by default, or the server in MLFLOW_TRACKING_URI."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.serving.contract import VERSIONED_LIBRARIES

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import pandas as pd
    from sklearn.pipeline import Pipeline

    from mlops_template.params import DataParams, ProcessParams, TrainParams

log = logging.getLogger(__name__)

LOCAL_STORE = "mlflow.db"
# The run tag (and registered model version tag) naming the model file's sha256.
MODEL_SHA256_TAG = "model_sha256"
DEFAULT_EXPERIMENT = "mlops-template"
REACH_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class RunRecord:
    """One training run, as the train stage hands it to MLflow."""

    train: TrainParams
    data: DataParams
    process: ProcessParams
    pipeline: Pipeline
    metrics: dict[str, float]
    classes: list[str]
    input_example: pd.DataFrame
    images: tuple[Path, ...]
    git_commit: str
    model_sha256: str  # of the model file the pipeline writes: how `mlops register` finds the run

    def params(self) -> dict[str, Any]:
        """The run's MLflow params: the model, its settings, and the data they were fitted on."""
        return {
            "model": self.train.model,
            "random_state": self.train.random_state,
            "target": self.data.target,
            "test_size": self.process.test_size,
            **{
                f"{self.train.model}.{key}": value
                for key, value in self.train.hyperparameters.items()
            },
        }


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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def create_store(uri: str, staging: Path | None) -> None:
    """Create a missing SQLite store whole or not at all.

    MLflow builds a new store with dozens of schema migrations; interrupted halfway, the file is
    left in a state every later run fails on. So the store is built in `staging` and linked into
    place complete (a link never replaces a store that a parallel run created meanwhile).
    """
    path = sqlite_path(uri)
    if path is None or staging is None or path.exists():
        return
    from mlflow.tracking import MlflowClient

    staged = staging / path.name
    MlflowClient(tracking_uri=f"sqlite:///{staged.resolve()}").search_experiments(max_results=1)
    try:
        os.link(staged, path)
    except FileExistsError:
        pass  # another run created the store meanwhile: use theirs
    except OSError:  # a file system without hard links
        if not path.exists():
            os.replace(staged, path)


def open_store(uri: str, staging: Path | None = None) -> str:
    """Import MLflow, create the store if needed, open the experiment; returns its id."""
    # MLflow's usage telemetry posts to the internet from a thread that can hold the process
    # open for seconds at exit; a pipeline run stays offline unless the user opts in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # skops first: on import it scans the loaded modules, several times slower once MLflow's are.
    import skops.io  # noqa: F401, I001
    import mlflow
    import mlflow.sklearn

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    try:
        create_store(uri, staging)
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.set_experiment(name).experiment_id
    except Exception as error:  # any store failure: one line
        raise UserError(f"MLflow store {uri}: cannot open experiment {name!r}: {error}") from None
    return experiment_id


class Tracker:
    """MLflow in a helper process, so that it runs on the other core while the model trains.

    Importing skops and MLflow, creating a new SQLite store and logging the model take several
    seconds of Python; in a thread they would queue behind the fitting for the interpreter lock.
    The helper is forked before the training libraries are imported (nothing heavy is loaded
    yet, so forking is cheap and safe), opens the store meanwhile, and logs the run when asked.
    If the stage fails first, the helper is stopped at once: a store it may be creating is
    still in staging and is thrown away.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._staging: Path | None = None
        store = sqlite_path(uri)
        if store is not None and not store.exists():
            try:
                store.parent.mkdir(parents=True, exist_ok=True)
                self._staging = Path(
                    tempfile.mkdtemp(prefix=f".{store.name}.", suffix=".tmp", dir=store.parent)
                )
            except OSError as error:
                raise UserError(f"MLflow store {uri}: cannot create {store}: {error}") from None
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._connection, helper_end = context.Pipe()
        self._helper = context.Process(
            target=_helper, args=(helper_end, uri, self._staging), name="mlflow", daemon=True
        )
        self._helper.start()
        helper_end.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._connection.close()
        if error is not None and self._helper.is_alive():
            self._helper.terminate()
        self._helper.join()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)

    def log_run(self, record: RunRecord) -> str:
        """Send the run to the helper (see `record_run`) and wait for its id."""
        try:
            self._connection.send(record)
            status, value = self._connection.recv()
        except (EOFError, BrokenPipeError):
            self._helper.join()
            raise UserError(
                f"MLflow store {self.uri}: the logging process exited "
                f"(code {self._helper.exitcode}) before the run was logged"
            ) from None
        if status != "ok":
            raise UserError(value)
        return value


def _helper(connection: Connection, uri: str, staging: Path | None) -> None:
    """The helper process: open the store, wait for the run's data, log it, answer.

    Every failure goes back to the stage as one line; the store's own are already UserErrors.
    """
    # The stage stops a helper it no longer needs with SIGTERM: just end, whatever was inherited.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the stage's to handle
    try:
        experiment_id = open_store(uri, staging)
        record = connection.recv()
        answer = ("ok", record_run(experiment_id, record))
    except UserError as error:
        answer = ("error", str(error))
    except EOFError:  # the stage failed and closed the pipe: nothing to log
        return
    except Exception as error:  # reported to the stage as one line
        answer = ("error", f"MLflow store {uri}: could not log the run: {error}")
    with contextlib.suppress(BrokenPipeError):
        connection.send(answer)


def record_run(experiment_id: str, record: RunRecord) -> str:
    """Record params, metrics, plots and the model (with signature and input example)."""
    from importlib.metadata import version

    import mlflow
    import pandas as pd
    import skops.io
    from mlflow.models import infer_signature

    example = record.input_example
    probabilities = pd.DataFrame(
        record.pipeline.predict_proba(example),
        columns=record.classes,
        index=example.index,
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags(
            {
                "git_commit": record.git_commit,
                "mlflow.source.git.commit": record.git_commit,
                MODEL_SHA256_TAG: record.model_sha256,
            }
        )
        mlflow.log_params(record.params())
        mlflow.log_metrics(record.metrics)
        for image in record.images:
            mlflow.log_artifact(str(image), artifact_path="plots")
        mlflow.sklearn.log_model(
            record.pipeline,
            name="model",
            signature=infer_signature(example, probabilities),
            input_example=example,
            # skops (MLflow's safe format) asks which non-standard types to trust on load. The
            # model was fitted by this very run, so the types it contains are its own.
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(record.pipeline)),
            # Named explicitly: inferring them loads the model in a subprocess, seconds per run.
            pip_requirements=[f"{name}=={version(name)}" for name in VERSIONED_LIBRARIES],
        )
    log.info("logged MLflow run %s to %s", run.info.run_id, mlflow.get_tracking_uri())
    return run.info.run_id
