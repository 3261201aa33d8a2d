"""Pipeline benchmark: dvc repro (cold, no-op, param change) against a bare script, side by side.

Run with `make bench-pipeline` (or `.venv/bin/python benchmarks/pipeline.py`). It works in
temporary clones of the committed repository, so the working tree is not touched. Rounds are
interleaved so that load from elsewhere on the machine falls on every variant alike; the ratios
are what to compare across machines. Part two runs each stage alone on a synthetic CSV (1,000,000
rows x 20 columns by default) and reports its time and peak memory, the process stage's peak
against the in-memory size of the data, and the train stage against a bare script that does the
same fit and evaluation (BARE_TRAIN), run side by side on the same splits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
ENV.pop("MLFLOW_TRACKING_URI", None)

# The floor: the same read, split, fit and evaluation (metrics, curves, importance, images) as
# process + train, in one process: no DVC, no MLflow, no stage boundaries, no split files.
BARE_SCRIPT = """
import tempfile
from pathlib import Path
from mlops_template.dataset import coerce_features, label_strings
from mlops_template.params import data_params, load_params, process_params, train_params
from mlops_template.plots import write_images
from mlops_template.stages.process import infer_schema, read_raw, split, validate
from mlops_template.stages.train import fit_and_evaluate

raw = load_params("params.yaml")
target = data_params(raw).target
frame = validate(read_raw(raw["data"]["csv"]), target, process_params(raw))
schema = infer_schema(frame, target)
parts = [
    (coerce_features(frame.iloc[rows], schema), label_strings(frame[target].iloc[rows]))
    for rows in split(frame, target, process_params(raw))
]
trained = fit_and_evaluate(schema, *parts, train_params(raw))
with tempfile.TemporaryDirectory() as images:
    write_images(trained.evaluation, Path(images))
print(trained.evaluation.metrics)
"""


# The floor for the train stage on large data: plain pandas and scikit-learn, none of the
# template's code. It reads the process stage's Parquet splits, builds the same preprocessing and
# estimator (the forest on all cores, as the stage fits it), fits, predicts the test split once,
# computes the same seven metrics and saves the model. The stage also writes the curve and plot
# files and images, computes importance and logs the run to MLflow: that is its overhead. The
# benchmark checks that both produce the same metrics, so the two did the same fit.
BARE_TRAIN = """
import json
import joblib
import numpy as np
import pandas as pd
import yaml
from sklearn import metrics
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

params = yaml.safe_load(open("params.yaml"))["train"]
schema = json.load(open("data/processed/schema.json"))
target = schema["target"]
numeric = [f["name"] for f in schema["features"] if f["kind"] == "numeric"]
categorical = [f["name"] for f in schema["features"] if f["kind"] == "categorical"]
train = pd.read_parquet("data/processed/train.parquet")
test = pd.read_parquet("data/processed/test.parquet")
model = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "decision_tree": DecisionTreeClassifier,
}[params["model"]]
estimator = model(random_state=params["random_state"], **params[params["model"]])
if params["model"] == "random_forest":
    estimator.set_params(n_jobs=-1)
pipeline = Pipeline([
    ("preprocess", ColumnTransformer([
        ("numeric", Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]), numeric),
        ("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]), categorical),
    ], verbose_feature_names_out=False)),
    ("model", estimator),
])
pipeline.fit(train[numeric + categorical], train[target].astype(str))
probabilities = pipeline.predict_proba(test[numeric + categorical])
classes = list(pipeline.classes_)
actual = test[target].astype(str).to_numpy()
predicted = np.asarray(classes)[probabilities.argmax(axis=1)]
if len(classes) == 2:
    auc = metrics.roc_auc_score(actual == classes[1], probabilities[:, 1])
else:
    auc = metrics.roc_auc_score(actual, probabilities, multi_class="ovr", labels=classes)
scores = {
    "accuracy": metrics.accuracy_score(actual, predicted),
    "balanced_accuracy": metrics.balanced_accuracy_score(actual, predicted),
    "f1_macro": metrics.f1_score(actual, predicted, average="macro", zero_division=0),
    "precision_macro": metrics.precision_score(actual, predicted, average="macro", zero_division=0),
    "recall_macro": metrics.recall_score(actual, predicted, average="macro", zero_division=0),
    "roc_auc": auc,
    "log_loss": metrics.log_loss(actual, probabilities, labels=classes),
}
joblib.dump(pipeline, "bare-model.joblib")
json.dump({k: round(float(v), 6) for k, v in scores.items()}, open("bare-metrics.json", "w"))
"""


def run(args: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one command; fails loudly if the command fails."""
    started = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{output.decode(errors='replace')}")
    return elapsed, usage.ru_maxrss // 1024


def fresh_clone(root: Path, name: str) -> Path:
    """A clone of the committed repository with no DVC cache and no outputs."""
    path = root / name
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(path)], check=True)
    return path


def set_max_depth(clone: Path, value: int) -> None:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"][params["train"]["model"]]["max_depth"] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def small_data(rounds: int, root: Path) -> dict[str, list[float]]:
    """Interleaved rounds of the four variants on the bundled data."""
    times: dict[str, list[float]] = {"bare": [], "cold": [], "noop": [], "param": [], "force": []}
    for index in range(rounds):
        clone = fresh_clone(root, f"round{index}")
        times["bare"].append(run([str(BIN / "python"), "-c", BARE_SCRIPT], clone)[0])
        times["cold"].append(run(["dvc", "repro"], clone)[0])
        times["noop"].append(run(["dvc", "repro"], clone)[0])
        set_max_depth(clone, 1 + index % 2)  # the committed value is 3: always a change
        times["param"].append(run(["dvc", "repro"], clone)[0])
        # Every stage again, the MLflow store now existing: the cold run less its one-off costs.
        times["force"].append(run(["dvc", "repro", "--force"], clone)[0])
        shutil.rmtree(clone)
    return times


def synthetic_csv(path: Path, n_rows: int, seed: int = 0) -> None:
    """16 numeric and 4 categorical columns, 2% missing, three classes."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    features, labels = make_classification(
        n_samples=n_rows, n_features=16, n_informative=8, n_classes=3, random_state=seed
    )
    frame = pd.DataFrame(features.astype("float32"), columns=[f"x{i}" for i in range(16)])
    rng = np.random.default_rng(seed)
    for index in range(4):
        frame[f"c{index}"] = rng.choice(["red", "green", "blue", "grey", "gold"], n_rows)
    frame = frame.mask(rng.random(frame.shape) < 0.02)
    frame["label"] = np.array(["alpha", "beta", "gamma"])[labels]
    frame.to_csv(path, index=False)


def frame_megabytes(csv: Path) -> float:
    """The in-memory size of the CSV as pandas reads it (strings included), in MiB.

    Measured in a child process, like the generation of the CSV: a forked child starts with its
    parent's resident pages, and wait4 would count a large benchmark process in every stage's peak.
    """
    code = "import pandas, sys; print(pandas.read_csv(sys.argv[1]).memory_usage(deep=True).sum())"
    output = subprocess.run(
        [str(BIN / "python"), "-c", code, str(csv)], capture_output=True, text=True, check=True
    )
    return int(output.stdout) / 2**20


def generate(csv: Path, n_rows: int) -> None:
    """synthetic_csv in a child process (see frame_megabytes)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pipeline import synthetic_csv; "
        "from pathlib import Path; synthetic_csv(Path(sys.argv[2]), int(sys.argv[3]))"
    )
    args = [str(BIN / "python"), "-c", code, str(Path(__file__).parent), str(csv), str(n_rows)]
    subprocess.run(args, check=True)


def large_data(root: Path, n_rows: int, model: str, rounds: int) -> dict:
    """Each stage alone on a synthetic CSV; the bare train script beside the train stage."""
    clone = fresh_clone(root, f"large-{model}")
    generated = root / f"synthetic-{n_rows}.csv"  # made once, shared by every model's clone
    if not generated.exists():
        generate(generated, n_rows)
    csv = clone / "data" / "raw" / "synthetic.csv"
    os.link(generated, csv)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"] = {"csv": "data/raw/synthetic.csv", "target": "label"}
    params["train"]["model"] = model
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = {"frame_mib": frame_megabytes(generated), "bare": [], "train": []}
    result["process"] = run(["dvc", "repro", "--single-item", "process"], clone)
    # wait4's peak for `dvc repro` is the largest process under it, which may be DVC hashing the
    # CSV; the stage's own command, run again alone, gives the stage's peak.
    alone = ["mlops", "process", "--csv", "data/raw/synthetic.csv", "--out", "data/processed"]
    result["process alone"] = run(alone, clone)
    for _ in range(rounds):  # interleaved: the same load falls on both
        result["bare"].append(run([str(BIN / "python"), "-c", BARE_TRAIN], clone))
        result["train"].append(run(["dvc", "repro", "--single-item", "--force", "train"], clone))
    bare = json.loads((clone / "bare-metrics.json").read_text())
    stage = json.loads((clone / "metrics.json").read_text())
    if bare != stage:
        raise SystemExit(f"the bare script and the train stage disagree:\n{bare}\n{stage}")
    result["package"] = run(["dvc", "repro", "--single-item", "package"], clone)
    result["outputs"] = {
        str(path.relative_to(clone)): path.stat().st_size
        for path in sorted([clone / "metrics.json", *(clone / "plots").rglob("*")])
        if path.is_file()
    }
    shutil.rmtree(clone)
    return result


def print_large(n_rows: int, model: str, result: dict) -> None:
    """The large-data tables for one model."""
    frame = result["frame_mib"]
    print(
        f"\nSynthetic {n_rows:,} rows x 20 columns, {model} ({frame:,.0f} MiB as a pandas frame):"
    )
    print("| stage | seconds | peak RSS MiB | peak / frame |")
    print("| --- | ---: | ---: | ---: |")
    bare_s = statistics.median(t for t, _ in result["bare"])
    train_s = statistics.median(t for t, _ in result["train"])
    rows = [
        ("process (`dvc repro --single-item`)", *result["process"]),
        ("process stage command alone", *result["process alone"]),
        ("bare train script (median)", bare_s, max(m for _, m in result["bare"])),
        ("train (median)", train_s, max(m for _, m in result["train"])),
        ("package", *result["package"]),
    ]
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.1f} | {peak:,} | {peak / frame:.2f}x |")
    rounds = ", ".join(
        f"{b:.1f} / {t:.1f}" for (b, _), (t, _) in zip(result["bare"], result["train"], strict=True)
    )
    print(f"\ntrain / bare: {train_s / bare_s:.2f}x (rounds, bare / train s: {rounds})")
    largest = max(result["outputs"].items(), key=lambda item: item[1])
    print(f"largest pipeline output in git: {largest[0]}, {largest[1]:,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds on the bundled data"
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows of the synthetic CSV (0 skips)"
    )
    parser.add_argument(
        "--models",
        default="random_forest",
        help="comma-separated train.model values for the synthetic data",
    )
    parser.add_argument(
        "--large-rounds", type=int, default=2, help="interleaved bare/train rounds on it"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        if args.rounds:
            small(root, args.rounds)
        for model in filter(None, args.models.split(",")) if args.rows else ():
            print_large(args.rows, model, large_data(root, args.rows, model, args.large_rounds))


def small(root: Path, rounds: int) -> None:
    """The bundled-data table."""
    times = small_data(rounds, root)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"Bundled data, {rounds} interleaved rounds, median seconds (all rounds):")
    labels = {
        "bare": "bare script (same fit + evaluation, one process)",
        "cold": "cold `dvc repro` (fresh clone, 3 stages)",
        "noop": "no-op `dvc repro`",
        "param": "`dvc repro` after a train param change",
        "force": "`dvc repro --force` (all 3 stages, MLflow store exists)",
    }
    print("| run | median s | all rounds s | / bare |")
    print("| --- | ---: | --- | ---: |")
    for name, label in labels.items():
        values = ", ".join(f"{value:.2f}" for value in times[name])
        ratio = median[name] / median["bare"]
        print(f"| {label} | {median[name]:.2f} | {values} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
