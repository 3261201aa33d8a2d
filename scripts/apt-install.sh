#!/usr/bin/env bash
# Install Debian packages for the tools the tests and `make` targets run, when a command is
# missing: `scripts/apt-install.sh COMMAND[=PACKAGE] ...` (PACKAGE defaults to COMMAND).
# Debian/Ubuntu, as root or with sudo. Does nothing when every command is already installed.
#
#   scripts/apt-install.sh podman buildah debootstrap     # build and run images without Docker
#   scripts/apt-install.sh prometheus promtool=prometheus # make monitor, the monitoring tests
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND[=PACKAGE] ..." >&2
    exit 2
fi
packages=()
for wanted in "$@"; do
    command=${wanted%%=*}
    package=${wanted#*=}
    if ! command -v "$command" >/dev/null && [[ " ${packages[*]} " != *" $package "* ]]; then
        packages+=("$package")
    fi
done
if [[ ${#packages[@]} -eq 0 ]]; then
    echo "installed already: ${*%%=*}"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: install ${packages[*]} with your package manager (apt-get not found)" >&2
    exit 3
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi
echo "installing ${packages[*]} with apt-get"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
