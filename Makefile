# Flotilla — one node's stack from ./bin.
#   make build   every binary into ./bin
#   make up      start the stack in the background; returns when all are healthy
#                (MODE=one, the default: one flotilla process; MODE=separate: a process per daemon)
#   make down    stop it gracefully
#   make test    every test of every module
#   make bench   Flotilla against containerd 2.4 and 1.6: table, results.json, results.png in BENCH_OUT
#   make gobench the Go benchmarks (go test -bench)
#   make fuzz    each fuzz target for its input budget (the relay, HPACK, the layer applier)
#   make proto   regenerate proto/ with the pinned generators

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
MODULES := proto services contentd snapshotd taskd eventd gateway flotilla flotctl integration
DAEMONS := gateway contentd snapshotd taskd eventd
COMMANDS := $(DAEMONS) flotilla flotctl
EXTRA_COMMANDS := ./snapshotd/plugins/overlayfs/cmd/snapshotter-overlayfs ./snapshotd/plugins/native/cmd/snapshotter-native

VERSION ?= $(shell git describe --tags --dirty 2>/dev/null || echo 0.1.0-dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/flotilla/flotilla/services/version.Version=$(VERSION) \
           -X github.com/flotilla/flotilla/services/version.Revision=$(REVISION)

export FLOTILLA_ROOT ?= /var/lib/flotilla
export FLOTILLA_STATE ?= /run/flotilla

# Pinned code generators for `make proto`; protoc itself is Debian's (protobuf-compiler).
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
PROTOC_VERSION := 3.21.12
TOOLS := $(CURDIR)/.tools

# Built beside the daemons for make demo, the tests and make bench: the test-image kit's command, a logger binary for
# binary:// log URIs, the bench.
TEST_COMMANDS := ./integration/cmd/flotilla-testimage ./integration/cmd/flotilla-testlogger ./integration/cmd/flotilla-bench

TEST_FLAGS ?= -count=1 -timeout 20m
BENCH ?= .

.PHONY: all deps build up down demo test bench gobench fuzz proto vet fmt clean

all: build

# The Debian packages Flotilla runs and is tested with (installed only if missing).
deps:
	@bash scripts/install-deps.sh

# The daemons are one executable: bin/<daemon> are hard links to
# bin/flotilla, which run under a daemon's name is that daemon alone (its
# cmd/<daemon> main, same flags), so the separate daemons of a node share
# its pages in memory. cmd/<daemon> still builds each on its own.
build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ \
		./flotilla/cmd/flotilla ./flotctl/cmd/flotctl ./taskd/cmd/taskd-shim $(EXTRA_COMMANDS) $(TEST_COMMANDS)
	@for d in $(DAEMONS); do ln -f $(BIN)/flotilla $(BIN)/$$d; done

# MODE: one (every component in one flotilla process) or separate; empty
# takes $FLOTILLA_MODE, else one.
MODE ?=
up: deps build
	$(BIN)/flotctl stack up --bin $(BIN) $(if $(MODE),--mode $(MODE))

# The main job: start the stack and run a container in it.
demo: up
	@bash scripts/demo.sh

down:
	@if [ -x $(BIN)/flotctl ]; then $(BIN)/flotctl stack down --bin $(BIN); \
	else $(GO) run ./flotctl/cmd/flotctl stack down --bin $(BIN); fi

# Integration tests start the real binaries from ./bin: every module's tests
# against stacks of separate daemons, then the integration suite again
# against one-process stacks (FLOTILLA_MODE=one, what make up runs).
# scripts/gotest.sh keeps each pass's whole -v output in test-logs/ and ends
# with a summary (failures, tests that never finished, the slowest).
test: deps build
	FLOTILLA_BIN=$(BIN) GO=$(GO) bash scripts/gotest.sh separate $(TEST_FLAGS) $(foreach m,$(MODULES),./$(m)/...)
	FLOTILLA_BIN=$(BIN) FLOTILLA_MODE=one GO=$(GO) bash scripts/gotest.sh one $(TEST_FLAGS) ./integration/

# Flotilla, containerd 2.4.2 and Debian's containerd 1.6 side by side on the same workloads
# (README: Benchmarks). BENCH_QUICK=1 is a quick smoke run; BENCH_OUT is where results go.
BENCH_OUT ?= $(CURDIR)/bench-results
bench: deps build
	FLOTILLA_BIN=$(BIN) BENCH_OUT=$(BENCH_OUT) $(BIN)/flotilla-bench

# The Go benchmarks of every module (go test -bench; BENCH selects them).
gobench: build
	FLOTILLA_BIN=$(BIN) $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem $(foreach m,$(MODULES),./$(m)/...)

# Code that parses a peer's bytes is fuzzed in CI; a crasher goes into the
# package's testdata/fuzz as a seed once fixed. Each target runs a number of
# inputs (about 20 s here), not a duration: Go 1.26's coordinator can fail a
# -fuzztime duration at its deadline with a bare "context deadline exceeded"
# when a worker is busy (go.dev/issue/75804), which a count never races.
# FUZZTIME=30s (or 1000000x) overrides every target's budget.
FUZZ_TARGETS := gateway/relay:FuzzSession:100000x gateway/relay:FuzzHeaderBlock:300000x snapshotd/diff/archive:FuzzApply:15000x

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${FUZZTIME:-$${rest#*:}}; \
		echo "fuzz $$name in ./$$pkg for $$budget"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $$budget ./$$pkg; \
	done

vet:
	$(GO) vet $(foreach m,$(MODULES),./$(m)/...)

fmt:
	gofmt -l -w $(MODULES)

proto:
	@protoc --version | grep -q ' $(PROTOC_VERSION)$$' || { echo "make proto wants protoc $(PROTOC_VERSION) (Debian's protobuf-compiler), found: $$(protoc --version)"; exit 1; }
	GOBIN=$(TOOLS) $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(TOOLS) $(GO) install $(PROTOC_GEN_GO_GRPC)
	cd proto && PATH=$(TOOLS):$$PATH protoc -I . \
		--go_out=. --go_opt=module=github.com/flotilla/flotilla/proto \
		--go-grpc_out=. --go-grpc_opt=module=github.com/flotilla/flotilla/proto \
		$$(find flotilla -name '*.proto' | sort)

clean:
	rm -rf $(BIN) $(TOOLS)
