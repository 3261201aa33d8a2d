"""`mlops register`: the pipeline's model as a version of one registered model in MLflow.

Run after `dvc repro`, when `dvc.lock` records the hashes of the data and code the model came from.
The version is tagged with them (`dvc.<path>`: the md5 DVC recorded for each input of the process
and train stages), with the model file's sha256 and the git commit. The same model registers
once: running the command again finds its version and only (re)sets the alias.

The run it registers is the train run that logged this model file (the run's `model_sha256` tag).
When the tracking store has none, for example because the model was trained with another store
and pulled from the DVC remote, the command logs one from the pipeline's files first.

The registry is a separate step from training on purpose: a registry that is down fails this
command (one line, exit 2) and never a training run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mlops_template import tracking
from mlops_template.errors import UserError
from mlops_template.files import read_json, sha256
from mlops_template.params import (
    DEFAULT_PARAMS,
    data_params,
    load_params,
    process_params,
    registry_params,
    train_params,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

DEFAULT_LOCK = Path("dvc.lock")
# The stages whose inputs a model version is traced to.
TRACED_STAGES = ("process", "train")
LOGGED_BY_TAG = "mlops.logged_by"


@dataclass(frozen=True)
class Registered:
    """The outcome: which version of which registered model holds the model."""

    name: str
    version: str
    run_id: str
    created: bool
    alias: str | None


def read_lock(lock_path: Path) -> dict:
    """The stages of a dvc.lock."""
    try:
        stages = yaml.safe_load(lock_path.read_text(encoding="utf-8"))["stages"]
    except FileNotFoundError:
        raise UserError(f"{lock_path} not found: run the pipeline (dvc repro) first") from None
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise UserError(f"{lock_path} is not a DVC lock file: {error}") from None
    if "train" not in stages:
        raise UserError(f"{lock_path} has no train stage: run the pipeline (dvc repro) first")
    return stages


def train_paths(stages: dict) -> argparse.Namespace:
    """The train stage's paths (model, metrics, plots, processed data), read from its command.

    dvc.yaml is where they are declared; the lock records the command that ran.
    """
    import shlex

    from mlops_template.stages import train

    parser = argparse.ArgumentParser(prog="mlops train", add_help=False)
    train.add_arguments(parser)
    command = shlex.split(stages["train"]["cmd"])
    return parser.parse_args(command[command.index("train") + 1 :])


def lock_tags(stages: dict, model_path: Path) -> dict[str, str]:
    """`dvc.<path>` -> md5 for the traced stages' inputs; UserError if the lock is not this model's.

    The model file must be the one `dvc.lock` records as the train stage's output, or the hashes
    would describe another model.
    """
    import hashlib

    recorded = {out["path"]: out.get("md5") for out in stages["train"].get("outs", [])}
    digest = hashlib.md5(model_path.read_bytes(), usedforsecurity=False).hexdigest()
    if recorded.get(model_path.as_posix()) != digest:
        raise UserError(
            f"dvc.lock does not record {model_path} as it is now: run `dvc repro` so that the "
            "hashes the version is tagged with are this model's"
        )
    tags = {}
    for stage in TRACED_STAGES:
        for dep in stages.get(stage, {}).get("deps", []):
            tags[f"dvc.{dep['path']}"] = str(dep.get("md5", ""))
    return tags


def find_run(client: MlflowClient, experiment_id: str, model_sha256: str) -> str | None:
    """The newest run that logged the model file with this sha256, if any."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{tracking.MODEL_SHA256_TAG} = '{model_sha256}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_from_files(
    client: MlflowClient, experiment_id: str, paths: argparse.Namespace, model_sha256: str
) -> str:
    """Log a run for a model the tracking store has never seen, from the pipeline's outputs."""
    import joblib

    from mlops_template.dataset import SCHEMA_FILE, TEST_FILE, read_schema, read_split
    from mlops_template.files import git_commit
    from mlops_template.plots import IMAGE_NAMES, IMAGES
    from mlops_template.stages.train import input_example

    raw = load_params(paths.params)
    schema = read_schema(paths.processed / SCHEMA_FILE)
    test_features, _ = read_split(paths.processed / TEST_FILE, schema)
    images = [paths.plots / IMAGES / name for name in IMAGE_NAMES]
    record = tracking.RunRecord(
        train=train_params(raw),
        data=data_params(raw),
        process=process_params(raw),
        pipeline=joblib.load(paths.model),
        metrics=read_json(paths.metrics),
        classes=list(schema["classes"]),
        input_example=input_example(test_features),
        images=tuple(path for path in images if path.is_file()),
        git_commit=git_commit(),
        model_sha256=model_sha256,
    )
    run_id = tracking.record_run(experiment_id, record)
    client.set_tag(run_id, LOGGED_BY_TAG, "mlops register")
    return run_id


def logged_model_uri(client: MlflowClient, experiment_id: str, run_id: str) -> tuple[str, str]:
    """(models:/<id>, id) of the model the run logged."""
    models = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    if not models:
        raise UserError(f"MLflow run {run_id} logged no model; train again (dvc repro --force)")
    return f"models:/{models[0].model_id}", models[0].model_id


def versions_by_sha256(client: MlflowClient, name: str) -> dict[str, str]:
    """model sha256 -> the version of `name` that holds it (the first, if several do)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    found: dict[str, str] = {}
    for version in versions:
        found.setdefault(version.tags.get(tracking.MODEL_SHA256_TAG, ""), version.version)
    return found


def existing_version(client: MlflowClient, name: str, model_sha256: str) -> str | None:
    """The version of `name` that already holds the model with this sha256, if any."""
    return versions_by_sha256(client, name).get(model_sha256)


def register(
    alias: str | None = None, lock_path: Path = DEFAULT_LOCK, params_path: Path = DEFAULT_PARAMS
) -> Registered:
    """Register the pipeline's model (once) and point `alias` at its version."""
    name = registry_params(load_params(params_path)).model_name
    stages = read_lock(lock_path)
    paths = train_paths(stages)
    paths.params = params_path
    if not paths.model.is_file():
        raise UserError(f"{paths.model} not found: run the pipeline (dvc repro) first")
    model_sha256 = sha256(paths.model)
    tags = {tracking.MODEL_SHA256_TAG: model_sha256} | lock_tags(stages, paths.model)
    uri = tracking.tracking_uri(Path.cwd())
    tracking.check_reachable(uri)
    experiment_id = tracking.open_store(uri)

    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    with one_line(f"MLflow model registry at {uri}"):
        version = existing_version(client, name, model_sha256)
    created = version is None
    if version is not None:
        with one_line(f"MLflow model registry at {uri}"):
            run_id = client.get_model_version(name, version).run_id
    else:
        with one_line(f"MLflow tracking at {uri}"):
            run_id = find_run(client, experiment_id, model_sha256)
            if run_id is None:
                logger.info("no run in %s logged this model: logging one from its files", uri)
                run_id = log_from_files(client, experiment_id, paths, model_sha256)
            tags["git_commit"] = client.get_run(run_id).data.tags.get("git_commit", "")
            model_uri, model_id = logged_model_uri(client, experiment_id, run_id)
        with one_line(f"MLflow model registry at {uri}"):
            try:
                client.create_registered_model(name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = client.create_model_version(
                name, model_uri, run_id=run_id, tags=tags, model_id=model_id
            ).version
    if alias:
        with one_line(f"MLflow model registry at {uri}"):
            client.set_registered_model_alias(name, alias, version)
    return Registered(name, str(version), run_id, created, alias)


@contextlib.contextmanager
def one_line(where: str) -> Iterator[None]:
    """Turn any failure of the block (MLflow's, the network's) into one UserError line."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # whatever the store or the network raised: one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(f"{where}: {message}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument("--alias", help="point this alias (e.g. candidate) at the model's version")
    parser.add_argument(
        "--skip-without-server",
        action="store_true",
        help="succeed doing nothing, saying why, when MLFLOW_TRACKING_URI is not set",
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops register`."""
    if args.skip_without_server and not os.environ.get("MLFLOW_TRACKING_URI"):
        print(
            "register: skipped, MLFLOW_TRACKING_URI is not set (no tracking server configured; "
            "see docs/workflows.md)"
        )
        return 0
    done: Registered = register(alias=args.alias, params_path=args.params)
    what = "registered" if done.created else "already registered"
    alias = f"; alias '{done.alias}' -> version {done.version}" if done.alias else ""
    print(f"{what}: {done.name} version {done.version} (run {done.run_id}){alias}")
    return 0


# --- what `mlops deploy` keeps in step ------------------------------------------------------------

# Set on a version each time it is deployed: what `mlops deploy --rollback-to` redeploys.
DEPLOYED_IMAGE_TAG = "mlops.deployed.image"
DEPLOYED_ANNOTATIONS_TAG = "mlops.deployed.annotations"
PREVIOUS_SUFFIX = "-previous"


@dataclass(frozen=True)
class Deployed:
    """A registered version as it was last deployed: its image and its manifest annotations."""

    name: str
    version: str
    image: str
    annotations: dict[str, str]


def deploy_client(params_path: Path) -> tuple[MlflowClient, str, str] | None:
    """(client, registered model name, uri) when MLFLOW_TRACKING_URI is set, else None."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    name = registry_params(load_params(params_path)).model_name
    tracking.check_reachable(uri)
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri), name, uri


def record_deploy(
    params_path: Path,
    environment: str,
    model_sha256: str,
    previous_sha256: str | None,
    image: str,
    annotations: dict[str, str],
) -> str:
    """Point `environment` (and `environment-previous`) at the deployed versions; say so.

    Tags the deployed version with its image and annotations, so a later `--rollback-to` can
    deploy it again. A model no version holds is reported, not registered: registering is
    `mlops register`'s, from the pipeline's own files.
    """
    import json

    found = deploy_client(params_path)
    if found is None:
        return "registry: not updated (MLFLOW_TRACKING_URI is not set)"
    client, name, uri = found
    with one_line(f"MLflow model registry at {uri}"):
        versions = versions_by_sha256(client, name)
        version = versions.get(model_sha256)
        if version is None:
            return (
                f"registry: no version of {name} holds model {model_sha256[:12]}; alias "
                f"'{environment}' left as it was (register it with `make register`)"
            )
        moved = ""
        old = versions.get(previous_sha256) if previous_sha256 else None
        if old is not None and old != version:
            client.set_registered_model_alias(name, environment + PREVIOUS_SUFFIX, old)
            moved = f", '{environment}{PREVIOUS_SUFFIX}' -> version {old}"
        client.set_registered_model_alias(name, environment, version)
        client.set_model_version_tag(name, version, DEPLOYED_IMAGE_TAG, image)
        client.set_model_version_tag(
            name, version, DEPLOYED_ANNOTATIONS_TAG, json.dumps(annotations, sort_keys=True)
        )
    return f"registry: {name} alias '{environment}' -> version {version}{moved}"


def deployed_model(params_path: Path, reference: str) -> Deployed:
    """The version an alias or number names, with the image it was deployed with."""
    import json

    found = deploy_client(params_path)
    if found is None:
        raise UserError("--rollback-to reads the MLflow registry: set MLFLOW_TRACKING_URI")
    client, name, uri = found
    with one_line(f"MLflow model registry at {uri}"):
        from mlflow.exceptions import MlflowException

        try:
            if reference.isdigit():
                found_version = client.get_model_version(name, reference)
            else:
                found_version = client.get_model_version_by_alias(name, reference)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise UserError(
                    f"--rollback-to {reference}: {name} has no such alias or version"
                ) from None
            raise
    tags = found_version.tags
    image = tags.get(DEPLOYED_IMAGE_TAG)
    try:
        annotations = json.loads(tags.get(DEPLOYED_ANNOTATIONS_TAG) or "")
    except ValueError:
        annotations = None
    if not image or not isinstance(annotations, dict):
        raise UserError(
            f"--rollback-to {reference}: version {found_version.version} of {name} was never "
            "deployed by `mlops deploy`, so its image is not known; deploy its image by tag"
        )
    return Deployed(name, str(found_version.version), image, annotations)
