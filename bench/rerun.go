package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// remeasure records a `bench rerun`: which cells of a saved run were
// measured again, when, on which commit and under which load.
type remeasure struct {
	Scenario string    `json:"scenario"`
	Peer     string    `json:"peer"`
	Ns       []int     `json:"ns"`
	Runs     int       `json:"runs"`
	Started  time.Time `json:"started"`
	WallNs   int64     `json:"wall_ns"`
	Commit   string    `json:"commit"` // the engine's commit (the checkout's HEAD), and whether engine code had changes on top
	Loads    dist      `json:"loads"`
	Replaced int       `json:"replaced"` // how many saved runs the new ones replaced
}

// rerunMain measures one peer's cells of one delete scenario again, with the
// plan of the saved run (same runs per cell, same copies, settling and
// consistency check), and puts the new runs into the saved results in place
// of that peer's old runs of those cells; the other peers' runs are kept.
func rerunMain(args []string) error {
	fs := flag.NewFlagSet("rerun", flag.ContinueOnError)
	from := fs.String("from", "results.json", "saved run to update in place")
	scenario := fs.String("scenario", scDeleteHalf, "delete-one, delete-half or concurrent")
	peerName := fs.String("peer", pOcistore, "the one peer to measure again")
	nList := fs.String("n", "", "comma-separated sizes (default: the saved run's plan for the scenario)")
	runs := fs.Int("runs", 0, "runs per cell (0: the saved run's)")
	work := fs.String("work", ".work-rerun", "scratch directory (removed at the end)")
	repo := fs.String("repo", "..", "the main module's checkout (for its commit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sr, p, err := loadSaved(*from)
	if err != nil {
		return err
	}
	if *runs > 0 {
		p.Runs = *runs
	}
	var sks []sizeK
	switch *scenario {
	case scDeleteHalf:
		for _, n := range p.DeleteHalf {
			sks = append(sks, sizeK{n, n / 2})
		}
	case scDeleteOne:
		sks = p.DeleteOne
	case scConcurrent:
		sks = p.Concurrent
	default:
		return fmt.Errorf("rerun: scenario %q is not a delete scenario", *scenario)
	}
	if *nList != "" {
		want := map[int]bool{}
		for _, f := range strings.Split(*nList, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("rerun: -n: %w", err)
			}
			want[n] = true
		}
		var keep []sizeK
		for _, sk := range sks {
			if want[sk.N] {
				keep = append(keep, sk)
				delete(want, sk.N)
			}
		}
		if len(want) > 0 {
			return fmt.Errorf("rerun: sizes %v are not in the saved run's plan for %s", want, *scenario)
		}
		sks = keep
	}
	r, err := newRunner(p, *work)
	if err != nil {
		return err
	}
	defer os.RemoveAll(r.work)
	r.only = *peerName
	started := time.Now()
	rec := remeasure{Scenario: *scenario, Peer: *peerName, Runs: p.Runs, Started: started, Commit: engineCommit(*repo)}
	r.logf("bench rerun: %s, %s, %d runs per cell, engine at %s", *scenario, *peerName, p.Runs, rec.Commit)
	for _, sk := range sks {
		gone := pickSpread(sk.N, sk.K)
		if *scenario == scDeleteHalf {
			gone = pickHalf(sk.N)
		}
		if err := r.deleting(*scenario, sk.N, sk.K, gone); err != nil {
			return err
		}
		rec.Ns = append(rec.Ns, sk.N)
	}
	rec.WallNs, rec.Loads = int64(time.Since(started)), r.loads
	// The new runs take the place of the first old run of the same cells.
	redo := map[int]bool{}
	for _, n := range rec.Ns {
		redo[n] = true
	}
	// Only the scenario's runs are merged: the adoptions that made the
	// templates stay as the saved run measured them.
	var fresh []runResult
	for _, x := range r.results {
		if x.Scenario == *scenario {
			fresh = append(fresh, x)
		}
	}
	var out []runResult
	placed := false
	for _, x := range sr.Results {
		if x.Scenario == *scenario && x.Peer == *peerName && redo[x.N] {
			rec.Replaced++
			if !placed {
				out = append(out, fresh...)
				placed = true
			}
			continue
		}
		out = append(out, x)
	}
	if !placed {
		out = append(out, fresh...)
	}
	sr.Results = out
	sr.Remeasured = append(sr.Remeasured, rec)
	raw, _ := json.MarshalIndent(sr, "", " ")
	if err := os.WriteFile(*from, raw, 0o644); err != nil {
		return err
	}
	r.logf("rerun: %d new runs in place of %d in %s (%s)", len(fresh), rec.Replaced, *from, time.Since(started).Round(time.Second))
	return nil
}

// engineCommit is the checkout's commit, and whether code outside bench/
// differs from it.
func engineCommit(repo string) string {
	b, err := exec.Command("git", "-C", repo, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown (not a git checkout)"
	}
	rev := strings.TrimSpace(string(b))
	if s, err := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench").Output(); err == nil && len(strings.TrimSpace(string(s))) > 0 {
		rev += " plus uncommitted engine changes"
	}
	return rev
}
