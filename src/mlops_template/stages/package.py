"""Package stage: assemble the directory the Seldon Core image serves."""

from __future__ import annotations

import argparse
import logging
import platform
import re
import shutil
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

from mlops_template.errors import UserError
from mlops_template.files import atomic_directory, git_commit, read_json, sha256, write_json
from mlops_template.manifest import MANIFEST_FILE, package_manifest
from mlops_template.params import (
    DEFAULT_PARAMS,
    ESTIMATORS,
    load_params,
    package_params,
    train_params,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
REQUIREMENTS_FILE = "requirements.txt"
SAMPLE_REQUEST_FILE = "sample_request.json"
TRAINING_LIBRARIES = ("scikit-learn", "numpy", "pandas", "joblib")


def pinned_version(requirements: str, package: str) -> str | None:
    """The exact version a requirements/lock text pins for a package, if any."""
    match = re.search(
        rf"^{re.escape(package)}==([^\s;\\]+)", requirements, flags=re.MULTILINE | re.IGNORECASE
    )
    return match.group(1) if match else None


def check_serving_pins(requirements: str) -> None:
    """A pickled estimator must be loaded by the scikit-learn release that saved it."""
    trained_with = version("scikit-learn")
    pinned = pinned_version(requirements, "scikit-learn")
    if pinned != trained_with:
        raise UserError(
            f"requirements/serve.lock pins scikit-learn {pinned or '(nothing)'} but the model was "
            f"trained with {trained_with}; pin the same version in requirements/serve.in and "
            "recompile the lock"
        )


def sample_request(test_csv: Path, schema: dict[str, Any], rows: int = 2) -> dict[str, Any]:
    """A ready-to-send request: complete test rows of different classes, columns by name."""
    from mlops_template.dataset import feature_names, read_split

    features, labels = read_split(test_csv, schema)
    complete = features.dropna()
    if complete.empty:
        complete = features
    chosen = labels.loc[complete.index].drop_duplicates().index[:rows]
    sample = complete.loc[chosen]
    values = [
        [None if value != value else value for value in row]
        for row in sample.itertuples(index=False)
    ]
    return {"data": {"names": feature_names(schema), "ndarray": values}}


def serving_sources() -> list[Path]:
    """Files of the serving runtime (the wrapper class and friends) shipped inside the package."""
    folder = resources.files("mlops_template") / "serving"
    return sorted(
        Path(str(entry))
        for entry in folder.iterdir()
        if entry.is_file() and entry.name != "__init__.py" and not entry.name.endswith(".pyc")
    )


def build_package(
    model_path: Path,
    processed: Path,
    metrics_path: Path,
    requirements_path: Path,
    out_dir: Path,
    max_batch_rows: int,
    estimator: str,
) -> dict[str, Any]:
    """Write the serving package atomically and return its metadata."""
    from mlops_template.dataset import read_schema

    schema = read_schema(processed / "schema.json")
    requirements = requirements_path.read_text(encoding="utf-8")
    check_serving_pins(requirements)
    metrics = read_json(metrics_path)
    metadata = {
        "model_file": MODEL_FILE,
        "model_sha256": sha256(model_path),
        "estimator": estimator,
        "target": schema["target"],
        "features": schema["features"],
        "classes": schema["classes"],
        "metrics": metrics,
        "training_rows": schema["rows"]["train"],
        "max_batch_rows": max_batch_rows,
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version()}
        | {package: version(package) for package in TRAINING_LIBRARIES},
    }
    with atomic_directory(out_dir) as staging:
        for source in serving_sources():
            shutil.copy2(source, staging / source.name)
        shutil.copyfile(model_path, staging / MODEL_FILE)
        (staging / REQUIREMENTS_FILE).write_text(requirements, encoding="utf-8")
        write_json(staging / SAMPLE_REQUEST_FILE, sample_request(processed / "test.csv", schema))
        write_json(staging / METADATA_FILE, metadata)
        (staging / MANIFEST_FILE).write_text(package_manifest(metadata), encoding="utf-8")
    log.info("packaged %s (sha256 %s) into %s", estimator, metadata["model_sha256"][:12], out_dir)
    return metadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the stage's command-line options (paths come from dvc.yaml)."""
    parser.add_argument("--model", type=Path, required=True, help="the fitted pipeline")
    parser.add_argument("--processed", type=Path, required=True, help="output of the process stage")
    parser.add_argument(
        "--metrics", type=Path, required=True, help="metrics.json of the train stage"
    )
    parser.add_argument("--requirements", type=Path, required=True, help="the serving lock file")
    parser.add_argument("--out", type=Path, required=True, help="the package directory to write")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops package`."""
    raw = load_params(args.params)
    params = package_params(raw)
    # The class name from params, not from unpickling the model: loading it costs a second.
    estimator = ESTIMATORS[train_params(raw).model].split(":")[1]
    build_package(
        args.model,
        args.processed,
        args.metrics,
        args.requirements,
        args.out,
        params.max_batch_rows,
        estimator,
    )
    return 0
