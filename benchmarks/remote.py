"""Remote-store benchmark: what an MLflow tracking server and an S3 DVC remote cost, side by side.

Run with `make bench-remote` (or `.venv/bin/python benchmarks/remote.py`). It starts its own S3
endpoint (moto) and MLflow server on free ports of 127.0.0.1, with the same code as `make
stack-up`, works in temporary clones of the committed repository, and stops everything at the end.

1. The train stage (`dvc repro --force --single-item train`) logging to the local SQLite store and
   to the tracking server (artifacts proxied to S3), rounds interleaved.
2. `dvc push` and `dvc pull` (`mlops data push|pull`) of the bundled pipeline's outputs and of a
   1 GiB file, to and from the S3 endpoint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlops_template import processes, stack

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def environment(**variables: str) -> dict[str, str]:
    """This project's tools first on PATH, no tracking server unless given."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env | variables


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command; fails loudly if it fails."""
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def clone(root: Path, name: str) -> Path:
    """A fresh clone of the committed repository."""
    path = root / name
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(path)], check=True)
    return path


def add_remote(repository: Path, bucket: str, s3_url: str) -> None:
    """The repository's default DVC remote in the bucket (local config: nothing to commit)."""
    env = environment()
    timed(["dvc", "remote", "add", "--local", "-d", "bench", f"s3://{bucket}/dvc"], repository, env)
    timed(["dvc", "remote", "modify", "--local", "bench", "endpointurl", s3_url], repository, env)


def train_rounds(root: Path, mlflow_url: str, rounds: int) -> dict[str, list[float]]:
    """Interleaved forced train stages against the local store and the server."""
    repository = clone(root, "train")
    timed(["dvc", "repro"], repository, environment())  # data, and a local store that exists
    timed(["dvc", "repro", "--force", "--single-item", "train"], repository,
          environment(MLFLOW_TRACKING_URI=mlflow_url))  # fmt: skip  # the server's experiment too
    times: dict[str, list[float]] = {"local": [], "server": []}
    for index in range(rounds):
        order = ("local", "server") if index % 2 == 0 else ("server", "local")
        for variant in order:
            env = (
                environment(MLFLOW_TRACKING_URI=mlflow_url)
                if variant == "server"
                else environment()
            )
            times[variant].append(
                timed(["dvc", "repro", "--force", "--single-item", "train"], repository, env)
            )
    return times


def transfer(
    root: Path, name: str, credentials: stack.Credentials, s3_url: str, big_bytes: int
) -> tuple[int, float, float]:
    """(files, push s, pull s) for a clone's DVC-tracked files, pulled into a fresh clone of it."""
    repository = clone(root, f"{name}-pushed")
    env = environment(
        AWS_ACCESS_KEY_ID=credentials.access_key_id,
        AWS_SECRET_ACCESS_KEY=credentials.secret_access_key,
        GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
        GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
    )  # fmt: skip
    timed(["dvc", "repro"], repository, env)
    if big_bytes:
        with (repository / "data" / "raw" / "big.bin").open("wb") as big:
            for _ in range(big_bytes // (1 << 24)):
                big.write(os.urandom(1 << 24))
        timed(["dvc", "add", "data/raw/big.bin"], repository, env)
        timed(["git", "add", "data/raw"], repository, env)
        timed(["git", "commit", "--quiet", "-m", "a large file"], repository, env)
    bucket = f"bench-{name}"
    stack.s3_client(s3_url, credentials).create_bucket(Bucket=bucket)
    add_remote(repository, bucket, s3_url)
    push = timed(["mlops", "data", "push"], repository, env)
    # A fresh clone of it: no outputs, an empty cache; everything comes from S3.
    pulled = root / f"{name}-pulled"
    subprocess.run(["git", "clone", "--quiet", str(repository), str(pulled)], check=True)
    add_remote(pulled, bucket, s3_url)
    pull = timed(["mlops", "data", "pull"], pulled, env)
    files = sum(1 for path in (pulled / ".dvc" / "cache").rglob("*") if path.is_file())
    return files, push, pull


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved train rounds")
    parser.add_argument(
        "--big-gib", type=float, default=1.0, help="size of the large file (0: skip)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch:
        root = Path(scratch)
        s3_process, s3_url = stack.start_s3(processes.free_port(), root / "s3.log")
        credentials = stack.Credentials(*stack.STACK_CREDENTIALS)
        try:
            stack.s3_client(s3_url, credentials).create_bucket(Bucket="bench-mlflow")
            mlflow_process, mlflow_url = stack.start_mlflow(
                processes.free_port(),
                f"sqlite:///{root / 'mlflow.db'}",
                "s3://bench-mlflow/mlflow",
                stack.mlflow_environment(s3_url, credentials),
                root / "mlflow.log",
            )
            try:
                times = train_rounds(root, mlflow_url, args.rounds)
            finally:
                processes.stop(mlflow_process.pid)
            local, server = (statistics.median(times[key]) for key in ("local", "server"))
            print(
                f"Train stage, `dvc repro --force --single-item train`, {args.rounds} rounds each:"
            )
            print("| store | median s | all rounds s |")
            print("| --- | ---: | --- |")
            for key, label in (("local", "local SQLite store"), ("server", "tracking server")):
                rounds = ", ".join(f"{value:.2f}" for value in times[key])
                print(f"| {label} | {statistics.median(times[key]):.2f} | {rounds} |")
            print(f"\nServer / local: {server / local:.2f}x ({server - local:+.2f} s)\n")
            print("| data | files | push s | pull s |")
            print("| --- | ---: | ---: | ---: |")
            files, push, pull = transfer(root, "bundled", credentials, s3_url, 0)
            print(f"| bundled pipeline outputs | {files} | {push:.2f} | {pull:.2f} |")
            if args.big_gib:
                size = int(args.big_gib * (1 << 30))
                files, push, pull = transfer(root, "big", credentials, s3_url, size)
                mib = size / (1 << 20)
                print(
                    f"| outputs + a {args.big_gib:g} GiB file | {files} | {push:.1f} "
                    f"({mib / push:.0f} MiB/s) | {pull:.1f} ({mib / pull:.0f} MiB/s) |"
                )
        finally:
            processes.stop(s3_process.pid)


if __name__ == "__main__":
    main()
