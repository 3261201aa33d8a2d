#!/usr/bin/env bash
# Before anything is deployed: resolve a pulled image to its digest and verify that this
# repository's build-and-push workflow signed it (cosign, keyless, GitHub's OIDC identity) and
# attested its build provenance (GitHub artifact attestations). Prints `ref=NAME@sha256:...` for
# $GITHUB_OUTPUT: the deploy then uses the digest, never the tag, which could be moved.
#
# usage: scripts/verify-image.sh IMAGE REPOSITORY   (IMAGE as pulled, e.g. ghcr.io/o/r:SHA;
#        REPOSITORY owner/name). Needs docker, cosign and gh (GH_TOKEN) on PATH.
set -euo pipefail

fail() {
    echo "error: image verification failed: $*" >&2
    exit 1
}
if [[ $# -ne 2 || -z $1 || -z $2 ]]; then
    echo "usage: $0 IMAGE REPOSITORY" >&2
    exit 2
fi
image=$1
repository=$2
workflow_path=".github/workflows/build-push.yml"
identity="https://github.com/$repository/$workflow_path"

pulled=$(docker inspect --format '{{index .RepoDigests 0}}' "$image" 2>/dev/null) ||
    fail "cannot read the digest of $image (pull it first)"
digest=${pulled##*@}
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || fail "$image has no registry digest ($pulled)"
ref="${image%:*}@$digest"

cosign verify --certificate-identity-regexp "^${identity}@" \
    --certificate-oidc-issuer https://token.actions.githubusercontent.com "$ref" >/dev/null 2>&1 ||
    fail "$ref is not signed by $identity"
gh attestation verify "oci://$ref" --repo "$repository" \
    --signer-workflow "$repository/$workflow_path" >/dev/null 2>&1 ||
    fail "$ref has no build provenance attested by $identity"
echo "ref=$ref"
