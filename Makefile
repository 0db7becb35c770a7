# hsmkms: an AWS KMS-compatible key service whose keys live on PKCS#11 tokens.
# `make run` and `make test` install what is missing (SoftHSM2, OpenSC) via
# scripts/setup.sh, and `make test` and `make bench` PostgreSQL (for the
# store suite) via scripts/postgres.sh; nothing else needs to be set up by hand.

GO          ?= go
BIN         := bin/hsmkms
DATA        ?= ./data
LISTEN      ?= 127.0.0.1:4599
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
TESTFLAGS   ?=
BENCHTIME   ?= 2s
BENCH_DURATION ?= 10s
CRASH_TRIALS ?= 150

.PHONY: all build setup setup-postgres test test-crash test-cli lint bench run clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/hsmkms

setup:
	@scripts/setup.sh

# The store tests start their own throwaway cluster (kms/store/pgtest);
# this only installs the distribution's packages if they are missing.
# HSMKMS_TEST_POSTGRES=skip skips those tests, and this step, explicitly.
setup-postgres:
	@[ "$$HSMKMS_TEST_POSTGRES" = skip ] || [ -n "$$HSMKMS_TEST_POSTGRES_URL" ] || scripts/postgres.sh install

test: setup setup-postgres
	$(GO) test -race -count=1 -timeout 12m $(TESTFLAGS) ./...

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

bench: setup setup-postgres build
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./hsm/ ./kms/...
	scripts/bench-server.sh $(BIN) $(BENCH_DURATION) 16

run: setup build
	$(BIN) serve --data-dir $(DATA) --listen $(LISTEN)

clean:
	rm -rf bin
