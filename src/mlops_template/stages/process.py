"""Process stage: validate the raw CSV, split it stratified, write the splits and a schema."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.dataset import CATEGORICAL, NUMERIC, coerce_features, label_strings
from mlops_template.errors import UserError
from mlops_template.files import atomic_directory, write_json
from mlops_template.params import (
    DEFAULT_PARAMS,
    ProcessParams,
    data_params,
    load_params,
    process_params,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def read_raw(path: Path) -> pd.DataFrame:
    """Read the raw CSV, turning every way it can be unusable into a UserError that names it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.csv: file not found: {path}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"data.csv: {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"data.csv: {path} is not a readable CSV: {first_line}") from None
    if frame.empty:
        raise UserError(f"data.csv: {path} has a header but no rows")
    return frame


def validate(frame: pd.DataFrame, target: str, params: ProcessParams) -> pd.DataFrame:
    """Check the frame can be split for training; return it without rows that lack a label."""
    if target not in frame.columns:
        raise UserError(
            f"data.target: column '{target}' is not in the CSV "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    if len(frame.columns) < 2:
        raise UserError("data.csv: the CSV has no feature columns besides the target")
    labelled = frame[frame[target].notna()]
    if len(labelled) < len(frame):
        log.warning("dropped %d rows with no value in '%s'", len(frame) - len(labelled), target)
    counts = label_strings(labelled[target]).value_counts()
    if len(counts) < 2:
        raise UserError(
            f"data.target: column '{target}' needs at least two classes, found {len(counts)}"
        )
    # A stratified split puts at least one row of every class on each side.
    n_test = -(-len(labelled) * params.test_size // 1)
    smallest = counts.idxmin()
    if counts.min() < 2 or n_test < len(counts) or len(labelled) - n_test < len(counts):
        raise UserError(
            f"data.target: class '{smallest}' has {counts.min()} rows, too few to split with "
            f"process.test_size={params.test_size} ({len(counts)} classes, {len(labelled)} rows); "
            "add rows or merge rare classes"
        )
    return labelled


def infer_schema(frame: pd.DataFrame, target: str) -> dict[str, Any]:
    """Describe the features (numeric or categorical, with levels seen) and the class labels."""
    import pandas as pd

    features = []
    for name in frame.columns:
        if name == target:
            continue
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            features.append({"name": str(name), "kind": NUMERIC})
        else:
            levels = sorted(column.dropna().astype(str).unique().tolist())
            features.append({"name": str(name), "kind": CATEGORICAL, "categories": levels})
    classes = sorted(label_strings(frame[target]).unique().tolist())
    return {"target": target, "features": features, "classes": classes}


def split(
    frame: pd.DataFrame, target: str, params: ProcessParams
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split stratified on the target, seeded from params, so the same input gives the same rows."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        frame,
        test_size=params.test_size,
        random_state=params.random_state,
        stratify=label_strings(frame[target]),
    )
    return train, test


def process(csv: Path, out_dir: Path, params_path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Run the whole stage: read and validate everything first, then write all outputs at once."""
    raw = load_params(params_path)
    target = data_params(raw).target
    params = process_params(raw)
    frame = validate(read_raw(csv), target, params)
    schema = infer_schema(frame, target)
    train, test = split(frame, target, params)
    schema["rows"] = {"train": len(train), "test": len(test)}
    with atomic_directory(out_dir) as staging:
        for name, part in (("train", train), ("test", test)):
            features = coerce_features(part, schema)
            features.insert(0, target, label_strings(part[target]))
            features.to_csv(staging / f"{name}.csv", index=False, lineterminator="\n")
        write_json(staging / "schema.json", schema)
    log.info(
        "wrote %d train and %d test rows, %d features, classes %s to %s",
        len(train),
        len(test),
        len(schema["features"]),
        schema["classes"],
        out_dir,
    )
    return schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the stage's command-line options (paths come from dvc.yaml)."""
    parser.add_argument(
        "--csv", type=Path, required=True, help="the raw CSV (data.csv in params.yaml)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for train.csv, test.csv, schema.json"
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops process`."""
    process(args.csv, args.out, args.params)
    return 0
