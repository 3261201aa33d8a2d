"""Atomic outputs: a failed write is one line and replaces nothing; a killed run's staging goes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mlops_template.errors import UserError
from mlops_template.files import atomic_directory, atomic_path, check_writable, write_json

NOBODY = 65534


def test_write_json_refuses_nan_and_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    before = target.read_bytes()
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not JSON compliant"):
            write_json(target, {"roc_auc": value})
    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def write_until(target: Path, error: OSError) -> None:
    """Stage half of `target`, then fail as a write does on a full disk or past a size limit."""
    with atomic_path(target) as staging:
        staging.write_text("half")
        raise error


def test_a_full_disk_is_one_line_naming_the_output_and_replaces_nothing(tmp_path):
    target = tmp_path / "model.joblib"
    target.write_text("last good model")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(UserError) as failure:
        write_until(target, full)
    assert str(failure.value) == f"{target}: cannot write: No space left on device (errno 28)"
    assert target.read_text() == "last good model"
    assert [path.name for path in tmp_path.iterdir()] == ["model.joblib"]


def test_a_failed_write_inside_a_staged_directory_names_the_file_as_published(tmp_path):
    out = tmp_path / "serving"
    out.mkdir()
    (out / "old.txt").write_text("last good package")
    too_big = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    with pytest.raises(UserError) as failure, atomic_directory(out) as staging:
        write_until(staging / "model.joblib", too_big)
    assert str(failure.value) == (
        f"{out / 'model.joblib'}: cannot write: File too large (errno 27)"
    )
    assert [path.name for path in out.iterdir()] == ["old.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["serving"]


def test_a_folder_under_a_regular_file_is_found_by_the_check(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(UserError, match=r"models/model\.joblib: cannot write: .*not a directory"):
        check_writable(tmp_path / "models" / "model.joblib")
    with pytest.raises(UserError, match=r"cannot write: Not a directory \(errno 20\)"):
        check_writable(tmp_path / "models" / "serving" / "model.joblib")


def test_a_folder_the_user_cannot_write_is_found_by_the_check():
    """Root writes whatever the mode bits say, so the check runs as an unprivileged user (the
    interpreter is started as root, as this one lives in root's home, and then gives it up)."""
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        root.chmod(0o755)
        folder = root / "models"
        folder.mkdir(mode=0o555)
        script = (
            "import os, sys; from pathlib import Path\n"
            "from mlops_template.errors import UserError\n"
            "from mlops_template.files import check_writable\n"
            f"if os.geteuid() == 0: os.setgid({NOBODY}); os.setuid({NOBODY})\n"
            "try: check_writable(Path(sys.argv[1]))\nexcept UserError as error: print(error)"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(folder / "model.joblib")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.stdout.strip() == (
            f"{folder / 'model.joblib'}: cannot write: Permission denied (errno 13)"
        ), done.stderr
        assert list(folder.iterdir()) == []


def stage_and_wait(file_target: Path, directory_target: Path) -> subprocess.Popen:
    """A process in the middle of writing both targets: staged, not yet renamed."""
    script = (
        "import sys, time; from pathlib import Path\n"
        "from mlops_template.files import atomic_directory, atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as f, atomic_directory(Path(sys.argv[2])) as d:\n"
        "    f.write_text('half'); (d / 'part.csv').write_text('half')\n"
        "    print('staged', flush=True); time.sleep(600)\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(file_target), str(directory_target)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout.readline() == "staged\n"
    return writer


def test_a_killed_runs_staging_is_removed_by_the_next_good_write(tmp_path):
    model, plots = tmp_path / "model.joblib", tmp_path / "plots"
    unrelated = [
        ".model.joblib.keep.tmp",  # not tempfile's name
        ".other.abcd1234.tmp",  # another target's staging
        ".model.joblib.x.abcd1234.tmp",  # the staging of `model.joblib.x`
        "notes.tmp",
    ]
    for name in unrelated:
        (tmp_path / name).write_text("keep")
    killed = stage_and_wait(model, plots)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    leftovers = {path.name for path in tmp_path.glob(".*.????????.tmp")} - set(unrelated)
    assert len(leftovers) == 2, "the killed run left its staging file and directory"
    live = stage_and_wait(model, plots)
    try:
        in_use = {path.name for path in tmp_path.glob(".*.????????.tmp")} - set(unrelated)
        in_use -= leftovers

        with atomic_path(model) as staging:
            staging.write_text("good model")
        with atomic_directory(plots) as staging:
            (staging / "roc.csv").write_text("good plot")

        names = {path.name for path in tmp_path.iterdir()}
        assert names == {"model.joblib", "plots", *unrelated, *in_use}
        assert model.read_text() == "good model"
        assert len(in_use) == 2, "a running writer's staging is left alone"
    finally:
        live.kill()
        live.wait()
