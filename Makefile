# Flotilla — one node's stack from ./bin.
#   make build   every binary into ./bin
#   make up      start the stack in the background; returns when all are healthy
#   make down    stop it gracefully
#   make test    every test of every module
#   make bench   the benchmarks
#   make fuzz    each fuzz target for FUZZTIME (the relay, HPACK, the layer applier)
#   make proto   regenerate proto/ with the pinned generators

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
MODULES := proto services contentd snapshotd taskd eventd gateway flotctl integration
DAEMONS := gateway contentd snapshotd taskd eventd
COMMANDS := $(DAEMONS) flotctl
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

# Built beside the daemons for make demo and the tests: the test-image kit's command, a logger binary for binary:// log URIs.
TEST_COMMANDS := ./integration/cmd/flotilla-testimage ./integration/cmd/flotilla-testlogger

TEST_FLAGS ?= -count=1 -timeout 30m
BENCH ?= .

.PHONY: all deps build up down demo test bench fuzz proto vet fmt clean

all: build

# The Debian packages Flotilla runs and is tested with (installed only if missing).
deps:
	@bash scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ \
		$(foreach c,$(COMMANDS),./$(c)/cmd/$(c)) ./taskd/cmd/taskd-shim $(EXTRA_COMMANDS) $(TEST_COMMANDS)

up: deps build
	$(BIN)/flotctl stack up --bin $(BIN)

# The main job: start the stack and run a container in it.
demo: up
	@bash scripts/demo.sh

down:
	@if [ -x $(BIN)/flotctl ]; then $(BIN)/flotctl stack down --bin $(BIN); \
	else $(GO) run ./flotctl/cmd/flotctl stack down --bin $(BIN); fi

# Integration tests start the real binaries from ./bin.
test: deps build
	FLOTILLA_BIN=$(BIN) $(GO) test $(TEST_FLAGS) $(foreach m,$(MODULES),./$(m)/...)

bench: build
	FLOTILLA_BIN=$(BIN) $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem $(foreach m,$(MODULES),./$(m)/...)

# Code that parses a peer's bytes is fuzzed for a bounded time in CI; a
# crasher goes into the package's testdata/fuzz as a seed once fixed.
FUZZTIME ?= 20s
FUZZ_TARGETS := gateway/relay:FuzzSession gateway/relay:FuzzHeaderBlock snapshotd/diff/archive:FuzzApply

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name in ./$$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) ./$$pkg; \
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
