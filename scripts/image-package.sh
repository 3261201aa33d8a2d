#!/usr/bin/env bash
# Copy the serving package out of a built image (the Dockerfile copies models/serving/ to /app)
# into DIR, without running the image. The deploy workflow renders its annotations (model sha256,
# metrics, test-data hash) and takes its smoke request from this copy, because the image it
# deploys may come from an older commit than the one the workflow runs on.
#
# usage: scripts/image-package.sh IMAGE DIR   (DIR must be new or empty)
# Uses Docker when an engine answers, else podman (make container-tools); CONTAINER_ENGINE=docker
# or podman forces one. An image that is not local is pulled by the engine.
set -euo pipefail

if [[ $# -ne 2 || -z $1 || -z $2 ]]; then
    echo "usage: $0 IMAGE DIR" >&2
    exit 2
fi
image=$1
out=$2
app_dir=/app # the Dockerfile's WORKDIR, where it copies the package

if [[ -e $out && ! -d $out ]]; then
    echo "error: $out exists and is not a directory" >&2
    exit 2
fi
if [[ -d $out && -n $(ls -A "$out") ]]; then
    echo "error: $out is not empty; give a new or empty directory" >&2
    exit 2
fi

# shellcheck source=scripts/container-engine.sh
source "${BASH_SOURCE[0]%/*}/container-engine.sh"
engine=$(container_engine)

mkdir -p "$(dirname "$out")"
staging=$(mktemp -d "$(dirname "$out")/.image-package.XXXXXX")
chmod "$(umask -S)" "$staging" # mktemp's 0700 would stay on DIR
errors=$(mktemp)
container=
cleanup() {
    if [[ -n $container ]]; then
        "$engine" rm "$container" >/dev/null 2>&1 || true
    fi
    rm -rf "$staging" "$errors"
}
trap cleanup EXIT

# The engine's own message, on one line: its last non-empty line says what went wrong.
engine_error() {
    grep -v '^[[:space:]]*$' "$errors" | tail -n 1
}

# `create` only makes the container's file system; nothing in the image runs. The entry point is
# never started: it is given so that an image without one still gets a clear error below.
if ! container=$("$engine" create --entrypoint /bin/true "$image" 2>"$errors"); then
    container=
    echo "error: $engine cannot create a container from $image: $(engine_error)" >&2
    exit 1
fi
if ! "$engine" cp "$container:$app_dir/." "$staging" 2>"$errors"; then
    echo "error: $engine cannot copy $app_dir out of $image: $(engine_error)" >&2
    exit 1
fi
for file in metadata.json model.joblib sample_request.json; do
    if [[ ! -f $staging/$file ]]; then
        echo "error: $image has no serving package in $app_dir ($file is missing)" >&2
        exit 1
    fi
done
# Into place only when complete, so an interrupted copy leaves no half package behind.
if [[ -d $out ]]; then
    rmdir "$out"
fi
mv "$staging" "$out"
echo "copied the serving package of $image ($engine) into $out" >&2
