"""Process stage: validation of the raw CSV, the schema, and a deterministic stratified split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_template.errors import UserError
from mlops_template.params import ProcessParams
from mlops_template.stages.process import infer_schema, process, read_raw, split, validate

from ..conftest import messy_frame

PARAMS = ProcessParams(test_size=0.25, random_state=7)


def test_messy_csv_becomes_splits_and_schema(tmp_path, messy_csv, write_params):
    out = tmp_path / "processed"
    schema = process(messy_csv, out, write_params())

    assert sorted(p.name for p in out.iterdir()) == ["schema.json", "test.parquet", "train.parquet"]
    assert json.loads((out / "schema.json").read_text()) == schema
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds == {
        "length": "numeric",
        "weight": "numeric",
        "colour": "categorical",
        "shape": "categorical",
    }
    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["categories"] == ["blue", "green", "red"]  # gaps are not a level
    assert schema["classes"] == ["ant", "bee", "cat"]
    train = pd.read_parquet(out / "train.parquet")
    test = pd.read_parquet(out / "test.parquet")
    assert len(train) + len(test) == 90
    assert schema["rows"] == {"train": len(train), "test": len(test)}
    assert train["length"].isna().any(), "missing values are kept for the model's imputer"
    assert train["colour"].isna().any()
    # Typed columns: the label first, numbers as float64, categories as strings.
    assert list(train.columns) == ["label", "length", "weight", "colour", "shape"]
    assert train["length"].dtype == "float64"
    assert pd.api.types.is_string_dtype(train["colour"])


def test_splits_hold_the_csv_rows_unchanged(tmp_path, messy_csv, write_params):
    out = tmp_path / "processed"
    process(messy_csv, out, write_params())
    original = pd.read_csv(messy_csv)
    both = pd.concat([pd.read_parquet(out / name) for name in ("train.parquet", "test.parquet")])
    both = both[original.columns].sort_values(["length", "weight"]).reset_index(drop=True)
    expected = original.sort_values(["length", "weight"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(both, expected, check_dtype=False)


def test_the_splits_do_not_depend_on_the_chunk_size(tmp_path, messy_csv, write_params, monkeypatch):
    first = tmp_path / "first"
    process(messy_csv, first, write_params())
    monkeypatch.setattr("mlops_template.stages.process.CHUNK_ROWS", 8)
    monkeypatch.setattr("mlops_template.dataset.CHUNK_ROWS", 8)
    second = tmp_path / "second"
    process(messy_csv, second, write_params())
    for name in ("train.parquet", "test.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(first / name), pd.read_parquet(second / name))
    assert (first / "schema.json").read_bytes() == (second / "schema.json").read_bytes()


def test_columns_typed_differently_in_different_chunks_read_as_pandas_reads_them(
    tmp_path, monkeypatch
):
    # Chunks of 4 rows: `count` is whole numbers, then has a gap (floats); `code` is numbers for
    # 8 rows, then text; `flag` is booleans with a gap.
    monkeypatch.setattr("mlops_template.stages.process.CHUNK_ROWS", 4)
    path = tmp_path / "raw.csv"
    lines = ["count,code,flag,label"]
    for index in range(12):
        count = "" if index == 5 else str(index)
        code = f"{index}.50" if index < 8 else f"x{index}"
        flag = "" if index == 2 else str(index % 2 == 0)
        lines.append(f"{count},{code},{flag},{'ab'[index % 2]}")
    path.write_text("\n".join(lines) + "\n")

    frame = read_raw(path)

    assert frame["count"].dtype == "float64"
    assert frame["count"].isna().sum() == 1
    assert frame["code"].tolist()[:2] == ["0.50", "1.50"], "text keeps its spelling"
    assert frame["code"].tolist()[-1] == "x11"
    assert infer_schema(frame, "label")["features"] == [
        {"name": "count", "kind": "numeric"},
        {"name": "code", "kind": "categorical", "categories": sorted(frame["code"].tolist())},
        {"name": "flag", "kind": "categorical", "categories": ["False", "True"]},
    ]


def test_split_is_stratified_and_seeded():
    frame = messy_frame()
    train, test = split(frame, "label", PARAMS)
    again_train, _ = split(frame, "label", PARAMS)
    other_train, _ = split(frame, "label", ProcessParams(test_size=0.25, random_state=8))

    assert (train == again_train).all()
    assert not (train == other_train).all()
    assert sorted([*train, *test]) == list(range(len(frame)))
    labels = frame["label"].iloc[test]
    assert set(labels) == {"ant", "bee", "cat"}
    assert labels.value_counts().max() - labels.value_counts().min() <= 1


def test_binary_numeric_target_keeps_whole_number_labels():
    frame = messy_frame(labels=(0, 1))
    frame.loc[4, "label"] = np.nan  # a gap turns the column into floats
    schema = infer_schema(validate(frame, "label", PARAMS), "label")
    assert schema["classes"] == ["0", "1"]


def test_rows_without_a_label_are_dropped():
    frame = messy_frame()
    frame.loc[[0, 1], "label"] = None
    assert len(validate(frame, "label", PARAMS)) == 88


def test_missing_target_names_the_column_and_the_columns_there_are():
    with pytest.raises(UserError, match=r"column 'species' is not in the CSV \(columns: length,"):
        validate(messy_frame(), "species", PARAMS)


def test_a_single_class_cannot_be_learned():
    frame = messy_frame()
    frame["label"] = "ant"
    with pytest.raises(UserError, match="needs at least two classes, found 1"):
        validate(frame, "label", PARAMS)


def test_a_class_too_small_to_split_is_named():
    frame = messy_frame()
    frame.loc[0, "label"] = "dodo"
    with pytest.raises(UserError, match="class 'dodo' has 1 rows, too few to split"):
        validate(frame, "label", PARAMS)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(UserError, match=r"data\.csv: file not found"):
        read_raw(tmp_path / "absent.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="is empty"):
        read_raw(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,label\n")
    with pytest.raises(UserError, match="has a header but no rows"):
        read_raw(header_only)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(UserError, match="is not a readable CSV"):
        read_raw(ragged)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81\x92" * 50)
    with pytest.raises(UserError, match="is not a readable CSV"):
        read_raw(binary)


def test_failure_leaves_previous_outputs_untouched(tmp_path, messy_csv, write_params):
    out = tmp_path / "processed"
    process(messy_csv, out, write_params())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(UserError):
        process(messy_csv, out, write_params(data={"target": "nope"}))

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_write_leaves_nothing_behind(tmp_path, messy_csv, write_params, monkeypatch):
    out = tmp_path / "processed"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mlops_template.stages.process.write_json", fail)
    with pytest.raises(KeyboardInterrupt):
        process(messy_csv, out, write_params())
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rows_without_a_label_are_left_out_of_splits_and_schema(tmp_path, write_params):
    frame = messy_frame()
    frame.loc[[3, 40], "label"] = None
    frame.loc[40, "colour"] = "purple"  # a level seen only in an unlabelled row
    csv = tmp_path / "raw.csv"
    frame.to_csv(csv, index=False)

    schema = process(csv, tmp_path / "processed", write_params())

    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["categories"] == ["blue", "green", "red"]
    assert schema["rows"]["train"] + schema["rows"]["test"] == 88
    splits = [
        pd.read_parquet(tmp_path / "processed" / n) for n in ("train.parquet", "test.parquet")
    ]
    assert not any(split["label"].isna().any() for split in splits)
    assert "purple" not in set(pd.concat(splits)["colour"])
