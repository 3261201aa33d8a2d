"""Request parsing for the model server: a JSON body or a Seldon message into the model's input.

Every way a request can be wrong becomes a `BadRequest` (HTTP 400 `MICROSERVICE_BAD_DATA`) that
names the row and feature, or the problem with the body, before the model sees anything. REST
bodies are read here from the raw JSON, and gRPC messages from their JSON form, so none reaches
the parts of Seldon's own parsing that answer a malformed request with HTTP 500 (numpy's
"inhomogeneous shape", a RecursionError).

Runs in the serving environment (copied into the package beside `Model.py`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from contract import PackageMetadata, text_value
from flask.json.provider import DefaultJSONProvider
from seldon_core.flask_utils import SeldonMicroserviceException

# Values quoted in messages are cut to this many characters: a message must stay readable.
SHOWN_CHARS = 60
# The widest finite float; a decimal literal beyond it would silently become infinity.
FLOAT_DIGITS_LIMIT = 309
# A body is decoded with the checking hooks below (a Python call per number) only if it may hold
# a number too large for a float: a positive exponent of three digits or more, or a run of twenty
# digits (more than any float prints). Other bodies are decoded at C speed. The body's shape is
# read at C speed too: digits become "0", e and E "e", "+" stays, everything else a space.
NUMBER_SHAPE = bytes(
    ord("0") if chr(code).isdigit() and code < 128
    else ord("e") if chr(code) in "eE"
    else ord("+") if chr(code) == "+"
    else ord(" ")
    for code in range(256)
)  # fmt: skip
MAYBE_TOO_LARGE = (b"e000", b"e+000", b"0" * 20)


def may_hold_a_huge_number(body: str | bytes) -> bool:
    """True if the body has text that could be a number beyond a 64-bit float."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else bytes(body)
    shape = raw.translate(NUMBER_SHAPE)
    return any(pattern in shape for pattern in MAYBE_TOO_LARGE)


ROW_FORMS = "data.ndarray, data.tensor or jsonData"


class BadRequest(SeldonMicroserviceException):
    """A request the client must fix: HTTP 400 MICROSERVICE_BAD_DATA carrying the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400, reason="MICROSERVICE_BAD_DATA")

    def __str__(self) -> str:
        # gRPC answers carry str(exception); the base class leaves it empty.
        return self.message


def show(value: Any) -> str:
    """A value as a message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    names = {dict: "an object", list: "a list", str: "text", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# --- the JSON body -----------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise BadRequest(f"{name} is not a JSON number; send null for a missing value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"the number {show(text)} is too large for a 64-bit float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) >= FLOAT_DIGITS_LIMIT:
        raise BadRequest(f"the number {show(text)} is too large for a 64-bit float")
    return int(text)


def loads(body: str | bytes) -> Any:
    """Decode a JSON body strictly: no NaN/Infinity, no number beyond a float, bounded nesting."""
    checks = {}
    if may_hold_a_huge_number(body):
        checks = {"parse_float": _finite_float, "parse_int": _bounded_int}
    try:
        return json.loads(body, parse_constant=_reject_constant, **checks)
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to be a Seldon message") from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text") from None
    except ValueError as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from None


def check_not_null(message: Any) -> Any:
    """The decoded body, unless it is JSON null (which Seldon would fail on with HTTP 500)."""
    if message is None:
        raise BadRequest("the request body is JSON null; send a Seldon message object")
    return message


def check_complete(body: bytes, content_length: int) -> bytes:
    """The body, unless the client stopped sending before the Content-Length it announced."""
    # The WSGI server hands on what arrived; a cut-off body can still be a valid message.
    if len(body) != content_length:
        raise BadRequest(
            f"the request body has {len(body)} bytes, Content-Length says {content_length}: "
            "the body ended before it was complete"
        )
    return body


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, decoding request bodies with `loads` above."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Decode strictly; a BadRequest passes Flask's ValueError handling and answers 400."""
        return loads(s)


# --- Seldon messages ----------------------------------------------------------------------------


@dataclass
class Columns:
    """A request's rows, column by column: {feature: [value per row]}."""

    values: dict[str, list[Any]]
    n_rows: int
    kind: str = "ndarray"  # the form the answer takes: "ndarray", or "tensor" (also for jsonData)
    echo: dict[str, Any] = field(default_factory=dict)  # request meta the answer carries back


def parse_message(message: Any, metadata: PackageMetadata) -> Columns:
    """Check a decoded REST message and return its rows by feature."""
    if not isinstance(message, dict):
        raise BadRequest(
            "the request body must be a JSON object with data or jsonData, "
            f"got {type_name(message)}"
        )
    echo = _meta(message.get("meta"))
    forms = [key for key in ("data", "jsonData") if key in message]
    if len(forms) != 1:
        unsupported = [key for key in ("strData", "binData") if key in message]
        raise BadRequest(
            f"send exactly one of data or jsonData ({ROW_FORMS}), got "
            + (", ".join(forms + unsupported) or f"keys {show(sorted(message))}")
        )
    if forms[0] == "jsonData":
        columns = records_columns(message["jsonData"], metadata)
        columns.kind = "tensor"
    else:
        columns = data_columns(message["data"], metadata)
    check_rows(columns.n_rows, metadata)
    columns.echo = echo
    return columns


def _meta(meta: Any) -> dict[str, Any]:
    """The request meta the answer carries back (tags and puid), checked."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise BadRequest(f"meta must be an object, got {type_name(meta)}")
    echo: dict[str, Any] = {}
    tags = meta.get("tags")
    if tags is not None:
        if not isinstance(tags, dict):
            raise BadRequest(f"meta.tags must be an object, got {type_name(tags)}")
        echo["tags"] = dict(tags)
    if isinstance(meta.get("puid"), str):
        echo["puid"] = meta["puid"]
    # meta.metrics is not carried back: Seldon would count whatever the answer holds as this
    # server's own metrics.
    return echo


def data_columns(data: Any, metadata: PackageMetadata) -> Columns:
    """`data` with `ndarray` or `tensor`, and optional `names`."""
    if not isinstance(data, dict):
        raise BadRequest(f"data must be an object with ndarray or tensor, got {type_name(data)}")
    forms = [key for key in ("ndarray", "tensor") if key in data]
    if len(forms) != 1:
        others = show([key for key in data if key != "names"])
        raise BadRequest(f"data must hold exactly one of ndarray or tensor, got {others}")
    names = data.get("names")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(name, str) for name in names)
    ):
        raise BadRequest("data.names must be a list of feature names (text)")
    if forms[0] == "tensor":
        rows = tensor_rows(data["tensor"])
        kind = "tensor"
    else:
        rows = ndarray_rows(data["ndarray"])
        kind = "ndarray"
    return Columns(rows_by_name(rows, names or [], metadata), len(rows), kind)


def ndarray_rows(rows: Any) -> list[list[Any]]:
    """`data.ndarray`: a list of rows, each a list of values."""
    if not isinstance(rows, list):
        raise BadRequest(f"data.ndarray must be a list of rows, got {type_name(rows)}")
    if not rows:
        raise BadRequest("the request has no rows; send at least one row of feature values")
    if set(map(type, rows)) != {list}:
        if not any(isinstance(row, list) for row in rows):
            raise BadRequest(
                "expected a list of rows (2-D), got 1-D data; "
                "wrap a single row in a list: [[v1, v2, ...]]"
            )
        index = next(i for i, row in enumerate(rows) if not isinstance(row, list))
        raise BadRequest(f"data.ndarray row {index} is {type_name(rows[index])}, not a list")
    widths = set(map(len, rows))
    if len(widths) > 1:
        raise BadRequest(
            f"data.ndarray rows have different numbers of values: {sorted(widths)}; "
            "every row needs one value per feature"
        )
    return rows


def tensor_rows(tensor: Any) -> list[list[Any]]:
    """`data.tensor`: `shape` [rows, features] and `values` in row order."""
    if not isinstance(tensor, dict):
        raise BadRequest(f"data.tensor must be an object, got {type_name(tensor)}")
    shape, values = tensor.get("shape"), tensor.get("values")
    if not (isinstance(shape, list) and isinstance(values, list)):
        raise BadRequest("data.tensor needs a 'shape' list and a 'values' list")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise BadRequest(f"data.tensor shape must hold whole numbers >= 0, got {show(shape)}")
    if len(shape) != 2:
        raise BadRequest(f"data.tensor shape must be [rows, features], got {show(shape)}")
    if math.prod(shape) != len(values):
        raise BadRequest(
            f"data.tensor shape {shape} needs {math.prod(shape)} values, got {len(values)}"
        )
    n_rows, width = shape
    if n_rows == 0:
        raise BadRequest("the request has no rows; send at least one row of feature values")
    return [values[start : start + width] for start in range(0, n_rows * width, width)]


def records_columns(records: Any, metadata: PackageMetadata) -> Columns:
    """`jsonData`: a list of {feature: value} records."""
    if not isinstance(records, list):
        raise BadRequest(
            'jsonData must be a list of records like [{"feature": value, ...}], '
            f"got {type_name(records)}"
        )
    if not records:
        raise BadRequest("the request has no rows; send at least one row of feature values")
    expected = set(metadata.feature_names)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"jsonData record {index} is {type_name(record)}, not an object")
        if record.keys() != expected:
            check_names(list(record), metadata, f"jsonData record {index}")
    values = {name: [record[name] for record in records] for name in metadata.feature_names}
    return Columns(values, len(records))


def rows_by_name(rows: list[list[Any]], names: list[str], metadata: PackageMetadata) -> dict:
    """Rows (equal widths) as {feature: values}, by `names` or else in schema order."""
    width = len(rows[0]) if rows else 0
    if names:
        if len(names) != width:
            raise BadRequest(f"data.names has {len(names)} names but each row has {width} values")
        check_names(names, metadata, "data.names")
    elif width != len(metadata.feature_names):
        raise BadRequest(
            f"each row must have {len(metadata.feature_names)} values, one per feature in this "
            f"order: {metadata.feature_names}; got {width}"
        )
    position = {name: index for index, name in enumerate(names or metadata.feature_names)}
    columns = list(zip(*rows, strict=True))  # the callers checked that every row has `width`
    return {name: list(columns[position[name]]) for name in metadata.feature_names}


def check_names(names: list[Any], metadata: PackageMetadata, where: str) -> None:
    """Raise naming the unknown, missing or repeated feature names."""
    expected = metadata.feature_names
    unknown = [name for name in names if name not in expected]
    missing = [name for name in expected if name not in set(names)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    problems = []
    if unknown:
        problems.append(f"unknown feature names {show(unknown)}")
    if missing:
        problems.append(f"missing feature names {missing}")
    if repeated:
        problems.append(f"repeated feature names {show(repeated)}")
    if problems:
        raise BadRequest(f"{where}: {'; '.join(problems)}; the model expects {expected}")


def check_rows(n_rows: int, metadata: PackageMetadata) -> None:
    """At least one row, at most the package's batch limit."""
    if n_rows < 1:
        raise BadRequest("the request has no rows; send at least one row of feature values")
    if n_rows > metadata.max_batch_rows:
        raise BadRequest(
            f"the request has {n_rows} rows; at most {metadata.max_batch_rows} are allowed "
            "per request (max_batch_rows): split the batch"
        )


# --- the model's input ----------------------------------------------------------------------------


def typed_columns(columns: Columns, metadata: PackageMetadata) -> dict[str, np.ndarray]:
    """Type each column as in training: numeric as float (NaN if missing), categorical as text."""
    numeric = set(metadata.numeric_names)
    return {
        name: numeric_column(values, name) if name in numeric else categorical_column(values, name)
        for name, values in columns.values.items()
    }


def to_frame(typed: dict[str, np.ndarray], metadata: PackageMetadata) -> pd.DataFrame:
    """The model's input: the typed columns, which every parser here builds in schema order."""
    # No `columns=`: pandas would reindex, about 0.4 ms per request for nothing.
    assert list(typed) == metadata.feature_names
    return pd.DataFrame(typed, copy=False)


# What a categorical column usually holds.
PLAIN_TEXT_TYPES = frozenset({str, type(None)})
# What a numeric column usually holds: converted by numpy as they are, no value looked at in Python.
PLAIN_NUMBER_TYPES = frozenset({int, float, type(None)})


def numeric_column(values: list[Any], name: str) -> np.ndarray:
    """Numbers (or numeric text) as float64, null (or text that spells a gap) as NaN; anything
    else named by row."""
    if not set(map(type, values)) <= PLAIN_NUMBER_TYPES:
        for row, value in enumerate(values):
            # Checked first: numpy would read true as 1.0 and a one-element list as its element.
            if isinstance(value, bool | list | dict):
                raise BadRequest(
                    f"feature {name!r} must be a number or null, row {row} has {show(value)}"
                )
        # "NA" or "" is missing, as it is in the training CSV.
        values = [None if isinstance(v, str) and text_value(v) is None else v for v in values]
    try:
        column = np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        for row, value in enumerate(values):
            try:
                if value is not None:
                    float(value)
            except (TypeError, ValueError, OverflowError):
                raise BadRequest(
                    f"feature {name!r} must be a number or null, row {row} has {show(value)}"
                ) from None
        raise BadRequest(f"feature {name!r} must hold numbers or null") from None
    infinite = np.flatnonzero(np.isinf(column))
    if infinite.size:
        row = int(infinite[0])
        raise BadRequest(
            f"feature {name!r} must be a finite number, row {row} has {show(values[row])}"
        )
    return column


def categorical_column(values: list[Any], name: str) -> np.ndarray:
    """Text as training reads it (contract.text_value: no surrounding whitespace, a missing
    spelling as missing), numbers and booleans as their text, null (or NaN) as missing."""
    column = np.empty(len(values), dtype=object)
    kinds = set(map(type, values))
    if kinds <= PLAIN_TEXT_TYPES:  # the usual column: no value needs a look of its own type
        column[:] = values
        if type(None) in kinds:
            column[np.equal(column, None)] = np.nan
        # Each distinct text looked at once (a categorical feature has few levels); usually
        # none is padded or spells a gap, and the column stays as it came.
        changed = {v: t for v in set(values) - {None} if (t := text_value(v)) != v}
        if changed:
            column[:] = [
                np.nan if value is None or (text := changed.get(value, value)) is None else text
                for value in values
            ]
        return column
    for row, value in enumerate(values):
        if isinstance(value, str):
            text = text_value(value)
            column[row] = np.nan if text is None else text
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            column[row] = np.nan
        elif isinstance(value, bool | int | float):
            column[row] = str(value)
        else:
            raise BadRequest(
                f"feature {name!r} must be text, a number or null, row {row} has {type_name(value)}"
            )
    return column


def text_matrix(typed: dict[str, np.ndarray], names: list[str], missing: str) -> np.ndarray:
    """The categorical columns side by side as text, a missing value as the `missing` level."""
    matrix = np.empty((len(typed[names[0]]), len(names)), dtype=object)
    for index, name in enumerate(names):
        column = typed[name]
        matrix[:, index] = np.where(pd.isna(column), missing, column)
    return matrix


def check_model_range(
    transformed: Any, typed: dict[str, np.ndarray], input_names: list[str]
) -> None:
    """Reject rows whose preprocessed values no model can compute with.

    Tree models compare in float32, so a value that the scaler maps beyond float32's range (a
    finite but huge number such as 1e300) would fail inside scikit-learn, or turn a linear
    model's probabilities into NaN. The check is on the preprocessed matrix because the limit
    depends on each feature's training scale; `input_names` names its columns.
    """
    if not isinstance(transformed, np.ndarray) or transformed.dtype.kind != "f":
        return
    too_large = ~(np.abs(transformed) <= np.finfo(np.float32).max)
    if not too_large.any():
        return
    row, position = (int(index) for index in np.argwhere(too_large)[0])
    name = input_names[position] if position < len(input_names) else None
    if name in typed:
        raise BadRequest(
            f"feature {name!r} row {row} has {show(typed[name][row])}, too far outside the "
            "training data's scale for the model to compute with"
        )
    raise BadRequest(f"row {row} has a value too far outside the training data's scale")
