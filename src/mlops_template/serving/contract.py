"""The serving package contract: its file names and its metadata record, in one place.

The package stage writes a package with it, the server reads the package with it, and the report,
the manifest renderer and the image scripts ask it for a field. Standard library only: this file is
copied into the package beside `Model.py`, so it runs in the serving environment and the image too,
and as a script it prints a field for shell scripts:

    python3 models/serving/contract.py model_sha256
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Where the pipeline's package stage writes the package (the path dvc.yaml gives it).
DEFAULT_DIR = Path("models/serving")

# The files of a package.
MODEL_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
REQUIREMENTS_FILE = "requirements.txt"
SAMPLE_REQUEST_FILE = "sample_request.json"
MANIFEST_FILE = "seldon-deployment.yaml"
WRAPPER_FILE = "Model.py"
ENTRY_POINT_FILE = "serve.py"

# Feature kinds, as the process stage's schema writes them.
NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)

# How a missing value is written, in the training CSV and in a request's text: an empty field or
# NA (as the bundled data has it). Any other text ("None", "null", "n/a") is a value as written.
# Surrounding whitespace is not part of a text value: " Adelie " is "Adelie", "  " is missing.
# The process stage reads the CSV with these, the server types request values with them.
MISSING_VALUES = ("", "NA")
PADDING = " \t\r\n\v\f"


def text_value(text: str) -> str | None:
    """Text as training reads it: without surrounding whitespace, None if it spells a gap."""
    text = text.strip(PADDING)
    return None if text in MISSING_VALUES else text


# Library versions recorded at training time (with Python's major.minor); the server refuses to
# unpickle the model under another scikit-learn.
VERSIONED_LIBRARIES = ("scikit-learn", "numpy", "pandas", "joblib", "onnxruntime")
# What the server runs the model with: model.onnx in onnxruntime, or model.joblib in scikit-learn.
ONNX, JOBLIB = "onnx", "joblib"
RUNTIMES = (ONNX, JOBLIB)
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ContractError(ValueError):
    """A package or a value that does not follow the contract; the message names the field."""


def check_max_batch_rows(value: Any) -> int:
    """The largest batch one request may carry: a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContractError(f"max_batch_rows must be a whole number of at least 1, got {value!r}")
    return value


def check_metrics(metrics: Any, what: str = "metrics") -> None:
    """Metrics map names to finite numbers; the error names the first key that does not, and
    shows its value as JSON has it (NaN, Infinity)."""
    if not isinstance(metrics, Mapping):
        raise ContractError(f"{what} must map metric names to numbers, got {metrics!r}")
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise ContractError(f"{what}: the key {key!r} is not a metric name (a string)")
        if not _is_number(value):
            raise ContractError(
                f"{what}: {key!r} is {json.dumps(value, default=repr)}, not a finite number"
            )


@dataclass(frozen=True)
class Feature:
    """One input column: its name, its kind and, if categorical, the levels seen in training."""

    name: str
    kind: str
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ContractError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ContractError(f"feature {self.name!r}: kind must be one of {KINDS}")
        if self.kind == NUMERIC and self.categories:
            raise ContractError(f"feature {self.name!r}: a numeric feature has no categories")
        _check_strings(self.categories, f"feature {self.name!r} categories")

    @classmethod
    def from_dict(cls, data: Any) -> Feature:
        """Read one entry of the schema's or the metadata's `features` list."""
        if not isinstance(data, Mapping):
            raise ContractError(f"each feature must be an object, got {data!r}")
        _check_keys(data, {"name", "kind"}, {"categories"}, "feature")
        return cls(data["name"], data["kind"], tuple(data.get("categories", ())))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: `categories` only for categorical features."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == CATEGORICAL:
            data["categories"] = list(self.categories)
        return data


@dataclass(frozen=True)
class Bins:
    """A numeric feature's training values cut at their deciles.

    Bin 0 holds values below `edges[0]`, bin i values from `edges[i-1]` up to (not including)
    `edges[i]`, the last bin the rest: `numpy.searchsorted(edges, value, "right")`. Repeated
    deciles (a feature with few distinct values) are merged, so bins are not all a tenth of the
    rows; `shares` says what each held in training.
    """

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if not all(_is_number(edge) for edge in self.edges) or list(self.edges) != sorted(
            set(self.edges)
        ):
            raise ContractError(f"bin edges must be distinct numbers in order, got {self.edges}")
        if len(self.shares) != len(self.edges) + 1:
            raise ContractError("bins need one share more than edges")
        _check_shares(self.shares, "bin shares")


@dataclass(frozen=True)
class Reference:
    """What the training rows looked like, for the server's drift metrics and the alerts."""

    class_shares: Mapping[str, float]
    missing_shares: Mapping[str, float]
    bins: Mapping[str, Bins]

    def __post_init__(self) -> None:
        _check_shares(self.class_shares.values(), "class shares")
        _check_shares(self.missing_shares.values(), "missing shares")
        if not all(isinstance(bins, Bins) for bins in self.bins.values()):
            raise ContractError("bins must map numeric features to their bins")

    @classmethod
    def from_dict(cls, data: Any) -> Reference:
        """Read the `reference` object of metadata.json."""
        if not isinstance(data, Mapping):
            raise ContractError("reference must be an object")
        _check_keys(data, {"class_shares", "missing_shares", "bins"}, set(), "reference")
        bins = data["bins"]
        if not isinstance(bins, Mapping) or not all(isinstance(b, Mapping) for b in bins.values()):
            raise ContractError("reference.bins must map features to {edges, shares}")
        return cls(
            class_shares=dict(data["class_shares"]),
            missing_shares=dict(data["missing_shares"]),
            bins={
                name: Bins(tuple(value.get("edges", ())), tuple(value.get("shares", ())))
                for name, value in bins.items()
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "class_shares": dict(self.class_shares),
            "missing_shares": dict(self.missing_shares),
            "bins": {
                name: {"edges": list(bins.edges), "shares": list(bins.shares)}
                for name, bins in self.bins.items()
            },
        }


@dataclass(frozen=True)
class PackageMetadata:
    """`metadata.json`: what the model is, what it takes and returns, and how it was trained.

    It holds nothing about when or where the package was built (no commit, no time), so the same
    model gives the same bytes; the commit that built an image is in the image's labels.
    """

    estimator: str  # the scikit-learn class, e.g. RandomForestClassifier
    target: str
    features: tuple[Feature, ...]
    classes: tuple[str, ...]
    metrics: Mapping[str, float]
    training_rows: int
    max_batch_rows: int
    model_sha256: str
    # sha256 of the test split the metrics were computed on: two models' metrics compare only
    # when this is the same (the deploy gate checks it).
    evaluation_data_sha256: str
    reference: Reference
    runtime: str  # ONNX or JOBLIB: which model file the server loads
    onnx_sha256: str | None  # sha256 of model.onnx, with the ONNX runtime
    missing_level: str  # the categorical imputer's fill value: what the ONNX graph takes for null
    versions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("estimator", "target"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ContractError(f"{name} must be a non-empty string")
        if not self.features or not all(isinstance(f, Feature) for f in self.features):
            raise ContractError("features must be a non-empty list of features")
        names = [feature.name for feature in self.features]
        if len(set(names)) != len(names):
            raise ContractError(f"features: names must be unique, got {names}")
        _check_strings(self.classes, "classes")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ContractError(f"classes must be two or more distinct labels, got {self.classes}")
        check_metrics(self.metrics)
        if isinstance(self.training_rows, bool) or not isinstance(self.training_rows, int):
            raise ContractError(f"training_rows must be a whole number, got {self.training_rows!r}")
        check_max_batch_rows(self.max_batch_rows)
        if not isinstance(self.model_sha256, str) or not SHA256.match(self.model_sha256):
            raise ContractError(f"model_sha256 must be 64 hex digits, got {self.model_sha256!r}")
        if not isinstance(self.evaluation_data_sha256, str) or not SHA256.match(
            self.evaluation_data_sha256
        ):
            raise ContractError(
                f"evaluation_data_sha256 must be 64 hex digits, got {self.evaluation_data_sha256!r}"
            )
        if self.runtime not in RUNTIMES:
            raise ContractError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.runtime == ONNX and not (
            isinstance(self.onnx_sha256, str) and SHA256.match(self.onnx_sha256)
        ):
            raise ContractError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")
        if self.runtime == JOBLIB and self.onnx_sha256 is not None:
            raise ContractError("onnx_sha256 is only for the onnx runtime")
        if not isinstance(self.missing_level, str):
            raise ContractError(f"missing_level must be text, got {self.missing_level!r}")
        if not isinstance(self.reference, Reference):
            raise ContractError("reference must describe the training rows")
        unknown = (set(self.reference.missing_shares) | set(self.reference.bins)) - set(names)
        if set(self.reference.class_shares) != set(self.classes) or unknown:
            raise ContractError("reference must describe these classes and features only")
        missing = [name for name in VERSIONED_LIBRARIES if name not in self.versions]
        if missing or not all(isinstance(v, str) for v in self.versions.values()):
            raise ContractError(f"versions must name the version of each of {VERSIONED_LIBRARIES}")

    @property
    def feature_names(self) -> list[str]:
        """Feature names in schema order, the order of a row without names."""
        return [feature.name for feature in self.features]

    @property
    def numeric_names(self) -> list[str]:
        """Names of the numeric features."""
        return [feature.name for feature in self.features if feature.kind == NUMERIC]

    @classmethod
    def from_dict(cls, data: Any) -> PackageMetadata:
        """Validate a decoded `metadata.json`."""
        if not isinstance(data, Mapping):
            raise ContractError("metadata must be a JSON object")
        required = {f.name for f in fields(cls)} - {"versions"}
        _check_keys(data, required, {"versions"}, "metadata")
        if not isinstance(data["features"], list) or not isinstance(data["classes"], list):
            raise ContractError("features and classes must be lists")
        return cls(
            estimator=data["estimator"],
            target=data["target"],
            features=tuple(Feature.from_dict(feature) for feature in data["features"]),
            classes=tuple(data["classes"]),
            metrics=data["metrics"],
            training_rows=data["training_rows"],
            max_batch_rows=data["max_batch_rows"],
            model_sha256=data["model_sha256"],
            evaluation_data_sha256=data["evaluation_data_sha256"],
            reference=Reference.from_dict(data["reference"]),
            runtime=data["runtime"],
            onnx_sha256=data["onnx_sha256"],
            missing_level=data["missing_level"],
            versions=dict(data.get("versions") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (lists, not tuples)."""
        data = asdict(self)
        data["features"] = [feature.to_dict() for feature in self.features]
        data["classes"] = list(self.classes)
        data["metrics"] = dict(self.metrics)
        data["reference"] = self.reference.to_dict()
        data["versions"] = dict(self.versions)
        return data

    def to_json(self) -> str:
        """The bytes of `metadata.json`: sorted keys, so they depend only on the content."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def write(self, package_dir: Path) -> Path:
        """Write `metadata.json` into a package directory being assembled."""
        path = Path(package_dir) / METADATA_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, package_dir: Path) -> PackageMetadata:
        """Read and validate a package's `metadata.json`; ContractError names the file."""
        path = Path(package_dir) / METADATA_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ContractError(f"{path} not found: build the package (dvc repro)") from None
        except (OSError, ValueError) as error:
            raise ContractError(f"{path} is not readable JSON: {error}") from None
        try:
            return cls.from_dict(data)
        except ContractError as error:
            raise ContractError(f"{path}: {error}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_shares(values: Any, what: str) -> None:
    if not all(_is_number(value) and 0 <= value <= 1 for value in values):
        raise ContractError(f"{what} must be numbers between 0 and 1")


def _check_strings(values: Any, what: str) -> None:
    if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
        raise ContractError(f"{what} must be a list of strings")


def _check_keys(data: Mapping[str, Any], required: set[str], optional: set[str], what: str) -> None:
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - required - optional)
    if missing or unknown:
        problems = [f"missing {missing}"] if missing else []
        problems += [f"unknown {unknown}"] if unknown else []
        raise ContractError(f"{what} keys: {'; '.join(problems)}")


def main(argv: list[str]) -> int:
    """`contract.py FIELD [PACKAGE_DIR]`: print one field of a package's validated metadata."""
    if len(argv) not in (1, 2):
        print("usage: contract.py FIELD [PACKAGE_DIR]", file=sys.stderr)
        return 2
    package_dir = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parent
    try:
        metadata = PackageMetadata.read(package_dir).to_dict()
    except ContractError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if argv[0] not in metadata:
        print(f"error: no field {argv[0]!r}; fields: {', '.join(metadata)}", file=sys.stderr)
        return 2
    value = metadata[argv[0]]
    print(value if isinstance(value, str) else json.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
