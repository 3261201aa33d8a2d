# shellcheck shell=bash
# Sourced by the image scripts: `engine=$(container_engine)` prints the engine to use, or says
# why there is none and exits (2: a bad CONTAINER_ENGINE, 3: nothing installed).
# Docker when an engine answers, else podman; CONTAINER_ENGINE=docker|podman forces one.
container_engine() {
    local engine=${CONTAINER_ENGINE:-}
    if [[ -z $engine ]]; then
        if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
            engine=docker
        elif command -v podman >/dev/null; then
            engine=podman
        else
            echo "error: no container engine: need a running Docker engine, or podman" \
                "(make container-tools installs podman, buildah and debootstrap on Debian/Ubuntu)" >&2
            exit 3
        fi
    elif [[ $engine != docker && $engine != podman ]]; then
        echo "error: CONTAINER_ENGINE must be docker or podman, not $engine" >&2
        exit 2
    elif ! command -v "$engine" >/dev/null; then
        echo "error: CONTAINER_ENGINE is $engine, but $engine is not installed" >&2
        exit 3
    fi
    echo "$engine"
}
