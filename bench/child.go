package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// childResult is what one child process measured, printed as JSON on stdout.
type childResult struct {
	OpenMs float64 `json:"open_ms"`
	// LookupMs (open scenarios) is the first lookup after open: one
	// Resolve of a tag, for the peers that have one. ocistore's lazy open
	// leaves index.json unread: its first lookup parses it.
	LookupMs float64   `json:"lookup_ms,omitempty"`
	OpsMs    []float64 `json:"ops_ms,omitempty"` // one per operation
	TotalMs  float64   `json:"total_ms"`         // the measured section
	// ReclaimedMs (delete-half) is from the start of the measured section
	// until the freed space is back in the file system: ocistore unlinks
	// the blobs a large transaction took out of the layout in the
	// background (store.WaitReclaimed); the peers unlink in the call.
	ReclaimedMs float64 `json:"reclaimed_ms,omitempty"`
	Errors      int     `json:"errors"`
	// Attempted are the tags the child tried to delete (delete-one and
	// concurrent stop starting deletes once their budget is spent).
	Attempted []string `json:"attempted,omitempty"`
	// PeakKiB is this process's peak RSS (VmHWM of /proc/self/status);
	// for the CLI scenarios (scale.go), the largest of OpsRSSKiB; for a
	// pull by command-line processes, the largest ru_maxrss of those
	// processes.
	PeakKiB int64 `json:"peak_kib"`
	// OpsRSSKiB (CLI scenarios) is each CLI process's peak RSS (wait4's
	// ru_maxrss), one per operation, and SelfKiB this child's own peak.
	OpsRSSKiB []int64 `json:"ops_rss_kib,omitempty"`
	SelfKiB   int64   `json:"self_kib,omitempty"`
	// ToolCPUMs (pulls by command-line processes) is their CPU time, user
	// and system, and LauncherKiB this process's resident size when it
	// started them: a floor of their ru_maxrss (see pullChild).
	ToolCPUMs   float64 `json:"tool_cpu_ms,omitempty"`
	LauncherKiB int64   `json:"launcher_kib,omitempty"`
	ErrMsg      string  `json:"err_msg,omitempty"`
}

const (
	scDeleteOne  = "delete-one"
	scDeleteHalf = "delete-half"
	scOpen       = "open"
	scOpenCold   = "open-cold" // ocistore's first open of a fresh copy: index.json's stamp unknown
	scAdopt      = "adopt"
	scIngest     = "ingest"
	scIngestPar  = "ingest-parallel" // blobs written at once through one handle
	scConcurrent = "concurrent"
)

// Which tags each scenario deletes (the parent checks the same lists).
func pickSpread(n, k int) []string {
	if k > n {
		k = n
	}
	out := make([]string, 0, k)
	for i := 0; i < k; i++ {
		out = append(out, tagOf((i*n)/k+(n/k)/2))
	}
	return out
}

func pickHalf(n int) []string {
	out := make([]string, 0, n/2+1)
	for i := 0; i < n; i += 2 {
		out = append(out, tagOf(i))
	}
	return out
}

func remaining(n int, gone []string) []string {
	g := make(map[string]bool, len(gone))
	for _, t := range gone {
		g[t] = true
	}
	var keep []string
	for i := 0; i < n; i++ {
		if !g[tagOf(i)] {
			keep = append(keep, tagOf(i))
		}
	}
	return keep
}

func (r *childResult) fail(err error) {
	r.Errors++
	if r.ErrMsg == "" {
		r.ErrMsg = err.Error()
	}
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// childMain runs one scenario once, for one peer, in this process (so that
// the parent reads this process's peak RSS), and prints a childResult.
func childMain(args []string) error {
	fs := flag.NewFlagSet("child", flag.ContinueOnError)
	scenario := fs.String("scenario", "", "scenario")
	peerName := fs.String("peer", "", "peer")
	dir := fs.String("dir", "", "layout")
	n := fs.Int("n", 0, "images in the layout")
	k := fs.Int("k", 0, "images to delete")
	workers := fs.Int("workers", 8, "goroutines (concurrent)")
	size := fs.Int64("size", 0, "blob size (ingest)")
	seed := fs.Uint64("seed", 1, "blob seed (ingest)")
	dg := fs.String("digest", "", "blob digest (ingest); ingest-parallel: one per blob, comma-separated")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the measured section")
	registryHost := fs.String("registry", "", "pull: the registry's host:port")
	repoName := fs.String("repo", "", "pull: the repository")
	budget := fs.Duration("budget", 0, "delete-one, concurrent: start no delete after this long (0: no limit; at least one delete runs)")
	cli := fs.String("cli", "", "the ocistore CLI (cli-* scenarios, pull)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	res := &childResult{}
	if isCLI(*scenario) {
		if err := cliChild(ctx, res, *scenario, *cli, *dir, *n, *k, *budget); err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	startProfile := func() func() {
		if *cpuprofile == "" {
			return func() {}
		}
		f, err := os.Create(*cpuprofile)
		if err != nil {
			res.fail(err)
			return func() {}
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			res.fail(err)
			return func() {}
		}
		return func() { pprof.StopCPUProfile(); f.Close() }
	}

	toolRSS := false
	switch *scenario {
	case scPull, scPullMany:
		stop := startProfile()
		err := pullChild(ctx, res, *scenario, *peerName, *dir, *registryHost, *repoName, *cli, *n)
		stop()
		if err != nil {
			return err
		}
		toolRSS = *peerName != pOcistoreLib
	case scIngest, scIngestPar:
		mk, ok := ingesters[*peerName]
		if !ok {
			return fmt.Errorf("no ingester %q", *peerName)
		}
		put, done, err := mk(ctx, *dir)
		if err != nil {
			return err
		}
		// One blob, or (ingest-parallel) one per digest, seeds seed,
		// seed+1, ...: each goroutine writes its own.
		dgs := strings.Split(*dg, ",")
		srcs := make([]*blobStream, len(dgs))
		for i := range srcs {
			srcs[i] = newBlobStream(*size, *seed+uint64(i))
		}
		stop := startProfile()
		t0 := time.Now()
		errs := make([]error, len(dgs))
		if len(dgs) == 1 || *peerName == pLimitHash {
			// The hash limit is one core: the blobs one after the other.
			for i, d := range dgs {
				errs[i] = put(ctx, digest.Digest(d), *size, srcs[i])
			}
		} else {
			var wg sync.WaitGroup
			for i, d := range dgs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = put(ctx, digest.Digest(d), *size, srcs[i])
				}()
			}
			wg.Wait()
		}
		res.TotalMs = ms(time.Since(t0))
		stop()
		done()
		for _, err := range errs {
			if err != nil {
				res.fail(err)
			}
		}
	default:
		p, err := peerByName(*peerName)
		if err != nil {
			return err
		}
		var stop func()
		if *scenario == scAdoption {
			*scenario = scAdopt // the same run; the parent keeps the two apart
		}
		if *scenario == scOpen || *scenario == scOpenCold || *scenario == scAdopt {
			stop = startProfile()
		}
		t0 := time.Now()
		h, err := p.open(ctx, *dir)
		res.OpenMs = ms(time.Since(t0))
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		switch *scenario {
		case scOpen, scOpenCold, scAdopt:
			stop()
			res.TotalMs = res.OpenMs
			if lr, ok := h.(resolver); ok && *scenario != scAdopt {
				t1 := time.Now()
				if err := lr.resolve(ctx, tagOf(*n/2)); err != nil {
					res.fail(fmt.Errorf("resolve: %w", err))
				}
				res.LookupMs = ms(time.Since(t1))
			}
		case scDeleteOne:
			stop = startProfile()
			t1 := time.Now()
			for i, t := range pickSpread(*n, *k) {
				if i > 0 && *budget > 0 && time.Since(t1) > *budget {
					break
				}
				res.Attempted = append(res.Attempted, t)
				t2 := time.Now()
				if err := h.deleteOne(ctx, t); err != nil {
					res.fail(fmt.Errorf("%s: %w", t, err))
				}
				res.OpsMs = append(res.OpsMs, ms(time.Since(t2)))
			}
			res.TotalMs = ms(time.Since(t1))
			stop()
		case scDeleteHalf:
			stop = startProfile()
			t1 := time.Now()
			if err := h.deleteBatch(ctx, pickHalf(*n)); err != nil {
				res.fail(err)
			}
			res.TotalMs = ms(time.Since(t1))
			stop()
			if rw, ok := h.(reclaimWaiter); ok {
				if err := rw.waitReclaimed(ctx); err != nil {
					res.fail(err)
				}
			}
			res.ReclaimedMs = ms(time.Since(t1))
		case scConcurrent:
			tags := pickSpread(*n, *k)
			var mu sync.Mutex
			var wg sync.WaitGroup
			stop = startProfile()
			t1 := time.Now()
			for w := 0; w < *workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := w; i < len(tags); i += *workers {
						if i >= *workers && *budget > 0 && time.Since(t1) > *budget {
							return
						}
						mu.Lock()
						res.Attempted = append(res.Attempted, tags[i])
						mu.Unlock()
						t2 := time.Now()
						err := h.deleteOne(ctx, tags[i])
						d := ms(time.Since(t2))
						mu.Lock()
						res.OpsMs = append(res.OpsMs, d)
						if err != nil {
							res.fail(fmt.Errorf("%s: %w", tags[i], err))
						}
						mu.Unlock()
					}
				}(w)
			}
			wg.Wait()
			res.TotalMs = ms(time.Since(t1))
			stop()
		default:
			return fmt.Errorf("unknown scenario %q", *scenario)
		}
		if err := h.close(); err != nil {
			res.fail(err)
		}
	}
	if !toolRSS {
		res.PeakKiB = vmHWM()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// vmHWM reads this process's peak resident set size, in KiB.
func vmHWM() int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}
