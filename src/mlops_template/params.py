"""Read params.yaml once and validate each stage's section into a typed object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlops_template.errors import UserError
from mlops_template.serving.contract import ContractError, check_max_batch_rows

DEFAULT_PARAMS = Path("params.yaml")

# The supported model names and their scikit-learn classes ("module:Class"), imported on use.
ESTIMATORS: dict[str, str] = {
    "logistic_regression": "sklearn.linear_model:LogisticRegression",
    "random_forest": "sklearn.ensemble:RandomForestClassifier",
    "hist_gradient_boosting": "sklearn.ensemble:HistGradientBoostingClassifier",
    "decision_tree": "sklearn.tree:DecisionTreeClassifier",
}


# What a path cannot hold inside the double quotes of a shell command: they would end or expand.
SHELL_SPECIAL = '"$`\\'


@dataclass(frozen=True)
class DataParams:
    """Where the raw data is and which column to predict."""

    csv: str
    target: str


@dataclass(frozen=True)
class ProcessParams:
    """How the rows are split into train and test."""

    test_size: float
    random_state: int


# `train.n_jobs` and `train.importance_rows` when params.yaml leaves them out: all cores, and
# enough rows for stable permutation importance without making a large test split slow.
DEFAULT_N_JOBS = -1
DEFAULT_IMPORTANCE_ROWS = 2000


@dataclass(frozen=True)
class TrainParams:
    """Which estimator to fit, with which hyperparameters."""

    model: str
    random_state: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    n_jobs: int = DEFAULT_N_JOBS  # cores for fitting and evaluating; the saved model uses one
    importance_rows: int = DEFAULT_IMPORTANCE_ROWS  # permutation importance's test-row sample

    @property
    def estimator_import(self) -> tuple[str, str]:
        """(module, class) of the chosen scikit-learn estimator."""
        module_name, _, class_name = ESTIMATORS[self.model].partition(":")
        return module_name, class_name

    @property
    def estimator_class(self) -> str:
        """The estimator's class name, e.g. RandomForestClassifier, as the package records it."""
        return self.estimator_import[1]


@dataclass(frozen=True)
class PackageParams:
    """Limits written into the serving package."""

    max_batch_rows: int
    runtime: str  # auto, onnx or joblib


# `package.runtime`: auto serves ONNX when the parity gate holds, else joblib; the others force one.
PACKAGE_RUNTIMES = ("auto", "onnx", "joblib")


@dataclass(frozen=True)
class RegistryParams:
    """Where `mlops register` puts the model in the MLflow model registry."""

    model_name: str


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a clear error when it is missing or not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if not isinstance(value, dict):
        raise UserError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value


def _get(section: dict[str, Any], prefix: str, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in section:
        raise UserError(f"params.yaml: {prefix}.{key} is missing")
    value = section[key]
    # bool is an int in Python; a flag where a number is expected is a mistake worth naming.
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"params.yaml: {prefix}.{key} must be {names}, got {value!r}")
    return value


def data_params(raw: dict[str, Any]) -> DataParams:
    """Validate the `data` section."""
    section = _section(raw, "data")
    csv = _get(section, "data", "csv", str)
    # dvc.yaml passes the path to the stage command in double quotes, through a shell.
    special = sorted({character for character in csv if character in SHELL_SPECIAL})
    if special:
        raise UserError(
            f"params.yaml: data.csv must not contain {' '.join(special)} (the process stage's "
            f"command quotes the path for a shell), got {csv!r}; rename the file"
        )
    target = _get(section, "data", "target", str)
    if not target.strip():
        raise UserError("params.yaml: data.target must name a column")
    return DataParams(csv=csv, target=target)


def process_params(raw: dict[str, Any]) -> ProcessParams:
    """Validate the `process` section."""
    section = _section(raw, "process")
    test_size = _get(section, "process", "test_size", (int, float))
    if not (0 < test_size < 1) or math.isnan(test_size):
        raise UserError(f"params.yaml: process.test_size must be between 0 and 1, got {test_size}")
    random_state = _get(section, "process", "random_state", int)
    return ProcessParams(test_size=float(test_size), random_state=random_state)


def train_params(raw: dict[str, Any]) -> TrainParams:
    """Validate the `train` section; hyperparameters are checked against the estimator later."""
    section = _section(raw, "train")
    model = _get(section, "train", "model", str)
    if model not in ESTIMATORS:
        raise UserError(
            f"params.yaml: train.model '{model}' is not supported; choose one of "
            + ", ".join(ESTIMATORS)
        )
    random_state = _get(section, "train", "random_state", int)
    hyperparameters = section.get(model) or {}
    if not isinstance(hyperparameters, dict):
        raise UserError(f"params.yaml: train.{model} must be a mapping of hyperparameters")
    n_jobs = _get(section, "train", "n_jobs", int) if "n_jobs" in section else DEFAULT_N_JOBS
    if n_jobs == 0:
        raise UserError("params.yaml: train.n_jobs must be a number of cores, or -1 for all, not 0")
    importance_rows = (
        _get(section, "train", "importance_rows", int)
        if "importance_rows" in section
        else DEFAULT_IMPORTANCE_ROWS
    )
    if importance_rows < 1:
        raise UserError(
            f"params.yaml: train.importance_rows must be at least 1, got {importance_rows}"
        )
    return TrainParams(
        model=model,
        random_state=random_state,
        hyperparameters=hyperparameters,
        n_jobs=n_jobs,
        importance_rows=importance_rows,
    )


def package_params(raw: dict[str, Any]) -> PackageParams:
    """Validate the `package` section."""
    section = _section(raw, "package")
    if "max_batch_rows" not in section:
        raise UserError("params.yaml: package.max_batch_rows is missing")
    try:
        max_batch_rows = check_max_batch_rows(section["max_batch_rows"])
    except ContractError as error:
        raise UserError(f"params.yaml: package.{error}") from None
    runtime = _get(section, "package", "runtime", str)
    if runtime not in PACKAGE_RUNTIMES:
        raise UserError(
            f"params.yaml: package.runtime must be one of {', '.join(PACKAGE_RUNTIMES)}, "
            f"got {runtime!r}"
        )
    return PackageParams(max_batch_rows=max_batch_rows, runtime=runtime)


def registry_params(raw: dict[str, Any]) -> RegistryParams:
    """Validate the `registry` section."""
    section = _section(raw, "registry")
    name = _get(section, "registry", "model_name", str).strip()
    if not name or "/" in name or ":" in name:
        raise UserError(
            "params.yaml: registry.model_name must name a registered model "
            f"(no '/' or ':'), got {section['model_name']!r}"
        )
    return RegistryParams(model_name=name)


@dataclass(frozen=True)
class MonitoringParams:
    """Alert thresholds for the served model."""

    server_error_ratio: float
    client_error_ratio: float
    p99_latency_seconds: float
    class_share_drift: float
    input_psi: float
    missing_share_increase: float
    unseen_share: float


def monitoring_params(raw: dict[str, Any]) -> MonitoringParams:
    """Validate the `monitoring` section: every threshold a positive number, shares below 1."""
    section = _section(raw, "monitoring")
    values = {}
    for name in MonitoringParams.__dataclass_fields__:
        value = _get(section, "monitoring", name, (int, float))
        limit = math.inf if name in ("p99_latency_seconds", "input_psi") else 1
        if not 0 < value <= limit:
            raise UserError(
                f"params.yaml: monitoring.{name} must be above 0"
                + (" and at most 1" if limit == 1 else "")
                + f", got {value}"
            )
        values[name] = float(value)
    return MonitoringParams(**values)


@dataclass(frozen=True)
class LoadTestParams:
    """How hard and how long `make load-test` pushes, and what it must hold."""

    users: int
    spawn_rate: float
    requests_per_second_per_user: float
    duration_seconds: int
    bad_request_share: float
    p95_latency_ms: float


def load_test_params(raw: dict[str, Any]) -> LoadTestParams:
    """Validate the `load_test` section."""
    section = _section(raw, "load_test")
    users = _get(section, "load_test", "users", int)
    duration = _get(section, "load_test", "duration_seconds", int)
    numbers = {
        name: float(_get(section, "load_test", name, (int, float)))
        for name in (
            "spawn_rate", "requests_per_second_per_user", "bad_request_share", "p95_latency_ms"
        )
    }  # fmt: skip
    if users < 1 or duration < 1:
        raise UserError("params.yaml: load_test.users and duration_seconds must be at least 1")
    if not 0 <= numbers["bad_request_share"] < 1:
        raise UserError("params.yaml: load_test.bad_request_share must be in [0, 1)")
    for name in ("spawn_rate", "requests_per_second_per_user", "p95_latency_ms"):
        if numbers[name] <= 0:
            raise UserError(f"params.yaml: load_test.{name} must be above 0")
    return LoadTestParams(users=users, duration_seconds=duration, **numbers)


@dataclass(frozen=True)
class GateParams:
    """When a new model may replace the live one (`mlops deploy`)."""

    metric: str  # which way it improves is evaluate.HIGHER_IS_BETTER's, not a param
    tolerance: float


@dataclass(frozen=True)
class CanaryParams:
    """How `mlops deploy --canary` tries a new model on part of the traffic first."""

    traffic_percent: int
    observe_seconds: int
    probe_interval_seconds: float


@dataclass(frozen=True)
class DeployParams:
    """The `deploy` section."""

    gate: GateParams
    canary: CanaryParams


def deploy_params(raw: dict[str, Any]) -> DeployParams:
    """Validate the `deploy` section (its `gate` and `canary` blocks)."""
    section = _section(raw, "deploy")
    gate, canary = (_section(section, name) for name in ("gate", "canary"))
    metric = _get(gate, "deploy.gate", "metric", str).strip()
    if not metric:
        raise UserError("params.yaml: deploy.gate.metric must name a test metric (metrics.json)")
    if "higher_is_better" in gate:
        raise UserError(
            "params.yaml: deploy.gate.higher_is_better is no longer read: which way a metric "
            "improves is said once, beside the metric, in evaluate.py (HIGHER_IS_BETTER); "
            "remove the key"
        )
    tolerance = _get(gate, "deploy.gate", "tolerance", (int, float))
    if not 0 <= tolerance < math.inf:
        raise UserError(f"params.yaml: deploy.gate.tolerance must be 0 or more, got {tolerance}")
    traffic = _get(canary, "deploy.canary", "traffic_percent", int)
    if not 1 <= traffic <= 99:
        raise UserError(
            f"params.yaml: deploy.canary.traffic_percent must be between 1 and 99, got {traffic}"
        )
    observe = _get(canary, "deploy.canary", "observe_seconds", int)
    interval = _get(canary, "deploy.canary", "probe_interval_seconds", (int, float))
    if observe < 1 or not 0 < interval <= observe:
        raise UserError(
            "params.yaml: deploy.canary.observe_seconds must be at least 1 and "
            "probe_interval_seconds above 0 and at most observe_seconds"
        )
    return DeployParams(
        gate=GateParams(
            metric=metric,
            tolerance=float(tolerance),
        ),
        canary=CanaryParams(
            traffic_percent=traffic, observe_seconds=observe, probe_interval_seconds=float(interval)
        ),
    )
