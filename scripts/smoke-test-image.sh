#!/usr/bin/env bash
# Smoke-test a built serving image: it carries the packaged model's labels, starts, answers the
# package's sample request with one row of class probabilities per row, rejects an empty batch
# with HTTP 400, and exits 0 on SIGTERM. Everything on 127.0.0.1.
#
# usage: scripts/smoke-test-image.sh IMAGE [PACKAGE_DIR]   (default PACKAGE_DIR: models/serving)
# Uses Docker when an engine runs, else buildah (see docs/serving.md).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || -z $1 ]]; then
    echo "usage: $0 IMAGE [PACKAGE_DIR]" >&2
    exit 2
fi
image=$1
package=${2:-models/serving}
python=${PYTHON:-python3}
for file in contract.py sample_request.json; do
    if [[ ! -f $package/$file ]]; then
        echo "error: $package/$file not found; run the pipeline (make run) first" >&2
        exit 2
    fi
done
# The package's own contract reads and validates its metadata.
model_sha256=$("$python" "$package/contract.py" model_sha256)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
log=$(mktemp)

fail() {
    echo "smoke test failed: $*" >&2
    echo "--- container output ---" >&2
    tail -n 40 "$log" >&2
    exit 1
}

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
    label=$(docker image inspect --format '{{index .Config.Labels "mlops-template.model.sha256"}}' "$image")
    name=smoke-$port
    docker run --detach --name "$name" --publish "127.0.0.1:$port:9000" "$image" >/dev/null
    trap 'docker rm --force "$name" >/dev/null 2>&1 || true; rm -f "$log"' EXIT
    stop() {
        docker stop --time 30 "$name" >/dev/null
        exit_code=$(docker inspect --format '{{.State.ExitCode}}' "$name")
    }
    logs() { docker logs "$name" >"$log" 2>&1 || true; }
elif command -v buildah >/dev/null; then
    engine=buildah
    label=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "mlops-template.model.sha256"}}' "$image")
    name=$(buildah from --quiet "$image")
    trap 'buildah rm "$name" >/dev/null 2>&1 || true; rm -f "$log"' EXIT
    # The image's entry point and user, on the host network (no daemon needed).
    buildah run --isolation chroot --network host --user 10001:10001 "$name" -- \
        python3 /app/serve.py --http-port "$port" --grpc-port 0 --metrics-port 0 >"$log" 2>&1 &
    runner=$!
    stop() {
        # `buildah run` would SIGKILL only its child, so signal the entry point itself.
        pkill -TERM -f -- "^[^ ]*python3 /app/serve.py --http-port $port " || true
        exit_code=0
        wait "$runner" || exit_code=$?
    }
    logs() { :; }
else
    echo "error: needs a running Docker engine, or buildah (make container-tools)" >&2
    exit 3
fi

[[ $label == "$model_sha256" ]] ||
    fail "label mlops-template.model.sha256 is '$label', the package's model is $model_sha256 (build with scripts/build-image.sh, or pass --build-arg MODEL_SHA256=...)"

for _ in $(seq 120); do
    curl --silent --fail "$url/health/ping" >/dev/null && break
    sleep 0.5
done
curl --silent --fail "$url/health/ping" >/dev/null || { logs; fail "no answer on /health/ping after 60 s"; }

answer=$(curl --silent --show-error --fail-with-body -H 'Content-Type: application/json' \
    --data @"$package/sample_request.json" "$url/api/v1.0/predictions") || { logs; fail "sample request: $answer"; }
"$python" - "$package" "$answer" <<'PY' || { logs; fail "sample request answered wrongly: $answer"; }
import json, sys
package, answer = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, package)
from contract import SAMPLE_REQUEST_FILE, PackageMetadata
metadata = PackageMetadata.read(package)
rows = json.load(open(f"{package}/{SAMPLE_REQUEST_FILE}"))["data"]["ndarray"]
probabilities = answer["data"]["ndarray"]
assert answer["data"]["names"] == list(metadata.classes)
assert len(probabilities) == len(rows)
assert all(abs(sum(row) - 1) < 1e-6 for row in probabilities)
assert answer["meta"]["tags"]["model_sha256"] == metadata.model_sha256
PY

status=$(curl --silent --output /dev/null --write-out '%{http_code}' -H 'Content-Type: application/json' \
    --data '{"data": {"ndarray": []}}' "$url/api/v1.0/predictions")
[[ $status == 400 ]] || { logs; fail "an empty batch got HTTP $status, not 400"; }

exit_code=
stop
[[ $exit_code == 0 ]] || { logs; fail "the container exited with $exit_code after SIGTERM"; }
echo "smoke test passed: $image ($engine) answers the sample request, rejects an empty batch, stops cleanly"
