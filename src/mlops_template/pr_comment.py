"""`mlops comment`: post or update the pull-request report comment through GitHub's REST API.

The comment workflow (`.github/workflows/pr-comment.yml`) runs on `workflow_run`, with a token that
can write, after the report workflow has computed the report from the pull request's code with no
write permission. Everything it reads from that run's artifact is treated as data: the pull-request
number is checked to be a number and to name a pull request whose head is the commit the report was
computed for, the report is text of bounded size, and its local images are never uploaded (they
become a link to the run's artifact).

CML (`cml comment update`) posts the comment when it can; this module is the path used when CML
cannot be installed or fails, and for private repositories, whose plots must not go to CML's public
image host. It writes CML's own watermark, so either path updates the comment the other wrote.

Standard library only: the comment job runs it without installing the project's environments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_template.errors import UserError

log = logging.getLogger(__name__)

# CML's watermark (src/watermark.js in iterative/cml 0.20.6): an image whose URL carries the
# commit and whose title names the comment. `cml comment update` finds it with WATERMARK_PATTERN.
WATERMARK_IMAGE = "https://cml.dev/watermark.png"
DEFAULT_TITLE = "Model report"
# GitHub refuses comment bodies over 65,536 characters.
MAX_BODY = 65_000
BOT_LOGIN = "github-actions[bot]"
API_URL = "https://api.github.com"
REPOSITORY = re.compile(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$")
SHA = re.compile(r"^[0-9a-f]{40}$")
# Markdown images whose target is not a web address: files next to the report.
LOCAL_IMAGE = re.compile(r"!\[([^\]]*)\]\((?!https?://)([^)\s]+)(?:\s+\"[^\"]*\")?\)")


class CommentError(Exception):
    """The comment cannot be posted; the message says why, in one line."""


def watermark(title: str, sha: str) -> str:
    """CML's watermark for `title`, carrying the commit `sha`."""
    return f'![]({WATERMARK_IMAGE}#{sha} "{escaped_title(title)}")'


def escaped_title(title: str) -> str:
    """CML escapes these characters in the title, as GitHub returns them escaped."""
    text = f"CML watermark {title}".strip()
    for character in ("_", "*", "[", "<"):
        text = text.replace(character, "\\" + character)
    return text


def has_watermark(body: str, title: str) -> bool:
    """Whether a comment carries the watermark for `title`, whatever its commit."""
    pattern = (
        rf'!\[\]\({re.escape(WATERMARK_IMAGE)}#[0-9a-fA-F]+ "{re.escape(escaped_title(title))}"\)'
    )
    return re.search(pattern, body) is not None


def comment_body(report: str, title: str, sha: str, artifact_url: str) -> str:
    """The report with local images replaced by a link to the artifact, bounded, watermarked."""

    def link(match: re.Match[str]) -> str:
        name = match.group(1) or Path(match.group(2)).name
        return f"[{name or 'plot'} (in the run's artifact)]({artifact_url})"

    text = LOCAL_IMAGE.sub(link, report)
    mark = watermark(title, sha)
    room = MAX_BODY - len(mark) - 200
    if len(text) > room:
        text = (
            text[:room].rsplit("\n", 1)[0]
            + "\n\n_The report was cut to fit a comment; the whole of it is in "
            f"[the run's artifact]({artifact_url})._"
        )
    return f"{text}\n\n{mark}"


def comment_to_update(comments: list[dict[str, Any]], title: str, bot: str) -> dict | None:
    """The newest comment by the bot that carries the watermark, as `cml comment update` picks."""
    for comment in reversed(comments):
        if (comment.get("user") or {}).get("login") == bot and has_watermark(
            comment.get("body") or "", title
        ):
            return comment
    return None


@dataclass(frozen=True)
class Target:
    """Where the comment goes, checked before anything is sent."""

    repository: str
    pull_request: int
    head_sha: str


def parse_target(repository: str, pull_request: str, head_sha: str) -> Target:
    """Validate what came from the event and the artifact; a bad value is named."""
    if not REPOSITORY.match(repository):
        raise CommentError(f"repository {repository!r} is not owner/name")
    text = pull_request.strip()
    if not text.isdigit() or not 0 < int(text) < 10**9:
        raise CommentError(f"pull-request number {pull_request[:40]!r} is not a positive integer")
    if not SHA.match(head_sha):
        raise CommentError(f"head sha {head_sha[:60]!r} is not 40 hex digits")
    return Target(repository, int(text), head_sha)


def read_text(path: Path, what: str = "the report", limit: int = 1_000_000) -> str:
    """A file from the artifact (`what`: the report, the number file) as bounded UTF-8 text."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CommentError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > limit:
        raise CommentError(f"{what} {path} is {len(data):,} bytes, over {limit:,}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommentError(f"{what} {path} is not UTF-8 text") from None


class GitHub:
    """The few REST calls the comment needs."""

    def __init__(self, token: str, api_url: str = API_URL, timeout: float = 30) -> None:
        self.token = token
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        """One request; a non-2xx answer or no answer is a CommentError naming the call."""
        request = urllib.request.Request(
            self.api_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self.token}",
                "X-GitHub-Api-Version": "2022-11-28",
                "Content-Type": "application/json",
                "User-Agent": "mlops-template",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read()[:200].decode(errors="replace")
            raise CommentError(
                f"GitHub answered {error.code} to {method} {path}: {detail}"
            ) from None
        except (urllib.error.URLError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise CommentError(f"GitHub did not answer {method} {path}: {reason}") from None

    def comments(self, target: Target) -> list[dict[str, Any]]:
        """Every comment on the pull request, oldest first."""
        comments: list[dict[str, Any]] = []
        path = f"/repos/{target.repository}/issues/{target.pull_request}/comments"
        for page in range(1, 101):
            batch = self.call("GET", f"{path}?per_page=100&page={page}")
            comments += batch
            if len(batch) < 100:
                break
        return comments


def check_head(github: GitHub, target: Target) -> None:
    """The pull request exists and its head is the commit the report was computed for."""
    pull = github.call("GET", f"/repos/{target.repository}/pulls/{target.pull_request}")
    head = ((pull or {}).get("head") or {}).get("sha")
    if head != target.head_sha:
        raise CommentError(
            f"pull request #{target.pull_request} is at {str(head)[:12]}, not at "
            f"{target.head_sha[:12]} where the report was computed: not posting it there"
        )


def upsert(github: GitHub, target: Target, body: str, title: str, bot: str = BOT_LOGIN) -> str:
    """Update the watermarked comment in place, or create it; what was done, in a few words."""
    check_head(github, target)
    existing = comment_to_update(github.comments(target), title, bot)
    if existing is None:
        created = github.call(
            "POST",
            f"/repos/{target.repository}/issues/{target.pull_request}/comments",
            {"body": body},
        )
        return f"created comment {created['id']}"
    github.call(
        "PATCH", f"/repos/{target.repository}/issues/comments/{existing['id']}", {"body": body}
    )
    return f"updated comment {existing['id']}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument("--report", type=Path, required=True, help="the report's markdown")
    parser.add_argument("--repository", required=True, help="owner/name")
    number = parser.add_mutually_exclusive_group(required=True)
    number.add_argument("--pull-request", help="the pull request's number")
    number.add_argument(
        "--pull-request-file", type=Path, help="a file holding the number (the artifact's)"
    )
    parser.add_argument(
        "--head-sha", required=True, help="the commit the report was computed for (the event's)"
    )
    parser.add_argument("--artifact-url", required=True, help="where the report's images are")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="the watermark's title")
    parser.add_argument(
        "--api-url", default=os.environ.get("GITHUB_API_URL", API_URL), help="GitHub's REST API"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check everything, print the pull request's number and post nothing (before CML)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops comment` (token in GITHUB_TOKEN)."""
    token = os.environ.get("GITHUB_TOKEN", "")
    try:
        if not token:
            raise CommentError("GITHUB_TOKEN is not set")
        number = args.pull_request
        if args.pull_request_file is not None:
            number = read_text(args.pull_request_file, "the pull-request number file", limit=100)
        target = parse_target(args.repository, number, args.head_sha)
        body = comment_body(read_text(args.report), args.title, target.head_sha, args.artifact_url)
        github = GitHub(token, args.api_url)
        if args.check:
            check_head(github, target)
            print(target.pull_request)
            return 0
        done = upsert(github, target, body, args.title)
    except CommentError as error:
        raise UserError(f"comment: {error}") from None
    log.info("%s on %s#%d (GitHub API)", done, target.repository, target.pull_request)
    return 0


if __name__ == "__main__":  # the comment job runs `python3 -m mlops_template.pr_comment`
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main_parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(main_parser)
    try:
        sys.exit(run(main_parser.parse_args()))
    except UserError as error:  # one line and exit 2, like the mlops CLI
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
