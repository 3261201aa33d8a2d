"""The shell scripts the workflows call: DVC remote sync and the image job summary."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import package_metadata

ROOT = Path(__file__).resolve().parents[1]
DVC_REMOTE = ROOT / "scripts" / "dvc-remote.sh"
IMAGE_SUMMARY = ROOT / "scripts" / "image-summary.sh"
BIN = Path(sys.executable).parent


def sh(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command that must succeed; return its standard output."""
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def dvc_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git + DVC project with one DVC-tracked file, and the environment to run DVC in it."""
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "DVC": str(BIN / "dvc"), "DVC_NO_ANALYTICS": "1"}
    sh("git", "init", "--quiet", cwd=project)
    sh(BIN / "dvc", "init", "--quiet", cwd=project)
    (project / "data.csv").write_text("a,b\n1,2\n")
    sh(BIN / "dvc", "add", "--quiet", "data.csv", cwd=project)
    return project, env


def test_without_a_remote_pull_and_push_say_why_they_skip(
    dvc_project: tuple[Path, dict[str, str]],
) -> None:
    project, env = dvc_project
    for action in ("pull", "push"):
        out = sh(DVC_REMOTE, action, cwd=project, env=env)
        assert f"dvc {action}: skipped, no default DVC remote is configured" in out


def test_with_a_remote_push_then_pull_restores_the_data(
    dvc_project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    project, env = dvc_project
    storage = tmp_path / "storage"
    sh(BIN / "dvc", "remote", "add", "--default", "store", storage, cwd=project)
    assert "using remote 'store'" in sh(DVC_REMOTE, "push", cwd=project, env=env)
    assert any(storage.rglob("*")), "nothing reached the remote"
    # A fresh checkout has no data and no cache: only the remote can bring it back.
    (project / "data.csv").unlink()
    sh("rm", "-rf", ".dvc/cache", cwd=project)
    sh(DVC_REMOTE, "pull", cwd=project, env=env)
    assert (project / "data.csv").read_text() == "a,b\n1,2\n"


def test_dvc_remote_rejects_an_unknown_action(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(DVC_REMOTE), "fetch"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "usage:" in done.stderr


@pytest.fixture
def package_dir(tmp_path: Path) -> Path:
    """A package directory with its contract module and a valid metadata record."""
    from mlops_template.serving import contract

    package = tmp_path / "serving"
    package.mkdir()
    shutil.copyfile(contract.__file__, package / "contract.py")
    package_metadata(model_sha256="ab" * 32).write(package)
    return package


def test_image_summary_names_the_image_digest_and_model_sha(package_dir: Path) -> None:
    out = sh(
        IMAGE_SUMMARY,
        "ghcr.io/owner/repo:abc123",
        "sha256:" + "cd" * 32,
        package_dir,
        cwd=package_dir.parent,
    )
    assert "| image | `ghcr.io/owner/repo:abc123` |" in out
    assert f"| pull by digest | `ghcr.io/owner/repo@sha256:{'cd' * 32}` |" in out
    assert f"| model sha256 | `{'ab' * 32}` |" in out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no package", "contract.py not found; run the pipeline"),
        ("empty metadata", r"metadata keys: missing \['classes'"),
        ("bad sha256", "model_sha256 must be 64 hex digits"),
    ],
)
def test_image_summary_without_valid_metadata_is_a_one_line_error(
    package_dir: Path, damage: str, message: str
) -> None:
    metadata = package_dir / "metadata.json"
    if damage == "no package":
        shutil.rmtree(package_dir)
    elif damage == "empty metadata":
        metadata.write_text("{}")
    else:
        metadata.write_text(metadata.read_text().replace("ab" * 32, "not a sha"))
    done = subprocess.run(
        [str(IMAGE_SUMMARY), "ghcr.io/owner/repo:x", "", str(package_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert re.search(message, done.stderr), done.stderr
    assert done.stdout == ""
