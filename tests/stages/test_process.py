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

    assert sorted(p.name for p in out.iterdir()) == ["schema.json", "test.csv", "train.csv"]
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
    train = pd.read_csv(out / "train.csv")
    test = pd.read_csv(out / "test.csv")
    assert len(train) + len(test) == 90
    assert schema["rows"] == {"train": len(train), "test": len(test)}
    assert train["length"].isna().any(), "missing values are kept for the model's imputer"


def test_split_is_stratified_and_seeded():
    frame = messy_frame()
    train, test = split(frame, "label", PARAMS)
    again_train, _ = split(frame, "label", PARAMS)
    other_train, _ = split(frame, "label", ProcessParams(test_size=0.25, random_state=8))

    assert train.index.equals(again_train.index)
    assert not train.index.equals(other_train.index)
    assert set(test["label"]) == {"ant", "bee", "cat"}
    assert test["label"].value_counts().max() - test["label"].value_counts().min() <= 1


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
