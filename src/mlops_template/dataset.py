"""The dataset schema, and the one way to write a split and read it back with the right types.

Splits are Parquet files (through pyarrow): typed, so reading one back parses no text, and
written in row groups of CHUNK_ROWS so that writing never holds a second copy of the data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.files import read_json

# Re-exported, so the stages take the schema vocabulary from this module: the feature kinds, and
# how text is read (a missing value's spellings, the whitespace around a value that is not part
# of it), which the server reads request values with too.
from mlops_template.serving.contract import CATEGORICAL as CATEGORICAL
from mlops_template.serving.contract import MISSING_VALUES as MISSING_VALUES
from mlops_template.serving.contract import NUMERIC as NUMERIC
from mlops_template.serving.contract import PADDING as PADDING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# The process stage's outputs (dvc.yaml names the directory, these the files in it).
TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
SCHEMA_FILE = "schema.json"
# Rows handled at a time when reading the raw CSV and writing a split: large enough to be fast,
# small enough that a chunk's copies stay a few per cent of a million-row frame.
CHUNK_ROWS = 50_000


def feature_names(schema: dict[str, Any], kind: str | None = None) -> list[str]:
    """Names of the schema's features, optionally only those of one kind."""
    return [f["name"] for f in schema["features"] if kind is None or f["kind"] == kind]


def as_text(column: pd.Series) -> pd.Series:
    """Values as strings, missing values kept missing; string columns are returned as they are."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_string_dtype(column.dtype) and column.dtype != object:
        return column
    return column.astype(str).where(column.notna(), np.nan)


def coerce_features(frame: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Give each feature its schema type: float if numeric, else strings (NaN if missing)."""
    import pandas as pd

    columns = {}
    for feature in schema["features"]:
        column = frame[feature["name"]]
        if feature["kind"] == NUMERIC:
            columns[feature["name"]] = pd.to_numeric(column, errors="raise").astype("float64")
        else:
            columns[feature["name"]] = as_text(column)
    return pd.DataFrame(columns, index=frame.index)


def label_strings(labels: pd.Series) -> pd.Series:
    """Class labels as strings; whole numbers read as floats (because of gaps) lose their '.0'."""
    import pandas as pd

    if pd.api.types.is_float_dtype(labels) and (labels.dropna() % 1 == 0).all():
        labels = labels.astype("Int64")
    return labels.astype(str)


def write_split(path: Path, frame: pd.DataFrame, rows: np.ndarray, schema: dict[str, Any]) -> None:
    """Write `frame`'s rows at positions `rows`, in that order: the label, then the features.

    Each chunk of rows is copied, typed and written as one row group, then dropped.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = schema["target"]
    fields = [pa.field(target, pa.string())] + [
        pa.field(f["name"], pa.float64() if f["kind"] == NUMERIC else pa.string())
        for f in schema["features"]
    ]
    arrow_schema = pa.schema(fields)
    # Dictionary encoding pays for text (few levels) and costs for measurements (a dictionary
    # page tried and given up per column): a third of the writing time and a fifth of the size.
    text = [field.name for field in fields if field.type == pa.string()]
    with pq.ParquetWriter(path, arrow_schema, use_dictionary=text) as writer:
        for start in range(0, len(rows), CHUNK_ROWS):
            part = frame.take(rows[start : start + CHUNK_ROWS])
            features = coerce_features(part, schema)
            arrays = [pa.array(label_strings(part[target]), type=pa.string(), from_pandas=True)]
            arrays += [
                pa.array(features[field.name], type=field.type, from_pandas=True)
                for field in fields[1:]
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=arrow_schema))
            del part, features, arrays
            pa.default_memory_pool().release_unused()  # the chunk's memory, back to the system


def read_split(path: Path, schema: dict[str, Any]) -> tuple[pd.DataFrame, pd.Series]:
    """Read a split written by the process stage as (features, labels)."""
    import pandas as pd

    target = schema["target"]
    if not path.is_file():
        raise UserError(f"{path}: not found; run the process stage first (dvc repro)")
    frame = pd.read_parquet(path)
    missing = [name for name in [target, *feature_names(schema)] if name not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: columns {missing} from the schema are missing; rerun the process stage"
        )
    return coerce_features(frame, schema), frame[target].astype(str)


def content_sha256(features: pd.DataFrame, labels: pd.Series) -> str:
    """sha256 of a split's content (column names, values, order), not of its file's bytes.

    The same rows give the same digest whatever the file format, compression or library version
    that wrote them: this is what says two models' metrics were computed on the same data.
    """
    import pandas as pd

    digest = hashlib.sha256(json.dumps([labels.name, *features.columns]).encode())
    digest.update(pd.util.hash_pandas_object(labels, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(features, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def read_schema(path: Path) -> dict[str, Any]:
    """Read schema.json written by the process stage."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the process stage first (dvc repro)") from None
