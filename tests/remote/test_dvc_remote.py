"""A DVC remote on a real S3 endpoint: the README's setup, push and pull, and every way it fails.

`mlops data push|pull` is what `make push-data` and `make pull` run.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_template import processes, stack
from tests.conftest import REPO, clone_repository, fails, project_env, sh, snapshot
from tests.remote.conftest import S3, copy_of, start_s3

pytestmark = [pytest.mark.slow, pytest.mark.remote]

README_BUCKET = "my-bucket"
README_ENDPOINT = "https://s3.example.com"


def readme_setup(bucket: str, endpoint: str) -> list[list[str]]:
    """The commands of the README's remote-setup block, for this bucket and endpoint."""
    block = (REPO / "README.md").read_text().split("<!-- remote-setup")[1]
    block = block.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split(" # ")[0].strip()
        if not line or line.startswith("source "):
            continue
        line = line.replace(README_BUCKET, bucket).replace(README_ENDPOINT, endpoint)
        commands += [shlex.split(part) for part in line.split(" && ")]
    assert any(command[:3] == ["dvc", "remote", "add"] for command in commands), block
    return commands


def one_line(output: str) -> str:
    """The output, which must be a single line."""
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


def test_readme_setup_push_then_pull_in_a_fresh_clone_rebuilds_nothing(
    trained: Path, s3: S3, tmp_path: Path
) -> None:
    repository = copy_of(trained, tmp_path / "pushed")
    bucket = s3.new_bucket("dvc")
    for command in readme_setup(bucket, s3.url):
        sh(*command, cwd=repository)
    env = project_env(**s3.env())

    pushed = sh("mlops", "data", "push", cwd=repository, env=env)

    count = int(re.search(r"dvc push: (\d+) files pushed", pushed)[1])
    assert count > 0, pushed
    assert len(s3.keys(bucket, "dvc/")) == count, "every pushed file is an object in the bucket"
    fresh = tmp_path / "fresh"  # what git holds of `repository`: its remote, no data, no cache
    sh("git", "clone", "--quiet", str(repository), str(fresh), cwd=tmp_path)
    assert not (fresh / "models" / "model.joblib").exists()

    pulled = sh("mlops", "data", "pull", cwd=fresh, env=env)

    assert f"dvc pull: {count} files fetched" in pulled
    assert snapshot(fresh) == snapshot(repository), "every output, byte for byte"
    rerun = sh("dvc", "repro", cwd=fresh, env=env)
    assert "Running stage" not in rerun
    assert "Data and pipelines are up to date" in rerun
    assert sh("git", "status", "--porcelain", cwd=fresh) == ""


@pytest.fixture(scope="module")
def checking_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """An S3 endpoint that refuses keys it does not know, as S3 does."""
    server = start_s3(tmp_path_factory.mktemp("checking-s3"), check_credentials=True)
    try:
        yield server
    finally:
        processes.stop(server.pid)


@pytest.fixture(scope="module")
def remotes(s3: S3, checking_s3: S3) -> dict[str, tuple[str, str, dict[str, str], str]]:
    """case -> (url, endpoint, credentials, the cause the error must name)."""
    wrong = stack.Credentials(checking_s3.credentials.access_key_id, "not-the-secret")
    return {
        "endpoint down": (
            "s3://mlops-stack/dvc",
            f"http://127.0.0.1:{processes.free_port()}",
            s3.env(),
            r"cannot reach the storage: Could not connect to the endpoint URL",
        ),
        "bucket missing": (
            "s3://no-such-bucket/dvc",
            s3.url,
            s3.env(),
            r"the bucket does not exist",
        ),
        "credentials refused": (
            f"s3://{checking_s3.new_bucket('guarded')}/dvc",
            checking_s3.url,
            S3(checking_s3.url, wrong, checking_s3.pid).env(),
            r"access denied: the credentials were refused",
        ),
    }


@pytest.mark.parametrize("case", ["endpoint down", "bucket missing", "credentials refused"])
def test_push_and_pull_fail_in_one_line_and_change_nothing(
    trained: Path, remotes: dict, case: str, tmp_path: Path
) -> None:
    url, endpoint, credentials, cause = remotes[case]
    with_outputs = copy_of(trained, tmp_path / "with-outputs")
    without_outputs = clone_repository(tmp_path / "without-outputs")
    for repository in (with_outputs, without_outputs):
        sh("dvc", "remote", "add", "--local", "-d", "storage", url, cwd=repository)
        sh("dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint, cwd=repository)
    env = project_env(**credentials)
    expected = re.compile(rf"error: DVC remote 'storage' \({re.escape(url)} at .*\): {cause}")

    for repository, action in ((with_outputs, "push"), (without_outputs, "pull")):
        before = snapshot(repository), sh("git", "status", "--porcelain", cwd=repository)

        line = one_line(fails("mlops", "data", action, cwd=repository, env=env))

        assert expected.match(line), line
        assert (snapshot(repository), sh("git", "status", "--porcelain", cwd=repository)) == before
