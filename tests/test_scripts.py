"""The shell scripts the workflows call: the image job summary, the package out of an image."""

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


IMAGE_PACKAGE = ROOT / "scripts" / "image-package.sh"


def run_image_package(*args: str | Path, path: str | None = None) -> subprocess.CompletedProcess:
    """Run scripts/image-package.sh, optionally with a PATH of its own."""
    env = {key: value for key, value in os.environ.items() if key != "CONTAINER_ENGINE"}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [str(IMAGE_PACKAGE), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_image_package_without_docker_or_podman_is_a_one_line_error(tmp_path: Path) -> None:
    # A PATH with the shell and nothing else: no docker, no podman.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(shutil.which("bash"))
    out = tmp_path / "package"
    done = run_image_package("ghcr.io/owner/repo:abc", out, path=str(bin_dir))
    assert done.returncode == 3
    assert done.stderr.strip().count("\n") == 0
    assert "no container engine: need a running Docker engine, or podman" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), r"^usage: .*image-package\.sh IMAGE DIR$"),
        (("ghcr.io/owner/repo:abc",), r"^usage: .*image-package\.sh IMAGE DIR$"),
        (("", "DIR"), r"^usage: .*image-package\.sh IMAGE DIR$"),
        (("ghcr.io/owner/repo:abc", "FULL"), r"^error: .*/full is not empty"),
        (("ghcr.io/owner/repo:abc", "FILE"), r"^error: .*/file exists and is not a directory$"),
    ],
)
def test_image_package_with_bad_arguments_is_a_one_line_error(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "left-over").write_text("")
    (tmp_path / "file").write_text("")
    paths = {"DIR": tmp_path / "new", "FULL": tmp_path / "full", "FILE": tmp_path / "file"}
    done = run_image_package(*(paths.get(arg, arg) for arg in args))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert re.search(message, done.stderr.strip()), done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "new").exists()
