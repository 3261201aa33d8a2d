"""The packaged model served by the real `seldon-core-microservice` on free loopback ports."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import textwrap
import time
import urllib.error
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import pytest

from tests.serving.checks import (
    BAD_REQUEST_CASES,
    assert_answer,
    bad_requests,
    check_bad_request,
    check_still_serves,
    metadata_of,
    probabilities_of,
    raw_rows,
)
from tests.serving.conftest import Server, http, predict

pytestmark = pytest.mark.slow


def names_of(package_dir: Path) -> list[str]:
    """Feature names in schema order."""
    return metadata_of(package_dir).feature_names


def test_single_row_matches_in_process(server: Server, serving_package: Path) -> None:
    rows = raw_rows(serving_package, 1)
    status, answer = predict(server.url, {"data": {"ndarray": rows}})
    assert status == 200, answer
    assert_answer(serving_package, answer, rows)


def test_rows_by_name_in_shuffled_order(server: Server, serving_package: Path) -> None:
    names = names_of(serving_package)
    rows = raw_rows(serving_package, 5, seed=3)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != names
    order = [names.index(name) for name in shuffled]
    status, answer = predict(
        server.url,
        {"data": {"names": shuffled, "ndarray": [[row[i] for i in order] for row in rows]}},
    )
    assert status == 200, answer
    assert_answer(serving_package, answer, rows)


def test_json_data_records(server: Server, serving_package: Path) -> None:
    names = names_of(serving_package)
    rows = raw_rows(serving_package, 4, seed=4)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    status, answer = predict(server.url, {"jsonData": records})
    assert status == 200, answer
    assert_answer(serving_package, answer, rows)


def test_thousand_row_batch(server: Server, serving_package: Path) -> None:
    rows = raw_rows(serving_package, 1000, seed=5)
    assert any(value is None for row in rows for value in row), (
        "the batch should hold missing values"
    )
    status, answer = predict(server.url, {"data": {"ndarray": rows}})
    assert status == 200, answer
    assert probabilities_of(answer).shape == (1000, len(metadata_of(serving_package).classes))
    assert_answer(serving_package, answer, rows)


def test_unseen_category_level_is_encoded_as_in_training(
    server: Server, serving_package: Path
) -> None:
    features = metadata_of(serving_package).features
    categorical = next(i for i, f in enumerate(features) if f.kind == "categorical")
    rows = raw_rows(serving_package, 3, seed=10)
    for row in rows:
        row[categorical] = "a level never seen in training"
    status, answer = predict(server.url, {"data": {"ndarray": rows}})
    assert status == 200, answer
    assert_answer(serving_package, answer, rows)


def test_tensor_numbers_only(server: Server, serving_package: Path) -> None:
    """A tensor carries numbers only: categorical features arrive as unseen levels (all zeros)."""
    features = metadata_of(serving_package).features
    numeric = [feature.kind == "numeric" for feature in features]
    complete = [row for row in raw_rows(serving_package, 5, seed=6) if None not in row]
    rows = [[v if keep else 0.0 for v, keep in zip(row, numeric, strict=True)] for row in complete]
    values = [float(value) for row in rows for value in row]
    message = {"data": {"tensor": {"shape": [len(rows), len(features)], "values": values}}}
    status, answer = predict(server.url, message)
    assert status == 200, answer
    assert "tensor" in answer["data"]
    assert_answer(serving_package, answer, rows)


def test_sample_request_of_the_package(server: Server, serving_package: Path) -> None:
    """What `make predict` sends is answered like in-process prediction."""
    message = json.loads((serving_package / "sample_request.json").read_text())
    status, answer = predict(server.url, message)
    assert status == 200, answer
    names, data = message["data"]["names"], message["data"]["ndarray"]
    order = [names.index(name) for name in names_of(serving_package)]
    assert_answer(serving_package, answer, [[row[i] for i in order] for row in data])


def test_metadata_describes_inputs_and_classes(server: Server, serving_package: Path) -> None:
    metadata = metadata_of(serving_package)
    status, answer = http("GET", f"{server.url}/metadata")
    assert status == 200, answer
    ndarray_input = next(spec for spec in answer["inputs"] if spec["messagetype"] == "ndarray")
    assert ndarray_input["schema"]["names"] == names_of(serving_package)
    assert answer["outputs"][0]["schema"]["names"] == list(metadata.classes)
    assert answer["custom"]["model_sha256"] == metadata.model_sha256
    assert answer["custom"]["max_batch_rows"] == str(metadata.max_batch_rows)


def test_health_status_runs_the_model(server: Server, serving_package: Path) -> None:
    status, answer = http("GET", f"{server.url}/health/status")
    assert status == 200, answer
    health = answer["jsonData"]
    assert health["status"] == "ok"
    assert health["classes"] == list(metadata_of(serving_package).classes)
    assert health["probe_sum"] == pytest.approx(1.0)


@pytest.mark.parametrize("case", BAD_REQUEST_CASES)
def test_bad_request_is_400_and_server_keeps_serving(
    server: Server, serving_package: Path, case: str
) -> None:
    body, content_type, pattern = bad_requests(serving_package)[case]
    check_bad_request(server.url, body, content_type, pattern)
    check_still_serves(server.url, serving_package)


def test_a_body_over_the_size_limit_is_413_unread(server: Server, serving_package: Path) -> None:
    """The limit is the batch limit's rows of long values; the server does not read past it."""
    connection = HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.putrequest("POST", "/api/v1.0/predictions")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(10**9))  # announced, never sent
        connection.endheaders()
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413, answer
    assert answer["status"]["reason"] == "REQUEST_ENTITY_TOO_LARGE"
    check_still_serves(server.url, serving_package)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1.0/nothing", 404),
        ("POST", "/health/ping", 405),
        ("PUT", "/api/v1.0/predictions", 405),
        ("POST", "/transform-input", 404),  # a transformer's route, not a model's
        ("POST", "/route", 404),
        ("GET", "/api/v1.0/predictions", 405),  # not the static files Seldon serves at GET
    ],
)
def test_wrong_routes_and_methods_get_their_own_4xx(
    server: Server, method: str, path: str, status: int
) -> None:
    """Seldon's catch-all would answer these 500; they are the client's to fix."""
    body = b"{}" if method == "POST" else None
    got, answer = http(method, f"{server.url}{path}", body)
    assert got == status, answer
    assert answer["status"]["code"] == -1
    assert answer["status"]["info"]


def test_feedback_is_acknowledged_unread(server: Server) -> None:
    """The model does not learn from feedback; a malformed one is no server error either."""
    nested = {"request": {"data": {"ndarray": [[1, [2]]]}}, "reward": 1.0}
    for body in ({"reward": 1.0}, nested):
        status, answer = http("POST", f"{server.url}/api/v1.0/feedback", json.dumps(body).encode())
        assert status == 200, answer
    status, answer = http("POST", f"{server.url}/api/v1.0/feedback", b'{"reward": "a lot"}')
    assert status == 400, answer
    status, answer = http("POST", f"{server.url}/api/v1.0/feedback", b"false")
    assert status == 400, answer
    assert "feedback must be a JSON object" in answer["status"]["info"]


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from seldon_core.seldon_client import SeldonClient
    from seldon_core.utils import seldon_message_to_json

    request = json.load(sys.stdin)
    data = np.array(request["rows"], dtype=object)
    answers = {}
    for transport, port in (("rest", request["http_port"]), ("grpc", request["grpc_port"])):
        client = SeldonClient(microservice_endpoint=f"127.0.0.1:{port}")
        result = client.microservice(
            method="predict", transport=transport, payload_type="ndarray",
            data=data, names=request["names"],
        )
        if not result.success:
            raise SystemExit(f"{transport}: {result.msg}")
        answers[transport] = seldon_message_to_json(result.response)
    print(json.dumps(answers))
    """
)


def test_seldon_client_rest_and_grpc(
    server: Server, serving_package: Path, serve_python: Path
) -> None:
    """Seldon's own Python client, in the serving environment, over both transports."""
    rows = raw_rows(serving_package, 6, seed=9)
    request = {
        "rows": rows,
        "names": names_of(serving_package),
        "http_port": server.http_port,
        "grpc_port": server.grpc_port,
    }
    done = subprocess.run(
        [str(serve_python), "-c", CLIENT_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    for transport in ("rest", "grpc"):
        assert_answer(serving_package, answers[transport], rows)
    np.testing.assert_array_equal(
        probabilities_of(answers["rest"]), probabilities_of(answers["grpc"])
    )


@pytest.mark.parametrize("model_file", ["model.onnx", "model.joblib"])
def test_tampered_model_refuses_to_start(
    serving_package: Path, joblib_package: Path, serve_python: Path, tmp_path: Path, model_file: str
) -> None:
    """Whichever file the runtime loads, a byte changed in it stops the server before it serves."""
    tampered = tmp_path / "serving"
    shutil.copytree(serving_package if model_file == "model.onnx" else joblib_package, tampered)
    with (tampered / model_file).open("ab") as stream:
        stream.write(b"\0")
    server = Server(tampered).start(tmp_path / "server.log")
    try:
        code = server.process.wait(timeout=120)
    finally:
        server.stop()
    assert code != 0
    log = server.log()
    assert re.search(rf"cannot start: sha256 mismatch for .*{re.escape(model_file)}", log), log
    assert "Traceback" not in log
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        http("GET", f"{server.url}/health/ping")


def process_group_members(leader_parent: int) -> set[int]:
    """PIDs in the process group that the given process's child leads (Linux /proc)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))  # (ppid, pgrp)
    leaders = [pid for pid, (ppid, _) in stats.items() if ppid == leader_parent]
    return {pid for pid, (_, group) in stats.items() if group in leaders}


def test_sigterm_stops_every_process(
    serving_package: Path, serve_python: Path, tmp_path: Path
) -> None:
    """Kubernetes stops a pod with SIGTERM: gunicorn, its workers, gRPC and metrics all exit."""
    server = Server(serving_package).start(tmp_path / "server.log")
    try:
        server.wait_ready()
        members = process_group_members(server.process.pid)
        assert len(members) >= 4, members  # gunicorn master and workers, gRPC, metrics
    finally:
        code = server.stop(timeout=60)
    assert code == 0, server.log()
    deadline = time.monotonic() + 10
    while process_group_members(server.process.pid) & members and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = {pid for pid in members if Path(f"/proc/{pid}").exists()}
    assert not alive, f"still running after SIGTERM: {alive}"


def test_without_grpc_workers_only_rest_listens_and_sigterm_is_clean(
    serving_package: Path, serve_python: Path, tmp_path: Path
) -> None:
    # What the rendered SeldonDeployment sets unless --grpc: no gRPC server (protobuf 3.x advisory).
    import socket

    server = Server(serving_package, env={"GRPC_WORKERS": "0"}).start(tmp_path / "server.log")
    try:
        server.wait_ready()
        status, answer = predict(
            server.url, json.loads((serving_package / "sample_request.json").read_text())
        )
        assert status == 200, answer
        with socket.socket() as sock:
            sock.settimeout(5)
            with pytest.raises(ConnectionRefusedError):
                sock.connect(("127.0.0.1", server.grpc_port))
    finally:
        code = server.stop()
    assert code == 0, server.log()
