"""The lock files honour what the .in files and the serving overrides ask for."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import pins

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements"


def overrides() -> list[Requirement]:
    lines = (REQUIREMENTS / "serve-overrides.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_every_override_names_the_advisories_it_closes_or_why_it_is_there():
    comment: list[str] = []
    for line in (REQUIREMENTS / "serve-overrides.txt").read_text().splitlines():
        if line.startswith("#"):
            comment.append(line)
        elif line.strip():
            reason = " ".join(comment)
            assert "CVE-" in reason or "needs" in reason, f"{line}: no advisory or reason above it"
            comment = []  # the next override needs its own comment


def test_the_serving_lock_is_compiled_with_the_overrides_and_satisfies_them():
    lock = (REQUIREMENTS / "serve.lock").read_text()
    assert "--override serve-overrides.txt" in lock.splitlines()[1]
    versions = pins(lock)
    for requirement in overrides():
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{name} is not in serve.lock"
        assert requirement.specifier.contains(versions[name]), (name, versions[name])
