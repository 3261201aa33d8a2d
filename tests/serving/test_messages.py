"""Request values are typed as training read the same text in the CSV (messages.typed_columns)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from mlops_template.dataset import read_split
from mlops_template.model import build_pipeline
from mlops_template.serving import contract
from mlops_template.stages.process import process
from tests.conftest import package_metadata
from tests.serving.conftest import REPO

# Runs in the serving environment: the package's own request parsing, on a jsonData message.
TYPED_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import contract, messages
metadata = contract.PackageMetadata.read(sys.argv[2])
columns = messages.parse_message(json.load(sys.stdin), metadata)
typed = messages.typed_columns(columns, metadata)
print(json.dumps({name: [None if v != v else v for v in column.tolist()]
                  for name, column in typed.items()}))
"""
# Text as a CSV may hold it: gaps (empty, NA, padded), levels pandas would read as missing by
# default, and padding that is not part of a value.
COLOURS = ["red", "None", "NA", " red ", "", "null", "n/a", "blue", "  ", "NaN"]
WIDTHS = ["1.5", "NA", " 2.5 ", "", "3", " NA", "4", "0.5", "2", "1"]


def write_csv(path: Path) -> Path:
    lines = ["length,width,colour,label"]
    for row in range(60):
        label = "ab"[row % 2]
        lines.append(f"{row + 0.5},{WIDTHS[row % 10]},{COLOURS[(row // 2) % 10]},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def served_typing(serve_python: Path, package_dir: Path, records: list[dict]) -> pd.DataFrame:
    """What the server's request parsing makes of `records`, as the model's input frame."""
    done = subprocess.run(
        [str(serve_python), "-c", TYPED_SCRIPT, str(REPO / "src/mlops_template/serving"),
         str(package_dir)],
        input=json.dumps({"jsonData": records}), capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    return pd.DataFrame(json.loads(done.stdout)).fillna(np.nan)


def test_a_row_is_typed_and_predicted_as_training_read_it(tmp_path, write_params, serve_python):
    csv_path = write_csv(tmp_path / "raw.csv")
    processed = tmp_path / "processed"
    schema = process(csv_path, processed, write_params())
    train = read_split(processed / "train.parquet", schema)
    test = read_split(processed / "test.parquet", schema)
    # Training's view of every row, in the file's order (`length` numbers the rows).
    trained = pd.concat([train[0], test[0]]).sort_values("length").reset_index(drop=True)
    features = tuple(contract.Feature.from_dict(feature) for feature in schema["features"])
    metadata = package_metadata(
        features=features,
        classes=tuple(schema["classes"]),
        reference=contract.Reference(class_shares={"a": 0.5, "b": 0.5}, missing_shares={}, bins={}),
    )
    metadata.write(tmp_path)
    with open(csv_path, newline="") as handle:
        records = [
            {name: row[name] for name in metadata.feature_names} for row in csv.DictReader(handle)
        ]  # every value as the text the CSV has

    served = served_typing(serve_python, tmp_path, records)

    assert set(trained["colour"].dropna()) == {"red", "blue", "None", "null", "n/a", "NaN"}
    for name in metadata.feature_names:
        assert values(served[name]) == values(trained[name]), name
    pipeline = build_pipeline(schema, _classifier()).fit(*train)
    np.testing.assert_array_equal(
        pipeline.predict_proba(served), pipeline.predict_proba(trained.astype(served.dtypes))
    )


def values(column: pd.Series) -> list:
    """A column's values, None where missing (NaN never equals itself)."""
    return [None if pd.isna(value) else value for value in column]


def _classifier():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)
