package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocistore/ocistore/store"
)

// sizeK is a layout size and how many images a scenario deletes from it.
type sizeK struct{ N, K int }

// plan is what one `make bench` measures.
type plan struct {
	Full       bool
	Runs       int
	DeleteOne  []sizeK // scenario 1
	DeleteHalf []int   // scenario 2
	OpenN      int     // scenario 3
	IngestSize int64   // scenario 4: one blob of this size
	// IngestParallel blobs of IngestSize/IngestParallel bytes each are
	// written at once, through one handle (scenario 4, parallel).
	IngestParallel int
	Concurrent     []sizeK // scenario 5
	// Scenario 7: a pull of one image of PullLayers layers, PullSize bytes
	// of content in all, and of PullImages small images.
	PullSize   int64
	PullLayers int
	PullImages int
	Workers    int
	// Adopt are the sizes of the adoption table (ocistore's first open of
	// a foreign layout against oras-go's open); Scale the sizes of the
	// scale rows (library delete, the CLI, the journal's size), ScaleK
	// the deletes there (scale.go).
	Adopt  []int
	Scale  []int
	ScaleK int
	// Serve are the sizes of the registry server rows (serve.go).
	Serve   serveSizes
	Timeout time.Duration // per child process
	Budget  time.Duration // a first run longer than this is not repeated; deletes one at a time stop after it
	// MaxN[scenario][peer] is the largest N a peer runs a scenario at: past
	// it, a single call costs minutes (go-containerregistry's GarbageCollect
	// re-parses index.json for every image: O(N²)).
	MaxN map[string]map[string]int
}

func quickPlan() plan {
	return plan{
		Runs:           3,
		DeleteOne:      []sizeK{{100, 10}, {1000, 10}, {5000, 5}},
		DeleteHalf:     []int{1000, 5000},
		OpenN:          5000,
		IngestSize:     256 << 20,
		IngestParallel: 8,
		Concurrent:     []sizeK{{1000, 16}},
		PullSize:       128 << 20,
		PullLayers:     8,
		PullImages:     30,
		Workers:        8,
		Adopt:          []int{100, 1000, 5000},
		Scale:          []int{5000},
		ScaleK:         10,
		Serve:          quickServe(),
		Timeout:        10 * time.Minute,
		Budget:         5 * time.Second,
		MaxN: map[string]map[string]int{
			scDeleteOne:  {pGGCR: 100},
			scDeleteHalf: {pGGCR: 1000, pCImage: 0, pOras: 1000},
			scConcurrent: {pGGCR: 100},
		},
	}
}

func fullPlan() plan {
	return plan{
		Full:           true,
		Runs:           3,
		DeleteOne:      []sizeK{{100, 20}, {1000, 20}, {5000, 10}, {20000, 10}},
		DeleteHalf:     []int{1000, 5000, 20000},
		OpenN:          20000,
		IngestSize:     1 << 30,
		IngestParallel: 8,
		Concurrent:     []sizeK{{5000, 32}, {20000, 16}},
		PullSize:       1 << 30,
		PullLayers:     8,
		PullImages:     500,
		Workers:        8,
		Adopt:          []int{100, 1000, 5000, 20000, 100000},
		Scale:          []int{20000, 100000},
		ScaleK:         10,
		Serve:          fullServe(),
		Timeout:        10 * time.Minute,
		Budget:         30 * time.Second,
		MaxN: map[string]map[string]int{
			scDeleteOne:  {pGGCR: 1000, pOrasGC: 20000},
			scDeleteHalf: {pGGCR: 5000, pCImage: 1000, pOras: 5000},
			scConcurrent: {pGGCR: 1000},
		},
	}
}

// runResult is one child run as the parent saw it.
type runResult struct {
	Scenario  string        `json:"scenario"`
	Peer      string        `json:"peer"`
	N         int           `json:"n"`
	K         int           `json:"k"`
	Run       int           `json:"run"`
	Res       childResult   `json:"result"`
	WallMs    float64       `json:"wall_ms"`     // the child process, start to exit
	MaxRSSKiB int64         `json:"max_rss_kib"` // the child's VmHWM
	CPUMs     float64       `json:"cpu_ms"`      // the child's user+system time
	Check     *checkReport  `json:"check,omitempty"`
	Journal   *journalStats `json:"journal,omitempty"` // scenario journal: the journal's size (scale.go)
	Bytes     int64         `json:"bytes,omitempty"`   // pull: the bytes of the image's blobs
	Serve     *serveStats   `json:"serve,omitempty"`   // the registry server rows (serve.go)
	Err       string        `json:"err,omitempty"`     // the child failed as a whole
	Note      string        `json:"note,omitempty"`
}

type runner struct {
	plan plan
	self string // this executable
	repo string // the main module's checkout (the CLI a pull runs is built from it)
	// noWait starts children without waiting for quiet I/O (tests).
	noWait bool
	// cpuprofile is passed to the children of a pull (bench one).
	cpuprofile []string
	work       string // scratch directory (same file system as the layouts measured)
	log        io.Writer
	results    []runResult
	// templates[N] is the plain layout; adopted[N] the same after ocistore's first open.
	templates  map[int]string
	adopted    map[int]string
	genTime    map[int]time.Duration
	loads      dist        // 1-minute load average at each child's start
	ioWaits    dist        // ms waited for quiet I/O before each child (ioQuiet)
	ioNoisy    int         // children started with the I/O still busy after ioQuietMax
	reuse      bool        // templates already in work are used as they are (bench one -keep)
	only       string      // bench rerun: the one peer the delete scenarios run
	cliBin     string      // the CLI built from repo, once per run
	remeasured []remeasure // bench report: cells measured again after the run
	profDir    string      // bench serve -profile: ocistore's server in-process, CPU profiles here
}

// ioQuiet waits, up to ioQuietMax, until the machine's I/O is quiet: some
// task stalled on I/O for less than ioQuietShare of a 200 ms window, per
// /proc/pressure/io. The cleanup before a run (a copy of tens of thousands
// of files removed, on a file system mounted with discard, then a new one
// written and synced) otherwise goes on during it, and lands on the fsyncs
// of whichever peer runs next. It returns how long it waited and whether
// the I/O was quiet (true when the kernel reports no pressure).
func ioQuiet() (time.Duration, bool) {
	const window = 200 * time.Millisecond
	t0 := time.Now()
	prev, ok := ioStalled()
	if !ok {
		return 0, true
	}
	for time.Since(t0) < ioQuietMax {
		time.Sleep(window)
		now, _ := ioStalled()
		if float64(now-prev) < ioQuietShare*float64(window.Microseconds()) {
			return time.Since(t0), true
		}
		prev = now
	}
	return time.Since(t0), false
}

const (
	ioQuietMax   = 15 * time.Second
	ioQuietShare = 0.02
)

// ioStalled is the total time, in µs, some task was stalled on I/O
// (/proc/pressure/io, "some" line).
func ioStalled() (int64, bool) {
	raw, err := os.ReadFile("/proc/pressure/io")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

func loadavg() float64 {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return math.NaN()
	}
	f := strings.Fields(string(raw))
	if len(f) == 0 {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

func (r *runner) logf(format string, a ...any) {
	fmt.Fprintf(r.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

// syncfs flushes the file system holding dir, so that the dirty pages left
// by copying (or by the previous run) are not charged to the next run's
// first fsync.
func syncfs(dir string) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Syncfs(int(f.Fd()))
}

func copyLayout(src, dst string) error {
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
	syncfs(dst)
	return nil
}

// settleAfter is how long after a copy ocistore's settling open runs: past
// the engine's racy window (recovery.racyWindow, 2 s), so that the stamp it
// notes is trusted by the next open.
const settleAfter = 2500 * time.Millisecond

// settle makes a fresh copy of an ocistore layout what a layout ocistore
// manages looks like between two commands. The journal vouches for
// index.json by its stamp (inode, size, mtime, ctime); `cp -a` gives the
// copy a new inode and ctime, so the first open of a copy reads, hashes and
// parses index.json and notes the new stamp. That open, untimed, runs here,
// once the racy window since the copy has passed; the measured open that
// follows is then the lazy one (index.json not read, the first operation
// that needs it parses it). The first open of a copy is measured apart
// (scenario 3, "stamp unknown").
func settle(dir string, copied time.Time) error {
	if d := settleAfter - time.Since(copied); d > 0 {
		time.Sleep(d)
	}
	s, err := store.Open(context.Background(), dir, &store.Options{NoCreate: true})
	if err != nil {
		return fmt.Errorf("settle %s: %w", dir, err)
	}
	return s.Close()
}

// copyFor copies the template of n images for a peer (r.template) to dir,
// settled for ocistore unless cold.
func (r *runner) copyFor(n int, peerName, dir string, cold bool) error {
	tmpl, err := r.template(n, peerName)
	if err != nil {
		return err
	}
	r.remove(dir)
	if err := copyLayout(tmpl, dir); err != nil {
		return err
	}
	if peerName != pOcistore || cold {
		return nil
	}
	return settle(dir, time.Now())
}

func (r *runner) remove(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		r.logf("warning: remove %s: %v", dir, err)
	}
}

// template returns the layout of n images for a peer: the generated one, or
// for ocistore the same after its first open (adoption builds the journal;
// an ocistore layout in use has one).
func (r *runner) template(n int, peerName string) (string, error) {
	if r.reuse {
		dir := filepath.Join(r.work, fmt.Sprintf("tmpl-%d", n))
		if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
			r.templates[n] = dir
		}
		if _, err := os.Stat(filepath.Join(dir+"-ocistore", "index.json")); err == nil {
			r.adopted[n] = dir + "-ocistore"
		}
	}
	if _, ok := r.templates[n]; !ok {
		dir := filepath.Join(r.work, fmt.Sprintf("tmpl-%d", n))
		r.remove(dir)
		t0 := time.Now()
		st, err := generate(dir, genSpec{Images: n, Seed: uint64(n)})
		if err != nil {
			return "", err
		}
		r.genTime[n] = time.Since(t0)
		r.logf("generated %d images (%d blobs, %d bytes) in %s", st.Images, st.Blobs, st.Bytes, time.Since(t0).Round(time.Millisecond))
		r.templates[n] = dir
	}
	if peerName != pOcistore {
		return r.templates[n], nil
	}
	if _, ok := r.adopted[n]; !ok {
		dir := r.adoptedDir(n)
		r.remove(dir)
		if err := copyLayout(r.templates[n], dir); err != nil {
			return "", err
		}
		res := r.child(scAdopt, pOcistore, n, 0, 1, dir, nil)
		if res.Err != "" {
			return "", fmt.Errorf("adopt: %s", res.Err)
		}
		r.adopted[n] = dir
	}
	return r.adopted[n], nil
}

// adoptedDir is where the adopted template of n images goes (in the
// scratch directory, whatever the plain template's place).
func (r *runner) adoptedDir(n int) string {
	return filepath.Join(r.work, fmt.Sprintf("tmpl-%d-ocistore", n))
}

// child runs one scenario in a child process and records it.
func (r *runner) child(scenario, peerName string, n, k, run int, dir string, extra []string) runResult {
	args := append([]string{"child", "-scenario", scenario, "-peer", peerName, "-dir", dir,
		"-n", strconv.Itoa(n), "-k", strconv.Itoa(k), "-workers", strconv.Itoa(r.plan.Workers),
		"-budget", r.plan.Budget.String()}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), r.plan.Timeout)
	defer cancel()
	if !r.noWait {
		waited, quiet := ioQuiet()
		r.ioWaits = append(r.ioWaits, ms(waited))
		if !quiet {
			r.ioNoisy++
		}
	}
	r.loads = append(r.loads, loadavg())
	cmd := exec.CommandContext(ctx, r.self, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	err := cmd.Run()
	rr := runResult{Scenario: scenario, Peer: peerName, N: n, K: k, Run: run, WallMs: ms(time.Since(t0))}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			// ru_maxrss of a child started with vfork keeps the parent's
			// high-water mark across exec: only a fallback for VmHWM.
			rr.MaxRSSKiB = ru.Maxrss // KiB on Linux
			rr.CPUMs = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
		}
	}
	switch {
	case ctx.Err() != nil:
		rr.Err = fmt.Sprintf("did not finish in %s", r.plan.Timeout)
	case err != nil:
		rr.Err = strings.TrimSpace(fmt.Sprintf("%v: %s", err, lastLine(stderr.String())))
	default:
		if err := json.Unmarshal(stdout.Bytes(), &rr.Res); err != nil {
			rr.Err = fmt.Sprintf("child output: %v", err)
		}
		if rr.Res.PeakKiB > 0 {
			rr.MaxRSSKiB = rr.Res.PeakKiB
		}
		if rr.Res.Attempted != nil && len(rr.Res.Attempted) < k {
			rr.K = len(rr.Res.Attempted)
			rr.Note = fmt.Sprintf("%d of %d deletes within the %s budget", rr.K, k, r.plan.Budget)
		}
	}
	r.results = append(r.results, rr)
	status := "ok"
	if rr.Err != "" {
		status = rr.Err
	} else if rr.Res.Errors > 0 {
		status = fmt.Sprintf("%d errors: %s", rr.Res.Errors, rr.Res.ErrMsg)
	}
	r.logf("%-12s %-22s N=%-6d run %d: open %.1f ms, measured %.1f ms, rss %d MiB: %s",
		scenario, peerName, n, run, rr.Res.OpenMs, rr.Res.TotalMs, rr.MaxRSSKiB/1024, status)
	return rr
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// deleting runs a delete scenario (1, 2, 5) for every peer, r.plan.Runs times.
func (r *runner) deleting(scenario string, n, k int, gone []string) error {
	long := map[string]bool{}
	skip := map[string]string{}
	for name, max := range r.plan.MaxN[scenario] {
		if n > max {
			skip[name] = fmt.Sprintf("not run above N=%d (%s)", max, slowWhy[name])
			if max == 0 {
				skip[name] = fmt.Sprintf("not run in this mode (%s)", slowWhy[name])
			}
		}
	}
	for run := 1; run <= r.plan.Runs; run++ {
		for _, p := range peers {
			if r.only != "" && p.name != r.only {
				continue
			}
			if why, ok := skip[p.name]; ok {
				if run == 1 {
					r.results = append(r.results, runResult{Scenario: scenario, Peer: p.name, N: n, K: k, Run: 1, Note: why})
				}
				continue
			}
			if long[p.name] {
				continue
			}
			dir := filepath.Join(r.work, "run")
			if err := r.copyFor(n, p.name, dir, false); err != nil {
				return err
			}
			rr := r.child(scenario, p.name, n, k, run, dir, nil)
			did := gone
			if rr.Res.Attempted != nil {
				did = rr.Res.Attempted
			}
			chk, err := checkLayout(dir, remaining(n, did), did)
			if err != nil {
				return err
			}
			last := &r.results[len(r.results)-1]
			last.Check = chk
			if rr.WallMs > float64(r.plan.Budget.Milliseconds()) || rr.Err != "" {
				long[p.name] = true
				if run < r.plan.Runs && last.Note == "" {
					last.Note = fmt.Sprintf("run once: a run takes %.0f s", rr.WallMs/1000)
				}
			}
			r.remove(dir)
		}
	}
	return nil
}

var slowWhy = map[string]string{
	pGGCR:   "`GarbageCollect` re-reads index.json for every image: O(N²) per call",
	pCImage: "no batch API: N/2 `DeleteImage` calls, each reading every manifest",
	pOras:   "`Delete` copies its tag map per call: O(N²) over a batch",
	pOrasGC: "`GC` reads every manifest again and lists every blob in each call: seconds per delete at N=20000",
}

func (r *runner) opening(n int) error {
	for _, p := range peers {
		if !p.opens || p.name == pOrasGC {
			continue
		}
		dir := filepath.Join(r.work, "run")
		if err := r.copyFor(n, p.name, dir, false); err != nil {
			return err
		}
		for run := 1; run <= r.plan.Runs; run++ {
			r.child(scOpen, p.name, n, 0, run, dir, nil)
			chk, err := checkLayout(dir, remaining(n, nil), nil)
			if err != nil {
				return err
			}
			r.results[len(r.results)-1].Check = chk
		}
		r.remove(dir)
	}
	// ocistore's first open of a fresh copy: index.json has a stamp the
	// journal does not know, so it is read, hashed and parsed, and the new
	// stamp noted (one journal commit). A fresh copy per run.
	for run := 1; run <= r.plan.Runs; run++ {
		dir := filepath.Join(r.work, "run")
		if err := r.copyFor(n, pOcistore, dir, true); err != nil {
			return err
		}
		r.child(scOpenCold, pOcistore, n, 0, run, dir, nil)
		chk, err := checkLayout(dir, remaining(n, nil), nil)
		if err != nil {
			return err
		}
		r.results[len(r.results)-1].Check = chk
		r.remove(dir)
	}
	return nil
}

var ingestOrder = []string{pLimitHash, pOcistore, pLimitDisk, pCImage, pLimitDiskWB, pOras, pGGCR}

// ingestSeed is the generator's seed of the ingested blob (the parallel
// case's blobs: ingestSeed, ingestSeed+1, ...).
const ingestSeed = 7

// ingestDigests returns the digests of count blobs of size bytes from the
// generator, seeds ingestSeed on, comma-separated (the child's -digest).
func ingestDigests(size int64, count int) (string, error) {
	var dgs []string
	for i := 0; i < count; i++ {
		dg, err := streamDigest(size, ingestSeed+uint64(i))
		if err != nil {
			return "", err
		}
		dgs = append(dgs, dg)
	}
	return strings.Join(dgs, ","), nil
}

// ingesting runs scenario 4: one blob of IngestSize, then IngestParallel
// blobs of IngestSize/IngestParallel written at once through one handle,
// for every peer and both limits.
func (r *runner) ingesting() error {
	cases := []struct {
		scenario string
		size     int64
		count    int
	}{{scIngest, r.plan.IngestSize, 1}, {scIngestPar, r.plan.IngestSize / int64(r.plan.IngestParallel), r.plan.IngestParallel}}
	for _, c := range cases {
		t0 := time.Now()
		dgs, err := ingestDigests(c.size, c.count)
		if err != nil {
			return err
		}
		r.logf("%s: %d blob(s) of %d bytes (hashed in %s)", c.scenario, c.count, c.size, time.Since(t0).Round(time.Millisecond))
		for run := 1; run <= r.plan.Runs; run++ {
			// The order rotates from run to run, so that no peer always
			// follows the same one.
			order := append(append([]string(nil), ingestOrder[(run-1)%len(ingestOrder):]...), ingestOrder[:(run-1)%len(ingestOrder)]...)
			for _, name := range order {
				if err := r.ingestOnce(c.scenario, name, run, c.size, dgs); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// ingestOnce runs one ingest child into a fresh empty directory and checks
// the blobs it wrote (the hash limit writes none).
func (r *runner) ingestOnce(scenario, name string, run int, size int64, dgs string) error {
	dir := filepath.Join(r.work, "ingest")
	r.remove(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	syncfs(dir)
	r.child(scenario, name, 0, 0, run, dir, []string{"-size", strconv.FormatInt(size, 10), "-seed", strconv.Itoa(ingestSeed), "-digest", dgs})
	last := &r.results[len(r.results)-1]
	if last.Err == "" && last.Res.Errors == 0 && name != pLimitHash {
		for _, dg := range strings.Split(dgs, ",") {
			if err := verifyBlob(dir, dg, size, run == 1); err != nil {
				last.Res.fail(fmt.Errorf("verify: %w", err))
				break
			}
		}
	}
	r.remove(dir)
	syncfs(r.work)
	return nil
}

// verifyBlob checks that the ingested blob is in place, with its size, and
// when deep, its digest.
func verifyBlob(dir, dg string, size int64, deep bool) error {
	p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(dg, "sha256:"))
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.Size() != size {
		return fmt.Errorf("%s: size %d, want %d", p, fi.Size(), size)
	}
	if !deep {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dg {
		return fmt.Errorf("%s: digest %s", p, got)
	}
	return nil
}

func (r *runner) runAll() error {
	p := r.plan
	for _, sk := range p.DeleteOne {
		if err := r.deleting(scDeleteOne, sk.N, sk.K, pickSpread(sk.N, sk.K)); err != nil {
			return err
		}
	}
	for _, n := range p.DeleteHalf {
		if err := r.deleting(scDeleteHalf, n, n/2, pickHalf(n)); err != nil {
			return err
		}
	}
	if err := r.opening(p.OpenN); err != nil {
		return err
	}
	if err := r.ingesting(); err != nil {
		return err
	}
	for _, sk := range p.Concurrent {
		if err := r.deleting(scConcurrent, sk.N, sk.K, pickSpread(sk.N, sk.K)); err != nil {
			return err
		}
	}
	if err := r.pulling(); err != nil {
		return err
	}
	if err := r.scaling(); err != nil {
		return err
	}
	rows := map[string]bool{}
	for _, s := range serveRows {
		rows[s] = true
	}
	return r.serving(rows)
}
