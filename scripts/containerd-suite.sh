#!/usr/bin/env bash
# Runs containerd's own client integration suite (integration/client of
# github.com/containerd/containerd/v2, from the Go module proxy) against a
# fresh Flotilla stack and, as the reference, against containerd built from
# the same source, then prints pass/fail/skip per test for both.
#
#   scripts/containerd-suite.sh [-run REGEXP] [flotilla|containerd ...]
#
# Needs root, runc, docker-registry, busybox-static and Go. Not part of make
# test: it takes minutes and compares, it does not gate. Everything it starts
# lives under one temporary directory and is stopped on exit.
# Environment: FLOTILLA_BIN (default ./bin, built if missing), CONTAINERD2_BIN
# (default /opt/containerd-2.4.2/bin), CONTAINERD_VERSION (default v2.4.2),
# SUITE_OUT (where results and logs are kept; default a new directory in /tmp),
# SUITE_TEST_TIMEOUT (seconds one test may take, default 600, go test's own).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

run_re=.
if [ "${1:-}" = -run ]; then run_re=$2; shift 2; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(flotilla containerd)

BIN=${FLOTILLA_BIN:-$repo/bin}
CONTAINERD2_BIN=${CONTAINERD2_BIN:-/opt/containerd-2.4.2/bin}
VERSION=${CONTAINERD_VERSION:-v2.4.2}
test_timeout=${SUITE_TEST_TIMEOUT:-600}
OUT=${SUITE_OUT:-$(mktemp -d /tmp/containerd-suite.XXXXXX)}
mkdir -p "$OUT"
# Short paths: unix sockets must stay under 108 bytes.
work=$(mktemp -d /tmp/cs.XXXXXX)

pids=()
cleanup() {
	set +e
	[ -n "${flotilla_layout:-}" ] && FLOTILLA_ROOT=$work/fl/root FLOTILLA_STATE=$work/fl/state \
		"$BIN/flotctl" stack down --bin "$BIN" >/dev/null 2>&1
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	# Shims and containers left by failed tests: whatever still runs from our
	# directories.
	for d in /proc/[0-9]*; do
		if { tr '\0' '\n' <"$d/environ" | grep -q "=$work/"; } 2>/dev/null ||
			readlink "$d/cwd" 2>/dev/null | grep -q "^$work/"; then
			kill -9 "${d#/proc/}" 2>/dev/null
		fi
	done
	grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$work"
}
trap cleanup EXIT

[ -x "$BIN/gateway" ] || make build >/dev/null

# The suite's source, straight from the module proxy.
src=$(cd / && GOWORK=off GOFLAGS=-mod=mod go mod download -json "github.com/containerd/containerd/v2@$VERSION" |
	sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$src/integration/client" ] || { echo "no integration/client in $src" >&2; exit 1; }
echo "==> building containerd $VERSION's integration/client tests from $src"
# The suite takes its image names when its package variables are set, before
# flags are parsed, so -image-list cannot change them. In a copy of the
# source (go refuses overlays of the module cache), its image list file
# reads the list from $CONTAINERD_TEST_IMAGE_LIST.
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
sed -i 's/initImages(\*imageListFile)/initImages(imageListFromEnv())/' "$work/src/integration/images/image_list.go"
cat >>"$work/src/integration/images/image_list.go" <<'GO'

func imageListFromEnv() string {
	if *imageListFile != "" {
		return *imageListFile
	}
	return os.Getenv("CONTAINERD_TEST_IMAGE_LIST")
}
GO
(cd "$work/src" && GOWORK=off GOFLAGS=-mod=readonly go test -c -o "$work/client.test" ./integration/client)

# The suite pulls busybox and a multi-layer image from the internet; serve
# the test-image kit's instead from a local registry (plain HTTP on
# 127.0.0.1, which containerd's resolver reaches without TLS).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: $reg
EOF
/usr/bin/docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://$reg/v2/" >/dev/null && break; sleep 0.1; done
busybox=$("$BIN/flotilla-testimage" push --registry "$reg" --kind busybox --ref containerd/busybox:1.36 | awk '{print $2}')
"$BIN/flotilla-testimage" push --registry "$reg" --kind layers --ref containerd/volume-copy-up:2.2 >/dev/null
# The pause image stands for a multi-platform index (TestImageUsage and
# the fetch tests pull one platform of it).
"$BIN/flotilla-testimage" push --registry "$reg" --kind multiarch --ref containerd/pause:3.10 >/dev/null
cat >"$work/images.toml" <<EOF
BusyBox = "$reg/containerd/busybox:1.36"
BusyBoxByDigest = "$reg/containerd/busybox@$busybox"
VolumeCopyUp = "$reg/containerd/volume-copy-up:2.2"
Alpine = "$reg/containerd/busybox:1.36"
Pause = "$reg/containerd/pause:3.10"
EOF

# run_suite NAME ADDRESS: the suite against the daemon at ADDRESS, in its
# default namespace "testing", each test in a process of its own (so a test
# that hangs or crashes the binary costs only itself: it is killed after
# $SUITE_TEST_TIMEOUT and counted as failed); results into
# $OUT/NAME.{log,results}, each test's output in $OUT/NAME/TEST.log.
run_suite() {
	local name=$1 addr=$2 t result
	echo "==> integration/client against $name ($addr), one process per test"
	mkdir -p "$OUT/$name"
	: >"$OUT/$name.log"
	: >"$OUT/$name.results"
	# -test.short makes TestMain skip its set-up (daemon, seed pull) for the listing.
	for t in $("$work/client.test" -test.short -test.list "$run_re" | grep '^Test'); do
		(cd "$work" && PATH=$CONTAINERD2_BIN:$PATH CONTAINERD_TEST_IMAGE_LIST=$work/images.toml \
			timeout --kill-after=10s "$((test_timeout + 30))" \
			"$work/client.test" -test.v -test.root -test.timeout "${test_timeout}s" \
			-test.run "^$t\$" -no-daemon -address "$addr" -no-criu \
			>"$OUT/$name/$t.log" 2>&1) || true
		result=$(sed -n "s/^--- \(PASS\|FAIL\|SKIP\): $t .*/\1/p" "$OUT/$name/$t.log" | head -1)
		if [ -z "$result" ]; then
			# No verdict: it timed out, or the binary died (TestMain's set-up included).
			result=FAIL
			echo "--- FAIL: $t (no verdict: timed out or crashed; see $OUT/$name/$t.log)" >>"$OUT/$name/$t.log"
		fi
		cat "$OUT/$name/$t.log" >>"$OUT/$name.log"
		echo "$t $result" >>"$OUT/$name.results"
		echo "    $t $result"
	done
	# Subtests too, from the logs, for the table.
	sed -n 's/^ *--- \(PASS\|FAIL\|SKIP\): \([^ ]*\/[^ ]*\) .*/\2 \1/p' "$OUT/$name.log" >>"$OUT/$name.results"
	sort -o "$OUT/$name.results" "$OUT/$name.results"
	echo "    $name: $(grep -v / "$OUT/$name.results" | grep -c ' PASS$') pass, $(grep -v / "$OUT/$name.results" | grep -c ' FAIL$') fail, $(grep -v / "$OUT/$name.results" | grep -c ' SKIP$') skip (top-level tests)"
}

for target in "${targets[@]}"; do
	case $target in
	flotilla)
		flotilla_layout=1
		mkdir -p "$work/fl"
		FLOTILLA_ROOT=$work/fl/root FLOTILLA_STATE=$work/fl/state FLOTILLA_METRICS_PORT=$((port + 1)) \
			"$BIN/flotctl" stack up --bin "$BIN" --timeout 60s >/dev/null
		sock=$work/fl/state/flotilla.sock
		run_suite flotilla "$sock"
		cp "$work"/fl/state/*.log "$OUT/" 2>/dev/null || true
		FLOTILLA_ROOT=$work/fl/root FLOTILLA_STATE=$work/fl/state "$BIN/flotctl" stack down --bin "$BIN" >/dev/null || true
		flotilla_layout=
		;;
	containerd)
		mkdir -p "$work/cd"
		cat >"$work/cd/config.toml" <<EOF
version = 3
root = "$work/cd/root"
state = "$work/cd/state"
[grpc]
  address = "$work/cd/c.sock"
[ttrpc]
  address = "$work/cd/c.sock.ttrpc"
[debug]
  address = "$work/cd/debug.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
EOF
		PATH=$CONTAINERD2_BIN:$PATH "$CONTAINERD2_BIN/containerd" --config "$work/cd/config.toml" \
			--log-level debug >"$OUT/containerd.daemon.log" 2>&1 &
		cpid=$!
		pids+=($cpid)
		for _ in $(seq 100); do [ -S "$work/cd/c.sock" ] && break; sleep 0.1; done
		run_suite containerd "$work/cd/c.sock"
		kill "$cpid"; wait "$cpid" 2>/dev/null || true
		;;
	*) echo "unknown target $target (want flotilla or containerd)" >&2; exit 2 ;;
	esac
done

echo "==> results (also in $OUT)"
for target in "${targets[@]}"; do
	r=$OUT/$target.results
	echo "$target: $(grep -v / "$r" | grep -c ' PASS$') pass, $(grep -v / "$r" | grep -c ' FAIL$') fail, $(grep -v / "$r" | grep -c ' SKIP$') skip of $(grep -vc / "$r") tests"
done
files=()
for target in "${targets[@]}"; do files+=("$OUT/$target.results"); done
printf '%-60s' test; for target in "${targets[@]}"; do printf ' %-10s' "$target"; done; echo
cat "${files[@]}" | awk '{print $1}' | grep -v / | sort -u | while read -r t; do
	printf '%-60s' "$t"
	for f in "${files[@]}"; do printf ' %-10s' "$(awk -v t="$t" '$1==t {print $2}' "$f")"; done
	echo
done
