"""File writing that never leaves a half-written output (or a killed run's staging), and hashing."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlops_template.errors import UserError

# Staging entries are named `.NAME.XXXXXXXX.tmp` beside their target NAME (tempfile's eight
# random characters): what `shown` maps back to the target, and what `remove_stale` looks for.
STAGING = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def shown(path: Path | str) -> Path:
    """A path as the user knows it: each staging entry in it replaced by its target's name."""
    parts = []
    for part in Path(path).parts:
        while match := STAGING.fullmatch(part):
            part = match["name"]
        parts.append(part)
    return Path(*parts)


def cannot_write(target: Path, error: OSError) -> UserError:
    """The one line for an OSError while writing `target` (full disk, size limit, permissions)."""
    if error.errno is None:  # a library's own OSError (pyarrow's, say) with only a message
        return UserError(f"{shown(target)}: cannot write: {error}")
    cause = f"{error.strerror or os.strerror(error.errno)} (errno {error.errno})"
    return UserError(f"{shown(target)}: cannot write: {cause}")


def check_writable(*targets: Path) -> None:
    """Fail with one line if a target's folder cannot take a new entry; run before any work.

    A file is really created and removed: permission bits alone do not say whether root, a
    read-only mount or a path under a regular file can be written.
    """
    for target in map(Path, targets):
        folder = target.parent
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{target}: cannot write: {folder} is not a directory")
        try:
            staging_file(target).unlink()
        except OSError as error:
            raise cannot_write(target, error) from None


def remove_stale(target: Path, started: float) -> None:
    """Remove the staging entries of `target` that a killed run left behind.

    Only entries that match the target's own staging pattern, that no process holds a lock on,
    and that are older than this write's start: a live run holds its lock from the moment after
    it creates an entry, and one that has just created an entry made it after we started.
    """
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        match = STAGING.fullmatch(entry.name)
        if match is None or match["name"] != target.name:
            continue  # not a staging entry, or one of a target whose name starts like this one
        with contextlib.suppress(OSError), _locked(entry, blocking=False):
            if entry.lstat().st_mtime >= started:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def staging_file(target: Path) -> Path:
    """A new empty staging file beside `target` (its folder created if missing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def _locked(entry: Path, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on a staging entry; the kernel drops it when its process dies."""
    fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    An OSError on the way (a full disk, a file-size limit) is one UserError naming `target`.
    """
    target, started = Path(target), time.time()
    temporary = None
    try:
        temporary = staging_file(target)
        with _locked(temporary):
            yield temporary
            os.replace(temporary, target)
        remove_stale(target, started)
    except OSError as error:
        raise cannot_write(target, error) from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `target` only when the block succeeds.

    An OSError on the way (a full disk, a file-size limit) is one UserError naming `target`.
    """
    target, started = Path(target), time.time()
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        )
        with _locked(temporary):
            yield temporary
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(temporary, target)
        remove_stale(target, started)
    except OSError as error:
        raise cannot_write(target, error) from None
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def write_text(target: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(target: Path, data: Any) -> None:
    """Write JSON atomically, with sorted keys so the bytes depend only on the content."""
    # NaN and Infinity are not JSON: most readers reject them, so they are never written.
    write_text(target, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit, or 'unknown' outside a git repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()
