package store_test

// Model-based test: a rapid state machine drives a store on memfs with
// random operations (blobs, manifests, indexes, tags, untags, deletes,
// group commits (rapid_group_test.go),
// a lease, reopens, and crashes between acknowledged operations) and
// compares it after every step with a plain model: the tags and untagged
// entries of index.json, the blobs that must be on disk (the closure of
// index.json, the blobs the lease holds and the orphans no transaction
// freed), the blobs each call freed, and what a foreign reader sees
// (testutil.ForeignReadable, also on each crash state before recovery).
//
// A crash keeps what was synced plus a subset of what was not, drawn by
// rapid (so a failing case shrinks towards "lose everything unsynced"),
// and the store opened on it must equal the model exactly: every
// acknowledged operation is durable. A missing fsync shows here.
//
// Fail files: rapid writes them to testdata/rapid/<TestName>/ relative to
// the working directory and replays every file it finds there on each run.
// TestRapidStateMachine changes to the module root first, so that they live
// in the repository's testdata/rapid/ (commit them: they are regression
// cases). A fail file that no longer fails because the engine was fixed
// shows as "no longer valid" (the run goes past the failing step and runs
// out of recorded draws).
//
// Every check is strict: the engine defects this test found are fixed,
// each kept as a regression case (fuzz/defects_test.go lists them).
//
//	go test ./store/ -run Rapid                      # 100 checks, about 30 steps each
//	go test ./store/ -run Rapid -rapid.checks=5000   # more
//	OCISTORE_CRASH_FULL=1 go test ./store/ -run Rapid # 1,000 checks of about 100 steps

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"pgregory.net/rapid"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/memfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// rpTags is the small set of tag names the machine draws from: collisions
// (moving a tag, untagging a missing one) are the interesting cases.
var rpTags = []string{"latest", "v1", "v2", "app:1.0", "x"}

// rpModel is what the store must hold.
type rpModel struct {
	tags     map[string]digest.Digest // tag -> manifest
	untagged map[digest.Digest]bool   // untagged entries (never also tagged)
	present  map[digest.Digest]bool   // blob files that must exist, and no others
	// leased are the blobs the machine's live lease holds: a transaction
	// that drops their last reference keeps them (unreferenced, present).
	leased map[digest.Digest]bool
}

func (m *rpModel) clone() rpModel {
	c := rpModel{tags: map[string]digest.Digest{}, untagged: map[digest.Digest]bool{}, present: map[digest.Digest]bool{}, leased: map[digest.Digest]bool{}}
	for k := range m.leased {
		c.leased[k] = true
	}
	for k, v := range m.tags {
		c.tags[k] = v
	}
	for k := range m.untagged {
		c.untagged[k] = true
	}
	for k := range m.present {
		c.present[k] = true
	}
	return c
}

// roots are the digests of the entries of index.json.
func (m *rpModel) roots() map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for _, d := range m.tags {
		out[d] = true
	}
	for d := range m.untagged {
		out[d] = true
	}
	return out
}

// tagged reports whether some tag names d.
func (m *rpModel) tagged(d digest.Digest) bool {
	for _, v := range m.tags {
		if v == d {
			return true
		}
	}
	return false
}

// tag is Store.Tag's effect for one name (see withTags and dropName): the
// manifest the name leaves stays as an untagged entry unless another entry
// holds it; an untagged entry of d is replaced by the named one.
func (m *rpModel) tag(d digest.Digest, name string) {
	if old, ok := m.tags[name]; ok {
		delete(m.tags, name)
		if !m.tagged(old) && !m.untagged[old] {
			m.untagged[old] = true
		}
	}
	delete(m.untagged, d)
	m.tags[name] = d
}

// untag is Store.Untag's effect for one existing name.
func (m *rpModel) untag(name string) {
	old, ok := m.tags[name]
	if !ok {
		return
	}
	delete(m.tags, name)
	if !m.tagged(old) && !m.untagged[old] {
		m.untagged[old] = true
	}
}

// rpBlob is a blob the machine made.
type rpBlob struct {
	desc    v1.Descriptor
	content []byte
	kids    []v1.Descriptor // children of a manifest or index
}

// rpMachine is one run: a store on memfs and its model.
type rpMachine struct {
	ctx  context.Context
	base string // real directory holding one directory per file system
	gen  int
	dir  string // the layout's real directory: where the journal lives
	mem  *memfs.FS
	s    *store.Store
	m    rpModel

	blobs     map[digest.Digest]*rpBlob
	raw       []digest.Digest // leaf blobs, in the order made
	manifests []digest.Digest // image manifests and indexes, in the order made
	steps     []string        // what ran, for failure messages
	leaseID   string          // the live lease, "" when none (its blobs: m.m.leased)
	omit      string          // the fsync purpose left out, "" for none (m.fs)
	// journaled, when set, runs once, right after the next journal
	// commit of a transaction (afterTxnCommit).
	journaled atomic.Pointer[func()]
}

func rpNewMachine(t *rapid.T, base, omit string) *rpMachine {
	m := &rpMachine{
		ctx:   context.Background(),
		omit:  omit,
		base:  base,
		m:     rpModel{tags: map[string]digest.Digest{}, untagged: map[digest.Digest]bool{}, present: map[digest.Digest]bool{}, leased: map[digest.Digest]bool{}},
		blobs: map[digest.Digest]*rpBlob{},
	}
	m.dir = m.newDir(t)
	m.mem = memfs.New(m.dir)
	m.open(t, "create")
	t.Cleanup(func() {
		if m.s != nil {
			m.s.Close()
		}
	})
	return m
}

// newDir makes a fresh real directory for a file system's journal.
func (m *rpMachine) newDir(t *rapid.T) string {
	m.gen++
	dir := filepath.Join(m.base, fmt.Sprint(m.gen))
	if err := os.MkdirAll(filepath.Join(dir, ".ocistore"), 0o755); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return dir
}

// open opens (creating or recovering) the layout on m.mem.
func (m *rpMachine) open(t *rapid.T, why string) {
	mem := m.mem
	o := &store.Options{LockTimeout: -1}
	store.SetTestFS(o, m.fs(mem))
	// The journal is a real file: its directory entry is tracked in memfs,
	// unsynced until .ocistore is synced.
	store.SetTestJournalHook(o, func() { _ = mem.AddExternal(journalRel) })
	store.SetTestCommitHook(o, func(tx *journal.Tx) (func() error, error) {
		return afterTxnCommit(tx, &m.journaled), nil
	})
	s, err := store.Open(m.ctx, m.dir, o)
	if err != nil {
		m.fail(t, "%s: open: %v", why, err)
	}
	m.s = s
}

// afterTxnCommit is a journal CommitHook's answer for a commit of tx:
// when tx leaves a pending record (the journal commit of a transaction,
// step 2 of the protocol) and fn holds a function, that function, taken
// out of fn, to run right after the commit.
func afterTxnCommit(tx *journal.Tx, fn *atomic.Pointer[func()]) func() error {
	if fn.Load() == nil {
		return nil
	}
	if recs, err := tx.Pending(); err != nil || len(recs) == 0 {
		return nil
	}
	f := fn.Swap(nil)
	if f == nil {
		return nil
	}
	return func() error { (*f)(); return nil }
}

// fs is the file system the machine's stores use on mem: mem, or mem
// leaving out the fsyncs of m.omit.
func (m *rpMachine) fs(mem *memfs.FS) fsio.FS {
	if m.omit == "" {
		return mem
	}
	e := errorfs.New(mem)
	e.OmitSync(m.omit)
	return e
}

func (m *rpMachine) fail(t *rapid.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s\nsteps:\n  %s", fmt.Sprintf(format, args...), strings.Join(m.steps, "\n  "))
}

func (m *rpMachine) step(t *rapid.T, format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	rpStats.add(strings.Fields(s)[0])
	m.steps = append(m.steps, s)
	t.Log(s)
}

// closure is every blob reachable from the given roots.
func (m *rpMachine) closure(roots map[digest.Digest]bool) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	var walk func(d digest.Digest)
	walk = func(d digest.Digest) {
		if out[d] {
			return
		}
		out[d] = true
		if b := m.blobs[d]; b != nil {
			for _, k := range b.kids {
				walk(k.Digest)
			}
		}
	}
	for d := range roots {
		walk(d)
	}
	return out
}

// canTag reports whether tagging d succeeds: its whole graph is present.
func (m *rpMachine) canTag(d digest.Digest) bool { return m.graphIn(d, m.m.present) }

// graphIn reports whether d's whole graph is among present.
func (m *rpMachine) graphIn(d digest.Digest, present map[digest.Digest]bool) bool {
	for b := range m.closure(map[digest.Digest]bool{d: true}) {
		if !present[b] {
			return false
		}
	}
	return true
}

// tagRefused checks the error of a Tag (or a PutManifest with names) of d,
// whose graph is not all present: it must be ErrMissingDependency.
//
// Also when the missing blob is a child manifest or index rather than a
// leaf (defect D4, fixed: it failed with ErrNotFound; regression cases
// TestRapidRegressionTagMissingChildManifest and
// testdata/rapid/TestRapidStateMachine/*-tag-missing-child-manifest.fail).
func (m *rpMachine) tagRefused(t *rapid.T, op string, d digest.Digest, err error) {
	rpStats.add(op + "(refused)")
	if errors.Is(err, store.ErrMissingDependency) {
		return
	}
	m.fail(t, "%s of %s, whose graph is not all present: got %v, want ErrMissingDependency", op, rpShort(d), err)
}

func (m *rpMachine) remember(b *rpBlob) {
	if _, ok := m.blobs[b.desc.Digest]; ok {
		return
	}
	m.blobs[b.desc.Digest] = b
	if layout.IsManifest(b.desc.MediaType) {
		m.manifests = append(m.manifests, b.desc.Digest)
	} else {
		m.raw = append(m.raw, b.desc.Digest)
	}
}

// actions --------------------------------------------------------------------

// PutBlob writes a small blob; the small id space makes "already present"
// (and "present again after it was freed") common.
func (m *rpMachine) PutBlob(t *rapid.T) {
	id := rapid.IntRange(0, 15).Draw(t, "blob")
	big := rapid.IntRange(0, 9).Draw(t, "big") == 9 // more than one 4 KiB block
	content := []byte(fmt.Sprintf("layer %d\n", id))
	if big {
		content = append(content, bytes.Repeat([]byte("x"), 5000)...)
	}
	desc := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(content), Size: int64(len(content))}
	if b := m.blobs[desc.Digest]; b != nil {
		desc = b.desc
	}
	m.step(t, "PutBlob %s (%d bytes, present=%v)", desc.Digest.Encoded()[:12], desc.Size, m.m.present[desc.Digest])
	if err := m.s.PutBlob(m.ctx, desc, bytes.NewReader(content)); err != nil {
		m.fail(t, "PutBlob: %v", err)
	}
	m.remember(&rpBlob{desc: desc, content: content})
	m.m.present[desc.Digest] = true
}

// PutManifest writes an image manifest over blobs made earlier (some may
// have been freed since: then it must fail and change nothing), or an index
// over manifests and indexes made earlier, and sometimes tags it.
func (m *rpMachine) PutManifest(t *rapid.T) {
	var content []byte
	var mt string
	var kids []v1.Descriptor
	if len(m.manifests) > 0 && rapid.IntRange(0, 3).Draw(t, "index") == 3 {
		mt = v1.MediaTypeImageIndex
		n := rapid.IntRange(1, 3).Draw(t, "manifests")
		for i := 0; i < n; i++ {
			kids = append(kids, m.blobs[m.draw(t, m.manifests, "manifest")].desc)
		}
		content = rpMarshal(t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Manifests: kids})
	} else {
		if len(m.raw) == 0 {
			t.Skip("no blob yet")
		}
		mt = v1.MediaTypeImageManifest
		cfg := m.blobs[m.draw(t, m.raw, "config")].desc
		cfg.MediaType = v1.MediaTypeImageConfig
		var layers []v1.Descriptor
		// Sometimes the layers of an earlier image, plus more: shared layers.
		if base := m.imageManifests(); len(base) > 0 && rapid.Bool().Draw(t, "extend") {
			layers = append(layers, m.blobs[rapid.SampledFrom(base).Draw(t, "base")].kids[1:]...)
		}
		n := rapid.IntRange(1, 3).Draw(t, "layers")
		for i := 0; i < n; i++ {
			layers = append(layers, m.blobs[m.draw(t, m.raw, "layer")].desc)
		}
		kids = append([]v1.Descriptor{cfg}, layers...)
		content = rpMarshal(t, v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Config: cfg, Layers: layers})
	}
	var names []string
	if k := rapid.IntRange(-1, len(rpTags)-1).Draw(t, "name"); k >= 0 {
		names = append(names, rpTags[k])
	}
	desc := v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(content), Size: int64(len(content))}
	kind := "manifest"
	if mt == v1.MediaTypeImageIndex {
		kind = "index"
	}
	m.step(t, "PutManifest %s %s kids=%s names=%v", kind, rpShort(desc.Digest), rpShorts(kids), names)

	kidsOK := true
	for _, k := range kids {
		kidsOK = kidsOK && m.m.present[k.Digest]
	}
	got, err := m.s.PutManifest(m.ctx, mt, content, names...)
	if !kidsOK {
		rpStats.add("PutManifest(refused)")
		if !errors.Is(err, store.ErrMissingDependency) {
			m.fail(t, "PutManifest with a missing child: got %v, want ErrMissingDependency", err)
		}
		return
	}
	m.remember(&rpBlob{desc: desc, content: content, kids: kids})
	m.m.present[desc.Digest] = true
	if len(names) > 0 && !m.canTag(desc.Digest) {
		m.tagRefused(t, "PutManifest", desc.Digest, err)
		return
	}
	if err != nil {
		m.fail(t, "PutManifest: %v", err)
	}
	if got.Digest != desc.Digest || got.Size != desc.Size {
		m.fail(t, "PutManifest returned %v, want %v", got, desc)
	}
	for _, n := range names {
		m.m.tag(desc.Digest, n)
	}
}

// draw picks one of the blobs made (from), mostly among those present:
// sometimes one that may have been freed since.
func (m *rpMachine) draw(t *rapid.T, from []digest.Digest, label string) digest.Digest {
	return m.drawWhere(t, from, func(d digest.Digest) bool { return m.m.present[d] }, label)
}

// drawWhere picks one of from, mostly among those for which ok holds.
func (m *rpMachine) drawWhere(t *rapid.T, from []digest.Digest, ok func(digest.Digest) bool, label string) digest.Digest {
	var present []digest.Digest
	for _, d := range from {
		if ok(d) {
			present = append(present, d)
		}
	}
	if len(present) > 0 && rapid.IntRange(0, 7).Draw(t, label+" kind") > 0 {
		return rapid.SampledFrom(present).Draw(t, label)
	}
	return rapid.SampledFrom(from).Draw(t, label)
}

func (m *rpMachine) imageManifests() []digest.Digest {
	var out []digest.Digest
	for _, d := range m.manifests {
		if m.blobs[d].desc.MediaType == v1.MediaTypeImageManifest {
			out = append(out, d)
		}
	}
	return out
}

// Tag names a manifest or index made earlier (whose graph may be gone: then
// it must fail and change nothing).
func (m *rpMachine) Tag(t *rapid.T) {
	if len(m.manifests) == 0 {
		t.Skip("no manifest yet")
	}
	desc := m.blobs[m.drawWhere(t, m.manifests, m.canTag, "manifest")].desc
	names := rapid.SliceOfN(rapid.SampledFrom(rpTags), 1, 2).Draw(t, "names")
	m.step(t, "Tag %s %v", rpShort(desc.Digest), names)
	err := m.s.Tag(m.ctx, desc, names...)
	if !m.canTag(desc.Digest) {
		m.tagRefused(t, "Tag", desc.Digest, err)
		return
	}
	if err != nil {
		m.fail(t, "Tag: %v", err)
	}
	for _, n := range names {
		m.m.tag(desc.Digest, n)
	}
}

// drawRef draws a reference: mostly one that index.json holds (a tag, or
// with digests the digest of an entry), sometimes any tag of the set or any
// manifest made, which may be missing.
func (m *rpMachine) drawRef(t *rapid.T, digests bool) string {
	var held []string
	for n := range m.m.tags {
		held = append(held, n)
	}
	if digests {
		for d := range m.m.roots() {
			held = append(held, d.String())
		}
	}
	sort.Strings(held)
	switch k := rapid.IntRange(0, 7).Draw(t, "ref kind"); {
	case k == 1 && digests && len(m.manifests) > 0:
		return rapid.SampledFrom(m.manifests).Draw(t, "any digest").String()
	case k >= 2 && len(held) > 0:
		return rapid.SampledFrom(held).Draw(t, "held ref")
	}
	return rapid.SampledFrom(rpTags).Draw(t, "any tag")
}

// skipWhenEmpty makes most removals on an empty index.json give way to
// another action: they can only be refused.
func (m *rpMachine) skipWhenEmpty(t *rapid.T) {
	if len(m.m.tags)+len(m.m.untagged) == 0 && rapid.IntRange(0, 3).Draw(t, "on empty") > 0 {
		t.Skip("nothing to remove")
	}
}

// Untag removes names; one missing name fails the whole call.
func (m *rpMachine) Untag(t *rapid.T) {
	m.skipWhenEmpty(t)
	names := []string{m.drawRef(t, false)}
	if rapid.Bool().Draw(t, "two") {
		names = append(names, m.drawRef(t, false))
	}
	m.step(t, "Untag %v", names)
	err := m.s.Untag(m.ctx, names...)
	for _, n := range names {
		if _, ok := m.m.tags[n]; !ok {
			rpStats.add("Untag(refused)")
			if !errors.Is(err, store.ErrNotFound) {
				m.fail(t, "Untag of missing %s: got %v, want ErrNotFound", n, err)
			}
			return
		}
	}
	if err != nil {
		m.fail(t, "Untag: %v", err)
	}
	for _, n := range names {
		m.m.untag(n)
	}
}

// Delete removes tags and digests (every entry of the manifest) and frees
// what only they used; one missing reference fails the whole call.
func (m *rpMachine) Delete(t *rapid.T) {
	m.skipWhenEmpty(t)
	var refs []string
	n := rapid.IntRange(1, 2).Draw(t, "refs")
	for i := 0; i < n; i++ {
		refs = append(refs, m.drawRef(t, true))
	}
	m.step(t, "Delete %v", rpShortRefs(refs))
	res, err := m.s.Delete(m.ctx, refs...)

	next, wantErr := rpDelete(m.m, refs)
	if wantErr != nil {
		rpStats.add("Delete(refused)")
		if !errors.Is(err, wantErr) {
			m.fail(t, "Delete %v: got %v, want %v", rpShortRefs(refs), err, wantErr)
		}
		return
	}
	if err != nil {
		m.fail(t, "Delete: %v", err)
	}
	before, after := m.closure(m.m.roots()), m.closure(next.roots())
	want := map[string]bool{}
	for d := range before {
		if !after[d] && m.m.leased[d] {
			rpStats.add("Delete(kept a leased blob)")
		}
		if !after[d] && !m.m.leased[d] { // a leased blob stays
			want[d.String()] = true
			delete(next.present, d)
		}
	}
	got := map[string]bool{}
	for _, b := range res.Freed {
		got[b.Digest] = true
	}
	if !rpSameSet(got, want) {
		m.fail(t, "Delete freed %v, want %v", rpSorted(got), rpSorted(want))
	}
	m.m = next
}

// rpDelete is Store.Delete's effect on cur: the model after it, or the
// error it fails with (a reference that index.json does not hold).
func rpDelete(cur rpModel, refs []string) (rpModel, error) {
	next := cur.clone()
	for _, r := range refs {
		d, isDigest := digest.Digest(r), strings.HasPrefix(r, "sha256:")
		switch {
		case !isDigest && cur.tags[r] != "":
			delete(next.tags, r)
		case isDigest && cur.roots()[d]:
			for k, v := range cur.tags {
				if v == d {
					delete(next.tags, k)
				}
			}
			delete(next.untagged, d)
		default:
			return cur, store.ErrNotFound
		}
	}
	return next, nil
}

// LeaseAdd adds one or two blobs made earlier (present or not) to the
// machine's lease, which it creates first when there is none: a delete or
// a group that drops their last reference keeps them.
func (m *rpMachine) LeaseAdd(t *rapid.T) {
	if len(m.blobs) == 0 {
		t.Skip("no blob yet")
	}
	all := slices.Concat(m.raw, m.manifests)
	ds := rapid.SliceOfN(rapid.SampledFrom(all), 1, 2).Draw(t, "leased")
	m.step(t, "LeaseAdd %v (new lease: %v)", rpShortDigests(ds), m.leaseID == "")
	var l *store.Lease
	if m.leaseID == "" {
		var err error
		if l, err = m.s.Lease(m.ctx, time.Hour); err != nil {
			m.fail(t, "lease: %v", err)
		}
		m.leaseID = l.ID
	} else {
		l = m.lease(t)
	}
	var descs []v1.Descriptor
	for _, d := range ds {
		descs = append(descs, m.blobs[d].desc)
	}
	if err := l.Add(m.ctx, descs...); err != nil {
		m.fail(t, "lease add: %v", err)
	}
	for _, d := range ds {
		m.m.leased[d] = true
	}
}

// LeaseRelease ends the machine's lease: its blobs are no longer held (the
// unreferenced ones stay, as orphans).
func (m *rpMachine) LeaseRelease(t *rapid.T) {
	if m.leaseID == "" {
		t.Skip("no lease")
	}
	m.step(t, "LeaseRelease")
	if err := m.lease(t).Release(m.ctx); err != nil {
		m.fail(t, "lease release: %v", err)
	}
	m.leaseID = ""
	m.m.leased = map[digest.Digest]bool{}
}

// lease is the machine's live lease, as the current store knows it (the
// lease is in the journal: it survives reopens and crashes).
func (m *rpMachine) lease(t *rapid.T) *store.Lease {
	ls, err := m.s.Leases(m.ctx)
	if err != nil {
		m.fail(t, "leases: %v", err)
	}
	for _, l := range ls {
		if l.ID == m.leaseID {
			return l
		}
	}
	m.fail(t, "lease %s is gone (the store has %d leases)", m.leaseID, len(ls))
	return nil
}

func rpShortDigests(ds []digest.Digest) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, rpShort(d))
	}
	return out
}

// Reopen closes the store and opens the layout again.
func (m *rpMachine) Reopen(t *rapid.T) {
	m.step(t, "Reopen")
	if err := m.s.Close(); err != nil {
		m.fail(t, "close: %v", err)
	}
	m.s = nil
	m.open(t, "reopen")
}

// CrashAndRecover crashes between acknowledged operations: the file system
// keeps what was synced and a drawn subset of the rest, the journal is as of
// its last commit (if its directory entry survived). Opening recovers; the
// state must be the model's, and a second recovery must change nothing.
func (m *rpMachine) CrashAndRecover(t *rapid.T) {
	c := m.mem.Snapshot()
	jb, err := os.ReadFile(filepath.Join(m.dir, journalRel))
	if err != nil {
		m.fail(t, "harness: read journal: %v", err)
	}
	keep := rapid.SliceOfN(rapid.Bool(), c.Items(), c.Items()).Draw(t, "keep")
	var lost []string
	for i, k := range keep {
		if !k {
			lost = append(lost, c.Describe(i))
		}
	}
	m.step(t, "CrashAndRecover: %d unsynced items, lost %v", c.Items(), lost)
	if c.Items() > 0 {
		rpStats.add("CrashAndRecover(unsynced items)")
	}
	m.s.Close()
	m.s = nil
	old := m.dir
	m.dir = m.newDir(t)
	mem, err := materialize(m.dir, t1Event{crash: c, journal: jb}, keep)
	if err != nil {
		m.fail(t, "harness: %v", err)
	}
	m.mem = mem
	if err := os.RemoveAll(old); err != nil {
		m.fail(t, "harness: %v", err)
	}
	// What a foreign reader (no recovery) sees of the crash state.
	if err := testutil.ForeignReadableFS(m.mem, nil); err != nil {
		m.fail(t, "foreign reader, before recovery: %v", err)
	}
	m.open(t, "recovery after the crash")
	before := m.mem.Tree()
	if _, err := m.s.Recover(m.ctx); err != nil {
		m.fail(t, "second recovery: %v", err)
	}
	if !sameTree(before, m.mem.Tree()) {
		m.fail(t, "second recovery changed the layout (not idempotent)")
	}
}

// Check compares the store with the model.
func (m *rpMachine) Check(t *rapid.T) {
	imgs, err := m.s.List(m.ctx)
	if err != nil {
		m.fail(t, "list: %v", err)
	}
	tags := map[string]digest.Digest{}
	untagged := map[digest.Digest]bool{}
	for _, im := range imgs {
		d := im.Descriptor.Digest
		switch {
		case im.Name == "" && untagged[d]:
			m.fail(t, "two untagged entries of %s", d)
		case im.Name == "":
			untagged[d] = true
		case tags[im.Name] != "":
			m.fail(t, "tag %s on two entries", im.Name)
		default:
			tags[im.Name] = d
		}
		if b := m.blobs[d]; b == nil || b.desc.Size != im.Descriptor.Size || b.desc.MediaType != im.Descriptor.MediaType {
			m.fail(t, "entry %s %v is not a descriptor the machine made", im.Name, im.Descriptor)
		}
	}
	if !rpSameTags(tags, m.m.tags) || !rpSameSet(untagged, m.m.untagged) {
		m.fail(t, "index.json has tags %v untagged %v, the model %v untagged %v", tags, rpSorted(untagged), m.m.tags, rpSorted(m.m.untagged))
	}
	for _, n := range rpTags {
		got, err := m.s.Resolve(m.ctx, n)
		want, ok := m.m.tags[n]
		switch {
		case ok && err != nil:
			m.fail(t, "resolve %s: %v", n, err)
		case ok && got.Digest != want:
			m.fail(t, "resolve %s = %s, want %s", n, got.Digest, want)
		case !ok && !errors.Is(err, store.ErrNotFound):
			m.fail(t, "resolve of missing %s: got %v, want ErrNotFound", n, err)
		}
	}

	// The blob files are exactly the model's, with their content.
	files := blobSet(m.mem)
	if !rpSameSet(files, m.m.present) {
		var extra, missing []string
		for d := range files {
			if !m.m.present[d] {
				extra = append(extra, rpShort(d))
			}
		}
		for d := range m.m.present {
			if !files[d] {
				missing = append(missing, rpShort(d))
			}
		}
		sort.Strings(extra)
		sort.Strings(missing)
		m.fail(t, "blob files: %v should be gone, %v are missing", extra, missing)
	}
	for d := range m.m.present {
		f, err := m.mem.Open(layout.BlobPath(d))
		if err != nil {
			m.fail(t, "blob %s: %v", d, err)
		}
		b, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(b, m.blobs[d].content) {
			m.fail(t, "blob %s: %d bytes that are not its content (%v)", rpShort(d), len(b), err)
		}
	}

	// The machine's lease, and no other.
	if ls, err := m.s.Leases(m.ctx); err != nil || (m.leaseID == "") != (len(ls) == 0) || len(ls) > 1 || (len(ls) == 1 && ls[0].ID != m.leaseID) {
		m.fail(t, "leases %v (%v), want the machine's %q", ls, err, m.leaseID)
	}

	// What a foreign reader sees: index.json parses, every blob it reaches
	// is there.
	if err := testutil.ForeignReadableFS(m.mem, nil); err != nil {
		m.fail(t, "foreign reader: %v", err)
	}

	// fsck: nothing but the orphans the model expects.
	rep, err := m.s.Check(m.ctx, nil)
	if err != nil {
		m.fail(t, "check: %v", err)
	}
	live := m.closure(m.m.roots())
	for _, p := range rep.Problems {
		if p.Kind == recovery.KindOrphan && m.m.present[digest.Digest(p.Digest)] && !live[digest.Digest(p.Digest)] {
			continue
		}
		m.fail(t, "fsck: %s", p)
	}
}

// helpers --------------------------------------------------------------------

func rpMarshal(t *rapid.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

func rpShort(d digest.Digest) string {
	if e := d.Encoded(); len(e) >= 12 {
		return e[:12]
	}
	return d.String()
}

func rpShorts(ds []v1.Descriptor) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, rpShort(d.Digest))
	}
	return out
}

func rpShortRefs(refs []string) []string {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		if strings.HasPrefix(r, "sha256:") {
			r = "@" + rpShort(digest.Digest(r))
		}
		out = append(out, r)
	}
	return out
}

func rpSameSet[K comparable](a, b map[K]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func rpSameTags(a, b map[string]digest.Digest) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func rpSorted[K ~string](m map[K]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, string(k))
	}
	sort.Strings(out)
	return out
}

// rpStats counts the actions run, for the test's summary line.
var rpStats rpCounter

type rpCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *rpCounter) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[k]++
}

func (c *rpCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.n))
	for k := range c.n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", strings.TrimSuffix(k, ":"), c.n[k]))
	}
	return strings.Join(parts, " ")
}

// rpProp is the property: a machine run from an empty layout.
//
// omit, when set, names an fsync purpose the machine's file systems leave
// out (TestRapidFindsMissingFsync).
func rpProp(base, omit string) func(*rapid.T) {
	return func(t *rapid.T) {
		dir, err := os.MkdirTemp(base, "check")
		if err != nil {
			t.Fatalf("harness: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		m := rpNewMachine(t, dir, omit)
		t.Repeat(rapid.StateMachineActions(m))
	}
}

// rpTempDir is a directory for the journals (real files, fsynced by bbolt
// on every commit), on tmpfs when the machine has /dev/shm: the file system
// under test is memfs, the journal's durability is bbolt's.
func rpTempDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "ocistore-rapid-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// rpSetFlags sets rapid's command-line flags for the length of a test.
func rpSetFlags(t *testing.T, kv map[string]string) {
	t.Helper()
	for k, v := range kv {
		f := flag.Lookup(k)
		if f == nil {
			t.Fatalf("no flag %s", k)
		}
		old := f.Value.String()
		if err := f.Value.Set(v); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Value.Set(old) })
	}
}

// rpFlagGiven reports whether a rapid flag was set on the command line or
// through its environment variable.
func rpFlagGiven(name, env string) bool {
	given := os.Getenv(env) != ""
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// TestRapidStateMachine runs the machine: 100 checks of about 30 steps by
// default, 1,000 of about 100 with OCISTORE_CRASH_FULL=1 (unless
// -rapid.checks or -rapid.steps is given).
// Fail files go to the repository's testdata/rapid/TestRapidStateMachine/,
// and every one there is replayed first.
func TestRapidStateMachine(t *testing.T) {
	if crashFull && !rpFlagGiven("rapid.checks", "RAPID_CHECKS") {
		rpSetFlags(t, map[string]string{"rapid.checks": "1000"})
	}
	if crashFull && !rpFlagGiven("rapid.steps", "RAPID_STEPS") {
		rpSetFlags(t, map[string]string{"rapid.steps": "100"})
	}
	base := rpTempDir(t)
	t.Chdir("..") // the module root: fail files in testdata/rapid/
	rpStats = rpCounter{}
	rapid.Check(t, rpProp(base, ""))
	t.Logf("actions: %s", &rpStats)
}

// rpTB is a rapid.TB that records a failure instead of failing the test, so
// that a test can require rapid to find one.
type rpTB struct {
	name   string
	failed bool
	msgs   []string
}

func (r *rpTB) Helper()                      {}
func (r *rpTB) Name() string                 { return r.name }
func (r *rpTB) Logf(format string, a ...any) { r.msgs = append(r.msgs, fmt.Sprintf(format, a...)) }
func (r *rpTB) Log(a ...any)                 { r.msgs = append(r.msgs, fmt.Sprint(a...)) }
func (r *rpTB) Skipf(format string, a ...any) {
	panic("rpTB: skip: " + fmt.Sprintf(format, a...))
}
func (r *rpTB) Skip(a ...any)                  { panic("rpTB: skip: " + fmt.Sprint(a...)) }
func (r *rpTB) SkipNow()                       { panic("rpTB: skip") }
func (r *rpTB) Errorf(format string, a ...any) { r.failed = true; r.Logf(format, a...) }
func (r *rpTB) Error(a ...any)                 { r.failed = true; r.Log(a...) }
func (r *rpTB) Fatalf(format string, a ...any) { r.failed = true; r.Logf(format, a...) }
func (r *rpTB) Fatal(a ...any)                 { r.failed = true; r.Log(a...) }
func (r *rpTB) FailNow()                       { r.failed = true }
func (r *rpTB) Fail()                          { r.failed = true }
func (r *rpTB) Failed() bool                   { return r.failed }

var _ rapid.TB = (*rpTB)(nil)

// TestRapidFindsMissingFsync proves the machine can fail: with one fsync of
// the protocol turned off, rapid must find a violation (and shrink it).
// The journal-directory fsync is left out: losing the journal's directory
// entry loses no acknowledged state (the store rebuilds the journal from
// the layout), and this machine crashes only between acknowledged
// operations; tier 1 covers it with crashes inside a transaction.
//
// The runs are the same with -short: rapid runs a fifth of -rapid.checks
// and half of -rapid.steps there, so the flags are scaled up to give the
// 100 checks of about 30 steps from seed 1 that find each missing fsync
// (fewer found none for some of them). It stops at the first violation.
func TestRapidFindsMissingFsync(t *testing.T) {
	checks, steps := 100, 30
	if testing.Short() {
		checks, steps = checks*5, steps*2
	}
	purposes := slices.DeleteFunc(slices.Clone(fsio.SyncPurposes), func(p string) bool { return p == fsio.SyncJournalDir })
	for _, purpose := range purposes {
		t.Run(purpose, func(t *testing.T) {
			rpSetFlags(t, map[string]string{
				"rapid.seed": "1", "rapid.checks": fmt.Sprint(checks), "rapid.steps": fmt.Sprint(steps),
				"rapid.shrinktime": "1s", "rapid.nofailfile": "true", "rapid.failfile": "",
			})
			tb := &rpTB{name: t.Name()}
			rapid.Check(tb, rpProp(rpTempDir(t), purpose))
			if !tb.failed {
				t.Fatalf("with the %s fsync off, 100 runs of the machine found no violation", purpose)
			}
			for _, msg := range tb.msgs {
				if strings.Contains(msg, "[rapid] failed") || strings.Contains(msg, "[rapid] panic") {
					t.Logf("%s off: %s", purpose, rpFirstLines(msg, 16))
				}
			}
		})
	}
}

func rpFirstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// TestRapidRegressionTagMissingChildManifest is the minimal case rapid found
// for defect D4: tagging an index whose child manifest was freed must fail
// with ErrMissingDependency (as for a missing layer) and change nothing.
// Regression test: it failed with ErrNotFound.
func TestRapidRegressionTagMissingChildManifest(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	layer := bytes.Repeat([]byte("x"), 100)
	ld := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	if err := s.PutBlob(ctx, ld, bytes.NewReader(layer)); err != nil {
		t.Fatal(err)
	}
	cfg := ld
	cfg.MediaType = v1.MediaTypeImageConfig
	mb, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{ld}})
	md, err := s.PutManifest(ctx, v1.MediaTypeImageManifest, mb, "latest")
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{md}})
	id, err := s.PutManifest(ctx, v1.MediaTypeImageIndex, ib) // untagged: the manifest's blobs are the tag's only
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, "latest"); err != nil { // frees the manifest and its layer
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, layout.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Tag(ctx, id, "latest")
	if !errors.Is(err, store.ErrMissingDependency) || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("tag of an index whose child manifest is missing: got %v, want ErrMissingDependency", err)
	}
	after, err := os.ReadFile(filepath.Join(dir, layout.IndexFile))
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("a refused tag changed index.json (%v)", err)
	}
	if imgs, err := s.List(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("after a refused tag: %v, %v", imgs, err)
	}
}
