#!/usr/bin/env bash
# Flotilla's main job, on a machine with no internet: with the stack up
# (make up), build a busybox image from Debian's busybox-static, import it
# through the gateway, and run a container from it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
STATE=${FLOTILLA_STATE:-/run/flotilla}
ADDR=$STATE/flotilla.sock
REF=flotilla.local/demo/busybox:latest
ctr() { command ctr --address "$ADDR" --namespace demo "$@"; }

echo "==> Flotilla answers containerd's API on $ADDR"
ctr version 2>/dev/null | sed -n '/Server:/,$p'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "==> building $REF from /bin/busybox"
"$BIN/flotilla-testimage" build --kind busybox --ref "$REF" --out "$work/busybox.tar"

echo "==> importing it (content into contentd, layers unpacked by snapshotd)"
ctr images import "$work/busybox.tar"
ctr images ls

echo "==> running a container (taskd, taskd-shim, runc)"
ctr run --rm "$REF" "demo-$$" echo "Hello from a container run by Flotilla"

echo
echo "Flotilla is up. Try:"
printf '  %-76s # %s\n' \
	"ctr --address $ADDR -n demo run --rm -t $REF shell sh" "a shell in a container" \
	"ctr --address $ADDR events" "watch events" \
	"$BIN/flotctl --address $ADDR stack status" "every service and its health" \
	"make down" "stop the stack"
