# One entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
SERVE_VENV := .venv-serve
BIN := $(VENV)/bin
# dvc.yaml's commands call `mlops`, so the training environment comes first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export UV_PYTHON_DOWNLOADS := never
# Precompiled bytecode: with PYTHONDONTWRITEBYTECODE set (common in CI images) every stage would
# otherwise recompile mlflow and scikit-learn from source on each start, about 10 s.
export UV_COMPILE_BYTECODE := 1

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==0.13.8"

$(VENV)/.synced: requirements/dev.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements/dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

$(SERVE_VENV)/.synced: requirements/serve.lock | $(BIN)/uv
	$(BIN)/uv venv --quiet --allow-existing --python $(PYTHON) $(SERVE_VENV)
	$(BIN)/uv pip sync --quiet --python $(SERVE_VENV)/bin/python requirements/serve.lock
	touch $@

.PHONY: setup
setup: $(VENV)/.synced $(SERVE_VENV)/.synced ## Create .venv (training, tools) and .venv-serve (serving) from the lock files

.PHONY: run
run: setup ## Set up, then run the pipeline (dvc repro) on the data named in params.yaml
	$(BIN)/dvc repro

.PHONY: test
test: setup test-tools ## Set up, then run every test, the slow end-to-end ones included
	env -u MLFLOW_TRACKING_URI $(BIN)/pytest

# The image test needs Docker, or podman + buildah + debootstrap, which this installs with apt-get
# where it can. Where it cannot, the image test says why it skips (and fails under CI=true). The
# monitoring tests need Prometheus and promtool (Debian's prometheus package).
.PHONY: test-tools
test-tools:
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then :; \
	else scripts/apt-install.sh podman buildah debootstrap || echo "warning: no container tools; the image test will skip"; fi
	@scripts/apt-install.sh prometheus promtool=prometheus || echo "warning: no Prometheus; the monitoring tests will fail"

.PHONY: test-fast
test-fast: setup ## Run the tests not marked slow (no real pipeline run, server or image)
	env -u MLFLOW_TRACKING_URI $(BIN)/pytest -m "not slow"

.PHONY: mlflow-ui
mlflow-ui: setup ## Browse the local MLflow store at http://127.0.0.1:5001 (MLFLOW_UI_PORT=...: another port)
	$(BIN)/mlops ui

.PHONY: bench-pipeline
bench-pipeline: setup ## Time dvc repro (bundled data) and each stage on 1M synthetic rows against bare scripts
	$(BIN)/python benchmarks/pipeline.py

.PHONY: bench-remote
bench-remote: setup ## Time the train stage with a tracking server vs the local store, dvc push/pull to S3
	$(BIN)/python benchmarks/remote.py

.PHONY: clean
clean: ## Remove environments, caches and local MLflow runs (keeps data and DVC's cache)
	if [[ -f .stack/state.json && -x $(BIN)/mlops ]]; then $(BIN)/mlops stack down; fi
	rm -rf $(VENV) $(SERVE_VENV) .cache .pytest_cache .ruff_cache .hypothesis mlruns mlflow.db

# What the GitHub workflows run (docs/workflows.md); each works the same on a laptop.
MANIFEST ?= build/seldon-deployment.yaml
BASE ?= main
SCAN ?= build/image-scan.json

.PHONY: lint
lint: $(VENV)/.synced ## Lint: ruff, actionlint with shellcheck, shellcheck scripts/, zizmor, hadolint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/actionlint -shellcheck $(BIN)/shellcheck
	$(BIN)/shellcheck scripts/*.sh
	$(BIN)/zizmor --offline --no-progress .github
	$(BIN)/hadolint Dockerfile

.PHONY: pull
pull: $(VENV)/.synced ## dvc pull from the default DVC remote (says why and skips when there is none)
	$(BIN)/mlops data pull

.PHONY: push-data
push-data: $(VENV)/.synced ## dvc push to the default DVC remote (says why and skips when there is none)
	$(BIN)/mlops data push

.PHONY: register
register: $(VENV)/.synced ## Register the pipeline's model in MLflow's model registry (ALIAS=candidate: set an alias)
	$(BIN)/mlops register $(if $(ALIAS),--alias $(ALIAS)) $(if $(filter true,$(SKIP_WITHOUT_SERVER)),--skip-without-server)

# A local S3 endpoint and MLflow tracking server (docs/remote-stores.md). `make stack-up` writes
# MLFLOW_TRACKING_URI to .stack/env, read here, so `make run` logs to the stack's server.
-include .stack/env

.PHONY: stack-up
stack-up: $(VENV)/.synced ## Start S3 (moto) and an MLflow server on 127.0.0.1; point DVC and MLflow at them
	$(BIN)/mlops stack up

.PHONY: stack-down
stack-down: $(VENV)/.synced ## Stop the local stack (its bucket and runs are forgotten)
	$(BIN)/mlops stack down

.PHONY: stack-status
stack-status: $(VENV)/.synced ## Say what the local stack runs, and where
	$(BIN)/mlops stack status

.PHONY: report
report: $(VENV)/.synced ## Write report.md: params, metrics and plots against BASE (default: main)
	$(BIN)/mlops report --base $(BASE) --out report.md

# The pull-request workflow's artifact for pr-comment.yml: the report, its images and the number
# (PR_NUMBER, from the environment).
.PHONY: report-artifact
report-artifact: ## Gather report.md, its images and PR_NUMBER into build/pr-report
	rm -rf build/pr-report && mkdir -p build/pr-report
	cp report.md build/pr-report/
	if [[ -d report ]]; then cp -r report build/pr-report/; fi
	printf '%s\n' "$${PR_NUMBER:?set PR_NUMBER}" > build/pr-report/pr-number

# Known-vulnerability gates (docs/security.md): a finding at or above high with a fixed release
# fails unless security/ignore.yaml accepts it. LOCKS: the lock files (default: serve and dev);
# SCAN: Grype's JSON report of the image; SUMMARY: a file to append the markdown table to;
# OSV_API: another OSV server (default: api.osv.dev).
.PHONY: audit
audit: $(VENV)/.synced ## Audit the lock files for known vulnerabilities (pip-audit, OSV; needs the network)
	$(BIN)/mlops audit locks $(LOCKS) $(if $(SUMMARY),--summary "$(SUMMARY)") \
		$(if $(OSV_API),--osv-api "$(OSV_API)")

.PHONY: audit-image
audit-image: $(VENV)/.synced ## Judge the image scan's Grype report SCAN against security/ignore.yaml
	$(BIN)/mlops audit image "$(SCAN)" $(if $(SUMMARY),--summary "$(SUMMARY)")

# `make deploy` options, each mapped to `mlops deploy`'s (docs/workflows.md, "Deploy"):
#   DRY_RUN=true --dry-run      LOAD_TEST=true --load-test   FORCE=true --force (past the gate)
#   CANARY=true --canary        PROMETHEUS_URL=URL           ENVIRONMENT=staging|production
#   ROLLBACK_TO=ALIAS|VERSION   REQUEST=FILE                 KUBECONFIG_ENV=VARIABLE
# Values reach the command as shell variables, never as text make or the shell would expand.
.PHONY: deploy
deploy: $(VENV)/.synced ## Gate, kubectl-apply MANIFEST, smoke-test, roll back on failure (DRY_RUN, FORCE, CANARY, ROLLBACK_TO...: see the Makefile)
	$(BIN)/mlops deploy --manifest $(MANIFEST) \
		$(if $(filter true,$(value DRY_RUN)),--dry-run) \
		$(if $(filter true,$(value LOAD_TEST)),--load-test) \
		$(if $(filter true,$(value FORCE)),--force) \
		$(if $(filter true,$(value CANARY)),--canary) \
		$(if $(value PROMETHEUS_URL),--prometheus-url "$$PROMETHEUS_URL") \
		$(if $(value ENVIRONMENT),--environment "$$ENVIRONMENT") \
		$(if $(value ROLLBACK_TO),--rollback-to "$$ROLLBACK_TO") \
		$(if $(value REQUEST),--request "$$REQUEST") \
		$(if $(value KUBECONFIG_ENV),--kubeconfig-env "$$KUBECONFIG_ENV")

# Serving: the package `make run` writes, locally and as an image (docs/serving.md). Its layout
# and metadata belong to its own contract.py; PACKAGE is where dvc.yaml's package stage writes it.
PACKAGE := models/serving
IMAGE ?= localhost/mlops-template-model:latest
HTTP_PORT ?= 9000
GRPC_PORT ?= 5000
METRICS_PORT ?= 6000
# The address `make serve` binds: loopback; SERVE_HOST=0.0.0.0 puts the model on every interface.
export SERVE_HOST ?= 127.0.0.1

.PHONY: serve
serve: $(SERVE_VENV)/.synced ## Serve models/serving like the image does, on 127.0.0.1 (HTTP 9000, gRPC 5000, metrics 6000; SERVE_HOST=0.0.0.0: all interfaces)
	@test -f $(PACKAGE)/serve.py || { echo "error: $(PACKAGE) not found: run 'make run' first" >&2; exit 2; }
	$(SERVE_VENV)/bin/python $(PACKAGE)/serve.py --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

.PHONY: predict
predict: ## Post models/serving/sample_request.json to `make serve` and print the answer
	@curl --silent --show-error --fail-with-body --header 'Content-Type: application/json' \
		--data @$(PACKAGE)/sample_request.json http://127.0.0.1:$(HTTP_PORT)/api/v1.0/predictions && echo

.PHONY: image
image: ## Build the serving image IMAGE from models/serving (Docker, or podman without an engine)
	scripts/build-image.sh $(IMAGE)

.PHONY: image-test
image-test: setup ## Build the image from a fresh package, serve from it, check answers and 400s
	$(BIN)/pytest -m image

.PHONY: container-tools
container-tools: ## Install podman, buildah, debootstrap (apt) to build and run images without Docker
	scripts/apt-install.sh podman buildah debootstrap

.PHONY: monitor
monitor: $(VENV)/.synced ## Run Prometheus on 127.0.0.1:9090 scraping `make serve`, alert rules loaded (apt installs it)
	@scripts/apt-install.sh prometheus promtool=prometheus
	$(BIN)/mlops monitor --metrics-port $(METRICS_PORT)

URL ?= http://127.0.0.1:$(HTTP_PORT)
.PHONY: load-test
load-test: $(VENV)/.synced ## Locust against URL (default: `make serve`), bounded by params.yaml's load_test
	$(BIN)/mlops load-test --url $(URL)

.PHONY: monitoring-files
monitoring-files: $(VENV)/.synced ## Rewrite monitoring/dashboard.json and rules.yml from the code and params.yaml
	$(BIN)/mlops monitoring

.PHONY: manifest
manifest: $(VENV)/.synced ## Render the SeldonDeployment for IMAGE into MANIFEST
	$(BIN)/mlops manifest --image $(IMAGE) --out $(MANIFEST)

.PHONY: bench-serving
bench-serving: setup ## Load-test the ONNX package vs the joblib one, plain gunicorn+Flask, in-process (needs wrk)
	$(BIN)/python benchmarks/serving.py

.PHONY: bench-slow-clients
bench-slow-clients: setup ## The server's worker vs gunicorn's sync worker: throughput, and requests beside idle/slow clients (needs wrk)
	$(BIN)/python benchmarks/slow_clients.py

.PHONY: bench-metrics
bench-metrics: setup ## Server CPU per request with and without the model's own metrics (needs wrk)
	$(BIN)/python benchmarks/metrics_cost.py

.PHONY: model-sha256
model-sha256: ## Print sha256=<sha256 of the packaged model>, for the image's labels
	@sha=$$(python3 $(PACKAGE)/contract.py model_sha256) && echo "sha256=$$sha"
