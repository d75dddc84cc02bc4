#!/usr/bin/env bash
# Builds the Helm 3 CLI into CACHE_DIR (the tests use .cache/bin) from the Go
# module proxy, if it is not there already at the pinned version. Release
# tarballs are not reachable from this project's machines, so Helm is built
# from source: helm.sh/helm/v3 has no replace directives, so a plain
# `go install ...@version` works.
#
#   deploy/helm/install-helm.sh CACHE_DIR     # -> CACHE_DIR/helm
#
# Idempotent: a warm run only runs `helm version` (well under a second). A cold
# build costs a few CPU-minutes on 2 cores (see deploy/README.md for measured
# times) and ~0.5 GB of module and build cache.
set -euo pipefail

HELM_VERSION=v3.22.0

[ $# -eq 1 ] || { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)

# Two tests or two make targets building at once would race on the binary.
exec 9>"$out/.helm.lock"
flock 9

if [ -x "$out/helm" ]; then
	got=$("$out/helm" version --template '{{.Version}}' 2>/dev/null || true)
	if [ "$got" = "$HELM_VERSION" ]; then
		exit 0
	fi
	echo "helm in $out is ${got:-unusable}, want $HELM_VERSION: rebuilding" >&2
fi

echo "building helm $HELM_VERSION into $out (go install from the module proxy)" >&2
# Outside any module, so the main module's go.mod plays no part; the
# version is stamped the way Helm's own Makefile does it, and -trimpath keeps
# the binary independent of this machine's paths.
cd /
GOBIN=$out GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
	go install -trimpath \
	-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
	"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"

got=$("$out/helm" version --template '{{.Version}}')
if [ "$got" != "$HELM_VERSION" ]; then
	echo "built helm reports $got, want $HELM_VERSION" >&2
	exit 1
fi
