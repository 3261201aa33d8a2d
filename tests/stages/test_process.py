"""Process stage: validation of the raw CSV, the schema, and a deterministic stratified split."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_template.errors import UserError
from mlops_template.params import ProcessParams
from mlops_template.stages.process import infer_schema, process, read_raw, split, validate

from ..conftest import clone_repository, messy_frame, sh

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


# --- data read as the user wrote it, or not at all ---------------------------------------------


def write_text_csv(tmp_path, lines: list[str], name: str = "raw.csv"):
    """A CSV written line by line, exactly as given."""
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def messy_lines(edit=None) -> list[str]:
    """messy_frame() as CSV lines; `edit(frame)` may change the frame first."""
    frame = messy_frame()
    if edit is not None:
        edit(frame)
    return frame.to_csv(index=False).splitlines()


@pytest.mark.parametrize(("test_size", "side"), [(0.25, "test"), (0.9, "train")])
def test_a_class_the_split_leaves_off_one_side_is_named(tmp_path, write_params, test_size, side):
    # Two rows are enough for the old count check, but the allocation gives both to one side.
    def two_dodos(frame):
        frame.loc[[0, 3], "label"] = "dodo"

    csv = write_text_csv(tmp_path, messy_lines(two_dodos))
    params = write_params(process={"test_size": test_size, "random_state": 7})
    with pytest.raises(
        UserError,
        match=rf"class 'dodo' has 2 rows, too few to split with process\.test_size={test_size}: "
        rf"the split puts none in {side}",
    ):
        process(csv, tmp_path / "processed", params)
    assert not (tmp_path / "processed").exists()


def test_text_values_lose_surrounding_spaces(tmp_path, write_params):
    def padded(frame):
        frame.loc[0:8, "label"] = frame.loc[0:8, "label"].map(lambda label: f" {label}")
        frame.loc[9:17, "label"] = frame.loc[9:17, "label"].map(lambda label: f"{label}\t")
        frame.loc[1, "colour"] = " red "

    csv = write_text_csv(tmp_path, messy_lines(padded))
    schema = process(csv, tmp_path / "processed", write_params())

    assert schema["classes"] == ["ant", "bee", "cat"]
    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["categories"] == ["blue", "green", "red"]
    splits = pd.concat(
        pd.read_parquet(tmp_path / "processed" / name) for name in ("train.parquet", "test.parquet")
    )
    assert set(splits["label"]) == {"ant", "bee", "cat"}


def test_only_an_empty_field_and_na_are_missing(tmp_path, write_params, caplog):
    # pandas' defaults would read all of these as missing: the class None would be dropped and
    # the levels would be gaps in training, but unseen levels when served.
    kept = ["None", "null", "n/a", "NaN", "nan", "#N/A", "NULL"]

    def spelled(frame):
        frame.loc[0:11, "label"] = "None"
        frame.loc[12 : 12 + len(kept) - 1, "colour"] = kept

    lines = messy_lines(spelled)
    for row, gap in ((20, "NA"), (30, "")):  # line 0 is the header
        lines[row + 1] = lines[row + 1].rsplit(",", 1)[0] + f",{gap}"
    csv = write_text_csv(tmp_path, lines)

    schema = process(csv, tmp_path / "processed", write_params())

    assert schema["classes"] == ["None", "ant", "bee", "cat"]
    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["categories"] == sorted(["blue", "green", "red", *kept])
    assert schema["rows"]["train"] + schema["rows"]["test"] == 88
    assert "dropped 2 rows with no value in 'label' (an empty field or NA)" in caplog.text


@pytest.mark.parametrize("spelling", ["nan", "N/A", "null"])
def test_numbers_with_gaps_spelled_otherwise_are_named(tmp_path, write_params, spelling):
    # Before, pandas read these as missing numbers; as text they would make `weight` categorical.
    def gaps(frame):
        frame["weight"] = frame["weight"].astype(object)
        frame.loc[[4, 9], "weight"] = spelling

    csv = write_text_csv(tmp_path, messy_lines(gaps))
    with pytest.raises(
        UserError,
        match=rf"column 'weight' holds numbers and the text '{re.escape(spelling)}' \(2 rows\); "
        r"only an empty field or NA is missing",
    ):
        process(csv, tmp_path / "processed", write_params())


def test_a_repeated_column_name_is_named(tmp_path, write_params):
    lines = messy_lines()
    assert lines[0] == "length,weight,colour,shape,label"
    lines[0] = "length,colour,colour,shape,label"
    csv = write_text_csv(tmp_path, lines)
    for read in (lambda: read_raw(csv), lambda: process(csv, tmp_path / "out", write_params())):
        with pytest.raises(UserError, match=r"data\.csv: .* repeats the column name 'colour'"):
            read()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_file_delimited_otherwise_is_read_like_a_comma_one(tmp_path, write_params, delimiter):
    comma = write_text_csv(tmp_path, messy_lines(), "comma.csv")
    other = write_text_csv(
        tmp_path, [line.replace(",", delimiter) for line in messy_lines()], "other.csv"
    )
    expected = process(comma, tmp_path / "comma", write_params())

    assert process(other, tmp_path / "other", write_params()) == expected
    for name in ("train.parquet", "test.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "other" / name), pd.read_parquet(tmp_path / "comma" / name)
        )


def test_numbers_with_gaps_written_with_spaces_stay_numbers(tmp_path, write_params):
    # " NA" is not a number to pandas, so it reads the column as text; it is a gap all the same.
    def padded_gaps(frame):
        frame["weight"] = frame["weight"].astype(object)
        frame.loc[[4, 9], "weight"] = " NA "

    csv = write_text_csv(tmp_path, messy_lines(padded_gaps))
    schema = process(csv, tmp_path / "processed", write_params())

    assert {"name": "weight", "kind": "numeric"} in schema["features"]
    splits = pd.concat(
        pd.read_parquet(tmp_path / "processed" / name) for name in ("train.parquet", "test.parquet")
    )
    assert splits["weight"].dtype == "float64"
    assert splits["weight"].isna().sum() == messy_frame()["weight"].isna().sum() + 2


@pytest.mark.slow
def test_the_stage_command_takes_a_csv_path_with_spaces_and_quotes(tmp_path):
    """dvc.yaml's command runs through a shell: the path must reach the stage as one argument."""
    clone = clone_repository(tmp_path / "repo")
    path = "data/raw/Jo's pen guins.csv"
    (clone / "data/raw/penguins.csv").rename(clone / path)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["data"]["csv"] = path
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    sh("dvc", "repro", "process", cwd=clone)

    schema = json.loads((clone / "data/processed/schema.json").read_text())
    assert schema["rows"] == {"train": 258, "test": 86}
