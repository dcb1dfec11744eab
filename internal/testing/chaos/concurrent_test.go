package chaos

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Outcomes of a concurrent operation.
const (
	outAck    = "ack"    // exited 0: its effects must be there unless a later op undid them
	outKilled = "killed" // SIGKILLed: all or nothing, we cannot know which
	outFailed = "failed" // exited non-zero: treated like killed
)

// cop is one operation of a concurrent writer.
type cop struct {
	writer  int
	kind    string // tag, rm, import
	args    []string
	effects map[string]string // tag -> its value once the op took effect ("" = absent)
	outcome string
	detail  string // why it failed
}

// tagModel maps a tag to the values it may have: a manifest digest, or ""
// for absent.
type tagModel map[string]map[string]bool

// apply records op in m. def gives the value of a tag no op has touched.
func (m tagModel) apply(op *cop, def func(string) string) {
	for tag, v := range op.effects {
		if op.outcome == outAck {
			m[tag] = map[string]bool{v: true}
			continue
		}
		cur, ok := m[tag]
		if !ok {
			cur = map[string]bool{def(tag): true}
		}
		cur = maps.Clone(cur)
		cur[v] = true
		m[tag] = cur
	}
}

// definite returns the value of tag when it is certain.
func (m tagModel) definite(tag string, def func(string) string) (string, bool) {
	cur, ok := m[tag]
	if !ok {
		return def(tag), true
	}
	if len(cur) != 1 {
		return "", false
	}
	for v := range cur {
		return v, true
	}
	return "", false
}

// writer is one concurrent writer: a loop of ocistore processes.
type writer struct {
	id      int
	rng     *rand.Rand
	view    tagModel // its own namespace, from its own ops
	created []string // tags of its namespace it ever set, in order
	ownTpl  []string // template tags it may remove

	mu   sync.Mutex
	proc *os.Process // running child, nil between runs
}

func (w *writer) setProc(p *os.Process) {
	w.mu.Lock()
	w.proc = p
	w.mu.Unlock()
}

// kill SIGKILLs the running child, if any, and reports whether the signal
// was sent (not when the child had just exited).
func (w *writer) kill() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.proc != nil && w.proc.Signal(syscall.SIGKILL) == nil // ErrProcessDone when it just exited
}

// signal sends sig to the running child, if any, and returns it (nil when
// there is none or it has exited).
func (w *writer) signal(sig syscall.Signal) *os.Process {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc != nil && w.proc.Signal(sig) == nil {
		return w.proc
	}
	return nil
}

// running reports whether the writer's child is registered (not yet reaped).
func (w *writer) running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.proc != nil
}

func (h *harness) defaultTag(tag string) string { return h.tplDigest[tag] }

// next draws the writer's next operation from what it knows of its namespace.
func (w *writer) next(h *harness) *cop {
	stable := h.tplTags[:stableTags]
	for {
		op := &cop{writer: w.id, effects: map[string]string{}}
		switch r := w.rng.IntN(10); {
		case r < 4:
			src := stable[w.rng.IntN(len(stable))]
			op.kind, op.args = "tag", []string{"tag", src}
			for _, k := range w.rng.Perm(16)[:1+w.rng.IntN(3)] {
				dst := fmt.Sprintf("w%d.example.com/tagged:t%d", w.id, k)
				op.args = append(op.args, dst)
				op.effects[dst] = h.tplDigest[src]
			}
		case r < 7:
			pool := w.ownTpl
			if len(w.created) > 0 && w.rng.IntN(2) == 0 {
				pool = w.created
			}
			var cand []string
			for _, tag := range pool {
				if v, ok := w.view.definite(tag, h.defaultTag); ok && v != "" {
					cand = append(cand, tag)
				}
			}
			if len(cand) == 0 {
				continue
			}
			op.kind, op.args = "rm", []string{"rm"}
			for _, i := range w.rng.Perm(len(cand))[:1+w.rng.IntN(min(maxConcBatch, len(cand)))] {
				op.args = append(op.args, cand[i])
				op.effects[cand[i]] = ""
			}
		default:
			es := h.concSrcEntries[w.id]
			op.kind, op.args = "import", []string{"import", h.concSrc[w.id]}
			if w.rng.IntN(10) == 0 {
				for _, e := range es {
					op.effects[e.Name] = e.Digest
				}
				break
			}
			for _, i := range w.rng.Perm(len(es))[:1+w.rng.IntN(maxConcBatch)] {
				op.args = append(op.args, es[i].Name)
				op.effects[es[i].Name] = es[i].Digest
			}
		}
		return op
	}
}

func (w *writer) record(op *cop, h *harness) {
	w.view.apply(op, h.defaultTag)
	for _, tag := range slices.Sorted(maps.Keys(op.effects)) {
		if !slices.Contains(w.created, tag) && h.tplDigest[tag] == "" {
			w.created = append(w.created, tag)
		}
	}
}

func runConcurrent(t *testing.T, h *harness, cfg config, st *stats) {
	// Calibrate the killer on a scratch copy: the wall time of a small op.
	scratch := h.fresh(t, "calibrate")
	var ds []time.Duration
	for i := range 3 {
		r := h.exec(scratch, "tag", h.tplTags[0], fmt.Sprintf("calibrate:%d", i))
		if r.code != 0 {
			t.Fatalf("calibration: %s", r)
		}
		ds = append(ds, r.dur)
	}
	os.RemoveAll(scratch)
	slices.Sort(ds)
	T := ds[1]

	dir := h.fresh(t, "concurrent")
	defer os.RemoveAll(dir)
	var ws [2]*writer
	for i := range ws {
		ws[i] = &writer{id: i, rng: rand.New(rand.NewPCG(cfg.seed, uint64(100+i))), view: tagModel{}}
	}
	for i, tag := range h.tplTags[stableTags:] {
		ws[i%2].ownTpl = append(ws[i%2].ownTpl, tag)
	}

	var mu sync.Mutex
	var log []*cop // in order of completion
	var bad []string
	var wg sync.WaitGroup
	// gate stops the world for the killer's foreign-reader check: a writer
	// holds it (shared) from starting a process until the process is
	// registered, so that the killer, holding it, knows every running one.
	var gate sync.RWMutex
	start := time.Now()
	for _, w := range ws {
		wg.Go(func() {
			for range cfg.concOps {
				op := w.next(h)
				gate.RLock()
				c := h.start(dir, op.args...)
				if c.startErr == nil {
					w.setProc(c.cmd.Process)
				}
				gate.RUnlock()
				r := c.wait(-1, nil)
				w.setProc(nil)
				switch {
				case r.killed:
					op.outcome = outKilled
				case r.code == 0:
					op.outcome = outAck
				default:
					op.outcome = outFailed
					op.detail = firstLine(r.stderr)
				}
				mu.Lock()
				log = append(log, op)
				if r.suspicious() || r.code == -2 || (r.code == -1 && !r.killed) {
					bad = append(bad, fmt.Sprintf("writer %d: %s", w.id, r))
				}
				mu.Unlock()
				w.record(op, h)
			}
		})
	}
	stop := make(chan struct{})
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		rng := rand.New(rand.NewPCG(cfg.seed, 200))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(rng.Int64N(int64(4*T) + 1))):
			}
			victim := rng.IntN(len(ws))
			gate.Lock()
			if ws[victim].kill() {
				// Stop the world: the other writer's process, if any,
				// is paused where it is (as if killed too), the victim is
				// reaped; then the layout is what a crash there leaves.
				paused := ws[1-victim].signal(syscall.SIGSTOP)
				for ws[victim].running() {
					time.Sleep(100 * time.Microsecond)
				}
				st.foreignCheck(dir, func(format string, args ...any) {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("kill of writer %d: ", victim)+fmt.Sprintf(format, args...))
					mu.Unlock()
				})
				if paused != nil {
					_ = paused.Signal(syscall.SIGCONT)
				}
			}
			gate.Unlock()
		}
	}()
	wg.Wait()
	close(stop)
	<-killerDone
	elapsed := time.Since(start)

	// Counts, and the model: the log replayed in order of completion.
	model := tagModel{}
	importsInDoubt := 0
	kinds := map[string]int{}
	for _, op := range log {
		model.apply(op, h.defaultTag)
		kinds[op.kind+" "+op.outcome]++
		switch op.outcome {
		case outAck:
			st.concAcked++
		case outKilled:
			st.concKills++
		case outFailed:
			st.concFailed++
			t.Logf("writer %d: %s failed: %s", op.writer, strings.Join(abbrev(op.args), " "), op.detail)
		}
		if op.kind == "import" && op.outcome != outAck {
			importsInDoubt++
		}
	}
	st.concOps = len(log)
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s=%d", k, n))
	}
	t.Logf("concurrent: 2 writers x %d ops in %s, killer every U[0, %s]: %s", cfg.concOps, elapsed.Round(time.Millisecond), (4 * T).Round(time.Millisecond), strings.Join(sorted(ks), " "))

	var probs []string
	probs = append(probs, bad...)
	acts, rr, err := h.recover(dir)
	if err != nil || rr.suspicious() {
		probs = append(probs, fmt.Sprintf("recover: %v\n%s", err, rr))
	}
	t.Logf("recover after the concurrent run: %v", acts)
	rep, rf, err := h.fsck(dir)
	if err != nil {
		probs = append(probs, fmt.Sprintf("%v\n%s", err, rf))
	} else {
		for _, p := range rep.Problems {
			if p.Kind == "orphan" && importsInDoubt > 0 {
				continue
			}
			probs = append(probs, fmt.Sprintf("fsck: %s %s %s: %s", p.Kind, p.Digest, p.Path, p.Detail))
		}
	}
	post, orphans, aprobs := h.audit(dir)
	probs = append(probs, aprobs...)
	for _, d := range orphans {
		if importsInDoubt == 0 || !h.srcBlobs[d] {
			probs = append(probs, fmt.Sprintf("orphan %s (imports in doubt: %d; a source blob: %v)", d, importsInDoubt, h.srcBlobs[d]))
		}
	}
	if post != nil {
		for _, tag := range slices.Sorted(maps.Keys(model)) {
			got := post.tags[tag]
			if !model[tag][got] {
				probs = append(probs, fmt.Sprintf("tag %s is %q, the acknowledged operations allow only %v; its operations: %s",
					tag, got, slices.Sorted(maps.Keys(model[tag])), history(log, tag)))
			}
		}
		for _, tag := range slices.Sorted(maps.Keys(post.tags)) {
			if _, ok := model[tag]; !ok && post.tags[tag] != h.tplDigest[tag] {
				probs = append(probs, fmt.Sprintf("tag %s is %q, no operation touched it (template: %q)", tag, post.tags[tag], h.tplDigest[tag]))
			}
		}
		for _, tag := range h.tplTags {
			if _, ok := model[tag]; !ok && post.tags[tag] == "" {
				probs = append(probs, fmt.Sprintf("template tag %s is gone, no operation removed it", tag))
			}
		}
	}
	before2, _ := files(dir)
	acts2, rr2, err := h.recover(dir)
	if err != nil {
		probs = append(probs, fmt.Sprintf("second recover: %v\n%s", err, rr2))
	} else if len(acts2) > 0 {
		probs = append(probs, fmt.Sprintf("second recover did something: %v", acts2))
	}
	after2, _ := files(dir)
	if d := diffFiles(before2, after2); d != "" {
		probs = append(probs, "second recover changed files: "+d)
	}
	if len(probs) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "concurrent run (%d ops, %d acknowledged, %d killed, %d failed):\n", len(log), st.concAcked, st.concKills, st.concFailed)
		for _, p := range probs {
			fmt.Fprintf(&b, "  - %s\n", strings.ReplaceAll(p, "\n", "\n    "))
		}
		fmt.Fprintf(&b, "  layout kept at %s", h.keep(dir))
		st.violation(b.String())
	}
}

// history lists the operations that touched tag, in order of completion.
func history(log []*cop, tag string) string {
	var out []string
	for i, op := range log {
		if v, ok := op.effects[tag]; ok {
			if v == "" {
				v = "absent"
			}
			out = append(out, fmt.Sprintf("#%d w%d %s->%s %s", i, op.writer, op.kind, v, op.outcome))
		}
	}
	return strings.Join(out, ", ")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
