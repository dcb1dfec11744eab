// Command bench measures ocistore against containers/image, oras-go and
// go-containerregistry on the same generated OCI layouts, in one run, and
// writes the report: BENCHMARKS.md for a full run (-full), quick.md for a
// quick one (see outputs). It is its own module so that the main module
// never depends on the peers.
//
//	bench [-full] [-out REPORT] [-micro ../bench.out]           every scenario, then the report
//	bench one -scenario S -peer P -n N [-k K] [-cpuprofile F]   one run of one cell
//	bench report -from results.json [-out ...] [-micro ...]      rewrite the report from a run's saved results
//	bench rerun -from results.json -scenario S -peer P [-n N,...] measure one peer's cells again, in place of its saved runs
//	bench scale -n N,... [-parts adoption,delete,cli] [-template DIR]  the adoption table and the scale rows only
//	bench serve [-full] [-rows blob,tags,push,prune] [-into results.json] [-profile DIR]  the registry server rows only
//	bench gen -n N [-layer-size B] DIR                           write a layout
//	bench child ...                                              (internal: one run, in its own process)
//	bench srvproc -mode fileserver|ocistore -dir DIR             (internal: a server of the serve rows, in its own process)
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
		case "scale":
			err = scaleMain(os.Args[2:])
		case "serve":
			err = serveMain(os.Args[2:])
		case "srvproc":
			err = srvprocMain(os.Args[2:])
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
	return &runner{plan: p, self: self, repo: "..", work: work, log: os.Stderr,
		templates: map[int]string{}, adopted: map[int]string{}, genTime: map[int]time.Duration{}}, nil
}

// Where a run writes. A full run's report is the published BENCHMARKS.md,
// its raw results results.json (which `bench report` and `bench rerun`
// read), and the report includes the hand-written analysis of that run. A
// quick run (the default: the small sizes, a smoke test of the machine)
// writes quick.md and quick.json (gitignored) and never the full run's
// files: its tables would replace the full-size ones.
const (
	fullReport  = "../BENCHMARKS.md"
	fullJSON    = "results.json"
	fullNotes   = "analysis.md"
	quickReport = "quick.md"
	quickJSON   = "quick.json"
)

// outputs are the files a run writes (report, raw results) and the analysis
// its report includes ("": none).
type outputs struct {
	report, json, analysis string
}

// chooseOutputs returns the mode's outputs, with the values of the flags
// out, json and analysis given on the command line (set) in their place. A
// quick run may not write the full run's report or results.
func chooseOutputs(full bool, set map[string]string) (outputs, error) {
	o := outputs{report: quickReport, json: quickJSON}
	if full {
		o = outputs{report: fullReport, json: fullJSON, analysis: fullNotes}
	}
	if v, ok := set["out"]; ok {
		o.report = v
	}
	if v, ok := set["json"]; ok {
		o.json = v
	}
	if v, ok := set["analysis"]; ok {
		o.analysis = v
	}
	if o.report == "" {
		return o, fmt.Errorf("-out: no report file given")
	}
	if !full {
		if samePath(o.report, fullReport) || filepath.Base(o.report) == filepath.Base(fullReport) {
			return o, fmt.Errorf("-out %s: a quick run does not write %s, whose tables are the full run's: run with -full (BENCH_FULL=1), or write elsewhere (default %s)", o.report, filepath.Base(fullReport), quickReport)
		}
		if o.json != "" && samePath(o.json, fullJSON) {
			return o, fmt.Errorf("-json %s: a quick run does not replace the full run's saved results: run with -full (BENCH_FULL=1), or write elsewhere (default %s)", o.json, quickJSON)
		}
	}
	return o, nil
}

// samePath reports whether a and b name the same file, relative to the
// working directory.
func samePath(a, b string) bool {
	aa, err1 := filepath.Abs(a)
	bb, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && aa == bb
}

// setFlags returns the flags of fs given on the command line, by name.
func setFlags(fs *flag.FlagSet) map[string]string {
	set := map[string]string{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = f.Value.String() })
	return set
}

func benchMain(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	full := fs.Bool("full", os.Getenv("BENCH_FULL") != "" && os.Getenv("BENCH_FULL") != "0", "all sizes (default: quick; also BENCH_FULL=1)")
	fs.String("out", "", "report to write (default: "+fullReport+" with -full, else "+quickReport+"; a quick run never writes "+filepath.Base(fullReport)+")")
	micro := fs.String("micro", "", "micro benchmark output to append to the report")
	microCmd := fs.String("micro-cmd", "", "the command that wrote -micro (for the report)")
	fs.String("analysis", "", "hand-written analysis of missed targets to include (default: "+fullNotes+" with -full, else none)")
	work := fs.String("work", ".work", "scratch directory for the layouts (removed at the end)")
	keep := fs.Bool("keep", false, "keep the scratch directory")
	runs := fs.Int("runs", 0, "runs per cell (0: the mode's)")
	repo := fs.String("repo", "..", "the main module's checkout (for its commit)")
	fs.String("json", "", "also write the run's raw results as JSON here, for `bench report` (default: "+fullJSON+" with -full, else "+quickJSON+"; set to \"\": none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o, err := chooseOutputs(*full, setFlags(fs))
	if err != nil {
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
	r.repo = *repo
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
	if o.json != "" {
		sr := savedRun{Full: p.Full, Runs: p.Runs, Started: started, WallNs: int64(wall), Versions: vers, Loads: r.loads, IOWaits: r.ioWaits, IONoisy: r.ioNoisy, Results: r.results, MicroCmd: *microCmd}
		if *micro != "" {
			if m, err := os.ReadFile(*micro); err == nil {
				sr.Micro = string(m)
			}
		}
		raw, _ := json.MarshalIndent(sr, "", " ")
		if err := os.WriteFile(o.json, raw, 0o644); err != nil {
			return err
		}
	}
	if err := r.writeReport(o.report, reportInfo{started: started, wall: wall, micro: *micro, microCmd: *microCmd, analysis: o.analysis, results: o.json, versions: vers}); err != nil {
		return err
	}
	r.logf("wrote %s (%s)", o.report, wall.Round(time.Second))
	return nil
}

// oneMain runs one cell once (for profiling a scenario): it generates the
// layout, copies it and runs the child with the given flags, printing the
// child's result and its peak RSS.
func oneMain(args []string) error {
	fs := flag.NewFlagSet("one", flag.ContinueOnError)
	scenario := fs.String("scenario", scDeleteOne, "delete-one, delete-half, open, open-cold, ingest, ingest-parallel, concurrent, adopt (adoption: the same), pull, pull-many, cli-rm, cli-ls, cli-ls-json, cli-du, cli-fsck")
	peerName := fs.String("peer", pOcistore, "peer")
	n := fs.Int("n", 1000, "images (pull-many: the small images)")
	k := fs.Int("k", 10, "images to delete")
	size := fs.Int64("size", 1<<30, "bytes: ingest, the blob; ingest-parallel, the total of the blobs; pull, the image's content")
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
	case scPull, scPullMany:
		// A registry seeded with one image of -size bytes (pull) or -n
		// small images (pull-many), one run.
		var big int64
		small := 0
		if *scenario == scPull {
			big = *size
		} else {
			small = *n
		}
		ps, err := r.setupPull(big, small)
		if err != nil {
			return err
		}
		defer ps.rp.stop()
		r.cpuprofile = extra
		if err := r.pullOnce(ps, *scenario, *peerName, 1); err != nil {
			return err
		}
		raw, _ := json.MarshalIndent(r.results[len(r.results)-1], "", " ")
		fmt.Println(string(raw))
		return nil
	case scIngest, scIngestPar:
		count := 1
		if *scenario == scIngestPar {
			count = p.IngestParallel
		}
		dgs, err := ingestDigests(*size/int64(count), count)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		extra = append(extra, "-size", strconv.FormatInt(*size/int64(count), 10), "-seed", strconv.Itoa(ingestSeed), "-digest", dgs)
	case scAdopt, scAdoption:
		if _, err := r.template(*n, pCImage); err != nil {
			return err
		}
		r.remove(dir)
		if err := copyLayout(r.templates[*n], dir); err != nil {
			return err
		}
	case scCLIRm, scCLILs, scCLILsJSON, scCLIDu, scCLIFsck:
		bin, err := r.cli()
		if err != nil {
			return err
		}
		extra = append(extra, "-cli", bin)
		if err := r.copyFor(*n, pOcistore, dir, false); err != nil {
			return err
		}
	default:
		if err := r.copyFor(*n, *peerName, dir, *scenario == scOpenCold); err != nil {
			return err
		}
	}
	rr := r.child(*scenario, *peerName, *n, *k, 1, dir, extra)
	if *scenario != scIngest && *scenario != scIngestPar {
		var gone []string
		switch *scenario {
		case scDeleteOne, scConcurrent, scCLIRm:
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
	fs.String("out", "", "report to write (default: "+fullReport+" for a full run, else "+quickReport+"; a quick run's never goes to "+filepath.Base(fullReport)+")")
	micro := fs.String("micro", "", "micro benchmark output to append to the report (default: the one saved with the run)")
	microCmd := fs.String("micro-cmd", "", "the command that wrote -micro (for the report)")
	fs.String("analysis", "", "hand-written analysis of missed targets to include (default: "+fullNotes+" for a full run, else none)")
	work := fs.String("work", ".work", "where the layouts were (for the file system line)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sr, p, err := loadSaved(*from)
	if err != nil {
		return err
	}
	o, err := chooseOutputs(sr.Full, setFlags(fs))
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
	return r.writeReport(o.report, reportInfo{started: sr.Started, wall: time.Duration(sr.WallNs), micro: *micro, microCmd: *microCmd, analysis: o.analysis, results: *from, versions: sr.Versions})
}
