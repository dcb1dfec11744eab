package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary stand in for bench as the runner's child,
// and as the servers of the serve rows (bench srvproc)
// (r.self is the running executable).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "srvproc" {
		if err := srvprocMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench srvproc:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := childMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tinyRunner is a runner of one run per cell at tiny sizes, its children
// started at once.
func tinyRunner(t *testing.T) *runner {
	t.Helper()
	p := quickPlan()
	p.Runs = 1
	p.IngestSize, p.IngestParallel = 4<<20, 4
	p.PullSize, p.PullLayers, p.PullImages = 3<<20, 3, 4
	r, err := newRunner(p, filepath.Join(t.TempDir(), "work"))
	if err != nil {
		t.Fatal(err)
	}
	r.noWait = true
	r.log = testWriter{t}
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestPullAndIngestScenarios runs scenarios 4 and 7 end to end at tiny
// sizes, through child processes, against a real docker-registry and
// skopeo: every run completes and checks clean, and the report has their
// sections and target rows, with a verdict computed from the runs.
func TestPullAndIngestScenarios(t *testing.T) {
	r := tinyRunner(t)
	if err := r.ingesting(); err != nil {
		t.Fatal(err)
	}
	if err := r.pulling(); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{scIngest: len(ingestOrder), scIngestPar: len(ingestOrder), scPull: len(pullOrder), scPullMany: len(pullManyOrder)}
	got := map[string]int{}
	for _, x := range r.results {
		got[x.Scenario]++
		if x.Err != "" || x.Res.Errors > 0 {
			t.Errorf("%s %s: %s %s", x.Scenario, x.Peer, x.Err, x.Res.ErrMsg)
		}
		if x.Scenario == scPull || x.Scenario == scPullMany {
			if x.Check == nil || x.Check.Dangling != 0 || x.Check.Orphans != 0 || x.Check.Lost != 0 {
				t.Errorf("%s %s: check %+v", x.Scenario, x.Peer, x.Check)
			}
			if len(x.Res.OpsMs) != r.pullN(x.Scenario) || x.MaxRSSKiB == 0 {
				t.Errorf("%s %s: %d images timed, peak RSS %d KiB", x.Scenario, x.Peer, len(x.Res.OpsMs), x.MaxRSSKiB)
			}
		}
	}
	for sc, n := range want {
		if got[sc] != n {
			t.Errorf("%s: %d runs, want %d", sc, got[sc], n)
		}
	}
	out := filepath.Join(t.TempDir(), "report.md")
	if err := r.writeReport(out, reportInfo{versions: moduleVersions("..")}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	rep := string(raw)
	for _, s := range []string{
		"## 4. Ingest", "### One 4 MiB blob", "### 4 × 1 MiB at once", "| " + pLimitHash + " |", "| " + pLimitDisk + " |",
		"## 7. Pull from a registry", "| one image of 3 layers, 3 MiB | skopeo |", "| 4 small images | " + pOcistoreLib + " |",
		"| ingest of one 4 MiB blob ≥90% of the machine's limit |", "| 4 parallel blob writes (4 MiB in all) ≥90% of the machine's limit |",
		"| pull of a 1 GiB image of 8 layers at least as fast as skopeo copy |", "| pull of 500 small images at least as fast as skopeo copy",
	} {
		if !strings.Contains(rep, s) {
			t.Errorf("the report lacks %q", s)
		}
	}
	if strings.Contains(rep, "FAILED") {
		t.Errorf("the report has a failed cell:\n%s", rep)
	}
	for _, line := range strings.Split(rep, "\n") {
		if strings.HasPrefix(line, "| pull of ") || strings.HasPrefix(line, "| ingest of one") {
			if !strings.Contains(line, "| met |") && !strings.Contains(line, "| **missed** |") && !strings.Contains(line, "| not measured in this mode (at ") {
				t.Errorf("target row without a verdict: %s", line)
			}
		}
	}
}
