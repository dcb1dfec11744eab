// Package chaos proves ocistore's crash consistency with the real binary
// (Tier 0 of the README's "How crash safety is proven"): it SIGKILLs the CLI at
// random moments of real operations and checks, after `ocistore recover`,
// every invariant from outside the engine.
//
// # Single writer
//
// A template layout (internal/gen, 1,000 images (300 with -short) sharing base layers, tags
// spread over 40 repositories) is written once and adopted once. Each trial
// works on a fresh copy (blobs hard-linked, see copyLayout) and runs one of
//
//	ocistore rm TAG...              1-50 random tags
//	ocistore import SRC [REF...]    1-50 images of a second generated layout
//	                                (some of its blobs are the template's), or all
//	ocistore prune RULE             only when the CLI has prune: --keep-last N,
//	                                alone or with --filter ref=GLOB, or
//	                                --filter until=TIME --filter ref=GLOB
//	                                (OCISTORE_CHAOS_PRUNE_ARGS fixes the arguments)
//
// First uninterrupted on a sibling copy: that run is the calibration (its
// wall time T) and the oracle (its result must be the after-set the test
// computes: the before-set minus the batch for rm, plus the imported entries
// for import; for prune the oracle's result is the after-set). Then on the trial copy, SIGKILLed: in odd trials after a
// delay drawn uniformly in [0, 1.2*T]; since the journaled part of a
// transaction is only a few ms at the end of the run, even trials watch the
// layout root and kill a delay drawn uniformly in [0, 1.2*(T-E)] after the
// new index.json appears (E: when it appeared in the oracle run; it is
// written only after the journal commit). Before recovery the kill is classified from the
// layout as it was left: "during" when the journal holds a pending record,
// else "before" (index.json is the before-set) or "after" (the after-set, or
// the process had exited). Then `ocistore recover`, `ocistore fsck --format
// json` and an audit that trusts nothing of the engine (index.json parsed,
// the closure walked and every reachable blob hashed, orphans and temp files
// listed) must show: no problem, except orphan blobs of the import source
// after an import killed before its transaction (fsck leaves out those a
// live lease still holds: import leases what it copies, and a killed import
// leaves its lease until it expires; fsck may report fewer orphans than the
// audit, never others); the entries exactly the
// before-set or the after-set, never a mix (the after-set when the record
// was pending or the process had exited 0); and a second recover does nothing
// and changes no file. Before any of that, right after the kill, the layout
// must satisfy the invariant for foreign readers (testutil.ForeignReadable:
// skopeo and umoci run no recovery, so index.json must parse and every blob
// it reaches be there).
//
// # Concurrent writers
//
// Two writers (goroutines, each a loop of ocistore tag / rm / import
// processes, one at a time) work on one copy while a killer SIGKILLs the
// running process of either at random. Each writer owns a namespace (its
// tags, its import source's tags, half of the template's tags) so that the
// final value of every tag depends only on the order of that writer's own
// operations, which is exact; writers still contend for the lock, the
// index, the refcounts of shared blobs and blob ingest. Every operation is
// logged in order of completion: one that exited 0 sets its tags, one that
// was killed or failed may or may not have. At each kill the killer stops
// the world (no writer starts a process, the other writer's running one is
// SIGSTOPped), waits for the killed process to be reaped, checks the layout
// against the invariant for foreign readers, and lets the world go on.
// After the run, recover, fsck
// (orphans allowed when an import was killed) and the audit must pass, and
// every tag must hold a value the log allows.
//
// # Running it
//
//	go test ./internal/chaos/          bounded: 40 kills (16 under -race) + 2x30 concurrent ops
//	go test -short ./internal/chaos/   quick (make test-short): a template of 300
//	                                   images, 24 kills (16 under -race) + 2x10 concurrent ops
//	OCISTORE_CRASH_FULL=1 go test -count=1 -timeout 60m -v ./internal/chaos/
//	                                   full: 500 kills + 2x300 concurrent ops
//
// The seed (default below) is printed at start; OCISTORE_CHAOS_SEED=N
// repeats the same operations, batches and delays (where a kill lands in
// the process still depends on the machine). OCISTORE_CHAOS_KILLS=N sets the
// number of single-writer kills. A layout that shows a violation is kept
// under $TMPDIR/ocistore-chaos-violation-*. The last line on stdout is the
// summary:
//
//	tier0: kills=N before=a during=b after=c concurrent-kills=k foreign=f violations=0
//
// where f counts the foreign-reader checks (one per single-writer trial, one
// per concurrent kill).
package chaos

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/testing/testutil"
)

const (
	envFull      = "OCISTORE_CRASH_FULL"
	envSeed      = "OCISTORE_CHAOS_SEED"
	envKills     = "OCISTORE_CHAOS_KILLS"
	envPruneArgs = "OCISTORE_CHAOS_PRUNE_ARGS"
	defaultSeed  = 20260127
)

type config struct {
	seed    uint64
	full    bool
	images  int // template images
	kills   int // single-writer trials
	concOps int // operations per concurrent writer
}

func loadConfig(t *testing.T) config {
	cfg := config{seed: defaultSeed, images: 1000, kills: 40, concOps: 30}
	if raceBuild {
		// Every run of the race-built binary (fsck above all) is about
		// four times slower: keep the default run near a minute.
		cfg.kills = 16
	}
	if testing.Short() {
		cfg.images, cfg.kills, cfg.concOps = 300, min(cfg.kills, 24), 10
	}
	if v := os.Getenv(envFull); v != "" && v != "0" {
		cfg.full, cfg.images, cfg.kills, cfg.concOps = true, 1000, 500, 300
	}
	if v := os.Getenv(envSeed); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envSeed, v, err)
		}
		cfg.seed = s
	}
	if v := os.Getenv(envKills); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", envKills, v)
		}
		cfg.kills = n
	}
	return cfg
}

// stats are the counts of the run.
type stats struct {
	mu sync.Mutex
	// Single writer.
	kills, before, during, after int
	exited                       int            // "after" trials whose process exited before the signal
	duringOld, duringNew         int            // "during": index.json on disk was the old / new one
	orphanTrials                 int            // trials that left orphans (killed imports)
	byKind                       map[string]int // "KIND CLASS" -> trials
	byDraw                       map[string]int // "DRAW CLASS" -> trials
	// Concurrent.
	concKills, concAcked, concFailed, concOps int
	// foreign counts the layouts checked, as a kill left them and before
	// any recovery, against the invariant for foreign readers.
	foreign    int
	violations []string
}

// foreignCheck checks the layout dir, as a kill left it and before any
// recovery, against the invariant for foreign readers (skopeo and umoci run
// no recovery: index.json parses and every blob it reaches is there), and
// reports a breach through fail.
func (s *stats) foreignCheck(dir string, fail func(format string, args ...any)) {
	s.mu.Lock()
	s.foreign++
	s.mu.Unlock()
	if err := testutil.ForeignReadableDir(dir, ""); err != nil {
		fail("foreign reader, after the kill and before recovery: %v", err)
	}
}

func (s *stats) violation(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, v)
}

func TestChaos(t *testing.T) {
	cfg := loadConfig(t)
	mode := "bounded"
	switch {
	case cfg.full:
		mode = "full"
	case testing.Short():
		mode = "short"
	}
	fmt.Printf("chaos: seed=%d mode=%s kills=%d concurrent-ops=%dx2 race=%v (%s=N reproduces, %s=1 runs the full set)\n",
		cfg.seed, mode, cfg.kills, cfg.concOps, raceBuild, envSeed, envFull)
	begin := time.Now()
	h := newHarness(t, cfg)
	st := &stats{byKind: map[string]int{}, byDraw: map[string]int{}}

	t.Run("single-writer", func(t *testing.T) {
		start := time.Now()
		runSingle(t, h, cfg, st)
		t.Logf("single writer: %d kills in %s: before=%d during=%d (index old %d, new %d) after=%d (exited first %d); trials with orphans %d",
			st.kills, time.Since(start).Round(time.Millisecond), st.before, st.during, st.duringOld, st.duringNew, st.after, st.exited, st.orphanTrials)
		var kinds []string
		for k, n := range st.byKind {
			kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		}
		t.Logf("by operation: %s", strings.Join(sorted(kinds), " "))
		var draws []string
		for k, n := range st.byDraw {
			draws = append(draws, fmt.Sprintf("%s=%d", k, n))
		}
		t.Logf("by draw: %s", strings.Join(sorted(draws), " "))
	})
	t.Run("concurrent", func(t *testing.T) {
		start := time.Now()
		runConcurrent(t, h, cfg, st)
		t.Logf("concurrent: %d operations, %d acknowledged, %d killed, %d failed, in %s",
			st.concOps, st.concAcked, st.concKills, st.concFailed, time.Since(start).Round(time.Millisecond))
	})
	for _, p := range h.checkTemplate() {
		st.violation(p)
	}
	t.Logf("wall time %s", time.Since(begin).Round(time.Millisecond))
	fmt.Printf("tier0: kills=%d before=%d during=%d after=%d concurrent-kills=%d foreign=%d violations=%d\n",
		st.kills, st.before, st.during, st.after, st.concKills, st.foreign, len(st.violations))
	for i, v := range st.violations {
		t.Errorf("violation %d of %d (seed %d): %s", i+1, len(st.violations), cfg.seed, v)
	}
}
