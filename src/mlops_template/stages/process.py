"""Process stage: validate the raw CSV, split it stratified, write the splits and a schema.

Memory stays close to one copy of the data: the CSV is parsed in chunks that are each turned into
Arrow columns at once (the text a parser holds is freed chunk by chunk), the chunks become one
frame without a copy of the strings, and the splits are written a chunk of rows at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_template.dataset import (
    CATEGORICAL,
    CHUNK_ROWS,
    MISSING_VALUES,
    NUMERIC,
    PADDING,
    SCHEMA_FILE,
    TEST_FILE,
    TRAIN_FILE,
    as_text,
    label_strings,
    write_split,
)
from mlops_template.errors import UserError
from mlops_template.files import atomic_directory, write_json
from mlops_template.params import (
    DEFAULT_PARAMS,
    ProcessParams,
    data_params,
    load_params,
    process_params,
)
from mlops_template.progress import Stopwatch, megabytes

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

# The delimiters a CSV may use: the first that splits its first lines into the most columns, the
# same number on each line, is the file's; a comma when none does.
DELIMITERS = ",;\t|"
SNIFFED_LINES = 5
# What pandas reads as missing by default (read_csv's `na_values`). Only an empty field or NA is
# missing here (contract.MISSING_VALUES); in a column of numbers, these are gaps spelled otherwise.
PANDAS_GAPS = frozenset(
    {
        "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    }
)  # fmt: skip


@contextlib.contextmanager
def csv_errors(path: Path) -> Iterator[None]:
    """Turn pandas' errors for an unreadable file into a UserError that names the file."""
    import pandas as pd

    try:
        yield
    except pd.errors.EmptyDataError:
        raise UserError(f"data.csv: {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"data.csv: {path} is not a readable CSV: {first_line}") from None


def read_columns(path: Path) -> list[str]:
    """The CSV's column names (its header row)."""
    import pandas as pd

    delimiter = sniff_delimiter(path)
    with csv_errors(path):
        return [str(name) for name in pd.read_csv(path, nrows=0, sep=delimiter).columns]


def sniff_delimiter(path: Path) -> str:
    """The CSV's delimiter (DELIMITERS), once the file is found and its header names each column
    once (pandas would rename a repeated name silently, `colour` to `colour.1`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.csv: file not found: {path}")
    with csv_errors(path), open(path, encoding="utf-8-sig", newline="") as handle:
        lines = [handle.readline(1_000_000) for _ in range(SNIFFED_LINES)]
        lines = [line for line in lines if line.strip()]
        widths = {d: {len(row) for row in csv.reader(lines, delimiter=d)} for d in DELIMITERS}
        even = [d for d, seen in widths.items() if len(seen) == 1 and seen != {1}]
        delimiter = max(even, key=lambda d: min(widths[d]), default=",")
        names = next(csv.reader(lines[:1], delimiter=delimiter), [])
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(
            f"data.csv: {path} repeats the column name "
            + ", ".join(f"'{name}'" for name in repeated)
            + "; give each column a name of its own"
        )
    if delimiter != ",":
        log.info("%s is delimited by %r", path, delimiter)
    return delimiter


def read_raw(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the raw CSV (or only `columns` of it), turning every way it can be unusable into a
    UserError that names it.

    Types are inferred as pandas infers them. A column read as numbers in some chunks and as text
    in others is read again as text, so its values keep the spelling they have in the file. Only
    MISSING_VALUES are missing, and text loses surrounding whitespace (chunk_table).
    """
    import pandas as pd
    import pyarrow as pa

    delimiter = sniff_delimiter(path)
    text: list[str] = []
    while True:
        with csv_errors(path):
            chunks = [
                chunk_table(chunk)
                for chunk in pd.read_csv(
                    path,
                    sep=delimiter,
                    chunksize=CHUNK_ROWS,
                    usecols=columns,
                    dtype=dict.fromkeys(text, str),
                    keep_default_na=False,
                    na_values=list(MISSING_VALUES),
                )
            ]
        mixed = mixed_columns(chunks)
        if not mixed:
            break
        text += mixed
    if not chunks or not sum(len(chunk) for chunk in chunks):
        raise UserError(f"data.csv: {path} has a header but no rows")
    table = pa.concat_tables(unify_numbers(chunks))
    del chunks
    # Conversion frees each Arrow column as it goes; strings stay in Arrow memory (no copy).
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    pa.default_memory_pool().release_unused()
    return frame


def chunk_table(chunk: pd.DataFrame) -> Any:
    """One parsed chunk as Arrow columns that own their memory (the chunk can be freed at once).

    Object columns become strings (True/False with gaps stay booleans, as pandas reads them),
    read as contract.text_value reads text; NaN stays a float value, so a column without text
    converts back to pandas as one copy.
    """
    import numpy as np
    import pyarrow as pa

    arrays = []
    for name in chunk.columns:
        column = chunk[name]
        if column.dtype == object and not pa.types.is_boolean(
            pa.infer_type(column.dropna().head(1000))
        ):
            column = as_text(column)
        if isinstance(column.dtype, np.dtype) and column.dtype != object:
            arrays.append(pa.array(column.to_numpy(copy=True), from_pandas=False))
        else:
            arrays.append(text_values(pa.array(column, from_pandas=True)))
    return pa.Table.from_arrays(arrays, names=[str(name) for name in chunk.columns])


def text_values(array: Any) -> Any:
    """An Arrow text array without surrounding whitespace, a value spelled as missing made
    missing: contract.text_value at Arrow's speed. Other arrays (booleans) are returned as they are.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return array
    trimmed = pc.utf8_trim(array, characters=PADDING)
    gaps = pc.is_in(trimmed, value_set=pa.array(MISSING_VALUES, type=trimmed.type))
    if not pc.any(gaps).as_py():
        return trimmed
    return pc.if_else(gaps, pa.scalar(None, trimmed.type), trimmed)


def chunk_types(chunks: list[Any], name: str) -> set[Any]:
    """The Arrow types column `name` has across the chunks."""
    return {chunk.schema.field(name).type for chunk in chunks}


def mixed_columns(chunks: list[Any]) -> list[str]:
    """Columns that some chunks read as text and others as numbers or booleans."""
    import pyarrow as pa

    mixed = []
    for name in chunks[0].column_names if chunks else []:
        types = chunk_types(chunks, name) - {pa.null()}
        if len(types) > 1 and not all(
            pa.types.is_integer(t) or pa.types.is_floating(t) for t in types
        ):
            mixed.append(name)
    return mixed


def unify_numbers(chunks: list[Any]) -> list[Any]:
    """Cast a column that is integers in some chunks and floats (gaps) in others to floats."""
    import pyarrow as pa

    schema = chunks[0].schema
    for index, name in enumerate(schema.names):
        seen = chunk_types(chunks, name)
        types = seen - {pa.null()}
        if len(types) > 1 or pa.null() in seen:
            wanted = pa.float64() if len(types) > 1 else next(iter(types), pa.float64())
            schema = schema.set(index, pa.field(name, wanted))
    return [chunk.cast(schema) for chunk in chunks]


def validate(frame: pd.DataFrame, target: str, params: ProcessParams) -> pd.DataFrame:
    """Check the frame can be split for training; return it without rows that lack a label."""
    check_columns(list(frame.columns), target)
    return labelled_rows(frame, target, params)


def check_columns(columns: list[str], target: str) -> None:
    """The target is a column, and there is at least one feature beside it."""
    if target not in columns:
        raise UserError(
            f"data.target: column '{target}' is not in the CSV "
            f"(columns: {', '.join(map(str, columns))})"
        )
    if len(columns) < 2:
        raise UserError("data.csv: the CSV has no feature columns besides the target")


def labelled_rows(frame: pd.DataFrame, target: str, params: ProcessParams) -> pd.DataFrame:
    """The rows that have a label, once the classes are checked to be splittable."""
    present = frame[target].notna()
    labelled = frame if present.all() else frame[present]  # no copy of a complete frame
    if len(labelled) < len(frame):
        log.warning(
            "dropped %d rows with no value in '%s' (%s)",
            len(frame) - len(labelled), target, missing_spellings(),
        )  # fmt: skip
    labels = label_strings(labelled[target])
    counts = labels.value_counts()
    numeric_text(target, labels, counts.index.tolist())
    if len(counts) < 2:
        raise UserError(
            f"data.target: column '{target}' needs at least two classes, found {len(counts)}"
        )
    # Without these, the splitter itself would fail; split() checks where each class went.
    n_test = -(-len(labelled) * params.test_size // 1)
    smallest = counts.idxmin()
    if counts.min() < 2 or n_test < len(counts) or len(labelled) - n_test < len(counts):
        raise UserError(
            f"data.target: class '{smallest}' has {counts.min()} rows, too few to split with "
            f"process.test_size={params.test_size} ({len(counts)} classes, {len(labelled)} rows); "
            "add rows or merge rare classes"
        )
    return labelled


def missing_spellings() -> str:
    """MISSING_VALUES as a message names them: "an empty field or NA"."""
    names = ["an empty field" if value == "" else value for value in MISSING_VALUES]
    return " or ".join(names)


def numeric_text(name: str, column: pd.Series, levels: list[str]) -> bool:
    """True if every level of a text column is a number (it was text only because a gap had
    whitespace around it). A column of numbers whose gaps are spelled otherwise (nan, N/A) stops
    the stage: read as text, it would be a categorical feature of numbers."""
    import pandas as pd

    others = []
    # The first levels decide most columns (names, codes) without parsing every level.
    for sample in (levels[:100], levels):
        text = pd.Series(sample, dtype=object)
        others = text[pd.to_numeric(text, errors="coerce").isna()].tolist()
        if not set(others) <= PANDAS_GAPS or len(others) == len(sample):
            return False
    if others:
        raise UserError(
            f"data.csv: column '{name}' holds numbers and the text '{others[0]}' "
            f"({int((column == others[0]).sum())} rows); only {missing_spellings()} is missing: "
            "write the gaps that way"
        )
    return True


def infer_schema(
    frame: pd.DataFrame, target: str, rows: np.ndarray | None = None
) -> dict[str, Any]:
    """Describe the features (numeric or categorical, with levels seen) and the class labels,
    from all rows or only those at positions `rows`."""
    import pandas as pd

    features = []
    for name in frame.columns:
        if name == target:
            continue
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            features.append({"name": str(name), "kind": NUMERIC})
            continue
        column = column if rows is None else column.take(rows)
        levels = sorted(column.dropna().astype(str).unique().tolist())
        if numeric_text(name, column, levels):  # the splits are written as numbers
            features.append({"name": str(name), "kind": NUMERIC})
        else:
            features.append({"name": str(name), "kind": CATEGORICAL, "categories": levels})
    labels = frame[target] if rows is None else frame[target].take(rows)
    classes = sorted(label_strings(labels).unique().tolist())
    return {"target": target, "features": features, "classes": classes}


def split(frame: pd.DataFrame, target: str, params: ProcessParams) -> tuple[Any, Any]:
    """Row positions of the train and test sets: stratified on the target, seeded from params,
    so the same input gives the same rows in the same order."""
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedShuffleSplit

    # Class codes in sorted order split exactly as the label strings would, without a Python
    # string per row; the splitter needs only the number of rows, not a copy of them. This is
    # what train_test_split(frame, stratify=labels) does, less its copies.
    codes, classes = pd.factorize(label_strings(frame[target]), sort=True)
    splitter = StratifiedShuffleSplit(
        n_splits=1, test_size=params.test_size, random_state=params.random_state
    )
    train, test = next(splitter.split(np.empty((len(frame), 0)), codes))
    check_both_sides(codes, classes, train, test, params)
    return train, test


def check_both_sides(
    codes: np.ndarray, classes: Any, train: np.ndarray, test: np.ndarray, params: ProcessParams
) -> None:
    """Every class has rows in train and in test: the splitter rounds each class's share, so a
    rare class (two rows, a quarter held out) can land on one side only."""
    import numpy as np

    counts = np.bincount(codes, minlength=len(classes))
    for side, rows, fix in (("test", test, "raise"), ("train", train, "lower")):
        absent = np.flatnonzero(np.bincount(codes[rows], minlength=len(classes)) == 0)
        if absent.size:
            rarest = absent[np.argmin(counts[absent])]
            others = f" (and {absent.size - 1} more classes)" if absent.size > 1 else ""
            raise UserError(
                f"data.target: class '{classes[rarest]}' has {counts[rarest]} rows, too few to "
                f"split with process.test_size={params.test_size}: the split puts none in "
                f"{side}{others}; add rows, merge rare classes or {fix} process.test_size"
            )


def process(csv: Path, out_dir: Path, params_path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Run the whole stage: read and validate everything first, then write all outputs at once."""
    import numpy as np

    raw = load_params(params_path)
    target = data_params(raw).target
    params = process_params(raw)
    clock = Stopwatch()
    check_columns(read_columns(csv), target)
    log.info("reading %s (%s MB) [%s]", csv, f"{Path(csv).stat().st_size / 1e6:,.0f}", clock)
    # The labels first, alone: the split's working memory is gone before the data is read.
    labelled = labelled_rows(read_raw(csv, [target]), target, params)
    positions = labelled.index.to_numpy()  # rows with a label, as positions in the file
    train, test = (positions[part] for part in split(labelled, target, params))
    del labelled
    frame = read_raw(csv)
    log.info(
        "read %s rows x %d columns (%s in memory) [%s]",
        f"{len(frame):,}", len(frame.columns), megabytes(frame), clock,
    )  # fmt: skip
    complete = len(positions) == len(frame)
    schema = infer_schema(frame, target, None if complete else np.sort(positions))
    schema["rows"] = {"train": len(train), "test": len(test)}
    log.info(
        "schema: %d numeric and %d categorical features, classes %s; splitting %s / %s rows [%s]",
        len([f for f in schema["features"] if f["kind"] == NUMERIC]),
        len([f for f in schema["features"] if f["kind"] == CATEGORICAL]),
        schema["classes"], f"{len(train):,}", f"{len(test):,}", clock,
    )  # fmt: skip
    with atomic_directory(out_dir) as staging:
        for name, rows in ((TRAIN_FILE, train), (TEST_FILE, test)):
            write_split(staging / name, frame, rows, schema)
            log.info("wrote %s (%s rows) [%s]", name, f"{len(rows):,}", clock)
        write_json(staging / SCHEMA_FILE, schema)
    log.info("process stage done: %s [%s]", out_dir, clock)
    return schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the stage's command-line options (paths come from dvc.yaml)."""
    parser.add_argument(
        "--csv", type=Path, required=True, help="the raw CSV (data.csv in params.yaml)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help=f"directory for {TRAIN_FILE}, {TEST_FILE}, {SCHEMA_FILE}",
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def return_freed_memory() -> None:
    """Have glibc give large freed blocks back to the system at once (no-op elsewhere).

    By default glibc raises its threshold for serving allocations from its own heap each time a
    large block is freed, and blocks freed from that heap are rarely returned: the chunks that
    reading leaves behind would keep the peak at about one more copy of the data. A fixed
    threshold (glibc's initial 128 KiB) turns that adjustment off.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "mallopt"):
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 128 * 1024)


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops process`."""
    return_freed_memory()
    process(args.csv, args.out, args.params)
    return 0
