"""The gunicorn worker the server runs: a request is read whole before it is served.

Gunicorn's sync worker serves one connection at a time, so with two workers two clients that
connect and send nothing (or send a request a byte at a time) stall every other request for as
long as they stay connected. This worker is gunicorn's threaded worker (`gthread`) with one change
in how a request arrives: its bytes are read, without blocking, by the worker's event loop, and a
request is served only once its head and body have arrived (a body announced larger than
READ_AHEAD_BYTES is read by the worker's thread instead). Idle and slow clients therefore cost a
socket, never the worker, and they are bounded:

- in time: a request must arrive whole within `REQUEST_TIMEOUT_SECONDS` of its first wait (a new
  connection, or the next request on a kept-alive one); past that the client gets 408 and the
  connection is closed.
- in number: at most `MAX_CONNECTIONS` per worker; one more is answered 503 and closed at once.

Errors that gunicorn itself answers (a malformed request line or header) are written in the
server's JSON error form instead of gunicorn's HTML page.

This file is copied into the serving package beside serve.py, which installs it with `configure`.
It relies on gunicorn's gthread internals (`TConn`, the parser's unreader), pinned in the lock;
tests/serving/test_slow_clients.py is what says an upgrade kept them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import sys
import time
from collections import deque
from concurrent import futures
from functools import partial
from typing import Any

import werkzeug.exceptions
from gunicorn import util
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread
from seldon_core.flask_utils import SeldonMicroserviceException

logger = logging.getLogger(__name__)

# How long a whole request (head and body) may take to arrive; the environment can change it.
REQUEST_TIMEOUT_VARIABLE = "REQUEST_TIMEOUT_SECONDS"
REQUEST_TIMEOUT_SECONDS = 10.0
# Open connections per worker process; one more is answered 503.
MAX_CONNECTIONS_VARIABLE = "MAX_CONNECTIONS"
MAX_CONNECTIONS = 256
# Bytes of a request buffered by the event loop before a thread takes over the reading: a
# 1,000-row JSON batch fits; the worst case is MAX_CONNECTIONS times this per worker.
READ_AHEAD_BYTES = 128 * 1024
# `SERVE_WORKER=sync` runs gunicorn's sync worker instead, unprotected: only for the serving
# benchmark's side-by-side comparison.
WORKER_VARIABLE = "SERVE_WORKER"
BOUNDED = "bounded"
RECEIVE_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"


class RequestTimeout(werkzeug.exceptions.RequestTimeout):
    """The request did not arrive whole within its deadline: 408.

    A werkzeug HTTP error, so that a body read inside Seldon's Flask app (a form, say) is
    answered 408 by its error handler too, not 500.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(timeout_message(seconds))


def timeout_message(seconds: float) -> str:
    """The 408's text."""
    return f"the request did not arrive whole within {seconds:g} s ({REQUEST_TIMEOUT_VARIABLE})"


def error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP response in the server's JSON error form (Seldon's), closing the
    connection."""
    error = SeldonMicroserviceException(message, status_code=status, reason=reason)
    body = json.dumps(error.to_dict()).encode()
    head = (
        f"HTTP/1.1 {status} {reason.replace('_', ' ').title()}\r\n"
        "Connection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error` (its HTML page for requests it cannot parse), as JSON."""
    message = f"{reason}: {mesg}" if mesg else reason
    code = reason.upper().replace(" ", "_")
    util.write_nonblock(sock, error_response(status_int, code, message))


def send_and_close(sock: socket.socket, response: bytes) -> None:
    """Best effort: write what fits in the socket's buffer now, then close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(response)
    util.close(sock)


# What has arrived of a request: not all of its head or body yet; all of it; or a head whose
# body a thread reads itself (chunked, after `100-continue`, or announced too large to buffer).
WAITING, WHOLE, HEAD = "waiting", "whole", "head"


def arrival(buffer: bytearray) -> str:
    """How much of a request `buffer` holds (WAITING, WHOLE or HEAD), as gunicorn will parse it.

    A head gunicorn will refuse (a bad Content-Length, say) counts as whole: it is answered 400
    without reading on.
    """
    end = buffer.find(HEAD_END)
    if end < 0:
        return HEAD if len(buffer) >= READ_AHEAD_BYTES else WAITING
    body_bytes = len(buffer) - end - len(HEAD_END)
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name in (b"expect", b"transfer-encoding"):
            return HEAD
        if name == b"content-length" and value.isdigit():
            if body_bytes >= int(value):
                return WHOLE
            # A body too large to buffer is read by a thread: the application may refuse it
            # (413) before reading any of it.
            return HEAD if end + int(value) >= READ_AHEAD_BYTES else WAITING
    return WHOLE


class DeadlineUnreader(SocketUnreader):
    """Reads a request from the socket until its deadline, then raises RequestTimeout.

    With the deadline already past, it takes only what the socket holds, never waiting.
    """

    def __init__(self, sock: socket.socket, request_timeout: float) -> None:
        super().__init__(sock)
        self.deadline = time.monotonic()
        self.request_timeout = request_timeout

    def chunk(self, size_hint: int | None = None) -> bytes:
        """The next bytes from the socket, waiting no longer than the deadline allows."""
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.0))
        try:
            return super().chunk(size_hint)
        except (TimeoutError, BlockingIOError):
            raise RequestTimeout(self.request_timeout) from None
        finally:
            # The answer is written under a timeout too: a client that does not read it
            # cannot hold the worker.
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.request_timeout)


class BoundedWorker(gthread.ThreadWorker):
    """gthread with requests read by the event loop, bounded in time and in number.

    A request that arrived whole is served at once by the event loop's thread (prediction holds
    the GIL: handing it to another thread would only add a switch); one whose body is still to be
    read (chunked, large, `100-continue`) goes to the thread pool, which reads it under its
    deadline while the loop serves the others.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout = float(
            os.environ.get(REQUEST_TIMEOUT_VARIABLE, REQUEST_TIMEOUT_SECONDS)
        )
        self.max_connections = int(os.environ.get(MAX_CONNECTIONS_VARIABLE, MAX_CONNECTIONS))
        # The limit is this worker's own (answered 503), not gunicorn's (which stops accepting
        # and leaves new clients waiting unanswered in the listen queue).
        self.worker_connections = sys.maxsize
        # Connections whose request is still arriving, oldest deadline first.
        self.arriving: deque[gthread.TConn] = deque()
        self.warned_full_at = 0.0

    def init_process(self) -> None:
        """Answer gunicorn's own request errors in JSON in this process, then start."""
        util.write_error = write_json_error
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        """Take a new connection; wait for its request in the event loop (503 when full)."""
        try:
            sock, client = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        if self.nr_conns >= self.max_connections:
            if time.monotonic() - self.warned_full_at > 1:  # one line a second under a flood
                self.warned_full_at = time.monotonic()
                self.log.warning("%d connections open: answering 503", self.nr_conns)
            message = f"the server has {self.nr_conns} connections open; retry later"
            send_and_close(sock, error_response(503, "SERVICE_UNAVAILABLE", message))
            return
        self.nr_conns += 1
        self.await_request(gthread.TConn(self.cfg, sock, client, listener.getsockname()))

    def on_client_socket_readable(self, conn: gthread.TConn, client: socket.socket) -> None:
        """A kept-alive connection starts its next request: read it in the event loop."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.await_request(conn)

    def enqueue_req(self, conn: gthread.TConn) -> None:
        """gthread's hand-over of a kept-alive connection whose next request was read ahead:
        that request is awaited whole too (on the next turn of the loop, so that a long
        pipeline does not nest calls)."""
        leftover = conn.parser.unreader.take_buffered() if conn.parser else b""
        self.method_queue.defer(self.await_request, conn, leftover)

    def await_request(self, conn: gthread.TConn, arrived: bytes = b"") -> None:
        """Read the connection's next request without blocking, within its deadline."""
        conn.sock.setblocking(False)
        conn.arrived = bytearray(arrived)
        conn.deadline = time.monotonic() + self.request_timeout
        conn.waiting = False
        self.take_bytes(conn)

    def take_bytes(self, conn: gthread.TConn, _sock: Any = None) -> None:
        """Take what has arrived; serve the request once it is whole, else wait for more."""
        try:
            data: bytes | None = conn.sock.recv(RECEIVE_BYTES)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        conn.arrived += data or b""
        if data == b"" and not conn.arrived:  # closed before sending anything: nothing to answer
            self.stop_waiting(conn)
            self.nr_conns -= 1
            util.close(conn.sock)
            return
        # A client that stopped sending (EOF) is answered from what it sent.
        state = WHOLE if data == b"" else arrival(conn.arrived)
        if state == WAITING:
            if not conn.waiting:
                conn.waiting = True
                self.arriving.append(conn)
                self.poller.register(
                    conn.sock, selectors.EVENT_READ, partial(self.take_bytes, conn)
                )
            return
        self.stop_waiting(conn)
        self.serve(conn, whole=state == WHOLE)

    def stop_waiting(self, conn: gthread.TConn) -> None:
        """No longer wait in the event loop for this connection's request."""
        if conn.waiting:
            conn.waiting = False
            self.poller.unregister(conn.sock)
            self.arriving.remove(conn)

    def serve(self, conn: gthread.TConn, whole: bool) -> None:
        """Give the request's bytes to the connection's parser; serve it here if it arrived
        whole, else in the thread pool (which reads the rest before the deadline)."""
        conn.data_ready = True
        if not conn.initialized:
            conn.init()
            conn.parser.unreader = DeadlineUnreader(conn.sock, self.request_timeout)
        unreader = conn.parser.unreader
        unreader.unread(bytes(conn.arrived))
        conn.arrived = bytearray()
        conn.sock.setblocking(True)
        if not whole:
            unreader.deadline = conn.deadline
            super().enqueue_req(conn)
            return
        unreader.deadline = 0.0  # all of it is here: reading more would be waiting
        done: futures.Future[Any] = futures.Future()
        done.set_result(self.handle(conn))  # handle() answers every error itself
        self.finish_request(conn, done)

    def handle_request(self, req: Any, conn: gthread.TConn) -> bool:
        """Serve one request, its answer written under the request timeout: a client that does
        not read it is cut (one log line), and cannot hold the worker."""
        conn.sock.settimeout(self.request_timeout)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.warning("%s did not read its answer in time; closed", conn.client[0])
            return False

    def _keepalive_after(self, conn: gthread.TConn, keepalive: bool) -> bool:
        """Whether to keep the connection; not if its unread body did not arrive in time."""
        try:
            return super()._keepalive_after(conn, keepalive)
        except RequestTimeout:  # the answer is sent already: the connection just closes
            return False

    def murder_pending(self) -> None:
        """Also cut requests that did not arrive in time: 408, then close."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:  # stopping: a connection that has sent nothing is not waited for
            for conn in [conn for conn in self.arriving if not conn.arrived]:
                conn.deadline = now
            self.arriving = deque(sorted(self.arriving, key=lambda conn: conn.deadline))
        while self.arriving and self.arriving[0].deadline <= now:
            conn = self.arriving[0]
            self.stop_waiting(conn)
            self.nr_conns -= 1
            if conn.arrived:  # nothing is answered to a connection that never sent a byte
                message = timeout_message(self.request_timeout)
                response = error_response(408, "REQUEST_TIMEOUT", message)
                send_and_close(conn.sock, response)
            else:
                util.close(conn.sock)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """A request that stopped arriving gets 408; the rest as gunicorn answers them."""
        if isinstance(exc, RequestTimeout):
            self.log.warning("a request from %s did not arrive in time", (addr or ("",))[0])
            with contextlib.suppress(OSError):
                util.write_nonblock(client, error_response(408, "REQUEST_TIMEOUT", exc.description))
            return
        super().handle_error(req, client, addr, exc)


def configure(host: str) -> None:
    """Have the microservice's servers (REST, metrics, gRPC) bind `host` and use BoundedWorker.

    seldon-core 1.17.1 binds 0.0.0.0 and picks gunicorn's sync worker with no option for either;
    both are set where its gunicorn application reads its options.
    """
    from seldon_core import gunicorn_utils, microservice

    load_config = gunicorn_utils.StandaloneApplication.load_config

    def bounded_load_config(application: Any) -> None:
        load_config(application)
        port = application.cfg.bind[0].rsplit(":", 1)[1]
        application.cfg.set("bind", [f"{host}:{port}"])
        if os.environ.get(WORKER_VARIABLE, BOUNDED) == BOUNDED:
            application.cfg.set("worker_class", BoundedWorker)
        # gunicorn's control socket (a file in the user's home, shared by both servers) is not
        # used: the servers are managed by signals.
        application.cfg.set("control_socket_disable", True)

    gunicorn_utils.StandaloneApplication.load_config = bounded_load_config
    run_grpc_server = microservice._run_grpc_server

    def run_grpc_server_on_host(*args: Any) -> None:
        *rest, bind_address = args
        address = f"{host}:{bind_address.rsplit(':', 1)[1]}"
        # Seldon has logged the 0.0.0.0 address it would have used; this is the one bound.
        logger.info("gRPC server binding to %s (SERVE_HOST)", address)
        run_grpc_server(*rest, address)

    microservice._run_grpc_server = run_grpc_server_on_host
