#!/usr/bin/env bash
# Installs the Debian packages Flotilla runs and is tested with, if any is
# missing. Idempotent: a machine that has them all is left untouched.
set -euo pipefail

# runc runs containers; redis-server carries events between eventds;
# docker-registry serves test images; busybox-static is what the test and
# demo images are built from; containerd brings ctr, the client we prove
# compatibility with, and containerd-shim-runc-v2; docker-compose validates
# compose.yaml; protobuf-compiler is protoc for `make proto` and
# libprotobuf-dev its well-known types (google/protobuf/*.proto); iproute2 and
# tmux serve network and terminal tests; docker.io is Docker Engine, the
# client that runs dockerd on Flotilla's socket; skopeo inspects what
# Flotilla pushes to a registry.
packages=(
	ca-certificates git make gcc libc6-dev
	runc redis-server docker-registry busybox-static containerd
	docker-compose protobuf-compiler libprotobuf-dev iproute2 tmux procps
	docker.io skopeo
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing Debian packages: ${missing[*]}; run as root (sudo) to install them" >&2
		exit 1
	fi
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Debian starts packaged daemons where it can; Flotilla and its tests start
	# their own on temporary sockets and ports.
	for svc in containerd redis-server docker-registry docker; do
		service "$svc" stop >/dev/null 2>&1 || true
	done
fi

if ! command -v go >/dev/null; then
	echo "Go 1.26 is required (https://go.dev/dl); /usr/local/go/bin must be on PATH" >&2
	exit 1
fi

# containerd 2.4.2 (ctr, the daemon and its runc shim), built from the module
# proxy: the 2.x client Flotilla must serve, and the strongest containerd that
# make bench compares against. Tests find it under $CONTAINERD2_BIN.
CONTAINERD2_VERSION=v2.4.2
CONTAINERD2_BIN=${CONTAINERD2_BIN:-/opt/containerd-2.4.2/bin}
if ! [ -x "$CONTAINERD2_BIN/ctr" ] || ! [ -x "$CONTAINERD2_BIN/containerd" ] || ! [ -x "$CONTAINERD2_BIN/containerd-shim-runc-v2" ]; then
	echo "building containerd $CONTAINERD2_VERSION into $CONTAINERD2_BIN"
	mkdir -p "$CONTAINERD2_BIN"
	(cd / && GOBIN="$CONTAINERD2_BIN" GOFLAGS=-mod=mod go install -tags no_btrfs \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD2_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD2_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD2_VERSION")
fi

# h2spec, the HTTP/2 conformance suite the gateway's relay is tested with
# (gateway/relay TestH2spec). Its module has no go.mod, hence +incompatible.
H2SPEC_VERSION=v2.2.1+incompatible
if ! command -v h2spec >/dev/null; then
	echo "installing h2spec $H2SPEC_VERSION into /usr/local/bin"
	(cd / && GOBIN=/usr/local/bin GOFLAGS=-mod=mod go install "github.com/summerwind/h2spec/cmd/h2spec@$H2SPEC_VERSION")
fi
