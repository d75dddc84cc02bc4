#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests use into OUT_DIR, from the Go module
# proxy (no release downloads are reachable here), and installs etcd.
#
#   deploy/kube/build.sh OUT_DIR      # the Makefile passes .cache/kube/bin
#
# Idempotent: binaries already at the pinned version are kept, and a warm run
# exits at once. A cold build costs ~27 CPU-minutes and 1.9 GB peak RSS (8 min
# wall on an idle 2-core machine, 45 min measured on a busy one) and fills
# ~1.2 GB of module cache and ~4 GB of build cache.
set -euo pipefail

KUBE_VERSION=v1.34.4    # must match deploy/kube/build/go.mod
CRICTL_VERSION=v1.34.0
# The time the module proxy gives for k8s.io/kubernetes@v1.34.4. A fixed date
# rather than `date` keeps rebuilds byte-identical.
BUILD_DATE=2026-02-10T12:53:36Z
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
wrapper=$(cd "$(dirname "$0")/build" && pwd)

# Two builds into one directory at once would each redo the other's work.
exec 9>"$out/.build.lock"
flock 9

ensure_etcd() {
	if [ -n "${KDROP_ETCD:-}" ] || command -v etcd >/dev/null || [ -x /usr/bin/etcd ]; then
		return
	fi
	echo "installing etcd-server from Debian" >&2
	local sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -q
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q etcd-server
}

# up_to_date NAME: the binary exists and reports the pinned version.
up_to_date() {
	local bin=$out/$1 got want
	[ -x "$bin" ] || return 1
	# Output is captured, not piped to `grep -q`: grep would exit at the
	# first match, kubectl would die of SIGPIPE, and pipefail would fail it.
	case $1 in
	kubectl)
		got=$("$bin" version --client 2>/dev/null)
		got=${got%%$'\n'*} want="Client Version: $KUBE_VERSION"
		;;
	crictl) got=$("$bin" --version 2>/dev/null) want="crictl version $CRICTL_VERSION" ;;
	*) got=$("$bin" --version 2>/dev/null) want="Kubernetes $KUBE_VERSION" ;;
	esac
	[ "$got" = "$want" ]
}

# What the last verified run saw: each binary's size and mtime. When nothing
# changed, the ~0.2-0.6 s that each --version takes (Kubernetes' package
# init) is skipped, so a warm run stays well under a second.
stamp() {
	echo "$KUBE_VERSION $CRICTL_VERSION"
	(cd "$out" && stat -c '%n %s %Y' "${KUBE_CMDS[@]}" crictl 2>&1)
}

ensure_etcd
if [ -f "$out/.stamp" ] && [ "$(stamp)" = "$(cat "$out/.stamp")" ]; then
	exit 0
fi

todo=()
for c in "${KUBE_CMDS[@]}"; do
	up_to_date "$c" || todo+=("$c")
done
need_crictl=0
up_to_date crictl || need_crictl=1
if [ ${#todo[@]} -eq 0 ] && [ $need_crictl -eq 0 ]; then
	stamp >"$out/.stamp"
	exit 0
fi

# Without these -X flags /version reports v0.0.0-master+$Format:%H$.
minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
done

export CGO_ENABLED=0 GOWORK=off
build() { # build CMD...: builds k8s.io/kubernetes/cmd/CMD into $out
	local pkgs=()
	for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	echo "building ${*} $KUBE_VERSION into $out" >&2
	# -mod=readonly: build exactly what go.mod/go.sum pin, never rewrite them.
	(cd "$wrapper" && GOFLAGS="-mod=readonly -buildvcs=false" \
		go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
}

# kube-apiserver first: it is what the tests need, and a build cut short
# still leaves it usable.
rest=()
for c in "${todo[@]}"; do
	if [ "$c" = kube-apiserver ]; then build kube-apiserver; else rest+=("$c"); fi
done
[ ${#rest[@]} -eq 0 ] || build "${rest[@]}"

if [ $need_crictl -eq 1 ]; then
	echo "building crictl $CRICTL_VERSION into $out" >&2
	# A plain `go install pkg@version` works for cri-tools (no replace
	# directives); its own go.sum and the checksum database pin it.
	GOBIN=$out GOFLAGS=-buildvcs=false go install -trimpath \
		-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
		"sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi

for c in "${KUBE_CMDS[@]}" crictl; do
	up_to_date "$c" || { echo "$out/$c does not report the expected version after the build" >&2; exit 1; }
done
stamp >"$out/.stamp"
echo "kubernetes $KUBE_VERSION binaries ready in $out" >&2
