"""Idle, slow and malformed clients against the real server: bounded in time and in number,
answered in the JSON error form, while every other request is answered at once; and the
addresses and ports the server takes."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.checks import raw_rows
from tests.serving.conftest import MAX_BATCH_ROWS, SERVE_PYTHON, Server, free_port, predict
from tests.serving.test_grpc import grpc_predict

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT = 3  # seconds, short so the test waits little for the cut
MAX_CONNECTIONS = 40  # per worker (two workers)
PREDICTIONS = "/api/v1.0/predictions"


@pytest.fixture(scope="module")
def bounded_server(
    serving_package: Path, serve_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server with a short request timeout and a small connection limit."""
    env = {"REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT), "MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    server = Server(serving_package, env=env)
    try:
        server.start(tmp_path_factory.mktemp("slow-clients") / "server.log")
        server.wait_ready()
        yield server
    finally:
        if server.process is not None:
            server.stop()


def connect(server: Server) -> socket.socket:
    """A TCP connection to the server's HTTP port."""
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=30)


def answer_of(sock: socket.socket) -> tuple[int, dict]:
    """Read the server's answer until it closes the connection: (status, JSON body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def request_head(body: bytes) -> bytes:
    """The head of a prediction request for `body`."""
    return (
        f"POST {PREDICTIONS} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


@contextlib.contextmanager
def stallers(server: Server, count: int, body: bytes) -> Iterator[dict[str, list[socket.socket]]]:
    """`count` clients of each kind that never finish: idle (nothing sent), slow head (half a
    request line), slow body (the head and 5 bytes of the body)."""
    kinds: dict[str, list[socket.socket]] = {"idle": [], "head": [], "body": []}
    try:
        for _ in range(count):
            kinds["idle"].append(connect(server))
            kinds["head"].append(connect(server))
            kinds["head"][-1].sendall(f"POST {PREDICTIONS} HTTP/1.1\r\nHost: t".encode())
            kinds["body"].append(connect(server))
            kinds["body"][-1].sendall(request_head(body) + body[:5])
        yield kinds
    finally:
        for sockets in kinds.values():
            for sock in sockets:
                sock.close()


def timed_predict(server: Server, message: dict) -> float:
    """Seconds one ordinary prediction request takes (asserting it succeeds)."""
    started = time.monotonic()
    status, answer = predict(server.url, message)
    assert status == 200, answer
    return time.monotonic() - started


def test_idle_and_slow_clients_do_not_delay_others(
    bounded_server: Server, serving_package: Path
) -> None:
    message = json.loads((serving_package / "sample_request.json").read_text())
    body = json.dumps(message).encode()
    # Two sync workers were stalled by two such clients; here 3 x 10 (within the limit even if
    # one worker takes them all).
    with stallers(bounded_server, 10, body) as kinds:
        time.sleep(0.5)
        took = [timed_predict(bounded_server, message) for _ in range(20)]
        assert max(took) < 1.0, took
        # Cut once their time is up: 408 in the JSON error form to those that sent something,
        # a plain close to those that sent nothing.
        for sock in kinds["head"][:3] + kinds["body"][:3]:
            status, answer = answer_of(sock)
            assert status == 408
            assert answer["status"]["reason"] == "REQUEST_TIMEOUT"
            assert f"within {REQUEST_TIMEOUT} s" in answer["status"]["info"]
        assert kinds["idle"][0].recv(100) == b""
    assert timed_predict(bounded_server, message) < 1.0


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_a_large_body_sent_too_slowly_is_408_on_either_route(
    bounded_server: Server, content_type: str
) -> None:
    # Announced larger than the worker buffers, so a thread reads it: through the fast path
    # (JSON), or inside Seldon's Flask app (a form), which would otherwise answer 500.
    head = (
        f"POST {PREDICTIONS} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 500000\r\n\r\n"
    )
    with connect(bounded_server) as sock:
        sock.sendall(head.encode() + b"a=" + b"1" * 100)
        started = time.monotonic()
        status, answer = answer_of(sock)
    assert status == 408
    assert f"within {REQUEST_TIMEOUT} s" in answer["status"]["info"]
    assert REQUEST_TIMEOUT - 1 < time.monotonic() - started < REQUEST_TIMEOUT + 3


def test_a_client_that_does_not_read_its_answers_is_cut(
    bounded_server: Server, serving_package: Path
) -> None:
    # Pipelined batches whose answers are never read: once the socket buffers are full, the
    # server's write waits REQUEST_TIMEOUT at most, then it closes the connection.
    rows = raw_rows(serving_package, MAX_BATCH_ROWS, seed=5)
    body = json.dumps({"data": {"ndarray": rows}}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bounded_server.http_port))

    def send() -> None:
        with contextlib.suppress(OSError):  # the server closes the connection mid-way
            for _ in range(40):
                sock.sendall(request_head(body) + body)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 6 * REQUEST_TIMEOUT
        while "did not read its answer in time" not in bounded_server.log():
            assert time.monotonic() < deadline, bounded_server.log()[-2000:]
            time.sleep(0.2)
    finally:
        sock.close()
        sender.join(timeout=10)
    assert "Traceback" not in bounded_server.log()
    message = json.loads((serving_package / "sample_request.json").read_text())
    assert timed_predict(bounded_server, message) < 1.0


def test_idle_and_slow_clients_on_the_grpc_port_do_not_delay_predictions(
    bounded_server: Server, serving_package: Path, serve_python: Path
) -> None:
    # gRPC runs beside REST (GRPC_WORKERS=1, one thread): clients holding its port open with
    # nothing, or with half an HTTP/2 preface, must not hold that thread.
    rows = raw_rows(serving_package, 1, seed=3)
    opened: list[socket.socket] = []
    try:
        for index in range(20):
            opened.append(socket.create_connection(("127.0.0.1", bounded_server.grpc_port)))
            if index % 2:
                opened[-1].sendall(b"PRI * HTTP/2.0\r\n")
        started = time.monotonic()
        [answer] = grpc_predict(serve_python, bounded_server, [{"data": {"ndarray": rows}}])
        assert answer["code"] == "OK", answer
        assert time.monotonic() - started < 15
    finally:
        for sock in opened:
            sock.close()


def test_connections_beyond_the_limit_are_answered_503(bounded_server: Server) -> None:
    # Idle connections over both workers' limits (the kernel spreads them unevenly); those
    # over a worker's limit get 503 at once, the others wait silently for their request.
    opened: list[socket.socket] = []
    try:
        for _ in range(2 * MAX_CONNECTIONS + 10):
            opened.append(connect(bounded_server))
        time.sleep(0.5)
        answers = []
        for sock in opened:
            sock.settimeout(0.02)  # all of it well within REQUEST_TIMEOUT
            with contextlib.suppress(TimeoutError):
                answers.append(answer_of(sock))
        assert len(answers) >= 10, answers
        for status, answer in answers:
            assert status == 503
            assert "connections open" in answer["status"]["info"]
    finally:
        for sock in opened:
            sock.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400),
    ],
)
def test_requests_the_http_parser_refuses_get_the_json_error_form(
    bounded_server: Server, raw: bytes, status: int
) -> None:
    with connect(bounded_server) as sock:
        sock.sendall(raw)
        answered, answer = answer_of(sock)
    assert answered == status
    assert set(answer["status"]) == {"status", "info", "code", "reason"}


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_servers_bind_loopback_unless_told(bounded_server: Server) -> None:
    for port in (bounded_server.http_port, bounded_server.metrics_port):
        assert listening_addresses(port) == {"127.0.0.1"}


def test_serve_host_binds_every_interface(serving_package: Path, tmp_path: Path) -> None:
    server = Server(serving_package, env={"SERVE_HOST": "0.0.0.0"})
    try:
        server.start(tmp_path / "server.log")
        server.wait_ready()
        assert listening_addresses(server.http_port) == {"0.0.0.0"}
        assert listening_addresses(server.metrics_port) == {"0.0.0.0"}
    finally:
        if server.process is not None:
            server.stop()


@pytest.mark.parametrize("taken", ["http", "metrics"])
def test_a_taken_port_fails_at_once_naming_it(serving_package: Path, taken: str) -> None:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        started = time.monotonic()
        done = subprocess.run(
            [str(SERVE_PYTHON), str(serving_package / "serve.py")]
            + [f"--{name}-port={port}" for name, port in ports.items()],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert time.monotonic() - started < 10
    assert done.returncode == 78
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{ports[taken]}" in lines[0]
    assert "in use" in lines[0]
