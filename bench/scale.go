package main

// The adoption table and the scale rows: ocistore's first open of a layout
// another tool wrote against oras-go's open at every size, and at the
// largest sizes the library delete, the CLI one process per command (rm,
// ls, fsck, du), the journal's size against index.json's, and the peak RSS
// of every command.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// scAdoption is one run of the adoption table, for ocistore (store.Open
	// of a fresh copy of a layout another tool wrote: the journal built,
	// every manifest read and counted) or oras-go (oci.NewWithContext of
	// the same: every manifest read into its graph). The child runs it as
	// scAdopt; the name keeps these runs apart from the adoptions that
	// made the templates.
	scAdoption = "adoption"
	// scJournal is no child: the parent's reading of a journal's size.
	scJournal = "journal"
	// The CLI scenarios: a child that runs the ocistore CLI, one process
	// per command, and reads each one's wall time and peak RSS.
	scCLIRm     = "cli-rm"
	scCLILs     = "cli-ls"
	scCLILsJSON = "cli-ls-json"
	scCLIDu     = "cli-du"
	scCLIFsck   = "cli-fsck"
)

// cliReads are the read-only commands measured, in the order they run, and
// cliArgs their arguments after `-l DIR`.
var (
	cliReads = []string{scCLILs, scCLILsJSON, scCLIDu, scCLIFsck}
	cliArgs  = map[string][]string{
		scCLILs:     {"ls"},
		scCLILsJSON: {"ls", "--format", "json"},
		scCLIDu:     {"du"},
		scCLIFsck:   {"fsck"},
	}
	cliLabel = map[string]string{
		scCLIRm:     "`ocistore rm TAG`, one process per delete",
		scCLILs:     "`ocistore ls`",
		scCLILsJSON: "`ocistore ls --format json`",
		scCLIDu:     "`ocistore du`",
		scCLIFsck:   "`ocistore fsck`",
	}
)

func isCLI(scenario string) bool { return strings.HasPrefix(scenario, "cli-") }

// Targets of the scale rows, at N=100,000 (scaleTargetN).
const (
	scaleTargetN         = 100000
	targetLibDeleteMs    = 100
	targetRmMs           = 300
	targetLsMs           = 1000
	targetFsckMs         = 5000
	targetJournalRatio   = 3
	targetCommandRSSMiB  = 512
	linearBaseN          = 5000 // the adoption's per-blob cost is compared with its cost at this size
	linearTolerance      = 1.5  // at most this many times the cost per blob at linearBaseN
	adoptionCheckEveryN  = 20000
	journalFile          = ".ocistore/journal.db" // the main module's protocol.JournalFile
	journalStateDir      = ".ocistore"
	journalAfterAdoption = "after adoption"
)

// --- the child

// cliChild runs the CLI bin on dir, one process per operation: for cli-rm
// one `rm TAG` per tag of pickSpread(n, k) (no new one once budget is
// spent), for the others the one command. Output goes to /dev/null. Each
// process's wall time (start to wait4) goes to OpsMs and its peak RSS
// (wait4's ru_maxrss) to OpsRSSKiB; PeakKiB is the largest of these, and
// SelfKiB this process's own peak (see runCLI).
func cliChild(ctx context.Context, res *childResult, scenario, bin, dir string, n, k int, budget time.Duration) error {
	if bin == "" {
		return fmt.Errorf("%s: no -cli binary", scenario)
	}
	var runs [][]string
	switch scenario {
	case scCLIRm:
		for _, t := range pickSpread(n, k) {
			runs = append(runs, []string{"rm", t})
		}
	default:
		a, ok := cliArgs[scenario]
		if !ok {
			return fmt.Errorf("unknown scenario %q", scenario)
		}
		runs = [][]string{a}
	}
	t0 := time.Now()
	for i, a := range runs {
		if i > 0 && budget > 0 && time.Since(t0) > budget {
			break
		}
		if scenario == scCLIRm {
			res.Attempted = append(res.Attempted, a[1])
		}
		wall, rss, err := runCLI(ctx, bin, append([]string{"-l", dir}, a...))
		res.OpsMs = append(res.OpsMs, ms(wall))
		res.OpsRSSKiB = append(res.OpsRSSKiB, rss)
		res.PeakKiB = max(res.PeakKiB, rss)
		if err != nil {
			res.fail(err)
		}
	}
	res.TotalMs = ms(time.Since(t0))
	res.SelfKiB = vmHWM()
	return nil
}

// runCLI runs bin with args, stdout to /dev/null, and returns its wall
// time and peak RSS in KiB (ru_maxrss from wait4). The process is started
// with vfork: its ru_maxrss starts at the starting process's own high-water
// mark, which is why a small child process runs the CLI and not the
// parent (the parent holds the check's maps of every blob).
func runCLI(ctx context.Context, bin string, args []string) (time.Duration, int64, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	var rss int64
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			rss = ru.Maxrss // KiB on Linux
		}
	}
	if err != nil {
		return wall, rss, fmt.Errorf("ocistore %s: %v: %s", strings.Join(args, " "), err, lastLine(stderr.String()))
	}
	return wall, rss, nil
}

// --- the parent

// scaling runs the adoption table and the scale rows (at the end of a run:
// the tables before it measure as they did before these were added).
func (r *runner) scaling() error {
	t0 := time.Now()
	for _, n := range r.plan.Adopt {
		if err := r.adoption(n); err != nil {
			return err
		}
	}
	r.logf("adoption table: %s", time.Since(t0).Round(time.Second))
	for _, n := range r.plan.Scale {
		t1 := time.Now()
		if err := r.scaleDelete(n); err != nil {
			return err
		}
		if err := r.scaleCLI(n); err != nil {
			return err
		}
		r.logf("scale rows at N=%d: %s", n, time.Since(t1).Round(time.Second))
	}
	r.logf("adoption and scale rows: %s", time.Since(t0).Round(time.Second))
	return nil
}

// adoption measures ocistore's adoption and oras-go's open of the layout of
// n images, r.plan.Runs times each, each run on a fresh copy of the plain
// template (the page cache warm: the copy was just written). ocistore's
// first run, when there is no adopted template of n yet, is made in the
// adopted template's place and kept as it (the adoption the scale rows
// then start from, not a second one).
func (r *runner) adoption(n int) error {
	tmpl, err := r.template(n, pOras) // the plain layout
	if err != nil {
		return err
	}
	order := []string{pOcistore, pOras}
	for run := 1; run <= r.plan.Runs; run++ {
		for _, name := range order {
			dir := filepath.Join(r.work, "run")
			keep := false
			if _, ok := r.adopted[n]; !ok && name == pOcistore {
				dir, keep = r.adoptedDir(n), true
			}
			r.remove(dir)
			if err := copyLayout(tmpl, dir); err != nil {
				return err
			}
			rr := r.child(scAdoption, name, n, 0, run, dir, nil)
			if run == 1 || n <= adoptionCheckEveryN {
				chk, err := checkLayout(dir, remaining(n, nil), nil)
				if err != nil {
					return err
				}
				r.results[len(r.results)-1].Check = chk
			}
			if keep && rr.Err == "" && rr.Res.Errors == 0 {
				r.adopted[n] = dir
				if js, err := journalStatsOf(dir, journalAfterAdoption); err == nil {
					r.results = append(r.results, runResult{Scenario: scJournal, Peer: pOcistore, N: n, Run: 1, Journal: js})
				} else {
					r.logf("warning: journal of %s: %v", dir, err)
				}
				continue
			}
			r.remove(dir)
		}
		slices.Reverse(order) // neither peer always runs first
	}
	return nil
}

// scaleDelete runs the library's single delete at n, unless the
// delete-one table has n already.
func (r *runner) scaleDelete(n int) error {
	if slices.ContainsFunc(r.plan.DeleteOne, func(sk sizeK) bool { return sk.N == n }) {
		return nil
	}
	return r.deleting(scDeleteOne, n, r.plan.ScaleK, pickSpread(n, r.plan.ScaleK))
}

// scaleCLI runs, r.plan.Runs times on a fresh settled copy of the layout
// of n images, the read-only commands once each and K `rm` processes, and
// reads the journal's size after adoption and after the deletes.
func (r *runner) scaleCLI(n int) error {
	k := r.plan.ScaleK
	bin, err := r.cli()
	if err != nil {
		return err
	}
	if len(r.selJournal(n)) == 0 {
		tmpl, err := r.template(n, pOcistore)
		if err != nil {
			return err
		}
		js, err := journalStatsOf(tmpl, journalAfterAdoption)
		if err != nil {
			return err
		}
		r.results = append(r.results, runResult{Scenario: scJournal, Peer: pOcistore, N: n, Run: 1, Journal: js})
	}
	extra := []string{"-cli", bin}
	for run := 1; run <= r.plan.Runs; run++ {
		dir := filepath.Join(r.work, "run")
		if err := r.copyFor(n, pOcistore, dir, false); err != nil {
			return err
		}
		for _, sc := range cliReads {
			r.child(sc, pOcistore, n, 0, run, dir, extra)
		}
		rr := r.child(scCLIRm, pOcistore, n, k, run, dir, extra)
		did := pickSpread(n, k)
		if rr.Res.Attempted != nil {
			did = rr.Res.Attempted
		}
		chk, err := checkLayout(dir, remaining(n, did), did)
		if err != nil {
			return err
		}
		r.results[len(r.results)-1].Check = chk
		if run == 1 {
			js, err := journalStatsOf(dir, fmt.Sprintf("after %d `rm` processes", len(did)))
			if err != nil {
				return err
			}
			r.results = append(r.results, runResult{Scenario: scJournal, Peer: pOcistore, N: n, Run: 1, Journal: js})
		}
		r.remove(dir)
	}
	return nil
}

// cli builds the CLI from the checkout measured, once per run.
func (r *runner) cli() (string, error) {
	if r.cliBin != "" {
		return r.cliBin, nil
	}
	repo := r.repo
	if repo == "" {
		repo = ".."
	}
	bin := filepath.Join(r.work, "ocistore-cli")
	t0 := time.Now()
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", bin, "./cmd/ocistore")
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ocistore in %s: %v: %s", repo, err, out)
	}
	r.logf("built the CLI from %s in %s", repo, time.Since(t0).Round(time.Millisecond))
	r.cliBin = bin
	return bin, nil
}

// --- the journal's size

// journalStats is the size of a layout's journal against its index.json.
type journalStats struct {
	When       string `json:"when"`
	IndexBytes int64  `json:"index_bytes"` // index.json
	FileBytes  int64  `json:"file_bytes"`  // journal.db on disk
	// HighBytes is bbolt's high-water mark (pages up to the highest in
	// use, free ones among them); the file may be longer (bbolt grows it
	// ahead).
	HighBytes  int64         `json:"high_bytes"`
	AllocBytes int64         `json:"alloc_bytes"` // the pages of every bucket
	InuseBytes int64         `json:"inuse_bytes"` // the bytes of data in them
	StateBytes int64         `json:"state_bytes"` // every file under .ocistore (the space reserve included)
	Buckets    []bucketUsage `json:"buckets"`     // the top-level buckets, largest first
}

type bucketUsage struct {
	Name       string `json:"name"`
	Keys       int    `json:"keys"`
	AllocBytes int64  `json:"alloc_bytes"`
	InuseBytes int64  `json:"inuse_bytes"`
}

// journalStatsOf reads the journal of the layout in dir read-only (no
// process may hold it).
func journalStatsOf(dir, when string) (*journalStats, error) {
	js := &journalStats{When: when}
	fi, err := os.Stat(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	js.IndexBytes = fi.Size()
	path := filepath.Join(dir, journalFile)
	if fi, err = os.Stat(path); err != nil {
		return nil, err
	}
	js.FileBytes = fi.Size()
	err = filepath.WalkDir(filepath.Join(dir, journalStateDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				js.StateBytes += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o444, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		js.HighBytes = tx.Size()
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			s := b.Stats()
			u := bucketUsage{Name: string(name), Keys: s.KeyN,
				AllocBytes: int64(s.BranchAlloc + s.LeafAlloc), InuseBytes: int64(s.BranchInuse + s.LeafInuse)}
			js.AllocBytes += u.AllocBytes
			js.InuseBytes += u.InuseBytes
			js.Buckets = append(js.Buckets, u)
			return nil
		})
	})
	sort.SliceStable(js.Buckets, func(i, j int) bool { return js.Buckets[i].AllocBytes > js.Buckets[j].AllocBytes })
	return js, err
}

func (r *runner) selJournal(n int) []*journalStats {
	var out []*journalStats
	for _, x := range r.results {
		if x.Scenario == scJournal && x.N == n && x.Journal != nil {
			out = append(out, x.Journal)
		}
	}
	return out
}

// --- the report

// blobsAt is the number of blobs of the layout of n images, as the check
// after an adoption run counted them (0: not known).
func (r *runner) blobsAt(n int) int {
	for _, x := range r.results {
		if x.N == n && x.Check != nil && (x.Scenario == scAdoption || x.Scenario == scAdopt) && x.Check.Blobs > 0 {
			return x.Check.Blobs
		}
	}
	return 0
}

// perKBlobs is a cost in ms per 1,000 blobs.
func perKBlobs(msv float64, blobs int) float64 {
	if blobs <= 0 || math.IsNaN(msv) {
		return math.NaN()
	}
	return msv / (float64(blobs) / 1000)
}

// linearity applies the rule "linear in the number of blobs": the cost per
// blob at every size above base is at most tol times the cost per blob at
// base. cost maps sizes to ms per 1,000 blobs (NaN: not measured). It
// returns the worst ratio and its size; measured is false without the
// base or without a size above it measured, and ok false when a size above
// it was not measured (a failed run proves nothing linear).
func linearity(cost map[int]float64, base int, tol float64) (worst float64, worstN int, ok, measured bool) {
	b, has := cost[base]
	if !has || math.IsNaN(b) || b <= 0 {
		return math.NaN(), 0, false, false
	}
	ns := make([]int, 0, len(cost))
	for n := range cost {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	worst = math.NaN()
	missing := false
	for _, n := range ns {
		c := cost[n]
		if n <= base {
			continue
		}
		if math.IsNaN(c) {
			missing = true
			continue
		}
		measured = true
		if ratio := c / b; math.IsNaN(worst) || ratio > worst {
			worst, worstN = ratio, n
		}
	}
	return worst, worstN, measured && !missing && worst <= tol, measured
}

// adoptionCost is the median adoption (or open) time of a peer at each size
// of the plan, and the same per 1,000 blobs.
func (r *runner) adoptionCost(peerName string) (msAt, perK map[int]float64) {
	msAt, perK = map[int]float64{}, map[int]float64{}
	for _, n := range r.plan.Adopt {
		m := r.medianOf(scAdoption, peerName, n, openMs)
		msAt[n] = m
		perK[n] = perKBlobs(m, r.blobsAt(n))
	}
	return msAt, perK
}

// rssMiB is the peak RSS of each completed run, or for the CLI of each
// process, in MiB.
func rssMiB(g group) dist {
	var d dist
	for _, x := range g.ok {
		if len(x.Res.OpsRSSKiB) > 0 {
			for _, v := range x.Res.OpsRSSKiB {
				d = append(d, float64(v)/1024)
			}
			continue
		}
		d = append(d, float64(x.MaxRSSKiB)/1024)
	}
	return d
}

// opsMs is the wall time of every process (CLI) of the completed runs.
func opsMs(g group) dist {
	var d dist
	for _, x := range g.ok {
		d = append(d, x.Res.OpsMs...)
	}
	return d
}

// scaleRow is one command measured at one size: its time and peak RSS.
type scaleRow struct {
	label  string
	target string
	ms     dist // per delete, per process or per run
	rss    dist // MiB, per run or process
	runs   int
	checks string
	note   string
}

// scaleRows are the rows at n, in the order of the report.
func (r *runner) scaleRows(n int) []scaleRow {
	var rows []scaleRow
	for _, name := range []string{pOcistore, pOras, pCImage} {
		g := summarize(r.sel(scDeleteOne, name, n))
		row := scaleRow{label: fmt.Sprintf("library delete by tag, %s (ms per delete, first included)", name),
			ms: g.values(perDelete), rss: rssMiB(g), runs: len(g.ok), checks: g.checks, note: g.status()}
		if name == pOcistore {
			row.target = fmt.Sprintf("≤ %d ms", targetLibDeleteMs)
			if f, l := g.values(firstDelete), g.values(laterDeletes); len(f) > 0 {
				row.note = strings.TrimPrefix(strings.Join([]string{row.note, fmt.Sprintf("first %s ms, later %s ms", fmtNum(f.median()), fmtNum(l.median()))}, "; "), "; ")
			}
		}
		if g.skipped {
			row.ms = nil
		}
		rows = append(rows, row)
	}
	for _, sc := range append([]string{scCLIRm}, cliReads...) {
		g := summarize(r.sel(sc, pOcistore, n))
		row := scaleRow{label: cliLabel[sc], ms: opsMs(g), rss: rssMiB(g), runs: len(g.ok), checks: g.checks, note: g.status()}
		switch sc {
		case scCLIRm:
			row.label += " (ms per process)"
			row.target = fmt.Sprintf("≤ %d ms", targetRmMs)
		case scCLILs:
			row.target = fmt.Sprintf("≤ %s s", fmtNum(targetLsMs/1000))
		case scCLIFsck:
			row.target = fmt.Sprintf("≤ %s s", fmtNum(targetFsckMs/1000))
		}
		if sc != scCLIRm {
			row.checks = "—"
		}
		rows = append(rows, row)
	}
	g := summarize(r.sel(scAdoption, pOcistore, n))
	rows = append(rows, scaleRow{label: "ocistore's adoption (section 7)", ms: g.values(openMs), rss: rssMiB(g), runs: len(g.ok), checks: g.checks, note: g.status()})
	return rows
}

// peakCommand is the largest median peak RSS among the ocistore rows at n
// (the library delete, every CLI command, the adoption), and its row.
func (r *runner) peakCommand(n int) (float64, string) {
	worst, where := math.NaN(), ""
	for _, row := range r.scaleRows(n) {
		if strings.Contains(row.label, pOras) || strings.Contains(row.label, pCImage) {
			continue
		}
		if v := row.rss.median(); !math.IsNaN(v) && (math.IsNaN(worst) || v > worst) {
			worst, where = v, row.label
		}
	}
	return worst, where
}

// journalRatio is the larger journal.db (file size) at n, over index.json's
// size at the same moment.
func (r *runner) journalRatio(n int) (float64, *journalStats) {
	ratio, which := math.NaN(), (*journalStats)(nil)
	for _, js := range r.selJournal(n) {
		if js.IndexBytes == 0 {
			continue
		}
		if v := float64(js.FileBytes) / float64(js.IndexBytes); math.IsNaN(ratio) || v > ratio {
			ratio, which = v, js
		}
	}
	return ratio, which
}

func mb(b int64) string { return fmtNum(float64(b) / 1e6) }

// writeScale writes sections 7 (adoption) and 8 (scale).
func (r *runner) writeScale(w func(format string, a ...any)) {
	p := r.plan
	// Only what was measured: a run saved before these sections has none.
	if len(p.Adopt) > 0 && len(r.sel(scAdoption, pOcistore, -1))+len(r.sel(scAdoption, pOras, -1)) > 0 {
		r.writeAdoption(w)
	}
	if slices.ContainsFunc(r.results, func(x runResult) bool { return isCLI(x.Scenario) || x.Scenario == scJournal }) {
		r.writeScaleRows(w)
	}
}

// writeAdoption writes section 7.
func (r *runner) writeAdoption(w func(format string, a ...any)) {
	p := r.plan
	w("\n## 8. Adoption: the first open of a layout another tool wrote\n\n")
	w("ocistore: `store.Open` of a layout with no journal (as skopeo or umoci leave one): it builds the journal, reads every manifest once and counts every blob's references, and notes index.json's stamp. oras-go: `oci.NewWithContext` of the same (reads index.json and every manifest into its in-memory graph). ")
	w("Each run is its own process on a fresh `cp -a` copy of the same generated layout (the page cache warm: the copy was just written, and synced), %d runs per peer and size, the two peers alternating; ms median [min–max]; **per 1,000 blobs** is the median over the layout's blobs in thousands (4N+30 blobs), so that a cost linear in the blobs shows as a flat column. ", p.Runs)
	w("Linear, as the target reads it: at every size above N=%d, the cost per blob is at most %.3g× the cost per blob at N=%d (the smallest sizes carry the process's fixed costs, so they are not the reference).\n\n", linearBaseN, linearTolerance, linearBaseN)
	w("| N | blobs | ocistore ms | ocistore ms per 1,000 blobs | ocistore peak RSS MiB | oras-go ms | oras-go ms per 1,000 blobs | oras-go peak RSS MiB | ocistore / oras-go | check | runs | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range p.Adopt {
		o := summarize(r.sel(scAdoption, pOcistore, n))
		q := summarize(r.sel(scAdoption, pOras, n))
		blobs := r.blobsAt(n)
		om, qm := o.values(openMs), q.values(openMs)
		ratio := "—"
		if a, b := om.median(), qm.median(); !math.IsNaN(a) && !math.IsNaN(b) {
			ratio = fmt.Sprintf("%.3g", a/b)
		}
		checks := o.checks
		if q.checks != o.checks {
			checks = "ocistore " + o.checks + "; oras-go " + q.checks
		}
		note := o.status()
		if s := q.status(); s != "" {
			note = strings.TrimPrefix(note+"; oras-go: "+s, "; ")
		}
		w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d + %d | %s |\n", n, blobsStr(blobs),
			om.spread(), fmtNum(perKBlobs(om.median(), blobs)), rssMiB(o).spread(),
			qm.spread(), fmtNum(perKBlobs(qm.median(), blobs)), rssMiB(q).spread(),
			ratio, checks, len(o.ok), len(q.ok), note)
	}
	for _, name := range []string{pOcistore, pOras} {
		_, perK := r.adoptionCost(name)
		var parts []string
		for _, n := range p.Adopt {
			if b, ok := perK[linearBaseN]; ok && b > 0 && n > linearBaseN && !math.IsNaN(perK[n]) {
				parts = append(parts, fmt.Sprintf("N=%d %.3g×", n, perK[n]/b))
			}
		}
		if len(parts) > 0 {
			w("\n%s's cost per blob against N=%d: %s.", name, linearBaseN, strings.Join(parts, ", "))
		}
	}
	w("\n")
}

// writeScaleRows writes section 8.
func (r *runner) writeScaleRows(w func(format string, a ...any)) {
	p := r.plan
	var ns []string
	for _, n := range p.Scale {
		ns = append(ns, fmt.Sprint(n))
	}
	w("\n## 9. Scale: N = %s\n\n", strings.Join(ns, ", "))
	w("The generated layouts of the other sections, larger (4N+30 blobs%s). ", r.indexPerImage())
	w("**Library delete**: the delete-one scenario of section 1 (K=%d at sizes section 1 does not have; section 1's own runs at the others), the same peers and budget rule (a run longer than %s is not repeated, and starts no delete after it); go-containerregistry is not run at these sizes (section 1). ", p.ScaleK, p.Budget)
	w("**The CLI**: `ocistore` built from this checkout (`go build ./cmd/ocistore`), one process per command on a copy of the adopted template settled as in section 1 (a layout ocistore manages, between two commands); stdout to /dev/null. Per run (%d, each on a fresh copy): `ls`, `ls --format json`, `du`, `fsck` (without `--deep`: manifests read, blobs listed, the journal recounted) once each, then `rm TAG` for K=%d tags spread over the layout, one process each; the consistency check of section 1 after the deletes. ", p.Runs, p.ScaleK)
	w("**ms** is each process's wall time from its start to its exit as its parent saw it (fork and exec included): median [min–max] over processes (the %d runs' `rm` processes together), for the library the ms per delete of section 1. ", p.Runs)
	w("**peak RSS** is each process's `ru_maxrss` from wait4: median (max) over processes. A small child process of the benchmark starts the CLI (Go starts processes with vfork, and a process's `ru_maxrss` starts from the high-water mark of the process that started it: the benchmark's parent holds the check's maps of every blob); that child's own peak, the floor of every figure here, was %s MiB.\n\n", r.cliFloor())
	w("| what | N | ms | peak RSS MiB | target (at N=%d) | samples | check | note |\n|---|---|---|---|---|---|---|---|\n", scaleTargetN)
	for _, n := range p.Scale {
		for _, row := range r.scaleRows(n) {
			rss := "—"
			if len(row.rss) > 0 {
				rss = fmt.Sprintf("%s (%s)", fmtNum(row.rss.median()), fmtNum(row.rss.max()))
			}
			ms := row.ms.spread()
			if row.ms == nil && row.note != "" {
				ms = "—"
			}
			w("| %s | %d | %s | %s | %s | %d | %s | %s |\n", row.label, n, ms, rss, orDash(row.target), len(row.ms), row.checks, row.note)
		}
		worst, where := r.peakCommand(n)
		w("| peak RSS of any ocistore command above (largest median) | %d | — | %s | ≤ %d MiB | — | — | %s |\n", n, fmtNum(worst), targetCommandRSSMiB, where)
	}
	w("\nThe journal (`.ocistore/journal.db`, a bbolt database) against index.json, read with bbolt read-only after the adoption that made the template and after the first run's `rm` processes. **in use**: the pages of every bucket (bbolt's bucket statistics), and the bytes of data in them; the file also holds free pages and bbolt's room to grow. **.ocistore** is every file under it (the journal and the space reserve).\n\n")
	w("| N | when | index.json MB | journal.db MB | ratio | in use MB: pages / data | bbolt high-water MB | .ocistore MB | largest buckets: pages MB (keys) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range p.Scale {
		for _, js := range r.selJournal(n) {
			var bs []string
			for i, b := range js.Buckets {
				if i == 4 {
					break
				}
				bs = append(bs, fmt.Sprintf("%s %s (%d)", b.Name, mb(b.AllocBytes), b.Keys))
			}
			w("| %d | %s | %s | %s | %.3g× | %s / %s | %s | %s | %s |\n", n, js.When, mb(js.IndexBytes), mb(js.FileBytes),
				float64(js.FileBytes)/float64(max(js.IndexBytes, 1)), mb(js.AllocBytes), mb(js.InuseBytes), mb(js.HighBytes), mb(js.StateBytes), strings.Join(bs, ", "))
		}
	}
}

// cliFloor is the largest own peak RSS of the children that ran the CLI.
func (r *runner) cliFloor() string {
	var f int64
	for _, x := range r.results {
		if isCLI(x.Scenario) && x.Res.SelfKiB > f {
			f = x.Res.SelfKiB
		}
	}
	if f == 0 {
		return "—"
	}
	return fmtNum(float64(f) / 1024)
}

// indexPerImage words index.json's size per image, from the journal
// readings ("" without one).
func (r *runner) indexPerImage() string {
	for _, x := range r.results {
		if x.Scenario == scJournal && x.Journal != nil && x.N > 0 && x.Journal.When == journalAfterAdoption {
			return fmt.Sprintf("; index.json %.0f bytes per image: %s MB at N=%d", float64(x.Journal.IndexBytes)/float64(x.N), mb(x.Journal.IndexBytes), x.N)
		}
	}
	return ""
}

func blobsStr(b int) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprint(b)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// scaleTargets are the target rows of the adoption and the scale.
func (r *runner) scaleTargets(verdict func(ok, measured bool) string) [][3]string {
	var rows [][3]string
	p := r.plan
	if len(p.Adopt) > 0 {
		oursAt, oursK := r.adoptionCost(pOcistore)
		orasAt, orasK := r.adoptionCost(pOras)
		var parts []string
		all, measured := true, true
		for _, n := range p.Adopt {
			a, b := oursAt[n], orasAt[n]
			if math.IsNaN(a) && len(r.sel(scAdoption, pOcistore, n)) > 0 {
				parts = append(parts, fmt.Sprintf("N=%d ocistore failed", n))
				all = false // not faster there
				continue
			}
			if math.IsNaN(a) || math.IsNaN(b) {
				parts = append(parts, fmt.Sprintf("N=%d not measured", n))
				measured = false
				continue
			}
			parts = append(parts, fmt.Sprintf("N=%d %.3g (%s vs %s ms)", n, a/b, fmtNum(a), fmtNum(b)))
			all = all && a < b
		}
		v := verdict(all, measured || !all)
		rows = append(rows, [3]string{"adoption faster than oras-go's open at every size (ocistore / oras-go below 1 at every N)", strings.Join(parts, "; "), v})

		var lp []string
		okAll, mAll := true, true
		for _, c := range []struct {
			name string
			cost map[int]float64
		}{{pOcistore, oursK}, {pOras, orasK}} {
			worst, worstN, ok, m := linearity(c.cost, linearBaseN, linearTolerance)
			if !m {
				lp = append(lp, fmt.Sprintf("%s: no size above N=%d", c.name, linearBaseN))
			} else {
				lp = append(lp, fmt.Sprintf("%s: worst N=%d, %.3g× the cost per blob at N=%d (%s vs %s ms per 1,000 blobs)", c.name, worstN, worst, linearBaseN, fmtNum(c.cost[worstN]), fmtNum(c.cost[linearBaseN])))
			}
			if c.name == pOcistore {
				okAll, mAll = ok, m
			}
		}
		rows = append(rows, [3]string{fmt.Sprintf("adoption linear in the number of blobs (ocistore; rule: cost per blob at every N above %d within %.3g× of N=%d; oras-go for comparison)", linearBaseN, linearTolerance, linearBaseN),
			strings.Join(lp, "; "), verdict(okAll, mAll)})
	}
	if len(p.Scale) == 0 {
		return rows
	}
	n := slices.Max(p.Scale)
	at := func(v string) string {
		if n == scaleTargetN {
			return v
		}
		return v + fmt.Sprintf(" at N=%d", n)
	}
	// v words a verdict at n: measured only at scaleTargetN, or what it
	// would be at the largest size of this mode.
	v := func(ok bool, val float64) string {
		if n == scaleTargetN {
			return verdict(ok, !math.IsNaN(val))
		}
		s := verdict(false, false)
		if !math.IsNaN(val) {
			s += fmt.Sprintf(" (at N=%d: %s)", n, map[bool]string{true: "within", false: "over"}[ok])
		}
		return s
	}
	lib := r.medianOf(scDeleteOne, pOcistore, n, perDelete)
	oras := r.medianOf(scDeleteOne, pOras, n, perDelete)
	rows = append(rows, [3]string{fmt.Sprintf("library delete by tag at N=%d ≤ %d ms (first included)", scaleTargetN, targetLibDeleteMs),
		at(fmt.Sprintf("%s ms per delete (oras-go %s ms)", fmtNum(lib), fmtNum(oras))), v(lib <= targetLibDeleteMs, lib)})
	cmdRow := func(sc, label string, target float64, unit string) {
		d := opsMs(summarize(r.sel(sc, pOcistore, n)))
		med := d.median()
		shown := fmtNum(med) + " ms"
		if unit == "s" {
			shown = fmtNum(med/1000) + " s"
		}
		rss := rssMiB(summarize(r.sel(sc, pOcistore, n)))
		rows = append(rows, [3]string{label, at(fmt.Sprintf("%s (%d processes; peak RSS %s MiB)", shown, len(d), fmtNum(rss.median()))), v(med <= target, med)})
	}
	cmdRow(scCLIRm, fmt.Sprintf("`ocistore rm TAG` at N=%d ≤ %d ms per process", scaleTargetN, targetRmMs), targetRmMs, "ms")
	cmdRow(scCLILs, fmt.Sprintf("`ocistore ls` at N=%d ≤ %s s", scaleTargetN, fmtNum(targetLsMs/1000)), targetLsMs, "s")
	cmdRow(scCLIFsck, fmt.Sprintf("`ocistore fsck` at N=%d ≤ %s s", scaleTargetN, fmtNum(targetFsckMs/1000)), targetFsckMs, "s")
	ratio, js := r.journalRatio(n)
	jm := "—"
	if js != nil {
		jm = fmt.Sprintf("%.3g× (%s MB against %s MB, %s)", ratio, mb(js.FileBytes), mb(js.IndexBytes), js.When)
	}
	rows = append(rows, [3]string{fmt.Sprintf("journal.db at N=%d ≤ %d× index.json", scaleTargetN, targetJournalRatio), at(jm), v(ratio <= targetJournalRatio, ratio)})
	worst, where := r.peakCommand(n)
	rows = append(rows, [3]string{fmt.Sprintf("peak RSS of any command at N=%d ≤ %d MiB", scaleTargetN, targetCommandRSSMiB), at(fmt.Sprintf("%s MiB (%s)", fmtNum(worst), where)), v(worst <= targetCommandRSSMiB, worst)})
	return rows
}

// scaleSummary are the summary lines of sections 7 and 8.
func (r *runner) scaleSummary() []string {
	var out []string
	if len(r.plan.Adopt) > 0 && len(r.sel(scAdoption, pOcistore, -1)) > 0 {
		oursAt, _ := r.adoptionCost(pOcistore)
		orasAt, _ := r.adoptionCost(pOras)
		var parts []string
		for _, n := range r.plan.Adopt {
			parts = append(parts, fmt.Sprintf("N=%d %s", n, ratioLine(oursAt[n], orasAt[n], pOras)))
		}
		out = append(out, "7. adoption against oras-go's open: "+strings.Join(parts, "; "))
	}
	for _, n := range r.plan.Scale {
		if !slices.ContainsFunc(r.results, func(x runResult) bool { return x.N == n && (isCLI(x.Scenario) || x.Scenario == scJournal) }) {
			continue
		}
		var parts []string
		for _, row := range r.scaleRows(n) {
			if strings.Contains(row.label, pOras) || strings.Contains(row.label, pCImage) || len(row.ms) == 0 {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %s ms", strings.SplitN(row.label, " (", 2)[0], fmtNum(row.ms.median())))
		}
		worst, _ := r.peakCommand(n)
		ratio, _ := r.journalRatio(n)
		out = append(out, fmt.Sprintf("8. N=%d: %s; journal.db %.3g× index.json; peak RSS of any command %s MiB", n, strings.Join(parts, ", "), ratio, fmtNum(worst)))
	}
	return out
}

// scaleMain runs the adoption table and the scale rows only, at the sizes
// given, and writes their sections and target rows (figures before and
// after a change, without the whole run). With -template, the plain layout
// of the one size given is copied from DIR (read only) instead of
// generated.
func scaleMain(args []string) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	nList := fs.String("n", "5000", "comma-separated sizes")
	parts := fs.String("parts", "adoption,delete,cli", "what to measure: adoption (the table of section 7), delete (the library's single delete), cli (the CLI and the journal)")
	runs := fs.Int("runs", 3, "runs per cell")
	k := fs.Int("k", 10, "deletes per run (library and rm)")
	tmpl := fs.String("template", "", "a plain layout of the one size -n (as `bench gen` writes it) to copy from, read only")
	work := fs.String("work", ".work-scale", "scratch directory (removed at the end unless -keep)")
	keep := fs.Bool("keep", false, "keep the scratch directory")
	repo := fs.String("repo", "..", "the main module's checkout (the CLI is built from it)")
	out := fs.String("out", "", "markdown to write (default: stdout)")
	jsonOut := fs.String("json", "", "also write the raw results here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ns []int
	for _, f := range strings.Split(*nList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return fmt.Errorf("scale: -n %q: not a size", f)
		}
		ns = append(ns, n)
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*parts, ",") {
		switch s = strings.TrimSpace(s); s {
		case "adoption", "delete", "cli":
			want[s] = true
		default:
			return fmt.Errorf("scale: -parts: unknown part %q", s)
		}
	}
	if *tmpl != "" && len(ns) != 1 {
		return fmt.Errorf("scale: -template needs one size (-n)")
	}
	p := fullPlan()
	p.Runs, p.ScaleK, p.DeleteOne = *runs, *k, nil
	p.Adopt, p.Scale = nil, nil
	if want["adoption"] {
		p.Adopt = ns
	}
	if want["delete"] || want["cli"] {
		p.Scale = ns
	}
	r, err := newRunner(p, *work)
	if err != nil {
		return err
	}
	r.repo = *repo
	if !*keep {
		defer os.RemoveAll(r.work)
	}
	if *tmpl != "" {
		if _, err := os.Stat(filepath.Join(*tmpl, "index.json")); err != nil {
			return fmt.Errorf("scale: -template: %w", err)
		}
		r.templates[ns[0]] = *tmpl
	}
	started := time.Now()
	r.logf("bench scale: N=%s, %s, %d runs per cell, K=%d", *nList, *parts, p.Runs, p.ScaleK)
	for _, n := range p.Adopt {
		if err := r.adoption(n); err != nil {
			return err
		}
	}
	for _, n := range p.Scale {
		if want["delete"] {
			if err := r.scaleDelete(n); err != nil {
				return err
			}
		}
		if want["cli"] {
			if err := r.scaleCLI(n); err != nil {
				return err
			}
		}
	}
	wall := time.Since(started)
	r.logf("bench scale: %s", wall.Round(time.Second))
	if *jsonOut != "" {
		raw, _ := json.MarshalIndent(savedRun{Full: true, Runs: p.Runs, Started: started, WallNs: int64(wall), Loads: r.loads, IOWaits: r.ioWaits, IONoisy: r.ioNoisy, Results: r.results}, "", " ")
		if err := os.WriteFile(*jsonOut, raw, 0o644); err != nil {
			return err
		}
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Adoption and scale (`bench scale -n %s -parts %s`)\n\n", *nList, *parts)
	w("Measured on %s in %s, engine at %s, %d runs per cell; load average (1 min) at the start of each child process: median %.2f, max %.2f on %d cores.\n",
		started.UTC().Format("2006-01-02 15:04 UTC"), wall.Round(time.Second), engineCommit(*repo), p.Runs, r.loads.median(), r.loads.max(), runtime.NumCPU())
	w("\n| target | measured | |\n|---|---|---|\n")
	verdict := func(ok, measured bool) string {
		switch {
		case !measured:
			return "not measured"
		case ok:
			return "met"
		}
		return "**missed**"
	}
	for _, t := range r.scaleTargets(verdict) {
		w("| %s | %s | %s |\n", t[0], t[1], t[2])
	}
	r.writeScale(w)
	if *out == "" {
		_, err := os.Stdout.WriteString(b.String())
		return err
	}
	return os.WriteFile(*out, []byte(b.String()), 0o644)
}
