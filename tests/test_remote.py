"""`mlops data pull|push` (what `make pull` and `make push-data` run) on a small DVC project.

The S3 remote, its failures and a whole pipeline's round trip are in tests/remote/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import fails, sh


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A git + DVC project with one DVC-tracked file."""
    project = tmp_path / "project"
    project.mkdir()
    sh("git", "init", "--quiet", cwd=project)
    sh("dvc", "init", "--quiet", cwd=project)
    (project / "data.csv").write_text("a,b\n1,2\n")
    sh("dvc", "add", "--quiet", "data.csv", cwd=project)
    return project


def test_without_a_remote_pull_and_push_say_why_they_skip(project: Path) -> None:
    for action in ("pull", "push"):
        out = sh("mlops", "data", action, cwd=project)
        assert f"dvc {action}: skipped, no default DVC remote is configured" in out


def test_push_then_pull_restores_the_data_from_a_folder_remote(
    project: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    sh("dvc", "remote", "add", "--default", "store", str(storage), cwd=project)
    assert "dvc push: 1 file pushed, remote 'store'" in sh("mlops", "data", "push", cwd=project)
    # A fresh checkout has no data and no cache: only the remote can bring it back.
    (project / "data.csv").unlink()
    sh("rm", "-rf", ".dvc/cache", cwd=project)
    assert "dvc pull: 1 file fetched" in sh("mlops", "data", "pull", cwd=project)
    assert (project / "data.csv").read_text() == "a,b\n1,2\n"


def test_a_default_remote_that_is_not_defined_is_one_line(project: Path) -> None:
    sh("dvc", "config", "core.remote", "nowhere", cwd=project)
    out = fails("mlops", "data", "push", cwd=project)
    assert out.strip() == "error: the default DVC remote 'nowhere' is not defined (dvc remote list)"


def test_an_unknown_action_is_a_usage_error(project: Path) -> None:
    out = fails("mlops", "data", "fetch", cwd=project)
    assert "invalid choice: 'fetch'" in out
