package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

const targetRSSMiB = 256

// sel returns the results of one scenario, peer and N (n < 0: any N).
func (r *runner) sel(scenario, peerName string, n int) []runResult {
	var out []runResult
	for _, x := range r.results {
		if x.Scenario == scenario && x.Peer == peerName && (n < 0 || x.N == n) {
			out = append(out, x)
		}
	}
	return out
}

// group summarizes the runs of one cell.
type group struct {
	runs    []runResult
	ok      []runResult // runs that completed without error
	note    string
	errMsg  string
	rssMiB  float64 // max over runs
	checks  string
	errors  int
	skipped bool
}

func summarize(runs []runResult) group {
	g := group{runs: runs}
	var checks []string
	seen := map[string]bool{}
	for _, x := range runs {
		if x.Note != "" && g.note == "" {
			g.note = x.Note
		}
		if x.WallMs == 0 && x.Note != "" { // not run
			g.skipped = true
			continue
		}
		if x.Err == "" && x.Res.Errors == 0 {
			g.ok = append(g.ok, x)
		}
		if x.Err != "" && g.errMsg == "" {
			g.errMsg = x.Err
		}
		if x.Res.Errors > 0 {
			g.errors += x.Res.Errors
			if g.errMsg == "" {
				g.errMsg = x.Res.ErrMsg
			}
		}
		if mib := float64(x.MaxRSSKiB) / 1024; mib > g.rssMiB {
			g.rssMiB = mib
		}
		if x.Check != nil {
			c := x.Check.short()
			if !seen[c] {
				seen[c] = true
				checks = append(checks, c)
			}
		}
	}
	g.checks = strings.Join(checks, "; ")
	if g.checks == "" {
		g.checks = "—"
	}
	return g
}

func (g group) values(f func(runResult) float64) dist {
	var d dist
	for _, x := range g.ok {
		d = append(d, f(x))
	}
	return d
}

func (g group) rss() string {
	if g.rssMiB == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", g.rssMiB)
}

func (g group) status() string {
	switch {
	case g.skipped:
		return g.note
	case g.errMsg != "":
		return "FAILED: " + trunc(g.errMsg, 120)
	case g.note != "":
		return g.note
	}
	return ""
}

func trunc(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func perDelete(x runResult) float64 {
	if x.K == 0 {
		return math.NaN()
	}
	return x.Res.TotalMs / float64(x.K)
}
func openMs(x runResult) float64 { return x.Res.OpenMs }

// firstDelete is a run's first delete (ocistore's pays the parse of
// index.json its lazy open skipped).
func firstDelete(x runResult) float64 {
	if len(x.Res.OpsMs) == 0 {
		return math.NaN()
	}
	return x.Res.OpsMs[0]
}

// laterDeletes is the median of a run's deletes after its first.
func laterDeletes(x runResult) float64 {
	if len(x.Res.OpsMs) < 2 {
		return math.NaN()
	}
	return dist(x.Res.OpsMs[1:]).median()
}

func lookupMs(x runResult) float64 {
	if x.Res.LookupMs == 0 {
		return math.NaN()
	}
	return x.Res.LookupMs
}
func openLookupMs(x runResult) float64 { return x.Res.OpenMs + lookupMs(x) }
func totalMs(x runResult) float64      { return x.Res.TotalMs }
func totalS(x runResult) float64       { return x.Res.TotalMs / 1000 }

// reclaimedMs is when the freed space was back: after the call for a peer
// that unlinks in it (and for runs saved before the field).
func reclaimedMs(x runResult) float64 { return max(x.Res.ReclaimedMs, x.Res.TotalMs) }
func reclaimedS(x runResult) float64  { return reclaimedMs(x) / 1000 }

// medianOf is the median of f over the completed runs of a cell (NaN if none).
func (r *runner) medianOf(scenario, peerName string, n int, f func(runResult) float64) float64 {
	g := summarize(r.sel(scenario, peerName, n))
	return g.values(f).median()
}

// best returns the fastest peer other than ocistore for a cell, by f's median.
func (r *runner) best(scenario string, n int, f func(runResult) float64, among []string) (string, float64) {
	bn, bv := "", math.NaN()
	for _, p := range among {
		v := r.medianOf(scenario, p, n, f)
		if !math.IsNaN(v) && (math.IsNaN(bv) || v < bv) {
			bn, bv = p, v
		}
	}
	return bn, bv
}

var otherPeers = []string{pCImage, pOras, pOrasGC, pGGCR}

// ratioLine words ocistore's median against another's.
func ratioLine(ours, theirs float64, who string) string {
	if math.IsNaN(ours) || math.IsNaN(theirs) || ours == 0 {
		return "not measured"
	}
	r := ours / theirs
	if r <= 1 {
		return fmt.Sprintf("ocistore / %s = %.3g (ocistore %.3g× faster)", who, r, 1/r)
	}
	return fmt.Sprintf("ocistore / %s = %.3g (ocistore %.3g× slower)", who, r, r)
}

type reportInfo struct {
	started  time.Time
	wall     time.Duration
	micro    string            // path of the micro benchmark output, "" if none
	microCmd string            // the command that wrote it
	analysis string            // path of the hand-written analysis of missed targets, "" if none
	results  string            // path of the run's saved results (bench -json), "" if none
	versions map[string]string // moduleVersions at the start of the run
}

func (r *runner) writeReport(path string, info reportInfo) error {
	var b strings.Builder
	p := r.plan
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	mode := "quick (default)"
	if p.Full {
		mode = "full (`BENCH_FULL=1`)"
	}
	w("# Benchmarks\n\n")
	w("Written by `make bench` (the `bench/` module: ocistore against containers/image, oras-go and go-containerregistry) on %s, mode %s, in %s of wall time. ",
		info.started.UTC().Format("2006-01-02 15:04 UTC"), mode, info.wall.Round(time.Second))
	if len(r.remeasured) == 0 {
		w("Every number below was measured in this one run, on this machine, with every peer on an identical copy (`cp -a`) of the same generated layout. ")
	} else {
		w("Every number below was measured on this machine, with every peer on an identical copy (`cp -a`) of the same generated layout, in this one run except the cells listed next, measured again later with the same method (`bench rerun`) in place of that run's. ")
	}
	if p.Full {
		w("Do not edit: `BENCH_FULL=1 make bench` rewrites this file; a quick `make bench` (the small sizes only) writes `bench/%s` instead and leaves this file alone.\n\n", quickReport)
	} else {
		w("A quick run: the small sizes only, a smoke test of this machine; the published full-size tables are in BENCHMARKS.md (`BENCH_FULL=1 make bench` rewrites them). Do not edit: every quick `make bench` rewrites this file.\n\n")
	}
	for _, m := range r.remeasured {
		if m.Scenario == serveFamily {
			w("**Re-measured**: section 10 (rows %s, %d runs per row and server, %d old runs replaced), by `bench serve`, on %s in %s, engine at commit `%s`; load average (1 min) at the start of each run: median %.2f, max %.2f on %d cores.\n\n",
				m.Peer, m.Runs, m.Replaced, m.Started.UTC().Format("2006-01-02 15:04 UTC"), time.Duration(m.WallNs).Round(time.Second), m.Commit, m.Loads.median(), m.Loads.max(), runtime.NumCPU())
			continue
		}
		var ns []string
		for _, n := range m.Ns {
			ns = append(ns, fmt.Sprint(n))
		}
		w("**Re-measured**: %s, %s only, N=%s (%d runs per cell, %d old runs replaced), on %s in %s, engine at commit `%s`, in a clean worktree of that commit; load average (1 min) at the start of each child process (the adoptions that made the templates included): median %.2f, max %.2f on %d cores. The other peers' runs of these cells, and every other cell, are from the run above, engine at %s.\n\n",
			m.Scenario, m.Peer, strings.Join(ns, ", "), m.Runs, m.Replaced, m.Started.UTC().Format("2006-01-02 15:04 UTC"), time.Duration(m.WallNs).Round(time.Second), m.Commit, m.Loads.median(), m.Loads.max(), runtime.NumCPU(), strings.TrimPrefix(info.versions["github.com/ocistore/ocistore"], "this checkout (`replace => ../`), "))
	}

	w("## Machine\n\n")
	for _, kv := range machineInfo(r.work) {
		w("- %s: %s\n", kv[0], kv[1])
	}
	if len(r.loads) > 0 {
		w("- load average (1 min) at the start of each run: median %.1f, max %.1f on %d cores", r.loads.median(), r.loads.max(), runtime.NumCPU())
		if r.loads.median() > float64(runtime.NumCPU()) {
			w(" — **the machine was shared during this run** (other processes kept the cores busy): times are inflated and noisy, the spreads show by how much; CPU-bound peers suffer most, fsync-bound work less")
		}
		w("\n")
	}
	if len(r.ioWaits) > 0 {
		w("- quiet I/O before each run: every child process started once no task had been stalled on I/O for %.0f%% of a 200 ms window (`/proc/pressure/io`), or after %s; waits: median %.0f ms, max %.0f ms; %d of %d runs started with the I/O still busy\n",
			ioQuietShare*100, ioQuietMax, r.ioWaits.median(), r.ioWaits.max(), r.ioNoisy, len(r.ioWaits))
	}
	w("\n## Peers\n\n")
	w("| peer | module | version | single delete | batch (delete half) | fsync |\n|---|---|---|---|---|---|\n")
	vers := info.versions
	for _, pp := range peers {
		mod := peerModule[pp.name]
		w("| %s | `%s` | %s | %s | %s | %s |\n", pp.name, mod, vers[mod], pp.api, pp.batch, fsyncs[pp.name])
	}
	w("\nOnly ocistore makes its work durable: it fsyncs the journal, the new `index.json` and the layout directory before unlinking, and each touched `blobs/<alg>` directory after. The peers that do not fsync leave their writes in the page cache, so their times are those of a machine that never loses power; they are charged nothing for durability.\n")

	w("\n## Summary: ocistore against the best peer\n\n")
	for _, l := range r.summaryLines() {
		w("- %s\n", l)
	}
	w("\n## Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, t := range r.targets() {
		w("| %s | %s | %s |\n", t[0], t[1], t[2])
	}

	// 1
	w("\n## 1. Delete one image at a time\n\n")
	w("K images spread over the layout, deleted one call at a time, each call a complete delete (entry removed, the blobs only it used unlinked). ")
	w("**ms per delete** is the run's total over K, the first delete included; median [min–max] over runs. It is the figure the targets use. ")
	w("**first** is the run's first delete alone and **later** the median of the others: ocistore's open does not read index.json when the journal vouches for it by its stamp, so its first delete reads, hashes and parses index.json (and loads the journal's pages) on top of its own work; that cost is in the first delete and in ms per delete, never in the open time. ")
	w("Open is timed apart (containers/image and go-containerregistry keep no state: they re-read index.json and the manifests in every delete). ")
	w("Check: dangling descriptors / orphan blobs after the run (independent check: parse index.json, walk the graph, list blobs).\n\n")
	w("| N | K | peer | ms per delete | first ms | later ms | open ms | peak RSS MiB | check | runs | note |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, sk := range p.DeleteOne {
		for _, pp := range peers {
			g := summarize(r.sel(scDeleteOne, pp.name, sk.N))
			open := "—"
			if pp.opens {
				open = g.values(openMs).spread()
			}
			val := g.values(perDelete).spread()
			if g.skipped {
				val = r.estimate(scDeleteOne, pp.name, sk.N)
			}
			first, later := g.values(firstDelete).spread(), g.values(laterDeletes).spread()
			if g.skipped {
				first, later = "—", "—"
			}
			w("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", sk.N, sk.K, pp.name, val, first, later, open, g.rss(), g.checks, len(g.ok), g.status())
		}
	}

	// 2
	w("\n## 2. Delete half of the layout and reclaim space\n\n")
	w("Every other image (N/2) in each peer's best batch path (see Peers). **s**: seconds of the call, open apart; median [min–max]. **space back s**: until the freed blobs' space is back in the file system. The peers unlink in the call. ocistore's call returns once the freed blobs are out of the layout, durably: it moves them into `.ocistore/trash` (a hard link there, then the unlink of the blob's name, which frees nothing) and fsyncs the blob directory and the trash, at about a third of the cost of unlinking them (an unlink of a last name also frees the inode and its blocks), and the handle unlinks the trash in the background (`store.WaitReclaimed`).\n\n")
	w("| N | peer | s | space back s | open ms | peak RSS MiB | check | runs | note |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range p.DeleteHalf {
		for _, pp := range peers {
			g := summarize(r.sel(scDeleteHalf, pp.name, n))
			open := "—"
			if pp.opens {
				open = g.values(openMs).spread()
			}
			val, back := g.values(totalS).spread(), g.values(reclaimedS).spread()
			note := g.status()
			if g.skipped {
				val, back = r.estimate(scDeleteHalf, pp.name, n), "—"
			}
			w("| %d | %s | %s | %s | %s | %s | %s | %d | %s |\n", n, pp.name, val, back, open, g.rss(), g.checks, len(g.ok), note)
		}
	}

	// 3
	w("\n## 3. Open a layout with no pending work\n\n")
	w("One open per process (a CLI's case), the page cache warm. ocistore: `store.Open` of a layout it already manages (lock, recovery check: no pending record; index.json's stamp — inode, size, mtime, ctime — matches the one the journal recorded, so index.json is not read: the first operation that needs it parses it). oras-go: `oci.NewWithContext` (reads every manifest into its graph). containers/image and go-containerregistry have no open worth the name (`layout.FromPath` is a stat): they pay for the whole layout in every delete instead (section 1). ")
	w("**lookup** is the first `Resolve` of a tag after the open, in the same process: for ocistore it is where the parse of index.json that the open skipped is paid, so **open + lookup** is the cost of a CLI's first answer. ")
	w("The row *ocistore, stamp unknown* is the first open of a fresh `cp -a` copy (a new inode: the stamp does not match, so index.json is read, hashed and parsed at open, and the new stamp noted in one journal commit), a fresh copy per run; every other ocistore run in this report starts from a copy settled by one such untimed open, %s after the copy (past the engine's 2 s racy window), as a layout ocistore manages is between two commands.\n\n", settleAfter)
	w("| N | peer | open ms | lookup ms | open + lookup ms | peak RSS MiB | check | runs |\n|---|---|---|---|---|---|---|---|\n")
	for _, pp := range peers {
		if !pp.opens || pp.name == pOrasGC {
			continue
		}
		g := summarize(r.sel(scOpen, pp.name, p.OpenN))
		w("| %d | %s | %s | %s | %s | %s | %s | %d |\n", p.OpenN, pp.name, g.values(openMs).spread(), g.values(lookupMs).spread(), g.values(openLookupMs).spread(), g.rss(), g.checks, len(g.ok))
		if pp.name == pOcistore {
			g := summarize(r.sel(scOpenCold, pp.name, p.OpenN))
			w("| %d | ocistore, stamp unknown | %s | %s | %s | %s | %s | %d |\n", p.OpenN, g.values(openMs).spread(), g.values(lookupMs).spread(), g.values(openLookupMs).spread(), g.rss(), g.checks, len(g.ok))
		}
	}
	if len(r.sel(scAdoption, pOcistore, -1)) > 0 {
		w("\nocistore's first open of a layout another tool wrote (adoption) is measured against oras-go's open at every size in section 7.\n")
	} else { // a run saved before section 7
		w("\nocistore's first open of a layout another tool wrote (adoption: reads every manifest once, builds the journal's reference counts), one run per size:\n\n| N | ms | peak RSS MiB |\n|---|---|---|\n")
		for _, x := range r.sel(scAdopt, pOcistore, -1) {
			w("| %d | %s | %.0f |\n", x.N, fmtNum(x.Res.OpenMs), float64(x.MaxRSSKiB)/1024)
		}
	}

	// 4
	w("\n## 4. Ingest: one %d MiB blob, and %d blobs written at once\n\n", p.IngestSize>>20, p.IngestParallel)
	w("The same bytes for every peer (incompressible, streamed from a generator, not held in memory); the store opened before the clock starts; each run writes into a fresh empty directory. Runs rotate between peers; the file system is synced between runs.\n\n")
	w("The limit is this machine's, measured in the same run as two times, each alone: **%s** hashes the generator's bytes with sha256 on one goroutine (%d KiB reads, no disk); the disk writes them to a temp file in the layout's `blobs/sha256` (%d KiB writes), fsyncs it, renames it to its digest and fsyncs the directory (no hash), two ways: **%s** writes everything, then fsyncs (what `dd conv=fsync` does), **%s** also starts the writeback of every %d MiB as it is written (`sync_file_range`, as ocistore does), so that the disk writes while the rest comes. An ingest must do both: the limit is the slower of the hash and the disk (the disk's faster way), by their medians, and **of the limit** = limit / peer. Hashing then writing, one after the other, costs about the sum of the two; only a peer that overlaps them can come near 100%%.\n\n",
		pLimitHash, hashBuf>>10, writeBuf>>10, pLimitDisk, pLimitDiskWB, writeBehindEvery>>20)
	w("The parallel case writes %d blobs of %d MiB (the same total) from %d goroutines through one handle of each peer. Its disk limit writes them with %d writers at once; its hash limit hashes them one after the other on one core, as the single case does (one core hashing the bytes with sha256). A peer that hashes on several goroutines can use both of this machine's cores, and so pass 100%% of a one-core hash limit.\n\n",
		p.IngestParallel, p.IngestSize/int64(max(p.IngestParallel, 1))>>20, p.IngestParallel, p.IngestParallel)
	for _, c := range []struct {
		scenario, title string
	}{{scIngest, fmt.Sprintf("One %d MiB blob", p.IngestSize>>20)}, {scIngestPar, fmt.Sprintf("%d × %d MiB at once", p.IngestParallel, p.IngestSize/int64(max(p.IngestParallel, 1))>>20)}} {
		w("### %s\n\n", c.title)
		w("| peer | hashes | fsync | s | MB/s | of the limit | peak RSS MiB | runs | note |\n|---|---|---|---|---|---|---|---|---|\n")
		limit := r.ingestLimit(c.scenario) / 1000
		for _, name := range ingestOrder {
			g := summarize(r.sel(c.scenario, name, 0))
			d := g.values(totalS)
			mbs, pct := math.NaN(), math.NaN()
			if med := d.median(); !math.IsNaN(med) {
				mbs = float64(p.IngestSize) / 1e6 / med
				pct = 100 * limit / med
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", name, ingestHashes[name], ingestFsync[name], d.spread(), fmtNum(mbs), pctStr(pct), g.rss(), len(g.ok), g.status())
		}
		w("\n")
	}

	// 5
	w("\n## 5. %d goroutines deleting concurrently\n\n", p.Workers)
	w("One handle shared by %d goroutines, K images (disjoint tags) deleted one per call. containers/image and go-containerregistry have no lock: their concurrent writers lose updates, which the check shows (tags deleted but still listed, dangling descriptors).\n\n", p.Workers)
	w("| N | K | peer | wall s | deletes/s | op ms p50 / max | peak RSS MiB | check | errors | runs |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, sk := range p.Concurrent {
		for _, pp := range peers {
			g := summarize(r.sel(scConcurrent, pp.name, sk.N))
			var ops, walls, rates dist
			errs := 0
			for _, x := range g.runs {
				if x.Err != "" || x.WallMs == 0 {
					continue
				}
				ops = append(ops, x.Res.OpsMs...)
				walls = append(walls, x.Res.TotalMs/1000)
				rates = append(rates, float64(x.K)/(x.Res.TotalMs/1000))
				errs += x.Res.Errors
			}
			rate := rates.median()
			opsS := "—"
			if len(ops) > 0 {
				opsS = fmt.Sprintf("%s / %s", fmtNum(ops.median()), fmtNum(ops.max()))
			}
			errS := fmt.Sprint(errs)
			if errs > 0 {
				errS += ": " + trunc(g.errMsg, 80)
			}
			if g.skipped {
				errS = g.note
			} else if g.note != "" {
				errS += "; " + g.note
			}
			w("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %d |\n", sk.N, sk.K, pp.name, walls.spread(), fmtNum(rate), opsS, g.rss(), g.checks, errS, len(walls))
		}
	}

	// 6
	w("\n## 6. Peak memory (max RSS of the process, MiB, worst run)\n\n")
	w("Each run is its own child process; its peak RSS is its VmHWM (`/proc/self/status`) read at its end (ru_maxrss from `ProcessState.SysUsage` is no good here: a child started with vfork keeps its parent's high-water mark across exec). It includes the Go runtime and all four libraries linked into the one benchmark binary (about 10 MiB at rest).\n\n")
	w("| scenario | N | %s |\n|---|---|%s\n", strings.Join(peerNames(), " | "), strings.Repeat("---|", len(peers)))
	memRow := func(label, scenario string, n int) {
		var cells []string
		for _, pp := range peers {
			cells = append(cells, summarize(r.sel(scenario, pp.name, n)).rss())
		}
		w("| %s | %d | %s |\n", label, n, strings.Join(cells, " | "))
	}
	for _, sk := range p.DeleteOne {
		memRow("1. delete one", scDeleteOne, sk.N)
	}
	for _, n := range p.DeleteHalf {
		memRow("2. delete half", scDeleteHalf, n)
	}
	memRow("3. open", scOpen, p.OpenN)
	memRow("3. open, stamp unknown", scOpenCold, p.OpenN)
	for _, sk := range p.Concurrent {
		memRow("5. concurrent", scConcurrent, sk.N)
	}
	for _, sc := range []string{scIngest, scIngestPar} {
		var ing []string
		for _, name := range ingestOrder {
			ing = append(ing, name+" "+summarize(r.sel(sc, name, 0)).rss())
		}
		what := fmt.Sprintf("one blob of %d MiB", p.IngestSize>>20)
		if sc == scIngestPar {
			what = fmt.Sprintf("%d blobs at once, %d MiB in all", p.IngestParallel, p.IngestSize>>20)
		}
		w("\n4. ingest, %s: %s.\n", what, strings.Join(ing, ", "))
	}
	w("Adoption (ocistore's first open of a foreign layout): %s.\n", r.adoptMem())

	// 7
	r.writePullSection(w, info.versions)
	// 8, 9
	r.writeScale(w)
	// 10
	r.writeServe(w, info.versions)

	w("\n## Method\n\n")
	w("- Layouts: `bench/gen.go`, the shape of `internal/gen`: N images tagged `img0…`, each a manifest, a config and 5 layers of 256 random bytes, 3 of them from one of 10 shared base sets and 2 its own (4N+30 blobs). One template per N, generated once per run; every peer and every run works on a fresh `cp -a` copy, the file system synced (`syncfs`) after the copy so that no peer pays for another's dirty pages.\n")
	w("- ocistore runs on the copy of a template it has already opened once (its journal built), as a layout it manages would be; that first open is reported apart (adoption, section 7; section 3 in a run saved before it). Each copy is then settled: one untimed `store.Open` + `Close` in the parent, %s after the copy, notes the copy's index.json stamp in its journal, so that the measured open is the lazy one a managed layout gets (section 3 says why and measures the unsettled open apart).\n", settleAfter)
	w("- Scenario 1 counts ocistore's deferred parse of index.json in its first delete: ms per delete includes it; the first and later columns show it apart.\n")
	w("- Each run is a child process of `bench` (`bench child …`): the parent copies, starts it, reads its peak RSS, then runs the consistency check on what it left.\n")
	w("- Medians and [min–max] are over runs (%d per cell, fewer where a single run took over %s: the note says so).\n", p.Runs, p.Budget)
	w("- The consistency check is the benchmark's own (`bench/check.go`, no peer's code): dangling = distinct digests the graph from index.json names but the blob store lacks; orphans = blobs present but unreachable; tags lost = tags that should remain but are gone; not deleted = tags deleted but still listed.\n")
	w("- Section 10 alone: `cd bench && go run . serve [-full] [-rows blob,tags,push,prune]` writes `serve-quick.md` (`serve-full.md` with `-full`) and its raw results; `-into results.json` also puts its rows into a saved run, in place of that run's, for `bench report`; `-profile DIR` runs ocistore's server in-process (`bench srvproc`, the `server` package wired as the CLI wires it) and writes a CPU profile of each row's first run.\n")
	w("- Reproduce one cell, with a CPU profile: `cd bench && go run . one -scenario delete-one -peer ocistore -n 5000 -k 10 -cpuprofile cpu.out && go tool pprof -top cpu.out` (the copy is settled as above; `-scenario open-cold` for the unsettled open; `-keep` reuses the templates on the next call).\n")
	if info.results != "" {
		from := filepath.Base(info.results)
		if p.Full {
			w("- Every run's raw result is in `bench/%s` (written by the run); `cd bench && go run . report -from %s` writes this file again from it, with `bench/%s`, without measuring again.\n", from, from, fullNotes)
		} else {
			w("- Every run's raw result is in `bench/%s` (written by the run); `cd bench && go run . report -from %s` writes this file again from it, without measuring again.\n", from, from)
		}
	}

	if info.analysis != "" {
		if raw, err := os.ReadFile(info.analysis); err == nil {
			w("\n%s\n", strings.TrimSpace(string(raw)))
		}
	}

	if info.micro != "" {
		if raw, err := os.ReadFile(info.micro); err == nil {
			cmd := info.microCmd
			if cmd == "" {
				cmd = "go test -run '^$' -bench . ./store/"
			}
			w("\n## Micro benchmarks (`%s`)\n\n```\n%s\n```\n", cmd, strings.TrimSpace(string(raw)))
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func pctStr(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.0f%%", v)
}

func peerNames() []string {
	var out []string
	for _, p := range peers {
		out = append(out, p.name)
	}
	return out
}

func (r *runner) adoptMem() string {
	var parts []string
	if len(r.sel(scAdoption, pOcistore, -1)) > 0 {
		for _, n := range r.plan.Adopt {
			parts = append(parts, fmt.Sprintf("N=%d %s MiB", n, summarize(r.sel(scAdoption, pOcistore, n)).rss()))
		}
		return strings.Join(parts, ", ") + " (worst of section 7's runs)"
	}
	for _, x := range r.sel(scAdopt, pOcistore, -1) {
		parts = append(parts, fmt.Sprintf("N=%d %.0f MiB", x.N, float64(x.MaxRSSKiB)/1024))
	}
	return strings.Join(parts, ", ")
}

var ingestHashes = map[string]string{
	pLimitHash:   "yes (no disk)",
	pLimitDisk:   "no",
	pLimitDiskWB: "no",
	pOcistore:    "yes, verifies",
	pCImage:      "yes (no digest passed in)",
	pOras:        "yes, verifies",
	pGGCR:        "no (trusts the caller)",
}

var ingestFsync = map[string]string{
	pLimitHash:   "—",
	pLimitDisk:   "file + dir",
	pLimitDiskWB: "file + dir",
	pOcistore:    "file + dir",
	pCImage:      "file",
	pOras:        "none",
	pGGCR:        "none",
}

var peerModule = map[string]string{
	pOcistore: "github.com/ocistore/ocistore",
	pCImage:   "go.podman.io/image/v5",
	pOras:     "oras.land/oras-go/v2",
	pOrasGC:   "oras.land/oras-go/v2",
	pGGCR:     "github.com/google/go-containerregistry",
}

// estimate words a cell that was not run: containers/image's delete-half
// from its single-delete cost at the same N (each DeleteImage costs in
// proportion to the images left, 3N/4 on average over the batch);
// go-containerregistry's from its largest measured single delete, scaled by
// N² (its GarbageCollect is quadratic: see the profile in the note).
func (r *runner) estimate(scenario, peerName string, n int) string {
	switch {
	case peerName == pCImage && scenario == scDeleteHalf:
		per := r.medianOf(scDeleteOne, pCImage, n, perDelete)
		if math.IsNaN(per) {
			return "—"
		}
		return fmt.Sprintf("≈%s (estimate: %d × %s ms × 3/4)", fmtNum(per*float64(n/2)*0.75/1000), n/2, fmtNum(per))
	case peerName == pGGCR && (scenario == scDeleteOne || scenario == scDeleteHalf):
		n0, per := 0, math.NaN()
		for _, sk := range r.plan.DeleteOne {
			if v := r.medianOf(scDeleteOne, pGGCR, sk.N, perDelete); !math.IsNaN(v) && sk.N > n0 {
				n0, per = sk.N, v
			}
		}
		if n0 == 0 {
			return "—"
		}
		if scenario == scDeleteOne {
			f := float64(n) / float64(n0)
			return fmt.Sprintf("≈%s (estimate: %s ms at N=%d × (N/%d)²)", fmtNum(per*f*f), fmtNum(per), n0, n0)
		}
		f := float64(n/2) / float64(n0)
		return fmt.Sprintf("≈%s (estimate: one GC over N/2 images, %s ms at N=%d × (N/2/%d)²)", fmtNum(per*f*f/1000), fmtNum(per), n0, n0)
	}
	return "—"
}

func (r *runner) summaryLines() []string {
	p := r.plan
	var out []string
	for _, sk := range p.DeleteOne {
		ours := r.medianOf(scDeleteOne, pOcistore, sk.N, perDelete)
		bn, bv := r.best(scDeleteOne, sk.N, perDelete, otherPeers)
		ci := r.medianOf(scDeleteOne, pCImage, sk.N, perDelete)
		first := r.medianOf(scDeleteOne, pOcistore, sk.N, firstDelete)
		later := r.medianOf(scDeleteOne, pOcistore, sk.N, laterDeletes)
		out = append(out, fmt.Sprintf("1. delete one, N=%d, K=%d: %s; containers/image / ocistore = %.3g× (ocistore %s ms per delete, first included: first %s ms, later %s ms)",
			sk.N, sk.K, ratioLine(ours, bv, bn), ci/ours, fmtNum(ours), fmtNum(first), fmtNum(later)))
	}
	for _, n := range p.DeleteHalf {
		ours := r.medianOf(scDeleteHalf, pOcistore, n, totalMs)
		bn, bv := r.best(scDeleteHalf, n, totalMs, otherPeers)
		back := r.medianOf(scDeleteHalf, pOcistore, n, reclaimedMs)
		rbn, rbv := r.best(scDeleteHalf, n, reclaimedMs, otherPeers)
		out = append(out, fmt.Sprintf("2. delete half, N=%d: %s; until the space is back: %s", n, ratioLine(ours, bv, bn), ratioLine(back, rbv, rbn)))
	}
	{
		ours := r.medianOf(scOpen, pOcistore, p.OpenN, openMs)
		ov := r.medianOf(scOpen, pOras, p.OpenN, openMs)
		ol := r.medianOf(scOpen, pOcistore, p.OpenN, openLookupMs)
		ovl := r.medianOf(scOpen, pOras, p.OpenN, openLookupMs)
		cold := r.medianOf(scOpenCold, pOcistore, p.OpenN, openMs)
		out = append(out, fmt.Sprintf("3. open, N=%d: ocistore %s ms; %s (oras-go is the one peer that loads state at open); open + first lookup: ocistore %s ms, %s; ocistore's first open of a fresh copy (stamp unknown) %s ms",
			p.OpenN, fmtNum(ours), ratioLine(ours, ov, pOras), fmtNum(ol), ratioLine(ol, ovl, pOras), fmtNum(cold)))
	}
	{
		for _, sc := range []string{scIngest, scIngestPar} {
			ours := r.medianOf(sc, pOcistore, 0, totalMs)
			lim := r.ingestLimit(sc)
			bn, bv := r.best(sc, 0, totalMs, []string{pCImage, pOras, pGGCR})
			what := fmt.Sprintf("one blob of %d MiB", p.IngestSize>>20)
			if sc == scIngestPar {
				what = fmt.Sprintf("%d blobs at once, %d MiB in all", p.IngestParallel, p.IngestSize>>20)
			}
			out = append(out, fmt.Sprintf("4. ingest, %s: ocistore at %s of the machine's limit; %s (no peer but containers/image fsyncs its blob)", what, pctStr(100*lim/ours), ratioLine(ours, bv, bn)))
		}
	}
	for _, sk := range p.Concurrent {
		ours := r.medianOf(scConcurrent, pOcistore, sk.N, totalMs)
		bn, bv := r.best(scConcurrent, sk.N, totalMs, otherPeers)
		out = append(out, fmt.Sprintf("5. %d goroutines, N=%d, K=%d: %s", p.Workers, sk.N, sk.K, ratioLine(ours, bv, bn)))
	}
	{
		worst, where := 0.0, ""
		for _, x := range r.results {
			if x.Peer == pOcistore {
				if mib := float64(x.MaxRSSKiB) / 1024; mib > worst {
					worst, where = mib, fmt.Sprintf("%s N=%d", x.Scenario, x.N)
				}
			}
		}
		out = append(out, fmt.Sprintf("6. peak memory: ocistore's worst run %.0f MiB (%s)", worst, where))
	}
	out = append(out, r.pullSummary()...)
	out = append(out, r.scaleSummary()...)
	return append(out, r.serveSummary()...)
}

// ingestLimit is the machine's limit for an ingest scenario, in ms: the
// slower of the hash alone and the disk alone, the disk's the faster of its
// two ways (medians; NaN unless both were measured).
func (r *runner) ingestLimit(scenario string) float64 {
	h, d := r.limitParts(scenario)
	if math.IsNaN(h) || math.IsNaN(d) {
		return math.NaN()
	}
	return max(h, d)
}

// limitParts returns the medians of the hash limit and of the disk limit
// (the faster of its two ways), in ms.
func (r *runner) limitParts(scenario string) (hash, disk float64) {
	hash = r.medianOf(scenario, pLimitHash, 0, totalMs)
	disk = r.medianOf(scenario, pLimitDisk, 0, totalMs)
	if wb := r.medianOf(scenario, pLimitDiskWB, 0, totalMs); math.IsNaN(disk) || wb < disk {
		disk = wb
	}
	return hash, disk
}

// limitWhich names the slower of the two limits of an ingest scenario.
func (r *runner) limitWhich(scenario string) string {
	h, d := r.limitParts(scenario)
	if h >= d {
		return fmt.Sprintf("the hash: %s s; the disk %s s", fmtNum(h/1000), fmtNum(d/1000))
	}
	return fmt.Sprintf("the disk: %s s; the hash %s s", fmtNum(d/1000), fmtNum(h/1000))
}

// targets returns rows: target, measured, verdict.
func (r *runner) targets() [][3]string {
	var rows [][3]string
	verdict := func(ok bool, measured bool) string {
		switch {
		case !measured:
			return "not measured in this mode"
		case ok:
			return "met"
		}
		return "**missed**"
	}
	for _, c := range []struct {
		n   int
		fac float64
	}{{5000, 20}, {20000, 50}} {
		ours := r.medianOf(scDeleteOne, pOcistore, c.n, perDelete)
		ci := r.medianOf(scDeleteOne, pCImage, c.n, perDelete)
		m := !math.IsNaN(ours) && !math.IsNaN(ci)
		bn, bv := r.best(scDeleteOne, c.n, perDelete, []string{pOras, pOrasGC})
		if !m {
			rows = append(rows, [3]string{fmt.Sprintf("single delete ≥%.0f× faster than containers/image at N=%d", c.fac, c.n), "—", verdict(false, false)},
				[3]string{fmt.Sprintf("single delete faster than oras-go at N=%d", c.n), "—", verdict(false, false)})
			continue
		}
		later := r.medianOf(scDeleteOne, pOcistore, c.n, laterDeletes)
		ciLater := r.medianOf(scDeleteOne, pCImage, c.n, laterDeletes)
		rows = append(rows, [3]string{fmt.Sprintf("single delete ≥%.0f× faster than containers/image at N=%d", c.fac, c.n),
			fmt.Sprintf("%.3g× (ocistore %s ms per delete, first included, containers/image %s ms; deletes after the first: %.3g×, %s vs %s ms)",
				ci/ours, fmtNum(ours), fmtNum(ci), ciLater/later, fmtNum(later), fmtNum(ciLater)), verdict(ci/ours >= c.fac, m)})
		rows = append(rows, [3]string{fmt.Sprintf("single delete faster than oras-go at N=%d", c.n),
			fmt.Sprintf("%.3g× (ocistore %s ms, %s %s ms)", bv/ours, fmtNum(ours), bn, fmtNum(bv)), verdict(ours < bv, m && !math.IsNaN(bv))})
	}
	{
		ours := r.medianOf(scDeleteHalf, pOcistore, 5000, totalMs)
		bn, bv := r.best(scDeleteHalf, 5000, totalMs, []string{pOras, pOrasGC})
		m := !math.IsNaN(ours) && !math.IsNaN(bv)
		back := r.medianOf(scDeleteHalf, pOcistore, 5000, reclaimedMs)
		_, rbv := r.best(scDeleteHalf, 5000, reclaimedMs, []string{pOras, pOrasGC})
		rows = append(rows, [3]string{"delete half ≥3× faster than oras-go's fastest path at N=5000",
			fmt.Sprintf("%.3g× (ocistore %s s, %s %s s; until the space is back: %.3g×, %s vs %s s)", bv/ours, fmtNum(ours/1000), bn, fmtNum(bv/1000), rbv/back, fmtNum(back/1000), fmtNum(rbv/1000)), verdict(bv/ours >= 3, m)})
	}
	// The prune target: half of the layout in one call (the transaction
	// path a prune takes), every fsync in place.
	for _, c := range []struct {
		n   int
		max float64 // seconds
	}{{5000, 0.3}, {20000, 1.5}} {
		ours := r.medianOf(scDeleteHalf, pOcistore, c.n, totalMs)
		back := r.medianOf(scDeleteHalf, pOcistore, c.n, reclaimedMs)
		rows = append(rows, [3]string{fmt.Sprintf("half of N=%d in one call under %s s", c.n, fmtNum(c.max)),
			fmt.Sprintf("%s s (space back after %s s)", fmtNum(ours/1000), fmtNum(back/1000)), verdict(ours/1000 < c.max, !math.IsNaN(ours))})
	}
	{
		n := r.plan.OpenN
		ours := r.medianOf(scOpen, pOcistore, n, openMs)
		label := "open at N=20000 under 20 ms"
		v := verdict(ours < 20, n == 20000 && !math.IsNaN(ours))
		if n != 20000 {
			v += fmt.Sprintf(" (at N=%d: %s)", n, map[bool]string{true: "under 20 ms", false: "over 20 ms"}[ours < 20])
		}
		ol := r.medianOf(scOpen, pOcistore, n, openLookupMs)
		cold := r.medianOf(scOpenCold, pOcistore, n, openMs)
		rows = append(rows, [3]string{label, fmt.Sprintf("%s ms at N=%d (the first lookup after it: open + lookup %s ms; first open of a fresh copy, stamp unknown: %s ms)", fmtNum(ours), n, fmtNum(ol), fmtNum(cold)), v})
	}
	for _, c := range []struct{ scenario, label string }{
		{scIngest, fmt.Sprintf("ingest of one %d MiB blob ≥90%% of the machine's limit", r.plan.IngestSize>>20)},
		{scIngestPar, fmt.Sprintf("%d parallel blob writes (%d MiB in all) ≥90%% of the machine's limit", r.plan.IngestParallel, r.plan.IngestSize>>20)},
	} {
		ours := r.medianOf(c.scenario, pOcistore, 0, totalMs)
		lim := r.ingestLimit(c.scenario)
		pct := 100 * lim / ours
		rows = append(rows, [3]string{c.label, fmt.Sprintf("%s (%s s; limit %s s, %s)", pctStr(pct), fmtNum(ours/1000), fmtNum(lim/1000), r.limitWhich(c.scenario)), verdict(pct >= 90, !math.IsNaN(pct))})
	}
	rows = append(rows, r.pullTargets(verdict)...)
	{
		// The library's scenarios at the largest N up to 20,000 (the CLI
		// and the scale rows have their own target: scaleTargets).
		worst, where, maxN := 0.0, "", 0
		for _, x := range r.results {
			if x.N > maxN && x.N <= 20000 {
				maxN = x.N
			}
		}
		for _, x := range r.results {
			if x.Peer == pOcistore && !isCLI(x.Scenario) && (x.N == maxN || x.Scenario == scIngest || x.Scenario == scIngestPar) {
				if mib := float64(x.MaxRSSKiB) / 1024; mib > worst {
					worst, where = mib, fmt.Sprintf("%s N=%d", x.Scenario, x.N)
				}
			}
		}
		v := verdict(worst <= targetRSSMiB, maxN >= 20000)
		if maxN < 20000 {
			v += fmt.Sprintf(" (at N=%d: %s)", maxN, map[bool]string{true: "within", false: "over"}[worst <= targetRSSMiB])
		}
		rows = append(rows, [3]string{"no scenario above 256 MiB at N=20000 (ocistore)", fmt.Sprintf("%.0f MiB (%s)", worst, where), v})
	}
	rows = append(rows, r.scaleTargets(verdict)...)
	return append(rows, r.serveTargets(verdict)...)
}

// machineInfo describes the machine and the file system of dir.
func machineInfo(dir string) [][2]string {
	var out [][2]string
	out = append(out, [2]string{"cores (nproc)", fmt.Sprint(runtime.NumCPU())})
	out = append(out, [2]string{"CPU", firstField("/proc/cpuinfo", "model name")})
	if mem := firstField("/proc/meminfo", "MemTotal"); mem != "" {
		out = append(out, [2]string{"memory", mem})
	}
	if k, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		out = append(out, [2]string{"kernel", "Linux " + strings.TrimSpace(string(k))})
	}
	out = append(out, [2]string{"file system of the layouts", mountOf(dir)})
	out = append(out, [2]string{"Go", runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH})
	return out
}

func firstField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// mountOf finds the mount holding dir in /proc/self/mountinfo: fs type,
// source and options.
func mountOf(dir string) string {
	abs, err := filepath.EvalSymlinks(dir)
	if err != nil {
		abs = dir
	}
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "unknown"
	}
	best, bestLen := "unknown", -1
	for _, line := range strings.Split(string(raw), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if len(f) < 6 || len(g) < 3 {
			continue
		}
		mp := f[4]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > bestLen {
			bestLen = len(mp)
			best = fmt.Sprintf("%s on %s (%s, mounted at %s; %s)", g[0], g[1], f[5], mp, g[2])
		}
	}
	return best
}

// moduleVersions returns the version of each module linked into this binary,
// and for ocistore the checkout's commit. Where the Go module proxy serves a
// newer version (asked with `go list -m -u`), it says so.
func moduleVersions(repo string) map[string]string {
	out := map[string]string{}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			out[d.Path] = "`" + d.Version + "`"
		}
	}
	rev := "working tree"
	if b, err := exec.Command("git", "-C", repo, "rev-parse", "--short", "HEAD").Output(); err == nil {
		rev = "commit `" + strings.TrimSpace(string(b)) + "`"
		if s, err := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(s))) > 0 {
			rev += " plus uncommitted changes"
		}
	}
	out["github.com/ocistore/ocistore"] = "this checkout (`replace => ../`), " + rev
	out[pSkopeo] = skopeoVersion()
	out[registryBinary] = registryVersion()
	out["curl"] = curlVersion()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-u", "-json", "go.podman.io/image/v5", "oras.land/oras-go/v2", "github.com/google/go-containerregistry")
	cmd.Dir = filepath.Join(repo, "bench")
	raw, err := cmd.Output()
	if err != nil {
		for _, m := range []string{"go.podman.io/image/v5", "oras.land/oras-go/v2", "github.com/google/go-containerregistry"} {
			out[m] += " (newest not checked: `go list -m -u` failed)"
		}
		return out
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	for dec.More() {
		var m struct {
			Path   string
			Update *struct{ Version string }
		}
		if dec.Decode(&m) != nil {
			break
		}
		if m.Update != nil {
			out[m.Path] += fmt.Sprintf(" (**%s is served: update bench/go.mod**)", m.Update.Version)
		} else {
			out[m.Path] += " (the newest the Go module proxy serves)"
		}
	}
	return out
}
