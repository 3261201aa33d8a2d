"""scripts/verify-image.sh with stand-ins for docker, cosign and gh (no registry or GitHub here).

The stand-ins record their arguments and succeed or fail on demand; what is checked is the
script's part: the digest it resolves, the identity it demands, that it stops at the first failed
check with one line, and that the deploy gets a digest reference.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "verify-image.sh"
DIGEST = "sha256:" + "ab" * 32
IMAGE = "ghcr.io/octo/model:" + "c" * 40
REPOSITORY = "octo/model"
IDENTITY = "https://github.com/octo/model/.github/workflows/build-push.yml"


def stub(directory: Path, name: str, output: str = "", fails: bool = False) -> None:
    path = directory / name
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{directory}/{name}.calls"\n'
        + (f"echo '{output}'\n" if output else "")
        + ("exit 1\n" if fails else "exit 0\n")
    )
    path.chmod(0o755)


def verify(tmp_path: Path, digest: str = DIGEST, cosign_fails=False, gh_fails=False):
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    stub(stubs, "docker", output=f"ghcr.io/octo/model@{digest}")
    stub(stubs, "cosign", fails=cosign_fails)
    stub(stubs, "gh", fails=gh_fails)
    done = subprocess.run(
        [str(SCRIPT), IMAGE, REPOSITORY],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
    )
    calls = {
        name: (stubs / f"{name}.calls").read_text() if (stubs / f"{name}.calls").exists() else ""
        for name in ("docker", "cosign", "gh")
    }
    return done, calls


def test_a_signed_and_attested_image_is_deployed_by_digest(tmp_path):
    done, calls = verify(tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ref=ghcr.io/octo/model@{DIGEST}\n"
    assert f"--certificate-identity-regexp ^{IDENTITY}@" in calls["cosign"]
    assert (
        "--certificate-oidc-issuer https://token.actions.githubusercontent.com" in calls["cosign"]
    )
    assert calls["cosign"].strip().endswith(f"ghcr.io/octo/model@{DIGEST}")
    assert calls["gh"].split() == [
        "attestation", "verify", f"oci://ghcr.io/octo/model@{DIGEST}", "--repo", REPOSITORY,
        "--signer-workflow", "octo/model/.github/workflows/build-push.yml",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ({"cosign_fails": True}, f"is not signed by {IDENTITY}"),
        ({"gh_fails": True}, f"has no build provenance attested by {IDENTITY}"),
        ({"digest": "latest"}, "has no registry digest"),
    ],
)
def test_a_failed_verification_stops_the_deploy_with_one_line(tmp_path, case, message):
    done, calls = verify(tmp_path, **case)

    assert done.returncode == 1
    assert done.stdout == "", "no reference for the deploy"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: image verification failed: ")
    assert message in lines[0]
    if case.get("cosign_fails"):
        assert calls["gh"] == "", "stops at the first failed check"


def test_bad_arguments_are_a_usage_line(tmp_path):
    done = subprocess.run([str(SCRIPT), IMAGE], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("usage:")
