# hsmkms: an AWS KMS-compatible key service whose keys live on PKCS#11 tokens.
# `make run` and `make test` install what is missing (SoftHSM2, OpenSC) via
# scripts/setup.sh, and `make test` and `make bench` PostgreSQL (for the
# store suite) via scripts/postgres.sh; nothing else needs to be set up by hand.

GO          ?= go
BIN         := bin/hsmkms
LOAD_BIN    := bin/hsmkms-load
DATA        ?= ./data
HA_DIR      ?= ./ha
LISTEN      ?= 127.0.0.1:4599
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
TESTFLAGS   ?=
BENCHTIME   ?= 2s
BENCH_DURATION ?= 10s
CRASH_TRIALS ?= 150
BENCH_WORKERS  ?= 16
BENCH_KEYS     ?= 1
BENCH_ROUNDS   ?= 7
PROFILE        ?=

.PHONY: all build build-load setup setup-postgres test test-crash test-cli lint bench bench-audit bench-ha run run-ha clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/hsmkms

# The load generator is a command of its own: the server carries no AWS SDK.
build-load:
	$(GO) build -trimpath -o $(LOAD_BIN) ./cmd/hsmkms-load

setup:
	@scripts/setup.sh

# The store tests start their own throwaway cluster (kms/store/pgtest);
# this only installs the distribution's packages if they are missing.
# HSMKMS_TEST_POSTGRES=skip skips those tests, and this step, explicitly.
setup-postgres:
	@[ "$$HSMKMS_TEST_POSTGRES" = skip ] || [ -n "$$HSMKMS_TEST_POSTGRES_URL" ] || scripts/postgres.sh install

# -vet=off: go test would otherwise vet every dependency for facts (about
# 45 s of a cold build, modernc SQLite mostly); make lint runs the full
# go vet, test files included. The kms suite runs a second time with the
# default key store holding token objects (the first run holds material
# wrapped, the default for new deployments).
test: setup setup-postgres
	$(GO) test -race -vet=off -count=1 -timeout 12m $(TESTFLAGS) ./...
	HSMKMS_TEST_KEY_MATERIAL=token_objects $(GO) test -race -vet=off -count=1 -timeout 12m $(TESTFLAGS) ./kms/

# The stock aws CLI against a fresh `serve --data-dir`. Fails if the aws CLI
# is missing, unless HSMKMS_SKIP_CLI_TEST=1.
test-cli: setup build
	scripts/cli-test.sh $(BIN)

# Kills the real server CRASH_TRIALS times during ConnectCustomKeyStore
# (login and kmsuser password rotation on a SoftHSM2 token) and checks that
# no token is lost and no password locked out; `make test` runs 10 kills.
test-crash: setup
	HSMKMS_CRASH_TRIALS=$(CRASH_TRIALS) $(GO) test -count=1 -timeout 30m -run '^TestCrashDuringConnect$$' -v ./cmd/hsmkms/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GO=$(GO) scripts/check-imports.sh
	$(GO) run $(STATICCHECK) ./...
	scripts/check-server-deps.sh

# PROFILE=DIR also saves the server's CPU profile of each operation's run
# there (a server built with -tags pprof, bin/hsmkms-pprof).
bench: setup setup-postgres build build-load
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./hsm/ ./kms/...
ifeq ($(PROFILE),)
	LOAD=$(LOAD_BIN) scripts/bench-server.sh $(BIN) $(BENCH_DURATION) $(BENCH_WORKERS) $(BENCH_KEYS)
else
	$(GO) build -trimpath -tags pprof -o bin/hsmkms-pprof ./cmd/hsmkms
	LOAD=$(LOAD_BIN) PROFILE=$(PROFILE) scripts/bench-server.sh bin/hsmkms-pprof $(BENCH_DURATION) $(BENCH_WORKERS) $(BENCH_KEYS)
endif

# What the audit trail costs: Encrypt with the trail on and off,
# alternately, BENCH_ROUNDS times; the median round (scripts/bench-audit.sh).
bench-audit: setup build build-load
	LOAD=$(LOAD_BIN) scripts/bench-audit.sh $(BIN) $(BENCH_DURATION) $(BENCH_ROUNDS) $(BENCH_WORKERS)

# One node on SQLite, one on PostgreSQL, two on PostgreSQL, back to back
# (scripts/bench-ha.sh): the README's "Running several nodes" figures.
bench-ha: setup setup-postgres build build-load
	scripts/bench-ha.sh $(BENCH_DURATION) $(BENCH_WORKERS)

run: setup build
	$(BIN) serve --data-dir $(DATA) --listen $(LISTEN)

# Two nodes on one SoftHSM2 token store and a PostgreSQL cluster under
# HA_DIR (installed from the distribution's packages if missing); see
# scripts/run-ha.sh. HA_PORTS="p1 p2" changes the ports (4599 4600).
run-ha: setup build
	HSMKMS=$(BIN) scripts/run-ha.sh $(HA_DIR)

clean:
	rm -rf bin
