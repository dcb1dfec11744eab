package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestMain lets the test binary be the runner's child process (the runner
// starts os.Executable() with "child"), so that a test can run scenarios
// end to end.
func TestLinearity(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		name     string
		cost     map[int]float64
		worst    float64
		worstN   int
		ok, meas bool
	}{
		{"flat", map[int]float64{100: 9, 5000: 2, 20000: 2.2, 100000: 2.9}, 1.45, 100000, true, true},
		{"the worst is not the largest", map[int]float64{5000: 2, 20000: 3.2, 100000: 2.5}, 1.6, 20000, false, true},
		{"quadratic", map[int]float64{5000: 2, 20000: 8, 100000: 40}, 20, 100000, false, true},
		{"exactly the tolerance", map[int]float64{5000: 2, 100000: 3}, 1.5, 100000, true, true},
		{"below the base only", map[int]float64{100: 9, 1000: 3, 5000: 2}, nan, 0, false, false},
		{"no base", map[int]float64{1000: 3, 20000: 2}, nan, 0, false, false},
		{"base not measured", map[int]float64{5000: nan, 20000: 2}, nan, 0, false, false},
		{"the size above not measured", map[int]float64{5000: 2, 20000: nan}, nan, 0, false, false},
		{"one size above not measured", map[int]float64{5000: 2, 20000: 2, 100000: nan}, 1, 20000, false, true},
	} {
		worst, worstN, ok, meas := linearity(c.cost, 5000, 1.5)
		if ok != c.ok || meas != c.meas || worstN != c.worstN || (math.IsNaN(c.worst) != math.IsNaN(worst)) || (!math.IsNaN(c.worst) && math.Abs(worst-c.worst) > 1e-9) {
			t.Errorf("%s: linearity = %v, N=%d, ok %v, measured %v; want %v, N=%d, ok %v, measured %v", c.name, worst, worstN, ok, meas, c.worst, c.worstN, c.ok, c.meas)
		}
	}
}

func TestPerKBlobs(t *testing.T) {
	if v := perKBlobs(500, 4030); math.Abs(v-124.07) > 0.01 {
		t.Errorf("perKBlobs(500, 4030) = %v", v)
	}
	if !math.IsNaN(perKBlobs(500, 0)) || !math.IsNaN(perKBlobs(math.NaN(), 10)) {
		t.Error("perKBlobs of an unknown count or time is a number")
	}
}

// TestRssOfCLIRuns: a CLI run's RSS samples are its processes', a library
// run's is the run's; failed runs count for neither.
func TestRssOfCLIRuns(t *testing.T) {
	g := summarize([]runResult{
		{Scenario: scCLIRm, WallMs: 1, MaxRSSKiB: 3 << 10, Res: childResult{OpsRSSKiB: []int64{1 << 10, 3 << 10}, OpsMs: []float64{10, 30}}},
		{Scenario: scCLIRm, WallMs: 1, MaxRSSKiB: 2 << 10, Res: childResult{OpsRSSKiB: []int64{2 << 10}, OpsMs: []float64{20}}},
		{Scenario: scCLIRm, WallMs: 1, Err: "boom", Res: childResult{OpsRSSKiB: []int64{99 << 10}, OpsMs: []float64{99}}},
	})
	if d := rssMiB(g); len(d) != 3 || d.median() != 2 || d.max() != 3 {
		t.Errorf("rss = %v", d)
	}
	if d := opsMs(g); len(d) != 3 || d.median() != 20 {
		t.Errorf("ops = %v", d)
	}
	lib := summarize([]runResult{{Scenario: scDeleteOne, WallMs: 1, MaxRSSKiB: 5 << 10}})
	if d := rssMiB(lib); len(d) != 1 || d[0] != 5 {
		t.Errorf("library rss = %v", d)
	}
}

func TestJournalStats(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, journalStateDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, journalFile), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		big, err := tx.CreateBucket([]byte("big"))
		if err != nil {
			return err
		}
		for i := 0; i < 1000; i++ {
			if err := big.Put([]byte(fmt.Sprintf("k%04d", i)), make([]byte, 100)); err != nil {
				return err
			}
		}
		small, err := tx.CreateBucket([]byte("small"))
		if err != nil {
			return err
		}
		return small.Put([]byte("a"), []byte("b"))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	js, err := journalStatsOf(dir, "now")
	if err != nil {
		t.Fatal(err)
	}
	if js.IndexBytes != 1000 || js.FileBytes == 0 || js.StateBytes < js.FileBytes || js.HighBytes > js.FileBytes {
		t.Errorf("sizes: %+v", js)
	}
	if len(js.Buckets) != 2 || js.Buckets[0].Name != "big" || js.Buckets[0].Keys != 1000 || js.Buckets[1].Keys != 1 {
		t.Fatalf("buckets: %+v", js.Buckets)
	}
	if b := js.Buckets[0]; b.InuseBytes < 100*1000 || b.AllocBytes < b.InuseBytes || js.AllocBytes < b.AllocBytes {
		t.Errorf("big bucket: %+v (total %+v)", b, js)
	}
}

// TestScaleRowsEndToEnd runs the adoption table and the scale rows on tiny
// layouts, each run in a child process (this test binary: TestMain), the
// CLI built from this checkout, and writes the report: every row is
// measured, with no error, and the deletes leave the layouts consistent.
func TestScaleRowsEndToEnd(t *testing.T) {
	p := plan{Runs: 2, Adopt: []int{30, 60}, Scale: []int{60}, ScaleK: 3, Workers: 2,
		Timeout: 2 * time.Minute, Budget: time.Minute,
		MaxN: map[string]map[string]int{scDeleteOne: {pGGCR: 0, pOrasGC: 0}}}
	r, err := newRunner(p, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r.log, r.noWait = testLog{t}, true
	if err := r.scaling(); err != nil {
		t.Fatal(err)
	}
	for _, x := range r.results {
		if x.Err != "" || x.Res.Errors > 0 {
			t.Errorf("%s %s N=%d run %d: %s %s", x.Scenario, x.Peer, x.N, x.Run, x.Err, x.Res.ErrMsg)
		}
		if x.Check != nil && (x.Check.Dangling != 0 || x.Check.Orphans != 0 || x.Check.Lost != 0 || x.Check.Surviving != 0) {
			t.Errorf("%s %s N=%d run %d left %s", x.Scenario, x.Peer, x.N, x.Run, x.Check.short())
		}
	}
	for _, n := range p.Adopt {
		for _, name := range []string{pOcistore, pOras} {
			if got := len(summarize(r.sel(scAdoption, name, n)).ok); got != p.Runs {
				t.Errorf("adoption %s N=%d: %d runs, want %d", name, n, got, p.Runs)
			}
		}
		if r.blobsAt(n) != 4*n+30 {
			t.Errorf("blobs at N=%d: %d", n, r.blobsAt(n))
		}
	}
	rm := summarize(r.sel(scCLIRm, pOcistore, 60))
	if d := opsMs(rm); len(d) != p.Runs*p.ScaleK {
		t.Errorf("rm processes: %d, want %d", len(d), p.Runs*p.ScaleK)
	}
	for _, v := range rssMiB(rm) {
		if v <= 0 {
			t.Errorf("an rm process without its peak RSS: %v", rssMiB(rm))
		}
	}
	for _, sc := range cliReads {
		if got := len(opsMs(summarize(r.sel(sc, pOcistore, 60)))); got != p.Runs {
			t.Errorf("%s: %d processes, want %d", sc, got, p.Runs)
		}
	}
	js := r.selJournal(60)
	if len(js) != 2 || js[0].When != journalAfterAdoption || js[0].FileBytes == 0 || js[0].InuseBytes == 0 {
		t.Errorf("journal stats at N=60: %+v", js)
	}
	out := filepath.Join(os.Getenv("BENCH_TEST_REPORT"), "report.md")
	if os.Getenv("BENCH_TEST_REPORT") == "" {
		out = filepath.Join(t.TempDir(), "report.md")
	}
	if err := r.writeReport(out, reportInfo{started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	rep := string(raw)
	for _, want := range []string{"## 8. Adoption", "## 9. Scale", "`ocistore rm TAG`", "`ocistore fsck`", "journal.db", "adoption faster than oras-go's open at every size", "adoption linear in the number of blobs"} {
		if !strings.Contains(rep, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	if strings.Contains(rep, "FAILED") {
		t.Errorf("the report has a failure:\n%s", rep)
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestCLIChild runs the CLI child's work in this process on a tiny
// layout: one rm per tag, each with its time and peak RSS.
func TestCLIChild(t *testing.T) {
	r, err := newRunner(plan{}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bin, err := r.cli()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "l")
	if _, err := generate(dir, genSpec{Images: 20, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	res := &childResult{}
	if err := cliChild(context.Background(), res, scCLIRm, bin, dir, 20, 4, 0); err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || len(res.OpsMs) != 4 || len(res.OpsRSSKiB) != 4 || len(res.Attempted) != 4 || res.SelfKiB == 0 {
		t.Fatalf("rm: %+v", res)
	}
	chk, err := checkLayout(dir, remaining(20, res.Attempted), res.Attempted)
	if err != nil {
		t.Fatal(err)
	}
	if chk.Dangling != 0 || chk.Orphans != 0 || chk.Lost != 0 || chk.Surviving != 0 {
		t.Errorf("after rm: %s", chk.short())
	}
	res = &childResult{}
	if err := cliChild(context.Background(), res, scCLIFsck, bin, dir, 20, 0, 0); err != nil || res.Errors != 0 || len(res.OpsMs) != 1 {
		t.Fatalf("fsck: %v %+v", err, res)
	}
	res = &childResult{}
	if err := cliChild(context.Background(), res, scCLIRm, bin, dir, 20, 4, 0); err != nil || res.Errors != 4 || !strings.Contains(res.ErrMsg, "rm img") {
		t.Fatalf("rm of tags already gone: %v %+v", err, res)
	}
}
