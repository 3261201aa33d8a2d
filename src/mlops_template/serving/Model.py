"""Seldon Core v1 wrapper for the packaged scikit-learn model: verify, load, predict.

The metadata's `runtime` says what runs the model: `model.onnx` in ONNX Runtime (no unpickling,
no scikit-learn in the image) or `model.joblib` in scikit-learn. Requests are checked and answered
the same way with either.

This file is copied into the package directory next to the model files, `metadata.json`,
`contract.py` (the package's file names and metadata record) and `messages.py` (request parsing),
and is loaded by `seldon-core-microservice Model` (Seldon expects one class per file, named like the
file). It runs in the serving environment (seldon-core 1.17.1, numpy 1, Flask 2), not the training
one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
import messages
import model_metrics
import numpy as np
import seldon_core.wrapper
from contract import MODEL_FILE, ONNX, ONNX_FILE, ContractError, PackageMetadata
from flask import Blueprint, Response, current_app, g, jsonify, request
from google.protobuf import json_format
from messages import BadRequest
from seldon_core.flask_utils import SeldonMicroserviceException
from seldon_core.proto import prediction_pb2
from seldon_core.utils import construct_response, construct_response_json
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# Seldon's view function for /api/v1.0/predictions, /api/v0.1/predictions and /predict.
PREDICT_ENDPOINT = "Predict"
# Seldon's view function for /api/v1.0/feedback: it parses the body into a Feedback message, and
# anything but a JSON object fails inside protobuf with HTTP 500.
FEEDBACK_ENDPOINT = "SendFeedback"
# Seldon serves these on every component; they belong to transformers, routers and combiners, and
# for a model they would only run Seldon's own parsing of the body (HTTP 500 on a malformed one).
OTHER_COMPONENT_ENDPOINTS = frozenset({"TransformInput", "TransformOutput", "Route", "Aggregate"})
# Seldon's app serves files at GET /<path>, so a GET to a POST-only route reaches this one.
STATIC_ENDPOINT = "static"
# Set in the image from the commit it was built from (Dockerfile); absent when serving locally.
GIT_COMMIT_VARIABLE = "GIT_COMMIT"
# Seldon's setting for handing the raw body to the model undecoded; the fast path then steps aside.
PAYLOAD_PASSTHROUGH_VARIABLE = "PAYLOAD_PASSTHROUGH"
# A request body larger than this answers 413: room for the batch limit's rows of long values.
BYTES_PER_VALUE = 256
MIN_BODY_BYTES = 1 << 20


class PackageError(Exception):
    """The package directory is unusable (tampered model, wrong library version, bad metadata)."""


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks so large models need little memory."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, data: bytes | None = None) -> None:
    """PackageError unless the file (or its bytes, already read) has the packaged sha256."""
    if not path.is_file():
        raise PackageError(f"model file {path} does not exist")
    actual = hashlib.sha256(data).hexdigest() if data is not None else sha256_of(path)
    if actual != expected:
        raise PackageError(
            f"sha256 mismatch for {path}: metadata.json expects {expected}, the file has "
            f"{actual}; refusing to load a model file that is not the one that was packaged"
        )


class JoblibModel:
    """`model.joblib` in scikit-learn: the pickled pipeline, unpickled once its hash is checked."""

    def __init__(self, package_dir: Path, metadata: PackageMetadata) -> None:
        """Unpickle the model only if its sha256 and scikit-learn version match the metadata."""
        import joblib
        import sklearn

        model_path = package_dir / MODEL_FILE
        # Unpickling runs code from the file, so the hash is checked before joblib opens it.
        check_sha256(model_path, metadata.model_sha256)
        trained_with = metadata.versions["scikit-learn"]
        if trained_with != sklearn.__version__:
            raise PackageError(
                f"the model was trained with scikit-learn {trained_with} but this environment "
                f"has {sklearn.__version__}; install the serving requirements from the package"
            )
        self.metadata = metadata
        self.pipeline = joblib.load(model_path)
        # Preprocessing and estimator apart, so that the preprocessed values can be checked
        # (messages.check_model_range); together they compute exactly Pipeline.predict_proba.
        steps = getattr(self.pipeline, "steps", None)
        self.preprocess = self.pipeline[:-1] if steps and len(steps) > 1 else None
        self.estimator = self.pipeline[-1] if self.preprocess is not None else self.pipeline
        try:
            names = self.preprocess.get_feature_names_out() if self.preprocess else []
            self.preprocessed_names = [str(name) for name in names]
        except (AttributeError, ValueError, TypeError):
            self.preprocessed_names = []

    def probabilities(self, typed: dict[str, np.ndarray]) -> np.ndarray:
        """`predict_proba` of the pipeline, after checking the preprocessed values."""
        frame = messages.to_frame(typed, self.metadata)
        if self.preprocess is None:
            return self.pipeline.predict_proba(frame)
        transformed = self.preprocess.transform(frame)
        messages.check_model_range(transformed, typed, self.preprocessed_names)
        return self.estimator.predict_proba(transformed)


class OnnxModel:
    """`model.onnx` in ONNX Runtime: the same pipeline as a graph, which cannot run code.

    The graph takes the numeric columns as one float64 matrix (NaN for missing) and the
    categorical ones as one text matrix (missing as the imputer's level), and returns the
    probabilities and the scaled numeric values (checked against float32's range, as for joblib).
    The file is read and its hash checked once; each server process opens its own session on
    the verified bytes, on one thread (the server runs one process per core).
    """

    def __init__(self, package_dir: Path, metadata: PackageMetadata) -> None:
        """Read `model.onnx`, check its sha256 and that onnxruntime accepts it."""
        path = package_dir / ONNX_FILE
        self.bytes = path.read_bytes() if path.is_file() else None
        check_sha256(path, metadata.onnx_sha256 or "", self.bytes)
        self.metadata = metadata
        self.numeric = metadata.numeric_names
        self.categorical = [name for name in metadata.feature_names if name not in self.numeric]
        self._session: Any = None
        self._pid = -1
        self.session()  # a graph onnxruntime refuses stops the server here, not at a request

    def session(self) -> Any:
        """This process's session (a forked worker opens its own)."""
        if self._pid != os.getpid():
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                self._session = onnxruntime.InferenceSession(
                    self.bytes, options, providers=["CPUExecutionProvider"]
                )
            except Exception as error:  # onnxruntime's own exception types
                raise PackageError(f"onnxruntime cannot load {ONNX_FILE}: {error}") from None
            self._pid = os.getpid()
        return self._session

    def probabilities(self, typed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's probabilities for typed columns, after checking the scaled values."""
        rows = len(next(iter(typed.values())))
        feeds = {}
        if self.numeric:
            numeric = np.empty((rows, len(self.numeric)), dtype=np.float64)
            for index, name in enumerate(self.numeric):
                numeric[:, index] = typed[name]
            feeds["numeric"] = numeric
        if self.categorical:
            missing = self.metadata.missing_level
            feeds["categorical"] = messages.text_matrix(typed, self.categorical, missing)
        if not self.numeric:
            return self.session().run(["probabilities"], feeds)[0]
        probabilities, scaled = self.session().run(["probabilities", "scaled"], feeds)
        messages.check_model_range(scaled, typed, self.numeric)
        return probabilities


class FastPredictions:
    """WSGI middleware: a JSON prediction request answered without Flask's request machinery.

    For the common request (POST of a JSON body to a predictions route, no query string, a
    Content-Length within the limit) it does what Seldon's Flask app would do, in one call: decode
    the body strictly, `Model.predict_raw`, record the request's metrics, and answer with the same
    status, headers (CORS's `Access-Control-Allow-Origin: *` included) and JSON. Seldon's app
    spends more per request on its own dispatch, context proxies and CORS handling than the model
    does (docs/benchmarks.md, "Serving"). Every other request, and any request whose handling
    raises something else than a client error, goes to Seldon's app as before, with its body.
    """

    PATHS = frozenset({"/api/v1.0/predictions", "/api/v0.1/predictions", "/predict"})

    def __init__(self, app: Any, model: Model, body_limit: int) -> None:
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.model = model
        self.body_limit = body_limit

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Answer a plain JSON prediction request here; pass anything else on."""
        length = environ.get("CONTENT_LENGTH") or ""
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or environ.get("PATH_INFO") not in self.PATHS
            or environ.get("QUERY_STRING")
            or not environ.get("CONTENT_TYPE", "").startswith("application/json")
            or not length.isdigit()
            or not 0 < int(length) <= self.body_limit
        ):
            return self.wsgi_app(environ, start_response)
        arrived = time.perf_counter()
        size = int(length)
        body = environ["wsgi.input"].read(size)
        try:
            message = messages.check_not_null(messages.loads(messages.check_complete(body, size)))
            status, answer = 200, self.model.predict_raw(message)
        except SeldonMicroserviceException as error:
            status, answer = error.status_code, error.to_dict()
            logger.error("%s", answer)  # as Seldon's error handler logs it
        except Exception:  # not the client's fault: Seldon's app answers it, as it always did
            environ["wsgi.input"] = io.BytesIO(body)
            return self.wsgi_app(environ, start_response)
        data = f"{self.app.json.dumps(answer, separators=(',', ':'))}\n".encode()
        self.model.recorder.request(status, time.perf_counter() - arrived)
        start_response(
            f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("Access-Control-Allow-Origin", "*"),
            ],
        )
        return [data]


class GrpcPredictions(seldon_core.wrapper.SeldonModelGRPC):
    """Seldon's gRPC servicer, answering a client's error with `INVALID_ARGUMENT` and its message.

    Seldon's own lets every exception through to grpc, which logs a traceback and answers
    `UNKNOWN` ("Exception calling application: ..."). A 4xx `SeldonMicroserviceException` (a
    `BadRequest`) is the client's to fix: it is logged on one line, as the REST route logs it, and
    its message is the call's details. Anything else is still the server's error.
    """

    def Predict(self, request: prediction_pb2.SeldonMessage, context: grpc.ServicerContext) -> Any:
        """Seldon's `Predict`, a client error aborting the call instead of failing it."""
        try:
            return super().Predict(request, context)
        except SeldonMicroserviceException as error:
            if error.status_code >= 500:
                raise
            logger.error("%s", error.to_dict())
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)


class Model:
    """Serves `predict_proba` of the packaged pipeline, each request checked against its schema."""

    def __init__(self) -> None:
        """Verify and load the model once, before Seldon forks its workers; exit if unusable."""
        try:
            self.metadata = PackageMetadata.read(PACKAGE_DIR)
            runtime = OnnxModel if self.metadata.runtime == ONNX else JoblibModel
            self.model = runtime(PACKAGE_DIR, self.metadata)
        except (OSError, ValueError, ContractError, PackageError) as error:
            # Raised before any server process starts, so the microservice exits instead of
            # serving without a model; SystemExit keeps the log to one line, not a traceback.
            logger.critical("cannot start: %s", error)
            raise SystemExit(f"cannot start: {error}") from None
        self.classes = list(self.metadata.classes)
        commit = os.environ.get(GIT_COMMIT_VARIABLE, "")
        self.git_commit = "" if commit == "unknown" else commit
        self.recorder = model_metrics.Recorder(self.metadata)
        self.model_error_handler = self._http_checks()
        # Seldon takes a hook for its REST app's errors (above) and none for gRPC's: its
        # get_grpc_server builds the servicer from this name, after this constructor runs and
        # before the gRPC processes fork (with serve.py or seldon-core-microservice alike).
        seldon_core.wrapper.SeldonModelGRPC = GrpcPredictions
        logger.info(
            "loaded %s (sha256 %s), %d features, classes %s, at most %d rows per request",
            self.metadata.estimator,
            self.metadata.model_sha256,
            len(self.metadata.features),
            self.classes,
            self.metadata.max_batch_rows,
        )

    # --- HTTP: what happens before Seldon sees a request -----------------------------------------

    def _http_checks(self) -> Blueprint:
        """Decode bodies strictly and answer HTTP errors with their own code, never 500.

        Seldon registers this blueprint on its Flask app (`model_error_handler`).
        """
        checks = Blueprint("http_checks", __name__)
        body_limit = max(
            MIN_BODY_BYTES,
            self.metadata.max_batch_rows * len(self.metadata.features) * BYTES_PER_VALUE,
        )

        @checks.record_once
        def configure(state: Any) -> None:
            state.app.json = messages.StrictJSONProvider(state.app)
            if os.environ.get(PAYLOAD_PASSTHROUGH_VARIABLE, "").lower() != "true":
                state.app.wsgi_app = FastPredictions(state.app, self, body_limit)

        @checks.before_app_request
        def start_clock() -> None:
            if request.endpoint == PREDICT_ENDPOINT and request.method != "OPTIONS":
                g.arrived = time.perf_counter()

        @checks.after_app_request
        def count_request(response: Response) -> Response:
            # Every answer to a prediction request, errors included (they pass through here too).
            arrived = g.pop("arrived", None)
            if arrived is not None:
                self.recorder.request(response.status_code, time.perf_counter() - arrived)
            return response

        @checks.before_app_request
        def check_method() -> None:
            # Routing answers 405 itself, except for GET and HEAD, which the static route takes.
            if request.endpoint != STATIC_ENDPOINT:
                return
            routes = [
                rule
                for rule in current_app.url_map.iter_rules()
                if rule.rule == request.path and rule.endpoint != STATIC_ENDPOINT
            ]
            methods = sorted({method for rule in routes for method in rule.methods or ()})
            if methods:
                sent = " or ".join(method for method in methods if method != "OPTIONS")
                raise MethodNotAllowed(
                    methods, f"{request.method} is not allowed on {request.path}; send {sent}"
                )

        @checks.before_app_request
        def check_body() -> None:
            if request.endpoint in OTHER_COMPONENT_ENDPOINTS:
                raise NotFound(
                    f"{request.path} is for other kinds of Seldon component; this server is a "
                    "model: POST /api/v1.0/predictions"
                )
            if request.endpoint not in (PREDICT_ENDPOINT, FEEDBACK_ENDPOINT):
                return  # not a prediction or feedback (or a 404/405 about to be answered)
            if request.method == "OPTIONS":
                return  # a CORS preflight, which has no body: Flask and flask-cors answer it
            # Checked before anything reads the body (Flask's own limit would read it all first).
            if (request.content_length or 0) > body_limit:
                raise RequestEntityTooLarge(
                    f"the request body has {request.content_length} bytes; at most {body_limit} "
                    "are accepted (max_batch_rows rows): split the batch"
                )
            if request.content_length is not None:  # the forms below are parsed from this copy
                body = request.get_data(cache=True, parse_form_data=False)
                messages.check_complete(body, request.content_length)
            content_type = request.content_type or ""
            # Seldon also reads a multipart form (each field JSON but strData) and a `json` form
            # or query field with its own json.loads, which answers 500 on bad JSON: decode them
            # here first.
            if content_type.startswith("multipart/form-data"):
                for key, value in request.form.items():
                    if key != "strData":
                        messages.loads(value)
                return
            field = request.form.get("json") or request.args.get("json")
            if field:
                check_feedback(messages.loads(field))
                return
            if not request.is_json:
                raise BadRequest(
                    f"Content-Type must be application/json, got {content_type or 'none'!r}"
                )
            check_feedback(messages.check_not_null(request.get_json()))

        def check_feedback(body: Any) -> None:
            if request.endpoint == FEEDBACK_ENDPOINT and not isinstance(body, dict):
                raise BadRequest(
                    f'feedback must be a JSON object like {{"reward": 1}}, got '
                    f"{messages.type_name(body)}"
                )

        @checks.app_errorhandler(HTTPException)
        def http_error(error: HTTPException) -> Response:
            # Seldon's catch-all would answer every one of these (404, 405, 413...) with 500.
            reason = (error.name or "HTTP error").upper().replace(" ", "_")
            answer = SeldonMicroserviceException(
                f"{error.name}: {error.description}", status_code=error.code, reason=reason
            )
            response = jsonify(answer.to_dict())
            response.status_code = error.code or 500
            # The error's own headers but its HTML Content-Type (a 405's Allow, for one).
            response.headers.extend(
                (name, value) for name, value in error.get_headers() if name != "Content-Type"
            )
            return response

        return checks

    # --- the Seldon component API -----------------------------------------------------------

    def predict_raw(self, message: Any) -> Any:
        """Answer a message from its raw form, so Seldon's own parsing never sees it.

        A REST message is its decoded JSON; a gRPC one (a `SeldonMessage`) is read as its JSON
        form, so both are checked by the same code and a bad one gets the same message. The
        answer is built by Seldon's `construct_response_json` or `construct_response`, as Seldon
        builds it for a model's `predict()`: the same format, class names and tags. The metrics
        (per class, per feature) are recorded by `answer`, in this process's prometheus_client
        files, rather than returned as Seldon runtime metrics, which cost round trips to Seldon's
        metrics process.
        """
        if isinstance(message, prediction_pb2.SeldonMessage):
            columns = messages.parse_message(json_format.MessageToDict(message), self.metadata)
            return construct_response(self, False, message, self.answer(columns), columns.echo)
        columns = messages.parse_message(message, self.metadata)
        probabilities = self.answer(columns)
        shape = {"tensor": {}} if columns.kind == "tensor" else {}
        return construct_response_json(
            self,
            False,
            {"data": shape, "meta": columns.echo},
            probabilities,
            {"tags": columns.echo.get("tags", {})},
        )

    def answer(self, columns: messages.Columns) -> np.ndarray:
        """The probabilities for a request's checked columns, its rows and inputs recorded."""
        typed = messages.typed_columns(columns, self.metadata)
        probabilities = self.model.probabilities(typed)
        self.recorder.predicted(typed, probabilities)
        return probabilities

    def send_feedback_raw(self, feedback: Any) -> prediction_pb2.SeldonMessage:
        """Acknowledge feedback without reading it: this model does not learn from it.

        Seldon has already counted the reward (`seldon_api_model_feedback_reward`); its own
        parsing of the feedback's request would answer a malformed one with HTTP 500.
        """
        return prediction_pb2.SeldonMessage()

    def class_names(self) -> list[str]:
        """The training labels, in the order of the probability columns."""
        return self.classes

    def tags(self) -> dict[str, str]:
        """Added to every response's meta.tags, so each answer names the model that gave it."""
        tags = {"model_sha256": self.metadata.model_sha256, "runtime": self.metadata.runtime}
        if self.git_commit:
            tags["git_commit"] = self.git_commit
        return tags

    def health_status(self) -> dict[str, Any]:
        """Predict one all-missing row, so a broken model or library fails the readiness probe."""
        probe = messages.Columns({name: [None] for name in self.metadata.feature_names}, 1)
        probabilities = self.model.probabilities(messages.typed_columns(probe, self.metadata))
        return {
            "status": "ok",
            "model_sha256": self.metadata.model_sha256,
            "classes": self.classes,
            "probe_sum": round(float(probabilities.sum()), 6),
        }

    def init_metadata(self) -> dict[str, Any]:
        """What `/metadata` answers: the inputs by name and kind, the outputs by class."""
        metadata = self.metadata
        properties = {
            feature.name: (
                {"type": ["number", "null"]}
                if feature.kind == "numeric"
                else {"type": ["string", "null"], "examples": list(feature.categories)}
            )
            for feature in metadata.features
        }
        custom = {
            "estimator": metadata.estimator,
            "target": metadata.target,
            "model_sha256": metadata.model_sha256,
            "max_batch_rows": str(metadata.max_batch_rows),
            "runtime": metadata.runtime,
            "scikit_learn": metadata.versions["scikit-learn"],
        }
        if self.git_commit:
            custom["git_commit"] = self.git_commit
        return {
            "name": metadata.target,
            "versions": [metadata.model_sha256[:12]],
            "platform": "seldon",
            "inputs": [
                {
                    "messagetype": "ndarray",
                    "schema": {
                        "names": metadata.feature_names,
                        "shape": [len(metadata.features)],
                    },
                },
                {
                    "messagetype": "jsonData",
                    "schema": {
                        "type": "array",
                        "maxItems": metadata.max_batch_rows,
                        "items": {
                            "type": "object",
                            "properties": properties,
                            "required": metadata.feature_names,
                        },
                    },
                },
            ],
            "outputs": [
                {
                    "messagetype": "ndarray",
                    "schema": {"names": self.classes, "shape": [len(self.classes)]},
                }
            ],
            "custom": custom,
        }
