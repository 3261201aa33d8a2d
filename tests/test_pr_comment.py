"""`mlops comment` against a local fake of the GitHub REST endpoints it uses (no GitHub here)."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import parse_qs, urlparse

import pytest

from mlops_template.pr_comment import (
    MAX_BODY,
    CommentError,
    GitHub,
    comment_body,
    has_watermark,
    parse_target,
    upsert,
)

from .conftest import REPO, JsonHandler, local_http_server

HEAD = "a" * 40
REPOSITORY = "octo/model"
TOKEN = "test-token"
ARTIFACT = "https://github.com/octo/model/actions/runs/7#artifacts"
# What `cml comment update --watermark-title="Model report"` appends (iterative/cml 0.20.6).
CML_COMMENT = (
    'old report\n\n![](https://cml.dev/watermark.png#0123abc "CML watermark Model report")'
)


class FakeGitHub:
    """Pull requests and issue comments in memory, served on 127.0.0.1 like api.github.com."""

    def __init__(self) -> None:
        self.heads = {12: HEAD}
        self.comments: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, int] = {}  # method -> status to answer with

    def handler(self):
        fake = self

        class Handler(JsonHandler):
            def route(self, method):
                url = urlparse(self.path)
                fake.requests.append((method, url.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.answer(401, {"message": "Bad credentials"})
                if method in fake.fail:
                    return self.answer(fake.fail[method], {"message": "Resource not accessible"})
                parts = url.path.strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length)) if length else None
                if method == "GET" and parts[3] == "pulls":
                    number = int(parts[4])
                    if number not in fake.heads:
                        return self.answer(404, {"message": "Not Found"})
                    return self.answer(200, {"number": number, "head": {"sha": fake.heads[number]}})
                if method == "GET" and parts[3] == "issues":
                    query = parse_qs(url.query)
                    size, page = int(query["per_page"][0]), int(query["page"][0])
                    return self.answer(200, fake.comments[(page - 1) * size : page * size])
                if method == "POST":
                    comment = {"id": 1000 + len(fake.comments), "body": payload["body"]}
                    comment["user"] = {"login": "github-actions[bot]"}
                    fake.comments.append(comment)
                    return self.answer(201, comment)
                if method == "PATCH":
                    comment = next(c for c in fake.comments if c["id"] == int(parts[5]))
                    comment["body"] = payload["body"]
                    return self.answer(200, comment)
                return self.answer(404, {"message": "Not Found"})

            def do_GET(self):
                self.route("GET")

            def do_POST(self):
                self.route("POST")

            def do_PATCH(self):
                self.route("PATCH")

        return Handler

    def comment(self, body: str, login: str = "github-actions[bot]") -> None:
        self.comments.append(
            {"id": 1000 + len(self.comments), "body": body, "user": {"login": login}}
        )


@pytest.fixture
def github():
    fake = FakeGitHub()
    with local_http_server(fake.handler()) as url:
        fake.url = url
        yield fake


def post(fake: FakeGitHub, report: str = "# Report\n\n![](images/head/roc.png)\n") -> str:
    target = parse_target(REPOSITORY, "12", HEAD)
    body = comment_body(report, "Model report", HEAD, ARTIFACT)
    return upsert(GitHub(TOKEN, fake.url, timeout=5), target, body, "Model report")


def test_first_run_creates_the_comment_and_the_next_updates_it(github):
    assert post(github) == "created comment 1000"
    assert post(github, "# Report, second push\n") == "updated comment 1000"

    assert len(github.comments) == 1
    body = github.comments[0]["body"]
    assert body.startswith("# Report, second push")
    assert has_watermark(body, "Model report")
    assert f"#{HEAD}" in body


def test_the_comment_cml_wrote_is_updated_in_place(github):
    github.comment("unrelated")
    github.comment(CML_COMMENT)
    assert post(github) == "updated comment 1001"
    assert github.comments[0]["body"] == "unrelated"


def test_a_watermarked_comment_by_someone_else_is_left_alone(github):
    github.comment(CML_COMMENT, login="mallory")
    assert post(github) == "created comment 1001"
    assert github.comments[0]["body"] == CML_COMMENT


def test_the_comment_is_found_on_a_later_page(github):
    for index in range(120):
        github.comment(f"comment {index}")
    github.comment(CML_COMMENT)
    github.comment("after")
    assert post(github) == "updated comment 1120"
    assert ("GET", f"/repos/{REPOSITORY}/issues/12/comments") in github.requests


def test_local_images_become_a_link_to_the_artifact_and_never_leave():
    body = comment_body(
        "![ROC](images/head/roc.png)\n![](https://example.com/x.png)\n",
        "Model report",
        HEAD,
        ARTIFACT,
    )
    assert "images/head/roc.png" not in body
    assert f"[ROC (in the run's artifact)]({ARTIFACT})" in body
    assert "![](https://example.com/x.png)" in body


def test_a_long_report_is_cut_to_fit_a_comment():
    body = comment_body("line of the report\n" * 10_000, "Model report", HEAD, ARTIFACT)
    assert len(body) <= MAX_BODY
    assert "The report was cut to fit a comment" in body
    assert has_watermark(body, "Model report")


def test_a_pull_request_that_moved_on_gets_nothing(github):
    github.heads[12] = "b" * 40
    with pytest.raises(CommentError, match=r"#12 is at bbbbbbbbbbbb, not at aaaaaaaaaaaa"):
        post(github)
    assert github.comments == []


@pytest.mark.parametrize(
    ("repository", "number", "sha", "message"),
    [
        (REPOSITORY, "12; curl evil", HEAD, "is not a positive integer"),
        (REPOSITORY, "0", HEAD, "is not a positive integer"),
        ("octo/model/../x", "12", HEAD, "is not owner/name"),
        (REPOSITORY, "12", "HEAD", "is not 40 hex digits"),
    ],
)
def test_values_from_the_artifact_are_checked(repository, number, sha, message):
    with pytest.raises(CommentError, match=message):
        parse_target(repository, number, sha)


def test_an_api_refusal_is_one_line_naming_the_call(github):
    github.fail["POST"] = 403
    with pytest.raises(
        CommentError, match=r"GitHub answered 403 to POST /repos/octo/model/issues/12"
    ):
        post(github)


def test_the_command_runs_with_the_standard_library_alone(github, tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# Report\n")
    command = [
        sys.executable, "-I", "-c",
        "import sys; sys.path.insert(0, sys.argv.pop(1)); import runpy; "
        "runpy.run_module('mlops_template.pr_comment', run_name='__main__')",
        str(REPO / "src"), "--report", str(report), "--repository", REPOSITORY,
        "--pull-request", "12", "--head-sha", HEAD, "--artifact-url", ARTIFACT,
        "--api-url", github.url,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={"GITHUB_TOKEN": TOKEN}
    )
    assert done.returncode == 0, done.stderr
    assert "created comment 1000 on octo/model#12 (GitHub API)" in done.stderr
    refused = subprocess.run(
        [*command[:-2], "--api-url", github.url, "--pull-request", "x"],
        capture_output=True, text=True, timeout=60, env={"GITHUB_TOKEN": TOKEN},
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: comment: pull-request number 'x'")
    assert "Traceback" not in refused.stderr


@pytest.fixture
def artifact(tmp_path):
    """What the report workflow uploads: report.md, its images, the pull request's number."""
    directory = tmp_path / "pr-report"
    (directory / "report" / "head").mkdir(parents=True)
    (directory / "report" / "head" / "roc.png").write_bytes(b"\x89PNG")
    (directory / "report.md").write_text("# Model report\n\n![ROC](report/head/roc.png)\n")
    (directory / "pr-number").write_text("12\n")
    return directory


def comment_script(
    github, artifact, tmp_path, publish: str, cml: str
) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "GITHUB_TOKEN": TOKEN,
        "REPOSITORY": REPOSITORY,
        "HEAD_SHA": HEAD,
        "ARTIFACT_URL": ARTIFACT,
        "PUBLISH_IMAGES": publish,
        "CML": cml,
        "GITHUB_API_URL": github.url,
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }
    return subprocess.run(
        [str(REPO / "scripts" / "pr-comment.sh"), str(artifact)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_private_repositories_post_through_the_api_with_images_kept_on_github(
    github, artifact, tmp_path
):
    calls = tmp_path / "cml-calls"
    done = comment_script(github, artifact, tmp_path, "false", f"touch {calls}")

    assert done.returncode == 0, done.stderr
    assert not calls.exists(), "CML, which uploads images to a public host, is not run"
    assert "posted through GitHub's API, images linked to the run's artifact" in done.stdout
    assert "GitHub's API" in (tmp_path / "summary.md").read_text()
    body = github.comments[0]["body"]
    assert "report/head/roc.png" not in body
    assert f"[ROC (in the run's artifact)]({ARTIFACT})" in body


def test_public_repositories_use_cml_and_fall_back_to_the_api_when_it_fails(
    github, artifact, tmp_path
):
    recorder = tmp_path / "cml"
    recorder.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/cml-args\n')
    recorder.chmod(0o755)
    used = comment_script(github, artifact, tmp_path, "true", str(recorder))
    assert used.returncode == 0, used.stderr
    assert "posted through CML" in used.stdout
    args = (tmp_path / "cml-args").read_text().split()
    assert args[:3] == ["comment", "update", "--target=pr/12"]
    assert github.comments == []

    failed = comment_script(github, artifact, tmp_path, "true", "false")
    assert failed.returncode == 0, failed.stderr
    assert "CML could not post the comment" in failed.stderr
    assert "posted through GitHub's API" in failed.stdout
    assert has_watermark(github.comments[0]["body"], "Model report")


def test_a_tampered_artifact_posts_nothing(github, artifact, tmp_path):
    (artifact / "pr-number").write_text("12 && curl evil\n")
    calls = tmp_path / "cml-calls"
    done = comment_script(github, artifact, tmp_path, "true", f"touch {calls}")
    assert done.returncode == 2
    assert "is not a positive integer" in done.stderr
    assert not calls.exists()
    assert github.comments == []


def test_make_report_artifact_gathers_what_the_comment_workflow_reads(tmp_path):
    import shutil

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "report" / "head").mkdir(parents=True)
    (tmp_path / "report" / "head" / "roc.png").write_bytes(b"\x89PNG")
    (tmp_path / "report.md").write_text("# Model report\n")
    env = {"PATH": "/usr/bin:/bin", "PR_NUMBER": "12"}

    done = subprocess.run(
        ["make", "report-artifact"], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    out = tmp_path / "build" / "pr-report"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "pr-number",
        "report.md",
        "report/head/roc.png",
    ]
    assert (out / "pr-number").read_text() == "12\n"
    missing = subprocess.run(
        ["make", "report-artifact"], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "set PR_NUMBER" in missing.stderr
