"""`mlops stack up|down|status`: a production-like stack on 127.0.0.1, no cloud account needed.

- an S3-compatible endpoint (moto's server) and one bucket;
- an MLflow tracking server whose backend store is a SQLite file and whose artifacts live in that
  bucket, proxied by the server, so clients need only MLFLOW_TRACKING_URI and no S3 credentials;
- DVC's default remote pointed at the same bucket (in `.dvc/config.local`, which git ignores) and
  MLFLOW_TRACKING_URI in `.stack/env`, which the Makefile reads.

Each server runs in a process group of its own and is stopped by it. The bucket lives in the S3
server's memory: `stack down` forgets everything, and `stack up` starts empty.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mlops_template.errors import UserError
from mlops_template.processes import HOST, port_from, running, start, stop, wait_until_answers

logger = logging.getLogger(__name__)

STATE_DIR = Path(".stack")
STATE_FILE = "state.json"
ENV_FILE = "env"
BUCKET = "mlops-stack"
REMOTE = "stack"
REGION = "us-east-1"
# Documented defaults (README); STACK_S3_PORT / STACK_MLFLOW_PORT choose others.
DEFAULT_S3_PORT = 4566
DEFAULT_MLFLOW_PORT = 5050
S3_READY_SECONDS = 30.0
MLFLOW_READY_SECONDS = 120.0
# Moto accepts any key unless told to check them. The stack does not: moto cannot check the
# presigned URLs MLflow's clients download artifacts with (refused-credential behaviour is tested
# against a second S3 server that checks, see `start_s3`). Keys as S3 wants them all the same.
STACK_CREDENTIALS = ("mlops-stack", "mlops-stack-secret")
# With credentials checked, moto takes exactly this many requests without: the ones
# `create_s3_user` makes to create a user, its policy and its access key.
UNAUTHENTICATED_SETUP_REQUESTS = 3
S3_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
)


@dataclass
class Service:
    """One server the stack started."""

    name: str
    pid: int
    url: str
    log: str


@dataclass
class Credentials:
    """The stack user's S3 access key."""

    access_key_id: str
    secret_access_key: str


@dataclass
class State:
    """What `stack up` started, as recorded in .stack/state.json."""

    s3: Service
    mlflow: Service
    credentials: Credentials
    bucket: str = BUCKET

    @property
    def dvc_url(self) -> str:
        """The DVC remote's URL in the bucket."""
        return f"s3://{self.bucket}/dvc"

    @property
    def artifacts_url(self) -> str:
        """Where the MLflow server keeps artifacts."""
        return f"s3://{self.bucket}/mlflow"

    def save(self, directory: Path) -> None:
        """Write the state file."""
        (directory / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> State | None:
        """The recorded state, or None when the stack was never started here."""
        try:
            data = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise UserError(f"{directory / STATE_FILE} is not readable: {error}") from None
        return cls(
            s3=Service(**data["s3"]),
            mlflow=Service(**data["mlflow"]),
            credentials=Credentials(**data["credentials"]),
            bucket=data["bucket"],
        )


def tool(name: str) -> str:
    """A command-line tool of this Python environment (moto_server, mlflow)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise UserError(f"{name} is not installed next to {sys.executable}: run `make setup`")
    return str(path)


def start_s3(
    port: int, log: Path, check_credentials: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's S3 server on 127.0.0.1:`port`; return it and its URL once it answers.

    With `check_credentials`, after the requests of `create_s3_user` it refuses unknown keys as
    S3 does (but cannot serve presigned URLs).
    """
    env = dict(os.environ)
    if check_credentials:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(UNAUTHENTICATED_SETUP_REQUESTS)
    process = start([tool("moto_server"), "-H", HOST, "-p", str(port)], log, env)
    url = f"http://{HOST}:{port}"
    wait_until_answers("the S3 server", f"{url}/moto-api/", process, S3_READY_SECONDS, log)
    return process, url


def create_s3_user(url: str, name: str = "mlops-stack") -> Credentials:
    """An IAM user allowed everything on S3, and its access key (for `check_credentials`)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=S3_POLICY)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def s3_client(url: str, credentials: Credentials):
    """A boto3 S3 client for the stack's endpoint and user."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
    )


def mlflow_environment(s3_url: str, credentials: Credentials) -> dict[str, str]:
    """The MLflow server's environment: the S3 endpoint and the stack user's keys."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_S3_ENDPOINT_URL": s3_url,
        # No background job runner (it only slows the start), no telemetry (offline).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def start_mlflow(
    port: int,
    backend_uri: str,
    artifacts_url: str,
    env: dict[str, str],
    log: Path,
    registry_uri: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `mlflow server` on 127.0.0.1:`port`, artifacts proxied; return it once healthy."""
    command = [
        tool("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts_url,
    ]  # fmt: skip
    if registry_uri:
        command += ["--registry-store-uri", registry_uri]
    process = start(command, log, env)
    url = f"http://{HOST}:{port}"
    wait_until_answers("the MLflow server", f"{url}/health", process, MLFLOW_READY_SECONDS, log)
    return process, url


def configure_dvc(root: Path, state: State | None) -> None:
    """Point DVC's default remote at the stack (state) or remove the stack's remote (None)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo, repo.config.edit("local") as local:
        remotes = local.setdefault("remote", {})
        core = local.setdefault("core", {})
        if state is None:
            remotes.pop(REMOTE, None)
            if core.get("remote") == REMOTE:
                del core["remote"]
            return
        remotes[REMOTE] = {
            "url": state.dvc_url,
            "endpointurl": state.s3.url,
            "access_key_id": state.credentials.access_key_id,
            "secret_access_key": state.credentials.secret_access_key,
            "region": REGION,
        }
        core["remote"] = REMOTE


def write_env(directory: Path, state: State) -> Path:
    """The env file: shell syntax the Makefile reads too."""
    path = directory / ENV_FILE
    path.write_text(
        "# Written by `mlops stack up` (`make stack-up`); the Makefile reads it.\n"
        "# In a shell: source .stack/env\n"
        f"export MLFLOW_TRACKING_URI={state.mlflow.url}\n"
    )
    return path


def up(root: Path) -> tuple[State, bool]:
    """Start the stack and wire DVC and MLflow to it; (state, False) if it was already up."""
    directory = root / STATE_DIR
    state = State.load(directory)
    if state is not None and running(state.s3.pid) and running(state.mlflow.pid):
        return state, False
    if state is not None:
        down(root)  # what is left of a stack that died: start clean
    s3_port = port_from("STACK_S3_PORT", DEFAULT_S3_PORT)
    mlflow_port = port_from("STACK_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)
    directory.mkdir(exist_ok=True)
    started: list[int] = []
    try:
        s3_log = directory / "s3.log"
        s3, s3_url = start_s3(s3_port, s3_log)
        started.append(s3.pid)
        credentials = Credentials(*STACK_CREDENTIALS)
        s3_client(s3_url, credentials).create_bucket(Bucket=BUCKET)
        mlflow_log = directory / "mlflow.log"
        backend = f"sqlite:///{(directory / 'mlflow.db').resolve()}"
        mlflow, mlflow_url = start_mlflow(
            mlflow_port,
            backend,
            f"s3://{BUCKET}/mlflow",
            mlflow_environment(s3_url, credentials),
            mlflow_log,
        )
        started.append(mlflow.pid)
        state = State(
            s3=Service("S3 endpoint (moto)", s3.pid, s3_url, str(s3_log)),
            mlflow=Service("MLflow tracking server", mlflow.pid, mlflow_url, str(mlflow_log)),
            credentials=credentials,
        )
        state.save(directory)
        configure_dvc(root, state)
        write_env(directory, state)
    except BaseException:
        for pid in started:
            stop(pid)
        raise
    return state, True


def down(root: Path) -> State | None:
    """Stop the stack's servers, remove its DVC remote and .stack/; the state it had, if any."""
    directory = root / STATE_DIR
    state = State.load(directory)
    if state is None:
        return None
    for service in (state.mlflow, state.s3):
        stop(service.pid)
    configure_dvc(root, None)
    shutil.rmtree(directory)
    return state


def describe(state: State | None) -> tuple[list[str], bool]:
    """Lines saying what runs where, and whether everything the state records is up."""
    if state is None:
        return ["not running (make stack-up starts it)"], True
    lines, healthy = [], True
    for service in (state.s3, state.mlflow):
        alive = running(service.pid)
        healthy &= alive
        what = f"running, pid {service.pid}" if alive else "NOT RUNNING"
        lines.append(f"{service.name + ':':<25} {what}, {service.url} (log {service.log})")
    lines += [
        f"{'bucket:':<25} {state.bucket} (DVC {state.dvc_url}, MLflow {state.artifacts_url})",
        f"{'MLflow UI and API:':<25} {state.mlflow.url}",
        f"{'DVC default remote:':<25} '{REMOTE}' -> {state.dvc_url} (in .dvc/config.local)",
        f"{'environment:':<25} {STATE_DIR / ENV_FILE} sets MLFLOW_TRACKING_URI={state.mlflow.url}"
        " (the Makefile reads it; in a shell: source .stack/env)",
    ]
    return lines, healthy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument("action", choices=("up", "down", "status"), help="start, stop or describe")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops stack`."""
    root = Path.cwd()
    if not (root / ".dvc").is_dir():
        raise UserError("run `mlops stack` from the project's root (where .dvc/ is)")
    if args.action == "down":
        stopped = down(root)
        if stopped is None:
            print("the stack is not running here (nothing in .stack/)")
        else:
            print(f"stopped the {stopped.mlflow.name} and the {stopped.s3.name}; removed .stack/ "
                  f"and the DVC remote '{REMOTE}'")  # fmt: skip
        return 0
    if args.action == "up":
        state, started = up(root)
        print("started:" if started else "already running:")
    else:
        state = State.load(root / STATE_DIR)
    lines, healthy = describe(state)
    print("\n".join(f"  {line}" for line in lines))
    return 0 if healthy else 1
