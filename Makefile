# ocistore: `make demo` runs the main job on a demo layout, `make test` runs every test.
#
# Crash points (internal/crash, OCISTORE_CRASHPOINT) exist only in builds with
# the tag crashpoints: `make build` leaves them out; the tests that kill
# processes at them, `make crash` and the demo's power-cut scene build with it.
GO        ?= go
BIN       := bin/ocistore
# The CLI with crash points, for the demo's power-cut scene only.
CRASHBIN  := bin/ocistore-crashpoints
CRASHTAGS := -tags crashpoints
DEMO      ?= demo/layout
DEMO_N    ?= 300
PKGS      := ./...
# Tools the interop and registry tests drive; installed from Debian when
# missing. docker-registry is the Debian package of distribution (2.8): the
# registry tests start it themselves (internal/testing/registry).
TOOLS     := skopeo umoci docker-registry

.PHONY: all build build-crashpoints test test-short demo bench lint tools fuzz crash clean

all: build

build:
	$(GO) build -buildvcs=$(if $(filter $(shell git rev-parse --absolute-git-dir 2>/dev/null),$(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)),true,false) -ldflags "-X main.commit=$(shell git rev-parse HEAD 2>/dev/null) -X main.modified=$(if $(shell git status --porcelain 2>/dev/null | head -1),true,false) -X main.version=$(OCISTORE_VERSION)" -o $(BIN) ./cmd/ocistore

build-crashpoints:
	$(GO) build $(CRASHTAGS) -buildvcs=$(if $(filter $(shell git rev-parse --absolute-git-dir 2>/dev/null),$(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)),true,false) -ldflags "-X main.commit=$(shell git rev-parse HEAD 2>/dev/null) -X main.modified=$(if $(shell git status --porcelain 2>/dev/null | head -1),true,false) -X main.version=$(OCISTORE_VERSION)" -o $(CRASHBIN) ./cmd/ocistore

# tools installs the real programs the interop tests need (root + apt-get).
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# test runs every test, with the race detector and the crash points, in
# steps that say what runs: lint, every package but ./store, ./store (the
# longest: crash enumerations, about 5 minutes on 2 cores, silent until it
# ends), then the bench/ module's own tests (its own go.mod, so ./... leaves
# it out). It needs the network once: apt-get for skopeo and umoci (tools),
# the Go module proxy for the modules and staticcheck.
test: tools lint
	@echo "== go test -race -tags crashpoints: every package but ./store (a few minutes)"
	$(GO) test -race $(CRASHTAGS) -count=1 -timeout 20m $$($(GO) list $(PKGS) | grep -vx 'github.com/ocistore/ocistore/store')
	@echo "== go test -race -tags crashpoints: ./store (about 5 minutes on 2 cores; prints when it ends)"
	$(GO) test -race $(CRASHTAGS) -count=1 -timeout 20m ./store/
	@echo "== go test: the bench/ module (its own go.mod)"
	cd bench && $(GO) test -count=1 ./...

# test-short is the quick tier (-short: smaller crash enumerations and
# chaos runs, no race detector, no lint): every package, crash points included.
test-short:
	$(GO) test -short $(CRASHTAGS) -count=1 -timeout 10m $(PKGS)

# demo: build the CLI, write a layout of $(DEMO_N) images sharing base layers
# as another tool would, adopt it, remove some images, cut the power in the
# middle of an rm (SIGKILL at a crash point), recover, prune, check it. Each
# command is printed as "$ COMMAND" before its output.
#
# show prints a command, then runs it.
show = echo '$$ $(1)' && $(1)
# The power-cut scene: rm is meant to die by SIGKILL at the crash point
# txn-journaled. Its own output still shows (fd 3), the shell's "Killed"
# notice does not (the shell prints it to its own stderr, here /dev/null);
# exit status 137 (128 + SIGKILL) is the plan, anything else stops the demo.
CRASHENV := OCISTORE_CRASHPOINT=txn-journaled
CRASHRM  := $(CRASHBIN) -l $(DEMO) rm example.com/repo5:v0 example.com/repo6:v0
demo: build build-crashpoints
	@rm -rf $(DEMO)
	$(GO) run ./internal/cmd/gendemo -images $(DEMO_N) -repos 30 $(DEMO)
	@echo
	@echo "== ocistore ls (first 8 of $(DEMO_N) images)"
	@$(call show,$(BIN) -l $(DEMO) ls | head -9)
	@echo
	@echo "== ocistore rm: 3 images in one transaction"
	@$(call show,$(BIN) -l $(DEMO) rm example.com/repo1:v0 example.com/repo2:v0 example.com/repo3:v0)
	@echo
	@echo "== ocistore tag and untag: repo4's image gets a second tag, then loses its first (untag never deletes data)"
	@$(call show,$(BIN) -l $(DEMO) tag example.com/repo4:v0 example.com/repo4:stable)
	@$(call show,$(BIN) -l $(DEMO) untag example.com/repo4:v0)
	@echo
	@echo "== ocistore journal (no pending transaction between commands)"
	@$(call show,$(BIN) -l $(DEMO) journal)
	@echo
	@echo "== power cut: rm killed (SIGKILL) right after its journal commit, at the crash point txn-journaled"
	@echo "   ($(CRASHBIN): the CLI built with -tags crashpoints; $(BIN) has no crash points)"
	@echo '$$ $(CRASHENV) $(CRASHRM)'
	@if { $(CRASHENV) sh -c 'exec "$$@" 2>&3' sh $(CRASHRM); } 3>&2 2>/dev/null; then \
		echo "demo: rm finished: it should have been killed at the crash point txn-journaled" >&2; exit 1; \
	else st=$$?; if [ $$st -ne 137 ]; then echo "demo: rm failed (exit status $$st) before the crash point" >&2; exit 1; fi; \
		echo "(rm was killed at the crash point, exit status $$st = 128 + SIGKILL, as planned: its transaction is committed to the journal, index.json is not replaced yet)"; fi
	@echo
	@echo "== after the power cut: the journal holds the committed transaction, and fsck reports it as pending"
	@$(call show,$(BIN) -l $(DEMO) journal)
	@$(call show,$(BIN) -l $(DEMO) fsck) || echo "(fsck exit status $$?, as expected here: the killed rm left its transaction unfinished, and its new index.json in a temp file; recover finishes both)"
	@echo
	@echo "== ocistore recover: finishes the journaled transaction"
	@$(call show,$(BIN) -l $(DEMO) recover)
	@echo
	@echo "== ocistore fsck: clean again, repo5:v0 and repo6:v0 are gone"
	@$(call show,$(BIN) -l $(DEMO) fsck)
	@echo
	@echo "== ocistore prune: keep the newest 5 images of each repository, in ONE transaction (dry run, then for real; last 3 lines of each)"
	@$(call show,$(BIN) -l $(DEMO) prune --keep-last 5 --dry-run | tail -3)
	@$(call show,$(BIN) -l $(DEMO) prune --keep-last 5 | tail -3)
	@echo
	@echo "== ocistore du: space per repository (the first 2 of 30) and in total, then a last fsck"
	@$(call show,$(BIN) -l $(DEMO) du | head -3)
	@$(call show,$(BIN) -l $(DEMO) du | tail -4)
	@$(call show,$(BIN) -l $(DEMO) fsck)

# crash runs every crash-consistency tier at full size (OCISTORE_CRASH_FULL=1)
# and prints one summary line per tier (and per crash-point test), then the
# totals; foreign=N counts the crash states checked, before recovery, against
# the invariant for foreign readers. Tier 2 needs root. Tier 3
# (TestServeCrash, ./cmd/ocistore) kills `ocistore serve` during pushes: 120
# trials of about 5 s each, two at a time on 2 cores.
crash: tools
	@OCISTORE_CRASH_FULL=1 $(GO) test $(CRASHTAGS) -count=1 -timeout 60m -v \
		-run '^(TestTier1CrashStates|TestTier1SharedBlobDir|TestTier1Trash|TestTier1Fault|TestTier1FindsMissingFsync|TestRapidStateMachine|TestRapidFindsMissingFsync|TestCrashPoints|TestCrashPointsTrash|TestCrashDuringRecovery|TestSharedBlobDirCrash|TestRecoveryTable|TestChaos|TestPowerCut|TestPowerCutCatchesMissingFsync|TestPowerCutServe|TestServeCrash)$$' \
		./store/ ./internal/testing/chaos/ ./internal/testing/powercut/ ./cmd/ocistore/ > crash.out 2>&1 || { grep -E '^(tier|crashpoints|---|FAIL)|violation|foreign reader' crash.out; exit 1; }
	@grep -E '^(tier[0-9](-[a-z]+)*|crashpoints):' crash.out
	@grep -E '^(tier[0-9](-[a-z]+)*|crashpoints):' crash.out | awk '{ for (i = 2; i <= NF; i++) { split($$i, kv, "="); if (kv[1] == "violations") v += kv[2]; if (kv[1] == "foreign") f += kv[2] } } END { printf "total: summaries=%d foreign=%d violations=%d\n", NR, f, v; exit v > 0 }'
	@grep -cE '^    --- PASS: TestCrash' crash.out | xargs printf 'crash points killed in child processes: %s\n'

FUZZTIME ?= 60s
# fuzz runs each fuzz target of $(FUZZPKGS) for $(FUZZTIME); crashers are
# written under each package's testdata/fuzz/ and must be committed.
FUZZPKGS ?= ./fuzz/ ./internal/layout/ ./internal/journal/
fuzz:
	@for p in $(FUZZPKGS); do for f in $$($(GO) test $$p -list 'Fuzz.*' | grep ^Fuzz); do \
		echo "== $$p $$f"; $(GO) test $$p -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
	done; done

# bench: the micro benchmarks of ./store, then the bench/ module (its own
# go.mod: ocistore against containers/image, oras-go and go-containerregistry
# on the same generated layouts) at a quick size, every size with
# BENCH_FULL=1. A full run rewrites BENCHMARKS.md (and bench/results.json)
# with both; a quick run writes bench/quick.md (and bench/quick.json, both
# gitignored) and leaves the published full-size tables alone.
# The micro benchmarks run adaptively (-benchtime 1s) in the quick mode and
# 10 iterations each with BENCH_FULL=1 (BenchmarkPruneHalf generates and
# adopts a layout of up to 20,000 images per iteration).
BENCH_FULL ?=
BENCH_MICRO ?= $(if $(filter-out 0,$(BENCH_FULL)),-benchtime 10x -timeout 60m,-benchtime 1s -timeout 30m)
bench:
	$(GO) test -run '^$$' -bench . $(BENCH_MICRO) ./store/ > bench.out 2>&1 || { cat bench.out; exit 1; }
	@cat bench.out
	cd bench && $(GO) build -o bench . && ./bench $(if $(filter-out 0,$(BENCH_FULL)),-full) \
		-micro ../bench.out -micro-cmd "go test -run '^$$' -bench . $(BENCH_MICRO) ./store/"

# lint: gofmt, go vet and staticcheck must be clean, with and without the
# crash points.
lint:
	@echo "== lint: gofmt, go vet and staticcheck, with and without the crash points"
	@bad=$$(gofmt -l $$(find . -name '*.go' -not -path './bench/*')); \
		if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet $(CRASHTAGS) $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)
	$(GO) run $(STATICCHECK) $(CRASHTAGS) $(PKGS)

clean:
	rm -rf bin demo bench.out
