"""Build the serving image from a freshly built package, serve from it, and check its answers.

Docker is used where an engine runs (GitHub's runners). Without one, the image is built with
podman on a local debootstrap base and run with `buildah run` (chroot isolation, host network),
which needs no daemon; `make container-tools` installs those on Debian/Ubuntu.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import pins
from tests.serving.checks import (
    assert_answer,
    bad_requests,
    check_bad_request,
    check_still_serves,
    metadata_of,
    raw_rows,
)
from tests.serving.conftest import REPO, Server, http, predict

pytestmark = [pytest.mark.slow, pytest.mark.image]

BUILD_TIMEOUT_SECONDS = 1200  # a first build on a fresh machine includes debootstrap
# The commit an image is built from reaches its labels and its answers, not the package.
BUILT_FROM = "0123456789abcdef0123456789abcdef01234567"


def output(*command: str) -> str:
    """Run a command that must succeed; return its standard output."""
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def docker_engine_runs() -> bool:
    """True when a Docker client can reach an engine."""
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=60)
    return done.returncode == 0


def choose_engine() -> str:
    """'docker' or 'podman'; skip, naming what is missing, when neither can build and run."""
    if docker_engine_runs():
        return "docker"
    missing = [tool for tool in ("podman", "buildah") if shutil.which(tool) is None]
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"CI must build the image, but {', '.join(missing)} is not installed")
    if missing:
        pytest.skip(
            f"no Docker engine runs and {', '.join(missing)} is not installed, so the image "
            "cannot be built here (`make container-tools` installs podman, buildah, debootstrap)"
        )
    return "podman"


@dataclass
class Container:
    """The image's entry point running with the server's ports on loopback."""

    engine: str
    image: str
    log_path: Path
    server: Server | None = None
    process: subprocess.Popen | None = None
    name: str = ""

    def start(self, package_dir: Path) -> Container:
        """Start the image's entry point (Docker: `docker run`; else `buildah run`)."""
        self.server = Server(package_dir)
        ports = self.server
        log = self.log_path.open("wb")
        if self.engine == "docker":
            self.name = f"mlops-image-test-{os.getpid()}"
            command = [
                "docker", "run", "--name", self.name,
                "-p", f"127.0.0.1:{ports.http_port}:9000",
                "-p", f"127.0.0.1:{ports.grpc_port}:5000",
                "-p", f"127.0.0.1:{ports.metrics_port}:6000",
                self.image,
            ]  # fmt: skip
        else:
            self.name = output("buildah", "from", "--quiet", self.image)
            inspect = output("buildah", "inspect", "--type", "container", self.name)
            config = json.loads(inspect)["OCIv1"]["config"]
            # The image's own entry point and user; only the ports differ (host network), and
            # the address: on the host's network the test server binds loopback only.
            command = [
                "buildah", "run", "--isolation", "chroot", "--network", "host",
                "--env", "SERVE_HOST=127.0.0.1", "--user", config["User"], self.name, "--",
                *config["Entrypoint"],
                f"--http-port={ports.http_port}",
                f"--grpc-port={ports.grpc_port}",
                f"--metrics-port={ports.metrics_port}",
            ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.server.process = self.process
        self.server.log_path = self.log_path
        return self

    def processes(self) -> dict[int, list[bytes]]:
        """Host processes started for this container (chroot isolation shares the PID space)."""
        port = f"--http-port={self.server.http_port}".encode()
        found = {}
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if port in argv and not argv[0].startswith((b"buildah", b"docker")):
                found[int(cmdline.parent.name)] = argv
        return found

    def entry_point_pid(self) -> int:
        """Host PID of the image's entry point."""
        for pid, argv in self.processes().items():
            if b"/app/serve.py" in argv:
                return pid
        raise AssertionError("the entry point process was not found")

    def stop(self) -> int:
        """Send SIGTERM to the entry point, as Kubernetes does; return the container's exit code."""
        if self.engine == "docker":
            subprocess.run(["docker", "stop", "--time", "30", self.name], check=False)
            self.process.wait(timeout=60)
            return int(output("docker", "inspect", "--format", "{{.State.ExitCode}}", self.name))
        # `buildah run` would SIGKILL only its child on SIGTERM, so signal the entry point itself.
        os.kill(self.entry_point_pid(), signal.SIGTERM)
        return self.process.wait(timeout=60)

    def remove(self) -> None:
        """Stop (if still running) and remove the container, leaving no process behind."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            except (AssertionError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=30)
        if self.engine == "podman" and self.server is not None:
            for pid in self.processes():
                os.kill(pid, signal.SIGKILL)
        if self.name:
            remove = ["docker", "rm", "-f"] if self.engine == "docker" else ["buildah", "rm"]
            subprocess.run([*remove, self.name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def engine() -> str:
    """The container engine this machine offers."""
    return choose_engine()


@pytest.fixture(scope="module")
def image(engine: str, serving_package: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built by scripts/build-image.sh from the test package, as `make image` does."""
    context = tmp_path_factory.mktemp("image-context")
    shutil.copy(REPO / "Dockerfile", context / "Dockerfile")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    shutil.copytree(serving_package, context / "models" / "serving")
    tag = f"localhost/mlops-template-test:{metadata_of(serving_package).model_sha256[:12]}"
    done = subprocess.run(
        [str(REPO / "scripts" / "build-image.sh"), tag, str(context)],
        env={**os.environ, "CONTAINER_ENGINE": engine, "GIT_COMMIT": BUILT_FROM},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tag


@pytest.fixture(scope="module")
def container(
    engine: str, image: str, serving_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """The image serving on free loopback ports."""
    log_path = tmp_path_factory.mktemp("container") / "container.log"
    running = Container(engine, image, log_path).start(serving_package)
    try:
        running.server.wait_ready()
        yield running
    finally:
        running.remove()


def run_in_image(engine: str, image: str, *argv: str) -> str:
    """Run a command in a fresh container of the image (not its entry point); its output."""
    if engine == "docker":
        return output("docker", "run", "--rm", "--entrypoint", argv[0], image, *argv[1:])
    name = output("buildah", "from", "--quiet", image)
    try:
        return output("buildah", "run", "--isolation", "chroot", name, "--", *argv)
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def test_the_onnx_image_has_onnxruntime_and_no_scikit_learn(
    engine: str, image: str, serving_package: Path
) -> None:
    """The package's runtime decides what the image installs: no unpickling code, no SciPy."""
    assert metadata_of(serving_package).runtime == "onnx"
    found = run_in_image(
        engine, image, "python3", "-c",
        "import importlib.util as u; "
        "print(*[m for m in ('sklearn', 'scipy', 'joblib', 'onnxruntime') if u.find_spec(m)])",
    )  # fmt: skip
    assert found == "onnxruntime"


def test_the_serving_environment_holds_exactly_the_pinned_packages(
    engine: str, image: str, serving_package: Path
) -> None:
    """Everything in /opt/venv is pinned in the package's requirements: the lock audit sees it."""
    installed = run_in_image(
        engine, image, "python3", "-c",
        "import importlib.metadata as m; "
        "print(*(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()), sep='\\n')",
    )  # fmt: skip
    found = pins(installed)
    assert found == pins((serving_package / "requirements.txt").read_text(encoding="utf-8"))
    assert "pip" not in found


def test_image_labels_name_the_model(engine: str, image: str, serving_package: Path) -> None:
    inspect = [engine, "image", "inspect", "--format", "{{json .Config.Labels}}", image]
    if engine == "podman":
        inspect = ["podman", "image", "inspect", "--format", "{{json .Labels}}", image]
    labels = json.loads(output(*inspect))
    metadata = metadata_of(serving_package)
    assert labels["mlops-template.model.sha256"] == metadata.model_sha256
    assert labels["org.opencontainers.image.revision"] == BUILT_FROM
    user_format = "{{.Config.User}}" if engine == "docker" else "{{.User}}"
    user = output(engine, "image", "inspect", "--format", user_format, image)
    assert user.split(":")[0] not in ("", "0", "root")


def test_the_image_listens_on_every_interface_of_its_pod(engine: str, image: str) -> None:
    """A pod is reached on its own IP, so the image binds 0.0.0.0 (`make serve` binds loopback)."""
    env = json.loads(output(engine, "image", "inspect", "--format", "{{json .Config.Env}}", image))
    assert "SERVE_HOST=0.0.0.0" in env


def test_image_answers_like_in_process(container: Container, serving_package: Path) -> None:
    url = container.server.url
    for rows in (raw_rows(serving_package, 1, seed=11), raw_rows(serving_package, 1000, seed=12)):
        status, answer = predict(url, {"data": {"ndarray": rows}})
        assert status == 200, answer
        assert_answer(serving_package, answer, rows)
        assert answer["meta"]["tags"]["git_commit"] == BUILT_FROM
    status, metadata = http("GET", f"{url}/metadata")
    assert status == 200
    assert metadata["outputs"][0]["schema"]["names"] == list(metadata_of(serving_package).classes)
    assert metadata["custom"]["git_commit"] == BUILT_FROM


def test_image_rejects_bad_requests_and_keeps_serving(
    container: Container, serving_package: Path
) -> None:
    for case, (body, content_type, pattern) in bad_requests(serving_package).items():
        try:
            check_bad_request(container.server.url, body, content_type, pattern)
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from None
    check_still_serves(container.server.url, serving_package)


def test_image_runs_as_non_root_and_stops_cleanly_on_sigterm(
    engine: str, image: str, serving_package: Path, tmp_path: Path
) -> None:
    running = Container(engine, image, tmp_path / "container.log").start(serving_package)
    try:
        running.server.wait_ready()
        if engine == "podman":
            status = Path(f"/proc/{running.entry_point_pid()}/status").read_text()
            uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
            assert uid != "0"
        code = running.stop()
        assert code == 0, running.server.log()
        assert "received SIGTERM; stopping the microservice" in running.server.log()
        with pytest.raises(urllib.error.URLError):
            http("GET", f"{running.server.url}/health/ping")
        if engine == "podman":
            assert not running.processes(), "processes left after SIGTERM"
    finally:
        running.remove()


def test_the_workflow_smoke_test_passes_on_the_image(image: str, serving_package: Path) -> None:
    """What build-and-push runs before pushing: labels, sample request, 400, clean SIGTERM."""
    done = subprocess.run(
        [str(REPO / "scripts" / "smoke-test-image.sh"), image, str(serving_package)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke test passed" in done.stdout


def image_package(engine: str, image: str, out: Path) -> subprocess.CompletedProcess[str]:
    """scripts/image-package.sh, as the deploy workflow runs it before rendering the manifest."""
    return subprocess.run(
        [str(REPO / "scripts" / "image-package.sh"), image, str(out)],
        env={**os.environ, "CONTAINER_ENGINE": engine},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def containers_from(engine: str, image: str) -> list[str]:
    """Ids of the containers (running or not) made from `image`."""
    listing = output(
        engine, "ps", "--all", "--quiet", "--no-trunc", "--filter", f"ancestor={image}"
    )
    return sorted(listing.split())


def test_the_package_copied_out_of_the_image_is_the_one_it_was_built_from(
    engine: str, image: str, serving_package: Path, tmp_path: Path
) -> None:
    """What the deploy workflow renders the annotations and takes the smoke request from."""
    before = containers_from(engine, image)
    out = tmp_path / "package"
    done = image_package(engine, image, out)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("metadata.json", "model.joblib", "sample_request.json"):
        assert (out / name).read_bytes() == (serving_package / name).read_bytes(), name
    assert containers_from(engine, image) == before, "the temporary container was left behind"


def test_an_image_without_a_package_is_a_one_line_error_and_leaves_no_container(
    engine: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    tag = f"localhost/mlops-template-empty:{os.getpid()}"
    output(engine, "import", str(empty), tag)
    try:
        out = tmp_path / "package"
        done = image_package(engine, tag, out)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert f"error: {engine} cannot copy /app out of {tag}: " in done.stderr
        assert not out.exists()
        assert containers_from(engine, tag) == []
    finally:
        subprocess.run([engine, "rmi", "--force", tag], capture_output=True, check=False)
