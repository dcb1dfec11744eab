package refcount_test

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
)

// graph is a fake layout: manifests by digest, and the blobs on disk.
type graph struct {
	kids    map[digest.Digest][]v1.Descriptor
	missing map[digest.Digest]bool // manifests that cannot be read
	loads   int
}

func newGraph() *graph {
	return &graph{kids: map[digest.Digest][]v1.Descriptor{}, missing: map[digest.Digest]bool{}}
}

func (g *graph) load(d v1.Descriptor) (layout.Children, error) {
	g.loads++
	if g.missing[d.Digest] {
		return layout.Children{}, fmt.Errorf("blob %s: %w", d.Digest, errdef.ErrNotFound)
	}
	k, ok := g.kids[d.Digest]
	if !ok {
		return layout.Children{}, fmt.Errorf("blob %s: %w", d.Digest, errdef.ErrNotFound)
	}
	return layout.Children{Refs: k}, nil
}

func leaf(name string) v1.Descriptor {
	return v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromString(name), Size: int64(len(name))}
}

func (g *graph) manifest(name string, kids ...v1.Descriptor) v1.Descriptor {
	d := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromString("m:" + name), Size: 100}
	g.kids[d.Digest] = kids
	return d
}

func (g *graph) index(name string, kids ...v1.Descriptor) v1.Descriptor {
	d := g.manifest(name, kids...)
	d.MediaType = v1.MediaTypeImageIndex
	return d
}

func counts(m refcount.Map) map[digest.Digest]uint64 {
	out := map[digest.Digest]uint64{}
	for d, r := range m {
		out[d] = r.Count
	}
	return out
}

func TestIncDec(t *testing.T) {
	g := newGraph()
	base, l1, l2, cfg1, cfg2 := leaf("base"), leaf("l1"), leaf("l2"), leaf("cfg1"), leaf("cfg2")
	a := g.manifest("a", cfg1, base, l1)
	b := g.manifest("b", cfg2, base, l2)
	ix := g.index("ix", a, b)

	byName := map[string]v1.Descriptor{"a": a, "b": b, "ix": ix, "base": base, "l1": l1, "l2": l2, "cfg1": cfg1, "cfg2": cfg2}
	type step struct {
		inc    bool
		d      v1.Descriptor
		freed  []v1.Descriptor
		counts map[string]uint64
	}
	steps := []step{
		{true, a, nil, map[string]uint64{"a": 1, "base": 1, "l1": 1, "cfg1": 1}},
		{true, a, nil, map[string]uint64{"a": 2, "base": 1, "l1": 1}},
		{true, b, nil, map[string]uint64{"b": 1, "base": 2, "l2": 1}},
		{true, ix, nil, map[string]uint64{"ix": 1, "a": 3, "b": 2, "base": 2}},
		{false, a, nil, map[string]uint64{"a": 2}},
		{false, ix, []v1.Descriptor{ix}, map[string]uint64{"ix": 0, "a": 1, "b": 1, "base": 2}},
		{false, b, []v1.Descriptor{b, cfg2, l2}, map[string]uint64{"b": 0, "base": 1, "l2": 0, "cfg2": 0}},
		{false, a, []v1.Descriptor{a, cfg1, base, l1}, map[string]uint64{"a": 0, "base": 0, "l1": 0, "cfg1": 0}},
	}
	m := refcount.Map{}
	for i, s := range steps {
		c := &refcount.Counter{T: m, Load: g.load}
		var err error
		if s.inc {
			err = c.Inc(s.d)
		} else {
			err = c.Dec(s.d)
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		var freed []digest.Digest
		for _, f := range c.Freed {
			freed = append(freed, f.Digest)
		}
		var want []digest.Digest
		for _, f := range s.freed {
			want = append(want, f.Digest)
		}
		if !slices.Equal(freed, want) {
			t.Errorf("step %d: freed %v, want %v", i, freed, want)
		}
		for _, f := range c.Freed {
			if f.Size <= 0 {
				t.Errorf("step %d: freed %s without its size", i, f.Digest)
			}
		}
		for name, n := range s.counts {
			if got := m[byName[name].Digest].Count; got != n {
				t.Errorf("step %d: count of %s = %d, want %d", i, name, got, n)
			}
		}
	}
	if len(m) != 0 {
		t.Errorf("counts left: %v", counts(m))
	}
}

func TestDeltas(t *testing.T) {
	g := newGraph()
	l := leaf("l")
	a := g.manifest("a", l)
	m := refcount.Map{}
	c := &refcount.Counter{T: m, Load: g.load}
	if err := c.Inc(a); err != nil {
		t.Fatal(err)
	}
	if err := c.Inc(a); err != nil {
		t.Fatal(err)
	}
	if err := c.Dec(a); err != nil {
		t.Fatal(err)
	}
	if c.Deltas[a.Digest] != 1 || c.Deltas[l.Digest] != 1 || len(c.Deltas) != 2 {
		t.Errorf("deltas %v", c.Deltas)
	}
	c = &refcount.Counter{T: m, Load: g.load}
	c.Inc(a)
	c.Dec(a)
	if len(c.Deltas) != 0 {
		t.Errorf("deltas that cancel out are kept: %v", c.Deltas)
	}
}

func TestDecBelowZero(t *testing.T) {
	m := refcount.Map{}
	c := &refcount.Counter{T: m, Load: newGraph().load}
	if err := c.Dec(leaf("x")); !errors.Is(err, errdef.ErrCorrupt) {
		t.Fatalf("Dec of an uncounted blob = %v, want ErrCorrupt", err)
	}
}

func TestIncErrors(t *testing.T) {
	g := newGraph()
	absent := g.manifest("absent")
	g.missing[absent.Digest] = true
	l := leaf("l")
	a := g.manifest("a", l)

	t.Run("manifest unreadable", func(t *testing.T) {
		c := &refcount.Counter{T: refcount.Map{}, Load: g.load}
		if err := c.Inc(absent); !errors.Is(err, errdef.ErrNotFound) {
			t.Fatalf("Inc = %v", err)
		}
	})
	t.Run("lenient", func(t *testing.T) {
		m := refcount.Map{}
		c := &refcount.Counter{T: m, Load: g.load, Lenient: true}
		if err := c.Inc(absent); err != nil {
			t.Fatal(err)
		}
		if len(c.Problems) != 1 || m[absent.Digest].Count != 1 || m[absent.Digest].Expanded {
			t.Errorf("problems %v, ref %+v", c.Problems, m[absent.Digest])
		}
	})
	t.Run("present check", func(t *testing.T) {
		m := refcount.Map{}
		var checked []digest.Digest
		c := &refcount.Counter{T: m, Load: g.load, Present: func(d v1.Descriptor) error {
			checked = append(checked, d.Digest)
			if d.Digest == l.Digest {
				return fmt.Errorf("blob %s: %w", d.Digest, errdef.ErrMissingDependency)
			}
			return nil
		}}
		if err := c.Inc(a); !errors.Is(err, errdef.ErrMissingDependency) {
			t.Fatalf("Inc = %v", err)
		}
		if !slices.Equal(checked, []digest.Digest{a.Digest, l.Digest}) {
			t.Errorf("Present called for %v, want the manifest, then its leaf", checked)
		}
		// Once live, a blob is not checked again: only the new manifest is.
		m2 := refcount.Map{}
		(&refcount.Counter{T: m2, Load: g.load}).Inc(a)
		checked = nil
		c = &refcount.Counter{T: m2, Load: g.load, Present: func(d v1.Descriptor) error { checked = append(checked, d.Digest); return nil }}
		b := g.manifest("b", l)
		if err := c.Inc(b); err != nil || !slices.Equal(checked, []digest.Digest{b.Digest}) {
			t.Errorf("Inc = %v, Present called for %v, want the new manifest only", err, checked)
		}
	})
}

// TestUnexpandedManifest: a manifest that could not be read when it became
// live (adopted broken) has an unknown closure, with the reason; its
// release frees it alone, read or not (its children were never counted),
// and a later reference that can read it expands it.
func TestUnexpandedManifest(t *testing.T) {
	g := newGraph()
	l := leaf("l")
	a := g.manifest("a", l)
	g.missing[a.Digest] = true
	m := refcount.Map{}
	c := &refcount.Counter{T: m, Load: g.load, Lenient: true}
	if err := c.Inc(a); err != nil {
		t.Fatal(err)
	}
	if r := m[a.Digest]; r.Unknown == "" || r.Expanded || m[l.Digest].Count != 0 {
		t.Fatalf("lenient count of an unreadable manifest: %+v, leaf %+v", r, m[l.Digest])
	}
	if len(c.Problems) != 1 || !errors.Is(c.Problems[0], errdef.ErrNotFound) {
		t.Errorf("problems %v", c.Problems)
	}
	// A second reference that still cannot read it, strict: refused.
	if err := (&refcount.Counter{T: m, Load: g.load}).Inc(a); !errors.Is(err, errdef.ErrNotFound) {
		t.Errorf("strict Inc of an unreadable live manifest = %v", err)
	}
	c = &refcount.Counter{T: m, Load: g.load}
	if err := c.Dec(a); err != nil {
		t.Fatalf("Dec of an unknown manifest = %v", err)
	}
	if len(c.Freed) != 1 || c.Freed[0].Digest != a.Digest || len(m) != 0 {
		t.Errorf("freed %v, counts %v", c.Freed, counts(m))
	}
	// Readable again when a second reference comes: expanded, known.
	m = refcount.Map{}
	(&refcount.Counter{T: m, Load: g.load, Lenient: true}).Inc(a)
	delete(g.missing, a.Digest)
	if err := (&refcount.Counter{T: m, Load: g.load}).Inc(a); err != nil {
		t.Fatal(err)
	}
	if r := m[a.Digest]; r.Unknown != "" || !r.Expanded || r.Count != 2 || m[l.Digest].Count != 1 {
		t.Errorf("after a readable reference: %+v, leaf %+v", r, m[l.Digest])
	}
}

// TestUnknownDepth: a lenient count stops at the nesting limit and marks
// the index there unknown; releasing the root then releases it too.
func TestUnknownDepth(t *testing.T) {
	g := newGraph()
	d := g.manifest("bottom", leaf("l"))
	for i := 0; i <= layout.MaxDepth+1; i++ {
		d = g.index(fmt.Sprintf("i%d", i), d)
	}
	m := refcount.Map{}
	c := &refcount.Counter{T: m, Load: g.load, Lenient: true}
	if err := c.Inc(d); err != nil {
		t.Fatal(err)
	}
	unknown := 0
	for _, r := range m {
		if r.Unknown != "" {
			unknown++
		}
	}
	if unknown != 1 || len(c.Problems) != 1 {
		t.Fatalf("%d unknown refs, problems %v", unknown, c.Problems)
	}
	if err := (&refcount.Counter{T: refcount.Map{}, Load: g.load}).Inc(d); !errors.Is(err, errdef.ErrCorrupt) {
		t.Errorf("strict Inc past the nesting limit = %v", err)
	}
	c = &refcount.Counter{T: m, Load: g.load}
	if err := c.Dec(d); err != nil {
		t.Fatal(err)
	}
	if len(m) != 0 {
		t.Errorf("left counts %v", counts(m))
	}
}

// TestCycle: a hostile graph where a manifest lists itself (directly or
// through another) terminates.
func TestCycle(t *testing.T) {
	g := newGraph()
	a := g.manifest("a")
	b := g.manifest("b", a)
	g.kids[a.Digest] = []v1.Descriptor{b, a}
	m := refcount.Map{}
	c := &refcount.Counter{T: m, Load: g.load}
	if err := c.Inc(a); err != nil {
		t.Fatalf("Inc = %v", err)
	}
	if g.loads > 4 {
		t.Errorf("%d loads for a two-node cycle", g.loads)
	}
	rm, problems := refcount.Recount(indexOf(a), g.load)
	if len(problems) != 0 || !maps.Equal(counts(rm), counts(m)) {
		t.Errorf("recount %v (%v), incremental %v", counts(rm), problems, counts(m))
	}
}

func TestDepthLimit(t *testing.T) {
	g := newGraph()
	d := g.manifest("bottom", leaf("l"))
	for i := 0; i < layout.MaxDepth+1; i++ {
		d = g.index(fmt.Sprint(i), d)
	}
	c := &refcount.Counter{T: refcount.Map{}, Load: g.load}
	if err := c.Inc(d); !errors.Is(err, errdef.ErrCorrupt) {
		t.Fatalf("Inc of a %d-deep chain = %v, want ErrCorrupt", layout.MaxDepth+2, err)
	}
	// Exactly at the limit is fine.
	g2 := newGraph()
	d = g2.manifest("bottom", leaf("l"))
	for i := 0; i < layout.MaxDepth-1; i++ {
		d = g2.index(fmt.Sprint(i), d)
	}
	c = &refcount.Counter{T: refcount.Map{}, Load: g2.load}
	if err := c.Inc(d); err != nil {
		t.Fatalf("Inc of a chain at the limit = %v", err)
	}
	if err := c.Dec(d); err != nil {
		t.Fatalf("Dec of a chain at the limit = %v", err)
	}
}

func indexOf(ds ...v1.Descriptor) *layout.Index {
	var es []layout.Entry
	for _, d := range ds {
		es = append(es, layout.NewEntry(d, ""))
	}
	return (&layout.Index{}).With(es)
}

// TestIncrementalEqualsRecount: random sequences of adding and removing
// roots over a random DAG leave the same counts as a recount of the roots
// that remain.
func TestIncrementalEqualsRecount(t *testing.T) {
	for seed := uint64(0); seed < 30; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		g := newGraph()
		var leaves, nodes []v1.Descriptor
		for i := 0; i < 12; i++ {
			leaves = append(leaves, leaf(fmt.Sprintf("%d-%d", seed, i)))
		}
		for i := 0; i < 15; i++ {
			var kids []v1.Descriptor
			for j := 0; j < 1+rng.IntN(4); j++ {
				if len(nodes) > 0 && rng.IntN(3) == 0 {
					kids = append(kids, nodes[rng.IntN(len(nodes))])
				} else {
					kids = append(kids, leaves[rng.IntN(len(leaves))])
				}
			}
			if i%4 == 3 {
				nodes = append(nodes, g.index(fmt.Sprintf("%d-%d", seed, i), kids...))
			} else {
				nodes = append(nodes, g.manifest(fmt.Sprintf("%d-%d", seed, i), kids...))
			}
		}
		m := refcount.Map{}
		var roots []v1.Descriptor
		freed := map[digest.Digest]bool{}
		for step := 0; step < 60; step++ {
			c := &refcount.Counter{T: m, Load: g.load}
			if len(roots) == 0 || rng.IntN(2) == 0 {
				d := nodes[rng.IntN(len(nodes))]
				roots = append(roots, d)
				if err := c.Inc(d); err != nil {
					t.Fatal(err)
				}
			} else {
				i := rng.IntN(len(roots))
				d := roots[i]
				roots = slices.Delete(roots, i, i+1)
				if err := c.Dec(d); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range c.Freed {
				freed[f.Digest] = true
			}
			want, problems := refcount.Recount(indexOf(roots...), g.load)
			if len(problems) != 0 {
				t.Fatal(problems)
			}
			if !maps.Equal(counts(m), counts(want)) {
				t.Fatalf("seed %d step %d: incremental %v, recount %v", seed, step, counts(m), counts(want))
			}
			// Everything freed is unreachable now, everything reachable is counted.
			for d := range freed {
				if _, live := want[d]; live {
					delete(freed, d) // became live again later
				}
			}
		}
	}
}

// TestJournalTable: the journal's refs bucket is a Table with the same
// behaviour as Map.
func TestJournalTable(t *testing.T) {
	db, err := journal.Open(t.TempDir()+"/j.db", journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	g := newGraph()
	a := g.manifest("a", leaf("x"), leaf("y"))
	b := g.manifest("b", leaf("x"))
	err = db.Update(func(tx *journal.Tx) error {
		c := &refcount.Counter{T: tx, Load: g.load}
		for _, d := range []v1.Descriptor{a, b, a} {
			if err := c.Inc(d); err != nil {
				return err
			}
		}
		return c.Dec(a)
	})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := refcount.Recount(indexOf(a, b), g.load)
	got := map[digest.Digest]uint64{}
	db.View(func(tx *journal.Tx) error {
		return tx.ForEachRef(func(d digest.Digest, r journal.Ref) error { got[d] = r.Count; return nil })
	})
	if !maps.Equal(got, counts(want)) {
		t.Errorf("journal %v, recount %v", got, counts(want))
	}
}

// TestLeafThenManifest: a manifest blob first referenced under a leaf media
// type and then as a manifest has its children counted, as when the
// references come the other way round.
func TestLeafThenManifest(t *testing.T) {
	g := newGraph()
	shared := leaf("shared")
	m := g.manifest("m", shared, leaf("own"))
	asLeaf := m
	asLeaf.MediaType = "application/octet-stream"
	holder := g.manifest("holder", asLeaf)
	other := g.manifest("other", shared)
	for _, order := range [][]v1.Descriptor{{holder, m, other}, {m, holder, other}, {other, holder, m}} {
		mm := refcount.Map{}
		for _, d := range order {
			if err := (&refcount.Counter{T: mm, Load: g.load}).Inc(d); err != nil {
				t.Fatal(err)
			}
		}
		if got := mm[shared.Digest].Count; got != 2 {
			t.Errorf("order %v: shared counted %d times, want 2", order[0].Digest, got)
		}
		want, _ := refcount.Recount(indexOf(order...), g.load)
		if !maps.Equal(counts(mm), counts(want)) {
			t.Errorf("incremental %v, recount %v", counts(mm), counts(want))
		}
		// Removing the other image never frees what m uses.
		c := &refcount.Counter{T: mm, Load: g.load}
		if err := c.Dec(other); err != nil {
			t.Fatal(err)
		}
		for _, f := range c.Freed {
			if f.Digest == shared.Digest {
				t.Errorf("shared layer freed while m is live")
			}
		}
	}
}

// TestReleaseReadsNoManifest: an expanded manifest's Ref records its
// children, so releasing it reads no blob, even one gone since; a Ref
// without them (counted by schema v2) has its manifest read, as before.
func TestReleaseReadsNoManifest(t *testing.T) {
	g := newGraph()
	cfg, l := leaf("cfg"), leaf("l")
	a := g.manifest("a", cfg, l)
	ix := g.index("ix", a)
	m := refcount.Map{}
	c := &refcount.Counter{T: m, Load: g.load}
	if err := c.Inc(ix); err != nil {
		t.Fatal(err)
	}
	if got := m[a.Digest].Children; len(got) != 2 || got[0].Digest != cfg.Digest || got[1].Size != l.Size || got[1].MediaType != l.MediaType {
		t.Fatalf("children recorded for a: %+v", got)
	}
	if got := m[cfg.Digest].Children; got != nil {
		t.Errorf("a leaf records children: %+v", got)
	}
	g.loads = 0
	g.missing[a.Digest], g.missing[ix.Digest] = true, true // removed by another tool
	c = &refcount.Counter{T: m, Load: g.load}
	if err := c.Dec(ix); err != nil {
		t.Fatal(err)
	}
	if g.loads != 0 || len(c.Freed) != 4 || len(m) != 0 {
		t.Errorf("release: %d loads, freed %v, left %v", g.loads, c.Freed, counts(m))
	}

	// As stored by schema v2: no children, the manifest is read.
	delete(g.missing, a.Digest)
	c = &refcount.Counter{T: m, Load: g.load}
	if err := c.Inc(a); err != nil {
		t.Fatal(err)
	}
	r := m[a.Digest]
	r.Children = nil
	m[a.Digest] = r
	g.loads = 0
	if err := c.Dec(a); err != nil {
		t.Fatal(err)
	}
	if g.loads != 1 || len(m) != 0 {
		t.Errorf("v2 release: %d loads, left %v", g.loads, counts(m))
	}
}
