"""The `mlops` command as a user meets it: one clear line and exit code 2 on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import params_dict

MLOPS = str(Path(sys.executable).with_name("mlops"))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MLOPS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_bad_params_give_one_line_and_exit_2(tmp_path, messy_csv):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict(process={"test_size": 2})))
    result = run("process", "--csv", str(messy_csv), "--out", "processed", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: params.yaml: process.test_size must be between 0 and 1, got 2\n"
    )
    assert not (tmp_path / "processed").exists()


def test_missing_csv_is_named(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict()))
    result = run("process", "--csv", "data/mine.csv", "--out", "processed", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: data.csv: file not found: data/mine.csv\n"


def test_train_before_process_says_what_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict()))
    result = run(
        "train",
        "--processed",
        "processed",
        "--model",
        "m.joblib",
        "--metrics",
        "metrics.json",
        "--plots",
        "plots",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "run the process stage first" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_command(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("process", "train", "package"):
        assert command in result.stdout
