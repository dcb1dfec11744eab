// Command bench measures ocistore against containers/image, oras-go and
// go-containerregistry on the same generated OCI layouts, in one run, and
// writes BENCHMARKS.md (issue 6). It is its own module so that the main
// module never depends on the peers.
//
//	bench [-full] [-out ../BENCHMARKS.md] [-micro ../bench.out]   every scenario, then the report
//	bench one -scenario S -peer P -n N [-k K] [-cpuprofile F]   one run of one cell
//	bench report -from results.json [-out ...] [-micro ...]      rewrite the report from a run's saved results
//	bench rerun -from results.json -scenario S -peer P [-n N,...] measure one peer's cells again, in place of its saved runs
//	bench gen -n N [-layer-size B] DIR                           write a layout
//	bench child ...                                              (internal: one run, in its own process)
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

func main() {
	var err error
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "child":
			err = childMain(os.Args[2:])
		case "gen":
			err = genMain(os.Args[2:])
		case "one":
			err = oneMain(os.Args[2:])
		case "report":
			err = reportMain(os.Args[2:])
		case "rerun":
			err = rerunMain(os.Args[2:])
		default:
			err = benchMain(os.Args[1:])
		}
	} else {
		err = benchMain(nil)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func newRunner(p plan, work string) (*runner, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	work, err = filepath.Abs(work)
	if err != nil {
		return nil, err
	}
	return &runner{plan: p, self: self, work: work, log: os.Stderr,
		templates: map[int]string{}, adopted: map[int]string{}, genTime: map[int]time.Duration{}}, nil
}

func benchMain(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	full := fs.Bool("full", os.Getenv("BENCH_FULL") != "" && os.Getenv("BENCH_FULL") != "0", "all sizes (default: quick; also BENCH_FULL=1)")
	out := fs.String("out", "../BENCHMARKS.md", "report to write")
	micro := fs.String("micro", "", "micro benchmark output to append to the report")
	microCmd := fs.String("micro-cmd", "", "the command that wrote -micro (for the report)")
	analysis := fs.String("analysis", "analysis.md", "hand-written analysis of missed targets to include (\"\": none)")
	work := fs.String("work", ".work", "scratch directory for the layouts (removed at the end)")
	keep := fs.Bool("keep", false, "keep the scratch directory")
	runs := fs.Int("runs", 0, "runs per cell (0: the mode's)")
	repo := fs.String("repo", "..", "the main module's checkout (for its commit)")
	jsonOut := fs.String("json", "results.json", "also write the run's raw results as JSON here (for `bench report`; \"\": none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := quickPlan()
	if *full {
		p = fullPlan()
	}
	if *runs > 0 {
		p.Runs = *runs
	}
	r, err := newRunner(p, *work)
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(r.work)
	}
	started := time.Now()
	vers := moduleVersions(*repo) // the commit measured: the one checked out at the start
	r.logf("bench: %s mode, %d runs per cell, layouts under %s", map[bool]string{false: "quick", true: "full"}[p.Full], p.Runs, r.work)
	if err := r.runAll(); err != nil {
		return err
	}
	wall := time.Since(started)
	if *jsonOut != "" {
		sr := savedRun{Full: p.Full, Runs: p.Runs, Started: started, WallNs: int64(wall), Versions: vers, Loads: r.loads, IOWaits: r.ioWaits, IONoisy: r.ioNoisy, Results: r.results, MicroCmd: *microCmd}
		if *micro != "" {
			if m, err := os.ReadFile(*micro); err == nil {
				sr.Micro = string(m)
			}
		}
		raw, _ := json.MarshalIndent(sr, "", " ")
		if err := os.WriteFile(*jsonOut, raw, 0o644); err != nil {
			return err
		}
	}
	if err := r.writeReport(*out, reportInfo{started: started, wall: wall, micro: *micro, microCmd: *microCmd, analysis: *analysis, versions: vers}); err != nil {
		return err
	}
	r.logf("wrote %s (%s)", *out, wall.Round(time.Second))
	return nil
}

// oneMain runs one cell once (for profiling a scenario): it generates the
// layout, copies it and runs the child with the given flags, printing the
// child's result and its peak RSS.
func oneMain(args []string) error {
	fs := flag.NewFlagSet("one", flag.ContinueOnError)
	scenario := fs.String("scenario", scDeleteOne, "delete-one, delete-half, open, open-cold, ingest, concurrent, adopt")
	peerName := fs.String("peer", pOcistore, "peer")
	n := fs.Int("n", 1000, "images")
	k := fs.Int("k", 10, "images to delete")
	size := fs.Int64("size", 1<<30, "blob size (ingest)")
	cpuprofile := fs.String("cpuprofile", "", "CPU profile of the measured section")
	work := fs.String("work", ".work-one", "scratch directory")
	keep := fs.Bool("keep", false, "keep the scratch directory, and reuse the templates found in it (profiling one cell again without generating and adopting again)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := quickPlan()
	r, err := newRunner(p, *work)
	if err != nil {
		return err
	}
	if *keep {
		r.reuse = true
	} else {
		defer os.RemoveAll(r.work)
	}
	var extra []string
	if *cpuprofile != "" {
		abs, err := filepath.Abs(*cpuprofile)
		if err != nil {
			return err
		}
		extra = append(extra, "-cpuprofile", abs)
	}
	dir := filepath.Join(r.work, "run")
	switch *scenario {
	case scIngest:
		dg, err := streamDigest(*size, 7)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		extra = append(extra, "-size", strconv.FormatInt(*size, 10), "-seed", "7", "-digest", dg)
	case scAdopt:
		if _, err := r.template(*n, pCImage); err != nil {
			return err
		}
		if err := copyLayout(r.templates[*n], dir); err != nil {
			return err
		}
	default:
		if err := r.copyFor(*n, *peerName, dir, *scenario == scOpenCold); err != nil {
			return err
		}
	}
	rr := r.child(*scenario, *peerName, *n, *k, 1, dir, extra)
	if *scenario != scIngest {
		var gone []string
		switch *scenario {
		case scDeleteOne, scConcurrent:
			gone = pickSpread(*n, *k)
		case scDeleteHalf:
			gone = pickHalf(*n)
		}
		if chk, err := checkLayout(dir, remaining(*n, gone), gone); err == nil {
			rr.Check = chk
		}
	}
	raw, _ := json.MarshalIndent(rr, "", " ")
	fmt.Println(string(raw))
	return nil
}

func genMain(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	n := fs.Int("n", 100, "images")
	layer := fs.Int("layer-size", 256, "bytes per layer (large-blob mode: e.g. 67108864)")
	seed := fs.Uint64("seed", 1, "seed")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: bench gen [-n N] [-layer-size B] DIR")
	}
	st, err := generate(fs.Arg(0), genSpec{Images: *n, LayerSize: *layer, Seed: *seed})
	if err != nil {
		return err
	}
	fmt.Printf("%d images, %d blobs, %d bytes\n", st.Images, st.Blobs, st.Bytes)
	return nil
}

// savedRun is what a run writes with -json: enough to write its report
// again (bench report), with the same numbers.
type savedRun struct {
	Full    bool      `json:"full"`
	Runs    int       `json:"runs"`
	Started time.Time `json:"started"`
	WallNs  int64     `json:"wall_ns"`
	// Versions of the modules measured, and the checkout's commit.
	Versions map[string]string `json:"versions"`
	// Micro is the micro benchmarks' output the run included, and MicroCmd
	// the command that wrote it.
	Micro    string      `json:"micro,omitempty"`
	MicroCmd string      `json:"micro_cmd,omitempty"`
	Loads    dist        `json:"loads"`
	IOWaits  dist        `json:"io_waits,omitempty"` // ms waited for quiet I/O before each run
	IONoisy  int         `json:"io_noisy,omitempty"` // runs started with the I/O still busy
	Results  []runResult `json:"results"`
	// Remeasured lists the cells measured again after the run (bench rerun).
	Remeasured []remeasure `json:"remeasured,omitempty"`
}

// loadSaved reads a saved run and the plan it was measured with.
func loadSaved(path string) (savedRun, plan, error) {
	var sr savedRun
	raw, err := os.ReadFile(path)
	if err != nil {
		return sr, plan{}, err
	}
	if err := json.Unmarshal(raw, &sr); err != nil {
		return sr, plan{}, fmt.Errorf("%s: %w", path, err)
	}
	p := quickPlan()
	if sr.Full {
		p = fullPlan()
	}
	p.Runs = sr.Runs
	return sr, p, nil
}

// reportMain rewrites the report from a saved run (to add the analysis of
// missed targets after the run, without measuring again).
func reportMain(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	from := fs.String("from", "results.json", "saved run (bench -json)")
	out := fs.String("out", "../BENCHMARKS.md", "report to write")
	micro := fs.String("micro", "", "micro benchmark output to append to the report (default: the one saved with the run)")
	microCmd := fs.String("micro-cmd", "", "the command that wrote -micro (for the report)")
	analysis := fs.String("analysis", "analysis.md", "hand-written analysis of missed targets to include (\"\": none)")
	work := fs.String("work", ".work", "where the layouts were (for the file system line)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sr, p, err := loadSaved(*from)
	if err != nil {
		return err
	}
	r, err := newRunner(p, *work)
	if err != nil {
		return err
	}
	defer os.Remove(r.work) // only if empty: newRunner made it
	r.results, r.loads, r.ioWaits, r.ioNoisy = sr.Results, sr.Loads, sr.IOWaits, sr.IONoisy
	r.remeasured = sr.Remeasured
	if *micro == "" && sr.Micro != "" {
		f, err := os.CreateTemp("", "bench-micro-*.out")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		if _, err := f.WriteString(sr.Micro); err != nil {
			return err
		}
		f.Close()
		*micro = f.Name()
		if *microCmd == "" {
			*microCmd = sr.MicroCmd
		}
	}
	return r.writeReport(*out, reportInfo{started: sr.Started, wall: time.Duration(sr.WallNs), micro: *micro, microCmd: *microCmd, analysis: *analysis, versions: sr.Versions})
}
