"""`mlops data pull|push`: move DVC-tracked data and models to and from the default DVC remote.

Without a default remote it says why nothing happens and succeeds: the raw data is in git, so
`dvc repro` rebuilds the rest, and the same workflows run before and after a remote is added.
With one, the remote is checked before anything moves, so a remote that is down, a bucket that
does not exist or credentials that are refused stop the command with one line naming the remote
and the cause, and nothing in the workspace changes.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_template.errors import UserError

if TYPE_CHECKING:
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

NO_REMOTE = (
    "skipped, no default DVC remote is configured "
    "(add one with: dvc remote add -d NAME URL; see the README, 'Large data and a DVC remote')"
)


@dataclass(frozen=True)
class Remote:
    """The default DVC remote as configured (config, config.local and the environment)."""

    name: str
    url: str
    endpoint: str | None = None

    def __str__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"'{self.name}' ({self.url}{where})"


def default_remote(repo: Repo) -> Remote | None:
    """The default remote, or None when the project has none."""
    name = repo.config.get("core", {}).get("remote")
    if not name:
        return None
    settings: dict[str, Any] = repo.config.get("remote", {}).get(name)
    if settings is None:
        raise UserError(f"the default DVC remote '{name}' is not defined (dvc remote list)")
    return Remote(name, settings.get("url", "?"), settings.get("endpointurl"))


def reason(error: BaseException) -> str:
    """A storage error as the one cause a user can act on."""
    if isinstance(error, PermissionError):
        return (
            "access denied: the credentials were refused or lack permission on the bucket "
            "(check access_key_id/secret_access_key in .dvc/config.local, AWS_* variables, "
            "the profile or the role)"
        )
    if isinstance(error, FileNotFoundError):
        return "the bucket does not exist (create it, or fix the remote's url)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Could not connect" in text or isinstance(error, ConnectionError):
        return f"cannot reach the storage: {text}"
    return text


def check_reachable(repo: Repo, remote: Remote) -> None:
    """List the remote's bucket (or folder) once; UserError naming the cause if that fails."""
    storage = repo.cloud.get_remote(remote.name)
    try:
        if storage.fs.protocol == "s3":
            # The bucket, not the remote's folder: an empty remote has no folder yet.
            storage.fs.ls(storage.path.split("/")[0])
        else:
            storage.fs.exists(storage.path)
    except Exception as error:  # any storage error: one line with its cause
        raise UserError(f"DVC remote {remote}: {reason(error)}") from None


def transfer(action: str) -> int:
    """Pull or push everything the pipeline's outputs need; return the number of files moved."""
    from dvc.repo import Repo

    with Repo() as repo:
        remote = default_remote(repo)
        if remote is None:
            print(f"dvc {action}: {NO_REMOTE}")
            return 0
        check_reachable(repo, remote)
        logger.info("dvc %s: remote %s", action, remote)
        try:
            if action == "pull":
                # allow_missing: an output never pushed (a stage added on this branch) is rebuilt
                # by `dvc repro` instead of failing the pull.
                moved = repo.pull(remote=remote.name, allow_missing=True)["stats"]["fetched"]
            else:
                moved = repo.push(remote=remote.name)
        except Exception as error:  # DVC's errors and storage errors it did not wrap: one line
            raise UserError(f"dvc {action} with remote {remote}: {reason(error)}") from None
    done = "fetched" if action == "pull" else "pushed"
    print(f"dvc {action}: {moved} file{'s' if moved != 1 else ''} {done}, remote {remote}")
    return moved


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument(
        "action", choices=("pull", "push"), help="pull from, or push to, the default remote"
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops data`."""
    transfer(args.action)
    return 0
