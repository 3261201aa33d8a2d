"""Package stage: assemble the directory the Seldon Core image serves.

The package is byte-reproducible: the same model, data and code give the same files, whichever
commit or machine builds them. The commit an image was built from is in the image's labels.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import platform
import re
import shutil
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.evaluate import DECIMALS
from mlops_template.files import atomic_directory, check_writable, read_json, sha256, write_json
from mlops_template.manifest import package_manifest
from mlops_template.params import DEFAULT_PARAMS, load_params, package_params, train_params
from mlops_template.serving import contract
from mlops_template.serving.contract import Bins, Feature, PackageMetadata, Reference

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


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


# Packages a runtime needs on its own (with what only they pull in); the image installs the
# serving lock without the other runtime's.
RUNTIME_ROOTS = {contract.ONNX: {"onnxruntime"}, contract.JOBLIB: {"scikit-learn", "joblib"}}
# The parity check's random rows on the data's grid (with the test split and the edge rows).
PARITY_RANDOM_ROWS = 5000
PARITY_SEED = 0


def runtime_requirements(lock: str, runtime: str) -> str:
    """The serving lock without the packages only the other runtime needs.

    Reads uv's `# via` annotations: a package stays if `serve.in` asks for it (and it is not the
    other runtime's) or a package that stays needs it.
    """
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in lock.splitlines(keepends=True):
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            blocks.append((match.group(1).lower(), []))
        blocks[-1][1].append(line)
    parents: dict[str, set[str]] = {}
    for name, lines in blocks[1:]:
        via = "".join(lines).split("# via", 1)[1] if "# via" in "".join(lines) else ""
        parents[name] = {
            word.strip().lower() for word in re.findall(r"(?:^|#)\s*([-\w.]+(?: [\w.]+)?)", via)
        }
    dropped = {root for other, roots in RUNTIME_ROOTS.items() if other != runtime for root in roots}
    kept = {name for name, via in parents.items() if "-r serve.in" in via and name not in dropped}
    while True:
        more = {name for name, via in parents.items() if name not in kept and via & kept}
        if not more:
            break
        kept |= more
    return "".join("".join(lines) for name, lines in blocks if name is None or name in kept)


def onnx_model(
    model_path: Path,
    schema: dict[str, Any],
    train: pd.DataFrame,
    test: pd.DataFrame,
    runtime: str,
) -> tuple[bytes | None, str]:
    """model.onnx's bytes when the server may run it, else None; and the missing level.

    The parity gate: the graph must give scikit-learn's probabilities (within 1e-6) and classes
    on the test split, edge rows and random rows on the data's grid. If it does not, or the
    conversion fails, `auto` falls back to joblib with one warning line; `onnx` stops.
    """
    from mlops_template.model import MISSING_LEVEL

    if runtime == contract.JOBLIB:
        return None, MISSING_LEVEL
    import joblib

    from mlops_template import onnx_export

    pipeline = joblib.load(model_path)
    try:
        model = onnx_export.to_onnx(pipeline, schema)
        rows = onnx_export.parity_rows(train, test, schema, PARITY_RANDOM_ROWS, PARITY_SEED)
        parity = onnx_export.check_parity(pipeline, model, rows, schema)
        missing_level = onnx_export.fill_value(pipeline)
    except onnx_export.ConversionError as error:
        reason = f"it cannot be converted to ONNX exactly: {error}"
    except Exception as error:  # onnx's and onnxruntime's own errors: report, do not hide
        reason = (
            f"the ONNX conversion failed ({type(error).__name__}: {str(error)[:300]}; "
            f"{onnx_export.versions()})"
        )
    else:
        if parity.holds:
            log.info(
                "ONNX parity holds on %d rows (largest probability difference %.1e)",
                parity.rows, parity.max_difference,
            )  # fmt: skip
            return model, missing_level
        reason = (
            f"ONNX answers differ from scikit-learn's on the parity check: largest probability "
            f"difference {parity.max_difference:.2e} (limit {onnx_export.TOLERANCE:g}), "
            f"{parity.changed_classes} of {parity.rows} predicted classes differ"
        )
    if runtime == contract.ONNX:
        raise UserError(f"package.runtime is onnx, but {reason}")
    log.warning("the server will run the model with joblib: %s", reason)
    return None, MISSING_LEVEL


def sample_request(
    features: pd.DataFrame, labels: pd.Series, schema: dict[str, Any], rows: int = 2
) -> dict[str, Any]:
    """A ready-to-send request: complete test rows of different classes, columns by name."""
    from mlops_template.dataset import feature_names

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
        if entry.is_file() and entry.name.endswith(".py") and entry.name != "__init__.py"
    )


# Deciles: ten bins of about a tenth of the training values each, for the input drift metrics.
BIN_QUANTILES = tuple(round(0.1 * step, 1) for step in range(1, 10))


def training_reference(
    features: pd.DataFrame, labels: pd.Series, schema: dict[str, Any]
) -> Reference:
    """The training rows' class shares, missing shares and numeric deciles, for drift metrics."""
    import numpy as np

    from mlops_template.dataset import NUMERIC

    class_shares = labels.value_counts(normalize=True)
    bins = {}
    for feature in schema["features"]:
        if feature["kind"] != NUMERIC:
            continue
        values = features[feature["name"]].dropna().to_numpy(dtype=float)
        if values.size == 0:
            continue
        edges = np.unique(np.round(np.quantile(values, BIN_QUANTILES), DECIMALS))
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
        bins[feature["name"]] = Bins(
            tuple(float(edge) for edge in edges),
            tuple(round(float(count) / values.size, DECIMALS) for count in counts),
        )
    return Reference(
        class_shares={
            str(label): round(float(class_shares.get(label, 0.0)), DECIMALS)
            for label in schema["classes"]
        },
        missing_shares={
            name: round(float(features[name].isna().mean()), DECIMALS) for name in features.columns
        },
        bins=bins,
    )


def read_metrics(path: Path) -> dict[str, float]:
    """The train stage's metrics.json, checked to hold finite numbers by name."""
    try:
        metrics = read_json(path)
    except (OSError, ValueError) as error:  # missing, unreadable, or not JSON
        reason = error.strerror if isinstance(error, OSError) else error
        raise UserError(f"{path}: cannot read the metrics: {reason}; run the train stage") from None
    try:
        contract.check_metrics(metrics, str(path))
    except contract.ContractError as error:
        raise UserError(f"{error}; rerun the train stage") from None
    return metrics


def package_metadata(
    model_path: Path,
    schema: dict[str, Any],
    metrics: dict[str, float],
    max_batch_rows: int,
    estimator: str,
    reference: Reference,
    evaluation_data_sha256: str,
    onnx: bytes | None = None,
    missing_level: str = "missing",
) -> PackageMetadata:
    """The package's metadata record; raises UserError if an input breaks the contract."""
    try:
        return PackageMetadata(
            estimator=estimator,
            target=schema["target"],
            features=tuple(Feature.from_dict(feature) for feature in schema["features"]),
            classes=tuple(schema["classes"]),
            metrics=metrics,
            training_rows=schema["rows"]["train"],
            max_batch_rows=max_batch_rows,
            model_sha256=sha256(model_path),
            evaluation_data_sha256=evaluation_data_sha256,
            reference=reference,
            runtime=contract.ONNX if onnx is not None else contract.JOBLIB,
            onnx_sha256=hashlib.sha256(onnx).hexdigest() if onnx is not None else None,
            missing_level=missing_level,
            # Python's major.minor only: a patch release changes no pickle, and would change
            # the package's bytes from one machine to the next.
            versions={"python": ".".join(platform.python_version_tuple()[:2])}
            | {library: version(library) for library in contract.VERSIONED_LIBRARIES},
        )
    except contract.ContractError as error:
        raise UserError(f"cannot package the model: {error}") from None


def build_package(
    model_path: Path,
    processed: Path,
    metrics_path: Path,
    requirements_path: Path,
    out_dir: Path,
    max_batch_rows: int,
    estimator: str,
    runtime: str = "auto",
) -> PackageMetadata:
    """Write the serving package atomically and return its metadata."""
    from mlops_template.dataset import (
        SCHEMA_FILE,
        TEST_FILE,
        TRAIN_FILE,
        content_sha256,
        read_schema,
        read_split,
    )

    check_writable(out_dir)
    metrics = read_metrics(metrics_path)
    schema = read_schema(processed / SCHEMA_FILE)
    requirements = requirements_path.read_text(encoding="utf-8")
    check_serving_pins(requirements)
    train = read_split(processed / TRAIN_FILE, schema)
    test = read_split(processed / TEST_FILE, schema)
    reference = training_reference(*train, schema)
    onnx, missing_level = onnx_model(model_path, schema, train[0], test[0], runtime)
    metadata = package_metadata(
        model_path,
        schema,
        metrics,
        max_batch_rows,
        estimator,
        reference,
        evaluation_data_sha256=content_sha256(*test),
        onnx=onnx,
        missing_level=missing_level,
    )
    with atomic_directory(out_dir) as staging:
        for source in serving_sources():
            shutil.copyfile(source, staging / source.name)
        shutil.copyfile(model_path, staging / contract.MODEL_FILE)
        if onnx is not None:
            (staging / contract.ONNX_FILE).write_bytes(onnx)
        (staging / contract.REQUIREMENTS_FILE).write_text(
            runtime_requirements(requirements, metadata.runtime), encoding="utf-8"
        )
        write_json(
            staging / contract.SAMPLE_REQUEST_FILE,
            sample_request(*test, schema),
        )
        metadata.write(staging)
        (staging / contract.MANIFEST_FILE).write_text(package_manifest(metadata), encoding="utf-8")
    log.info(
        "packaged %s (sha256 %s, served with %s) into %s",
        estimator, metadata.model_sha256[:12], metadata.runtime, out_dir,
    )  # fmt: skip
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
    build_package(
        args.model,
        args.processed,
        args.metrics,
        args.requirements,
        args.out,
        package_params(raw).max_batch_rows,
        # The class name from params, not from unpickling the model.
        train_params(raw).estimator_class,
        package_params(raw).runtime,
    )
    return 0
