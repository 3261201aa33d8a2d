# The serving image: the package directory written by `dvc repro` (models/serving), run by
# Seldon Core's Python microservice. Build it with `make image`, or `docker build .` after `make run`.
# BASE_IMAGE: any Debian-like image with Python 3.11 and its venv module; the default is the
# official slim image, `make image` builds its own when no registry can be reached.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Recorded as OCI labels so `docker inspect` tells which model and commit an image serves.
ARG MODEL_SHA256=unknown
ARG GIT_COMMIT=unknown
# Only for builds behind a TLS-inspecting proxy: a CA bundle path mounted into the build.
ARG PIP_CERT

LABEL org.opencontainers.image.title="mlops-template model server" \
      org.opencontainers.image.description="Seldon Core v1 microservice for a scikit-learn model" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      mlops-template.model.sha256="${MODEL_SHA256}" \
      mlops-template.git.commit="${GIT_COMMIT}"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    SERVE_HOST=0.0.0.0
# Workers and threads: serve.py's defaults (2 x 1); the SeldonDeployment sets them per pod.

WORKDIR /app

# The pinned, hashed serving requirements first: this layer is reused until the lock changes.
# pip goes once they are in: the version `venv` bundles is not in the lock, so no audit sees it,
# and the server never installs anything. What stays is exactly the lock (docs/security.md).
COPY models/serving/requirements.txt /app/requirements.txt
RUN python3 -m venv /opt/venv \
    && pip install --require-hashes --no-deps -r /app/requirements.txt \
    && pip uninstall --yes --quiet pip

COPY models/serving/ /app/
# The commit the image was built from, in every answer's meta.tags (the package itself holds none,
# so that its bytes do not change from one commit to the next).
ENV GIT_COMMIT=${GIT_COMMIT}
# The package may be written owner-only; the server runs as another user and never writes here.
# Bytecode is compiled now because that user cannot write __pycache__ at start.
RUN chmod -R a+rX /app && python3 -m compileall -q /app

USER 10001:10001
# REST, gRPC, Prometheus metrics (Seldon's defaults; the operator sets them through the environment),
# on every interface of the pod (SERVE_HOST above; `make serve` binds 127.0.0.1).
EXPOSE 9000 5000 6000
# serve.py forwards SIGTERM to every process of the microservice and waits for them.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "/app/serve.py"]
