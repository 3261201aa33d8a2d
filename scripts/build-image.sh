#!/usr/bin/env bash
# Build the serving image from the package directory CONTEXT/models/serving (default context: .).
#
# usage: scripts/build-image.sh IMAGE [CONTEXT]
#
# With a running Docker engine this is `docker build`. Without one (no engine, or no registry to
# pull python:3.11-slim from) it builds with podman on a Debian base made by debootstrap, cached
# in .cache/base-image/ so later builds skip that minute. Environment:
#   CONTAINER_ENGINE=docker|podman  force an engine
#   BASE_IMAGE=...                  base image to build on (default: python:3.11-slim with Docker,
#                                   the local debootstrap base with podman)
#   DEBIAN_MIRROR=...               mirror for debootstrap (default: http://deb.debian.org/debian)
#   GIT_COMMIT=...                  the commit recorded in the image's labels and answers
#                                   (default: CONTEXT's HEAD, with -dirty if it has changes)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || -z $1 ]]; then
    echo "usage: $0 IMAGE [CONTEXT]" >&2
    exit 2
fi
image=$1
context=${2:-.}
repo=$(cd "$(dirname "$0")/.." && pwd)
package=$context/models/serving
base_name=localhost/mlops-template-base:bookworm
base_tarball=$repo/.cache/base-image/debian-bookworm-python3.tar
# A TLS-inspecting proxy's CA is in the host's bundle, not in the base image's.
host_ca_bundle=/etc/ssl/certs/ca-certificates.crt

if [[ ! -f $package/contract.py ]]; then
    echo "error: $package not found: run the pipeline first (make run)" >&2
    exit 2
fi
# The package's own contract reads and validates its metadata.
model_sha256=$(python3 "$package/contract.py" model_sha256)
commit_of() {
    local commit
    commit=$(git -C "$1" rev-parse --verify --quiet HEAD 2>/dev/null) || { echo unknown; return; }
    if [[ -n $(git -C "$1" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        commit+=-dirty
    fi
    echo "$commit"
}
git_commit=${GIT_COMMIT:-$(commit_of "$context")}

# shellcheck source=scripts/container-engine.sh
source "${BASH_SOURCE[0]%/*}/container-engine.sh"
engine=$(container_engine)

# Print the name of a local Debian 12 base with python3 and venv, building it on first use.
local_base() {
    if podman image exists "$base_name"; then
        echo "$base_name"
        return
    fi
    if [[ ! -f $base_tarball ]]; then
        if ! command -v debootstrap >/dev/null; then
            echo "error: debootstrap is needed to build the base image (make container-tools)" >&2
            exit 3
        fi
        echo "building the base image with debootstrap (about a minute, cached in $base_tarball)" >&2
        local rootfs
        rootfs=$(mktemp -d)
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
        mkdir -p "$(dirname "$base_tarball")"
        tar -C "$rootfs" -c . >"$base_tarball.tmp"
        mv "$base_tarball.tmp" "$base_tarball"
        rm -rf "$rootfs"
    fi
    podman import --quiet "$base_tarball" "$base_name" >/dev/null
    echo "$base_name"
}

build_args=(--build-arg "MODEL_SHA256=$model_sha256" --build-arg "GIT_COMMIT=$git_commit")
case $engine in
    docker)
        if [[ -n ${BASE_IMAGE:-} ]]; then
            build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
        fi
        docker build "${build_args[@]}" --tag "$image" "$context"
        ;;
    podman)
        base=${BASE_IMAGE:-}
        if [[ -z $base ]]; then
            base=$(local_base)
        fi
        build_args+=(--build-arg "BASE_IMAGE=$base")
        mounts=(--volume /etc/hosts:/etc/hosts:ro)
        if [[ -f $host_ca_bundle ]]; then
            mounts+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
            build_args+=(--build-arg "PIP_CERT=$host_ca_bundle")
        fi
        # chroot isolation and the host network: what works without a daemon or nested cgroups.
        podman build --isolation chroot --network host "${mounts[@]}" "${build_args[@]}" \
            --tag "$image" "$context"
        ;;
    *)
        echo "error: CONTAINER_ENGINE must be docker or podman, not $engine" >&2
        exit 2
        ;;
esac
echo "built $image (model sha256 ${model_sha256:0:12}, commit $git_commit) with $engine" >&2
