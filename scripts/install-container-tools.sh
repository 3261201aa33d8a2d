#!/usr/bin/env bash
# Install what the image build and image test use when no Docker engine runs: podman (build),
# buildah (run the image without a daemon), debootstrap (a base image without a registry).
# Debian/Ubuntu, as root. Does nothing when all three are already installed.
set -euo pipefail

missing=()
for tool in podman buildah debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "podman, buildah and debootstrap are installed"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: install ${missing[*]} with your package manager (apt-get not found)" >&2
    exit 3
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi
echo "installing ${missing[*]} with apt-get"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    podman buildah debootstrap >/dev/null
