"""The dataset schema and the one way to read a split back with the right column types."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError
from mlops_template.files import read_json
from mlops_template.serving.contract import CATEGORICAL, NUMERIC

if TYPE_CHECKING:
    import pandas as pd


def feature_names(schema: dict[str, Any], kind: str | None = None) -> list[str]:
    """Names of the schema's features, optionally only those of one kind."""
    return [f["name"] for f in schema["features"] if kind is None or f["kind"] == kind]


def coerce_features(frame: pd.DataFrame, schema: dict[str, Any]) -> pd.DataFrame:
    """Give each feature its schema type: float if numeric, else object (str, or NaN if missing)."""
    import numpy as np
    import pandas as pd

    columns = {}
    for feature in schema["features"]:
        column = frame[feature["name"]]
        if feature["kind"] == NUMERIC:
            columns[feature["name"]] = pd.to_numeric(column, errors="raise").astype("float64")
        else:
            columns[feature["name"]] = column.map(
                lambda value: np.nan if pd.isna(value) else str(value)
            ).astype(object)
    return pd.DataFrame(columns, index=frame.index)


def label_strings(labels: pd.Series) -> pd.Series:
    """Class labels as strings; whole numbers read as floats (because of gaps) lose their '.0'."""
    import pandas as pd

    if pd.api.types.is_float_dtype(labels) and (labels.dropna() % 1 == 0).all():
        labels = labels.astype("Int64")
    return labels.astype(str)


def read_split(path: Path, schema: dict[str, Any]) -> tuple[pd.DataFrame, pd.Series]:
    """Read a split written by the process stage as (features, labels)."""
    import pandas as pd

    target = schema["target"]
    frame = pd.read_csv(
        path, dtype={name: str for name in [target, *feature_names(schema, CATEGORICAL)]}
    )
    missing = [name for name in [target, *feature_names(schema)] if name not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: columns {missing} from the schema are missing; rerun the process stage"
        )
    return coerce_features(frame, schema), frame[target].astype(str)


def read_schema(path: Path) -> dict[str, Any]:
    """Read schema.json written by the process stage."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run the process stage first (dvc repro)") from None
