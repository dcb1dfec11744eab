package chaos

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Kill classes.
const (
	classBefore = "before" // no journal record yet: index.json is the before-set
	classDuring = "during" // the journal holds the record: recovery must finish it
	classAfter  = "after"  // the record is cleared (or the process exited first)
)

// trialOp is one operation of a single-writer trial.
type trialOp struct {
	kind   string   // rm, import, import-all, prune
	args   []string // the command line after the global flags
	batch  int
	before []entry // sorted
	after  []entry // sorted; nil: the uninterrupted run says
}

func runSingle(t *testing.T, h *harness, cfg config, st *stats) {
	rng := rand.New(rand.NewPCG(cfg.seed, 0x5eed))
	kinds := []string{"rm", "import"}
	if h.prune != nil {
		kinds = append(kinds, "prune")
	}
	for i := range cfg.kills {
		for !h.trial(t, i+1, rng, kinds[rng.IntN(len(kinds))], st) {
			kinds = kinds[:2] // prune turned out unusable (see the log): draw again
		}
	}
}

// planOp draws the operation of one trial on the copy dir.
func (h *harness) planOp(t *testing.T, rng *rand.Rand, kind, dir string) *trialOp {
	op := &trialOp{kind: kind, before: h.tplEntries}
	switch kind {
	case "rm":
		op.batch = 1 + rng.IntN(maxRmBatch)
		drop := map[string]bool{}
		op.args = []string{"rm"}
		for _, i := range rng.Perm(len(h.tplTags))[:op.batch] {
			op.args = append(op.args, h.tplTags[i])
			drop[h.tplTags[i]] = true
		}
		for _, e := range h.tplEntries {
			if !drop[e.Name] {
				op.after = append(op.after, e)
			}
		}
	case "import":
		op.args = []string{"import", h.src}
		picked := h.srcEntries
		if rng.IntN(10) == 0 {
			op.kind = "import-all"
		} else {
			picked = nil
			for _, i := range rng.Perm(len(h.srcEntries))[:1+rng.IntN(maxImpBatch)] {
				picked = append(picked, h.srcEntries[i])
				op.args = append(op.args, h.srcEntries[i].Name)
			}
		}
		op.batch = len(picked)
		op.after = sortEntries(slices.Concat(h.tplEntries, picked))
	case "prune":
		// The template has 40 repositories of 25 images, created at
		// distinct seconds: each rule removes a real batch, up to 960
		// images in one transaction. Its result comes from the oracle.
		op.args = h.prune
		if len(op.args) == 1 {
			glob := fmt.Sprintf("ref=example.com/repo%d*", rng.IntN(10))
			switch rng.IntN(3) {
			case 0:
				op.args = []string{"prune", "--keep-last", fmt.Sprint(1 + rng.IntN(24))}
			case 1:
				op.args = []string{"prune", "--keep-last", fmt.Sprint(1 + rng.IntN(24)), "--filter", glob}
			default:
				op.args = []string{"prune", "--filter", fmt.Sprintf("until=2026-01-01T00:00:%02dZ", 1+rng.IntN(59)), "--filter", glob}
			}
		}
	default:
		t.Fatalf("unknown operation %q", kind)
	}
	return op
}

// trialLog collects what a trial saw, for the log line and a violation
// report.
type trialLog struct {
	n        int
	op       *trialOp
	draw     string // uniform, event
	window   string
	delay, T time.Duration
	class    string
	exited   bool // the process exited before the signal
	problems []string
	context  []string
}

func (l *trialLog) fail(format string, args ...any) {
	l.problems = append(l.problems, fmt.Sprintf(format, args...))
}
func (l *trialLog) note(s string) { l.context = append(l.context, s) }

// trial runs one kill. It returns false, having done nothing, when the
// operation is prune and the CLI's prune refuses its arguments as a usage
// error.
func (h *harness) trial(t *testing.T, n int, rng *rand.Rand, kind string, st *stats) bool {
	t.Helper()
	dir := h.fresh(t, "trial")
	defer os.RemoveAll(dir)
	op := h.planOp(t, rng, kind, dir)
	l := &trialLog{n: n, op: op}

	// The uninterrupted run on a sibling copy: calibration and oracle.
	oracle := dir + "-oracle"
	if err := copyLayout(dir, oracle); err != nil {
		t.Fatal(err)
	}
	ro, oracleEvent := h.watched(oracle, op.args, -1)
	if ro.code != 0 || ro.suspicious() {
		if op.kind == "prune" && ro.code == 2 && !ro.suspicious() {
			// A usage error: the CLI's prune is not the one this test knows.
			t.Logf("prune refuses %q (%s); prune trials are skipped from now on", strings.Join(op.args, " "), strings.TrimSpace(ro.stderr))
			h.prune = nil
			os.RemoveAll(oracle)
			return false
		}
		l.fail("uninterrupted run failed:\n%s", ro)
	}
	if s, err := readLayout(oracle); err != nil {
		l.fail("uninterrupted run left index.json unreadable: %v", err)
	} else if op.after == nil {
		op.after = s.entries
		op.batch = len(op.before) - len(op.after)
	} else if !slices.Equal(s.entries, op.after) {
		l.fail("the uninterrupted run's entries differ from the computed after-set: %s", diffEntries(op.after, s.entries))
	}
	os.RemoveAll(oracle)
	if len(l.problems) > 0 {
		h.report(t, dir, l, st)
		return true
	}
	// Odd trials: SIGKILL after a delay drawn uniformly in [0, 1.2*T]. The
	// journaled part of a transaction (record committed .. record cleared)
	// is only a few ms at the end of a run that mostly opens the store and
	// plans, and the run time jitters by more than that, so even trials
	// aim at it by watching: the kill comes a delay drawn uniformly in
	// [0, 1.2*(T-E)] after the new index.json appears (E: when it appeared
	// in the oracle run), which only happens once the record is committed.
	l.T, l.draw = ro.dur, "uniform"
	var rk *run
	if oracleEvent > 0 && n%2 == 0 {
		l.draw = "event"
		after := time.Duration(rng.Int64N(int64(ro.dur-oracleEvent)*12/10 + 1))
		var at time.Duration
		rk, at = h.watched(dir, op.args, after)
		l.window = fmt.Sprintf(" (index seen at %s, oracle %s)", at.Round(10*time.Microsecond), oracleEvent.Round(10*time.Microsecond))
		l.delay = at + after
		if at == 0 {
			l.delay = after // never seen: the process ended first
		}
	} else {
		l.delay = time.Duration(rng.Int64N(int64(l.T)*12/10 + 1))
		rk = h.start(dir, op.args...).wait(l.delay, nil)
	}
	l.exited = !rk.killed
	l.note(rk.String())
	switch {
	case rk.suspicious():
		l.fail("the killed run reported a race, panic or fatal error")
	case !rk.killed && rk.code != 0:
		l.fail("the run exited %d before the kill (the same run succeeded uninterrupted)", rk.code)
	}

	// What a foreign reader (skopeo, umoci: no recovery) sees of the layout
	// as the kill left it.
	st.foreignCheck(dir, l.fail)

	// Classify from the layout as the kill left it.
	pend, rj, err := h.pending(dir)
	if err != nil {
		l.fail("reading the journal after the kill: %v\n%s", err, rj)
	}
	pre, err := readLayout(dir)
	exitedOK := !rk.killed && rk.code == 0
	switch {
	case err != nil:
		l.fail("index.json after the kill, before recovery: %v", err)
	case pend > 0:
		l.class = classDuring
		switch {
		case slices.Equal(pre.entries, op.before):
			st.duringOld++
		case slices.Equal(pre.entries, op.after):
			st.duringNew++
		default:
			l.fail("with a pending record, index.json is neither the before- nor the after-set: %s", diffEntries(op.before, pre.entries))
		}
	default:
		if l.class = settledClass(pre.entries, op, exitedOK); l.class == "" {
			l.fail("no pending record, and index.json is a mix of the before- and after-sets: %s", diffEntries(op.before, pre.entries))
		}
	}
	if exitedOK && l.class != classAfter {
		l.fail("the run exited 0 before the kill but left the layout %q (want after)", l.class)
	}
	if l.class == "" {
		l.class = "unknown"
	}

	// Recover, then check.
	acts, rr, err := h.recover(dir)
	l.note(fmt.Sprintf("recover actions: %v", acts))
	if err != nil {
		l.fail("recover: %v\n%s", err, rr)
	} else if rr.suspicious() {
		l.fail("recover reported a race, panic or fatal error:\n%s", rr)
	}
	orphansOK := op.kind != "rm" && op.kind != "prune" && l.class == classBefore
	rep, rf, err := h.fsck(dir)
	if err != nil {
		l.fail("%v\n%s", err, rf)
	} else {
		for _, p := range rep.Problems {
			if p.Kind == "orphan" && orphansOK {
				continue
			}
			l.fail("fsck after recovery: %s %s %s: %s", p.Kind, p.Digest, p.Path, p.Detail)
		}
	}
	post, orphans, probs := h.audit(dir)
	for _, p := range probs {
		l.fail("audit after recovery: %s", p)
	}
	if post != nil {
		want := op.after
		if l.class == classBefore {
			want = op.before
		}
		switch {
		case slices.Equal(post.entries, want):
		case slices.Equal(post.entries, op.before), slices.Equal(post.entries, op.after):
			l.fail("killed %s, recovery left the other state: %s", l.class, diffEntries(want, post.entries))
		default:
			l.fail("after recovery index.json is a mix of before and after: %s", diffEntries(want, post.entries))
		}
	}
	if len(orphans) > 0 {
		if orphansOK {
			st.orphanTrials++
		} else {
			l.fail("orphan blobs after recovery: %v", short(orphans))
		}
		for _, d := range orphans {
			if !h.srcBlobs[d] {
				l.fail("orphan %s is not a blob of the import source", d)
			}
		}
	}
	// fsck leaves out orphans a live lease holds (a killed import leases
	// what it copies until the lease expires): it may report fewer
	// orphans than the audit, never others.
	if rep != nil {
		for _, p := range rep.Problems {
			if p.Kind == "orphan" && !slices.Contains(orphans, digest.Digest(p.Digest)) {
				l.fail("fsck reports orphan %s, the audit does not see it", p.Digest)
			}
		}
	}

	// A second recovery does nothing.
	before2, err := files(dir)
	if err != nil {
		t.Fatal(err)
	}
	acts2, rr2, err := h.recover(dir)
	if err != nil {
		l.fail("second recover: %v\n%s", err, rr2)
	} else if len(acts2) > 0 {
		l.fail("second recover did something: %v", acts2)
	}
	after2, err := files(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffFiles(before2, after2); d != "" {
		l.fail("second recover changed files: %s", d)
	}
	if s, err := readLayout(dir); err == nil && post != nil && s.digest != post.digest {
		l.fail("second recover changed index.json")
	}

	st.kills++
	switch l.class {
	case classBefore:
		st.before++
	case classDuring:
		st.during++
	case classAfter:
		st.after++
		if !rk.killed {
			st.exited++
		}
	}
	st.byKind[op.kind+" "+l.class]++
	st.byDraw[l.draw+" "+l.class]++
	h.report(t, dir, l, st)
	return true
}

// settledClass classifies a layout left with no pending record by its
// entries: classBefore or classAfter, "" for a mix. An operation that
// changes no entry (a prune whose rule matches nothing, which may still
// commit a transaction that rewrites index.json) has equal before- and
// after-sets: a run that exited 0 (exitedOK) left the after-set.
func settledClass(entries []entry, op *trialOp, exitedOK bool) string {
	switch {
	case slices.Equal(entries, op.after) && exitedOK:
		return classAfter
	case slices.Equal(entries, op.before):
		return classBefore
	case slices.Equal(entries, op.after):
		return classAfter
	}
	return ""
}

// watched runs the binary on dir while polling the layout root for the new
// index.json: a renameio temp file (".index.json*") or a new inode of
// index.json, both written only after the journal commit. With kill >= 0 it
// SIGKILLs the process that long after it saw one. It returns the run and
// when (since the start) the new index was seen, 0 if never.
func (h *harness) watched(dir string, args []string, kill time.Duration) (*run, time.Duration) {
	var ino uint64
	if fi, err := os.Lstat(filepath.Join(dir, "index.json")); err == nil {
		ino = fi.Sys().(*syscall.Stat_t).Ino
	}
	c := h.start(dir, args...)
	stop := make(chan struct{})
	var seen time.Duration
	var wg sync.WaitGroup
	r := c.wait(-1, func(p *os.Process) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if newIndex(dir, ino) {
					seen = time.Since(c.begin)
					if kill >= 0 {
						time.Sleep(kill)
						_ = p.Signal(syscall.SIGKILL) // ErrProcessDone when it exited first
					}
					return
				}
				time.Sleep(20 * time.Microsecond)
			}
		})
	})
	close(stop)
	wg.Wait()
	return r, seen
}

func newIndex(dir string, ino uint64) bool {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".index.json") {
			return true
		}
	}
	fi, err := os.Lstat(filepath.Join(dir, "index.json"))
	return err == nil && fi.Sys().(*syscall.Stat_t).Ino != ino
}

// report logs one line per trial, and the whole story of a violation.
func (h *harness) report(t *testing.T, dir string, l *trialLog, st *stats) {
	t.Helper()
	how := "killed"
	if l.exited {
		how = "exited first"
	}
	t.Logf("trial %3d: %-10s batch %3d  %-7s kill at %8s of %8s%s  %-6s %s", l.n, l.op.kind, l.op.batch, l.draw,
		l.delay.Round(10*time.Microsecond), l.T.Round(10*time.Microsecond), l.window, l.class, how)
	if len(l.problems) == 0 {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "trial %d: ocistore %s (batch %d), SIGKILL after %s (%s draw) of an uninterrupted %s%s, kill landed %s\n",
		l.n, strings.Join(abbrev(l.op.args), " "), l.op.batch, l.delay, l.draw, l.T, l.window, l.class)
	for _, p := range l.problems {
		fmt.Fprintf(&b, "  - %s\n", p)
	}
	for _, c := range l.context {
		fmt.Fprintf(&b, "  %s\n", strings.ReplaceAll(strings.TrimSpace(c), "\n", "\n  "))
	}
	if rep, r, err := h.fsck(dir); err == nil {
		fmt.Fprintf(&b, "  fsck now: %d problems\n  %s\n", len(rep.Problems), strings.ReplaceAll(tail(r.stdout, 3000), "\n", "\n  "))
	}
	fmt.Fprintf(&b, "  layout kept at %s", h.keep(dir))
	st.violation(b.String())
}

// diffEntries says what b has that a has not and the reverse.
func diffEntries(a, b []entry) string {
	in := func(es []entry) map[entry]bool {
		m := map[entry]bool{}
		for _, e := range es {
			m[e] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var plus, minus []string
	for _, e := range b {
		if !ma[e] {
			plus = append(plus, e.String())
		}
	}
	for _, e := range a {
		if !mb[e] {
			minus = append(minus, e.String())
		}
	}
	return fmt.Sprintf("%d entries vs %d; missing %d %v; extra %d %v", len(a), len(b), len(minus), head(minus), len(plus), head(plus))
}

func head(s []string) []string {
	if len(s) > 6 {
		return append(slices.Clone(s[:6]), "...")
	}
	return s
}

func short(ds []digest.Digest) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	return head(out)
}

// abbrev shortens the source path of an import for messages.
func abbrev(args []string) []string {
	out := slices.Clone(args)
	for i, a := range out {
		if filepath.IsAbs(a) {
			out[i] = filepath.Base(a)
		}
	}
	if len(out) > 8 {
		out = append(out[:8], fmt.Sprintf("... (%d more)", len(out)-8))
	}
	return out
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
