"""The shell scripts the workflows call: the image job summary."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import package_metadata

ROOT = Path(__file__).resolve().parents[1]
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
