"""gRPC `Seldon/Predict` on the real microservice: the REST route's checks, gRPC's status codes.

A message that is the client's fault gets `INVALID_ARGUMENT` with the message the REST route gives
for the same request, and one line in the server's log, never a traceback; a good message gets the
REST route's probabilities.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serving.checks import (
    BAD_REQUEST_CASES,
    bad_requests,
    metadata_of,
    probabilities_of,
    raw_rows,
)
from tests.serving.conftest import Server, predict

pytestmark = pytest.mark.slow

# The bad-request cases up to this one are Seldon messages in JSON; it and the ones after it are a
# `meta` no proto can hold, bodies that are not JSON, and REST's own content types and forms.
GRPC_CASES = BAD_REQUEST_CASES[: BAD_REQUEST_CASES.index("meta not an object")]

# Runs in the serving environment (grpcio and Seldon's stubs): each message from stdin, as JSON,
# becomes a SeldonMessage; prints, for each, the JSON form of what was sent (the REST request
# that means the same: numbers are doubles in a proto) and the answer, or the gRPC status code
# and details.
CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import grpc
    from google.protobuf import json_format
    from seldon_core.proto import prediction_pb2, prediction_pb2_grpc

    request = json.load(sys.stdin)
    stub = prediction_pb2_grpc.SeldonStub(grpc.insecure_channel(f"127.0.0.1:{request['port']}"))
    answers = []
    for message in request["messages"]:
        proto = json_format.ParseDict(message, prediction_pb2.SeldonMessage())
        sent = {"sent": json_format.MessageToDict(proto)}
        try:
            answer = stub.Predict(proto, timeout=30)
        except grpc.RpcError as error:
            answers.append({**sent, "code": error.code().name, "details": error.details()})
        else:
            answers.append({**sent, "code": "OK", "answer": json_format.MessageToDict(answer)})
    print(json.dumps(answers))
    """
)


def grpc_predict(serve_python: Path, server: Server, messages: list[Any]) -> list[dict[str, Any]]:
    """Send each message to `Seldon/Predict`; its answer or its status code and details."""
    done = subprocess.run(
        [str(serve_python), "-c", CLIENT_SCRIPT],
        input=json.dumps({"port": server.grpc_port, "messages": messages}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bad_messages_are_invalid_argument_with_the_rest_message(
    server: Server, serving_package: Path, serve_python: Path
) -> None:
    bodies = bad_requests(serving_package)
    cases = {case: json.loads(bodies[case][0]) for case in GRPC_CASES}
    metadata = metadata_of(serving_package)
    row = raw_rows(serving_package, 1, seed=1)[0]
    numeric = metadata.feature_names.index(metadata.numeric_names[0])
    infinite = [float("inf") if index == numeric else value for index, value in enumerate(row)]
    zeros = [0.0] * len(row)  # a tensor holds numbers only
    zeros[numeric] = "-Infinity"  # which ParseDict reads as the double
    cases |= {
        "an infinite double": {"data": {"ndarray": [infinite]}},
        "an infinite tensor value": {"data": {"tensor": {"shape": [1, len(row)], "values": zeros}}},
        "a row that is not a list": {"data": {"ndarray": [row, 5]}},
        "strData": {"strData": "hello"},
        "nothing": {},
    }
    answers = grpc_predict(serve_python, server, list(cases.values()))
    for case, answer in zip(cases, answers, strict=True):
        status, rest = predict(server.url, answer["sent"])
        assert status == 400, (case, rest)
        assert (answer["code"], answer["details"]) == (
            "INVALID_ARGUMENT",
            rest["status"]["info"],
        ), case


def test_a_bad_message_is_one_log_line_and_no_traceback(
    server: Server, serving_package: Path, serve_python: Path
) -> None:
    names = metadata_of(serving_package).feature_names
    marker = f"colour-{uuid.uuid4().hex}"
    row = raw_rows(serving_package, 1, seed=1)[0]
    message = {"data": {"names": [*names[:-1], marker], "ndarray": [row]}}
    [answer] = grpc_predict(serve_python, server, [message])
    assert answer["code"] == "INVALID_ARGUMENT", answer
    log = server.log()
    assert len([line for line in log.splitlines() if marker in line]) == 1, log
    assert "Traceback" not in log
    assert "Exception calling application" not in log


def test_good_messages_in_every_form_match_rest(
    server: Server, serving_package: Path, serve_python: Path
) -> None:
    names = metadata_of(serving_package).feature_names
    rows = raw_rows(serving_package, 5, seed=12)
    messages = [
        {"data": {"ndarray": rows}},
        {"data": {"names": names[::-1], "ndarray": [row[::-1] for row in rows]}},
        {"jsonData": [dict(zip(names, row, strict=True)) for row in rows]},
        {"meta": {"tags": {"caller": "test"}, "puid": "p-1"}, "data": {"ndarray": rows}},
    ]
    answers = grpc_predict(serve_python, server, messages)
    for message, answer in zip(messages, answers, strict=True):
        assert answer["code"] == "OK", answer
        status, rest = predict(server.url, message)
        assert status == 200, rest
        np.testing.assert_array_equal(probabilities_of(answer["answer"]), probabilities_of(rest))
        assert answer["answer"]["data"]["names"] == rest["data"]["names"]
        assert answer["answer"]["meta"]["tags"] == rest["meta"]["tags"]
