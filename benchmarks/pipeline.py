"""Pipeline benchmark: dvc repro (cold, no-op, param change) against a bare script, side by side.

Run with `make bench-pipeline` (or `.venv/bin/python benchmarks/pipeline.py`). It works in
temporary clones of the committed repository, so the working tree is not touched. Rounds are
interleaved so that load from elsewhere on the machine falls on every variant alike; the ratios
are what to compare across machines. Part two times process + train on a synthetic
1,000,000-row, 20-column CSV and reports each stage's peak memory.
"""

from __future__ import annotations

import argparse
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
train, test = split(frame, target, process_params(raw))
parts = [(coerce_features(part, schema), label_strings(part[target])) for part in (train, test)]
trained = fit_and_evaluate(schema, *parts, train_params(raw))
with tempfile.TemporaryDirectory() as images:
    write_images(trained.evaluation, Path(images))
print(trained.evaluation.metrics)
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


def large_data(root: Path, n_rows: int) -> list[tuple[str, float, int]]:
    """Time and peak memory of process and train on a large synthetic CSV (default model)."""
    clone = fresh_clone(root, "large")
    csv = clone / "data" / "raw" / "synthetic.csv"
    synthetic_csv(csv, n_rows)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"] = {"csv": "data/raw/synthetic.csv", "target": "label"}
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = []
    for stage in ("process", "train"):
        seconds, peak = run(["dvc", "repro", "--single-item", stage], clone)
        results.append((stage, seconds, peak))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds on the bundled data"
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows of the synthetic CSV (0 skips)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        times = small_data(args.rounds, root)
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"Bundled data, {args.rounds} interleaved rounds, median seconds (all rounds):")
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
            rounds = ", ".join(f"{value:.2f}" for value in times[name])
            ratio = median[name] / median["bare"]
            print(f"| {label} | {median[name]:.2f} | {rounds} | {ratio:.2f}x |")
        if args.rows:
            print(f"\nSynthetic {args.rows:,} rows x 20 columns, default model:")
            print("| stage | seconds | peak RSS MiB |")
            print("| --- | ---: | ---: |")
            for stage, seconds, peak in large_data(root, args.rows):
                print(f"| {stage} | {seconds:.1f} | {peak} |")


if __name__ == "__main__":
    main()
