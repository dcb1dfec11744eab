package store_test

// Tier 1 of the crash proof: exhaustive crash-state enumeration in process.
//
// A scenario of operations runs on a store over memfs (a strict in-memory
// file system that knows what was synced) with the journal's commits
// snapshotted. After every file mutation and every journal commit (a crash
// point), the harness builds every state a crash there could leave: what was
// synced plus each subset of what was not (directory entries changed since
// their directory's last sync, file data blocks); the journal as of its last
// commit (a commit is atomic, and a crash point lies on each side of it).
// On each state it first checks, before any recovery, the invariant for
// foreign readers (testutil.ForeignReadable: skopeo and umoci run no
// recovery, so index.json must parse and every blob it reaches be there),
// then opens a store (recovery runs), then checks the invariants
// of the store (the check of internal/fsck, and a recount), that every operation acknowledged before the crash is
// there in full and the one in flight is all there or all gone, and that a
// second recovery changes nothing. Then it crashes that recovery at each of
// its own steps and recovers again: same result.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/memfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// crashFull is set by OCISTORE_CRASH_FULL=1 (make crash): exhaustive up to
// 10 unsynced items and 200 random subsets beyond, instead of the bounded
// sizes `make test` uses (smaller still with -short: make test-short).
var crashFull = os.Getenv("OCISTORE_CRASH_FULL") == "1"

type t1Sizes struct {
	images     int // images in the starting layout (at least 4)
	exhaustive int // enumerate every subset up to this many items
	random     int // random subsets beyond
	nested     int // states per crash point whose recovery is itself crashed
	// nestedEvery crashes the recovery (nested) at one crash point in
	// nestedEvery only (0 or 1: at every point).
	nestedEvery int
	// firstViolation stops the enumeration at its first violation (a test
	// that requires one, with -short).
	firstViolation bool
}

// t1Size is the size of the enumerations: full with OCISTORE_CRASH_FULL=1,
// bounded by default, and with -short (make test-short) every crash point
// still, with fewer crash states each and the recovery crashed at one point
// in three.
func t1Size() t1Sizes {
	switch {
	case crashFull:
		return t1Sizes{images: 12, exhaustive: 10, random: 200, nested: 4}
	case testing.Short():
		return t1Sizes{images: 5, exhaustive: 3, random: 4, nested: 1, nestedEvery: 3}
	}
	return t1Sizes{images: 5, exhaustive: 5, random: 12, nested: 1}
}

// t1FindSize is the size of the enumerations that must find a violation
// (a missing fsync): with -short they stop at the first one.
func t1FindSize() t1Sizes {
	return t1Sizes{images: 5, exhaustive: 6, random: 24, firstViolation: testing.Short()}
}

const journalRel = ".ocistore/journal.db"

// t1Shared runs the scenario on a layout with a shared blob directory:
// the layout in the memfs's "layout/", its blobs and journal in "shared/"
// (one memfs, so one crash state covers both). Set by
// TestTier1SharedBlobDir for its run only (the tier-1 tests are not
// parallel).
var t1Shared bool

// t1JournalRel is the journal's path under the memfs root.
func t1JournalRel() string {
	if t1Shared {
		return "shared/" + journalRel
	}
	return journalRel
}

// t1BlobPath is the memfs path of blob d.
func t1BlobPath(d digest.Digest) string {
	if t1Shared {
		return "shared/" + strings.TrimPrefix(layout.BlobPath(d), "blobs/")
	}
	return layout.BlobPath(d)
}

// t1Trash lists the files in the trash of the memfs layout.
func t1Trash(mem *memfs.FS) []string {
	dir := protocol.TrashDir
	if t1Shared {
		dir = "shared/" + dir
	}
	ents, _ := mem.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, dir+"/"+e.Name())
	}
	return out
}

// t1TrashMin, when positive, makes the stores of the scenario take the
// trash with transactions of that many blobs (lowTrashMin).
var t1TrashMin int

// t1OmitSync, when set, names the fsync purpose the file systems of the
// scenario leave out (TestTier1FindsMissingFsync).
var t1OmitSync string

// t1Open opens the scenario's layout on mem; dir is the real directory
// that mem stands for (the journal is a real file under it).
func t1Open(ctx context.Context, dir string, mem *memfs.FS, hook func()) (*store.Store, error) {
	o := &store.Options{LockTimeout: -1}
	store.SetTestSyncReclaim(o) // no mutation out of the recorded order
	store.SetTestReserveSize(o, t1ReserveSize)
	if t1TrashMin > 0 {
		store.SetTestTrashMin(o, t1TrashMin)
	}
	if hook != nil {
		store.SetTestJournalHook(o, hook)
	}
	wrap := func(f fsio.FS) fsio.FS {
		if t1OmitSync == "" {
			return f
		}
		e := errorfs.New(f)
		e.OmitSync(t1OmitSync)
		return e
	}
	if !t1Shared {
		store.SetTestFS(o, wrap(mem))
		return store.Open(ctx, dir, o)
	}
	o.SharedBlobDir = filepath.Join(dir, "shared")
	store.SetTestSharedFS(o, wrap(mem.Sub("layout")), wrap(mem.Sub("shared")))
	return store.Open(ctx, filepath.Join(dir, "layout"), o)
}

// t1Build builds the scenario runTier1 runs (TestTier1Fault sets another
// for its run only).
var t1Build = t1Scenario

// t1ReserveSize is the space reserve of the tier-1 stores: small, so that
// the snapshots of a memfs holding it stay cheap. Only a memfs with
// EnableReserve holds one (see TestTier1Fault).
const t1ReserveSize = 8 << 10

// t1Event is one crash point: the file system and journal right after a
// mutation or a commit, during operation op.
type t1Event struct {
	what    string
	op      int
	crash   *memfs.Crash
	journal []byte // nil: no journal committed yet
}

// t1Recorder snapshots a memfs and the journal at every change.
type t1Recorder struct {
	mem     *memfs.FS
	dir     string // real directory holding the journal
	op      int
	journal []byte
	events  []t1Event
	off     bool
}

func newRecorder(mem *memfs.FS, dir string) *t1Recorder {
	r := &t1Recorder{mem: mem, dir: dir}
	mem.OnMutation = func(what string) { r.record(what) }
	return r
}

func (r *t1Recorder) record(what string) {
	if r.off {
		return
	}
	r.events = append(r.events, t1Event{what: what, op: r.op, crash: r.mem.Snapshot(), journal: r.journal})
}

// commit is the journal's AfterCommit hook.
func (r *t1Recorder) commit() {
	b, err := os.ReadFile(filepath.Join(r.dir, t1JournalRel()))
	if err != nil {
		panic(err)
	}
	r.mem.AddExternal(t1JournalRel()) // the db file's directory entry, unsynced until .ocistore is
	r.journal = b
	r.record("journal commit")
}

// t1Op is one operation of the scenario.
type t1Op struct {
	name string
	run  func(ctx context.Context, s *store.Store) (*store.Result, error)
	// reopen makes the harness close the store and open a new one as the
	// operation (adoption, recovery).
	reopen bool
	// wantErr, when set, says the operation must fail with an error it
	// accepts and change nothing (its expectation is the previous op's).
	// The next op must be its retry: what that leaves is what a crash
	// during the failed op may also leave (all of it or nothing).
	wantErr func(error) bool
}

// t1Expect is what the scenario's uninterrupted run leaves after each op.
type t1Expect struct {
	tags     map[string]string
	ingested map[digest.Digest]bool // blobs written by this op
	freed    map[digest.Digest]bool // blobs this op freed
	applied  *t1Expect              // a failed op (wantErr): what it would have left
}

type t1Stats struct {
	ops, points, states, violations int
	// foreign counts the crash states checked, before recovery, against
	// the invariant for foreign readers; foreignBad those that broke it.
	foreign, foreignBad int
	messages            []string
}

// foreignCheck checks the invariant for foreign readers on a crash state
// before any recovery (skopeo and umoci run none): index.json parses and
// every blob it reaches is there. It reports a violation and returns false
// when the state breaks it.
func (st *t1Stats) foreignCheck(mem *memfs.FS, where string) bool {
	st.foreign++
	var err error
	if t1Shared {
		err = testutil.ForeignReadableFS(mem.Sub("layout"), mem.Sub("shared"))
	} else {
		err = testutil.ForeignReadableFS(mem, nil)
	}
	if err != nil {
		st.foreignBad++
		st.violation("%s: foreign reader, before recovery: %v", where, err)
		return false
	}
	return true
}

func (st *t1Stats) violation(format string, args ...any) {
	st.violations++
	if len(st.messages) < 20 {
		st.messages = append(st.messages, fmt.Sprintf(format, args...))
	}
}

// t1Scenario builds the starting layout (written as another tool would) and
// the operations. Every blob content is unique to the op that writes it, so
// the blobs an op ingests are known.
func t1Scenario(t *testing.T, mem *memfs.FS, importSrc string, images int) []t1Op {
	blobs := map[digest.Digest][]byte{}
	shared := []byte("shared base layer")
	var entries []v1.Descriptor
	for i := 0; i < images; i++ {
		d := testutil.RawImage(blobs, []byte(fmt.Sprintf(`{"n":%d}`, i)), shared, []byte(fmt.Sprintf("own layer %d", i)))
		entries = append(entries, testutil.Named(d, fmt.Sprintf("img%d", i)))
	}
	raw := t.TempDir()
	testutil.WriteRawLayout(t, raw, blobs, entries)
	if t1Shared {
		for _, d := range []string{"layout", "shared"} {
			if err := mem.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := mem.SyncDir("."); err != nil {
			t.Fatal(err)
		}
	}
	if err := filepath.WalkDir(raw, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(raw, p)
		if rel == "." {
			return nil
		}
		if t1Shared { // blobs/ is the shared directory, the rest the layout
			if b, ok := strings.CutPrefix(rel, "blobs"); ok {
				if b == "" {
					return nil // the shared directory exists
				}
				rel = "shared" + b
			} else {
				rel = "layout/" + rel
			}
		}
		if d.IsDir() {
			if err := mem.Mkdir(rel, 0o755); err != nil {
				return err
			}
			return mem.SyncDir(filepath.Dir(rel))
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(rel, b)
	}); err != nil {
		t.Fatal(err)
	}

	var fresh v1.Descriptor
	var lease *store.Lease
	layer := []byte("a layer of the fresh image, bigger than one block: " + strings.Repeat("x", 5000))
	leased := []byte("a blob written under a lease")
	return []t1Op{
		{name: "adopt", reopen: true},
		// A delete right after adoption: the journal's directory entry is
		// not yet made durable by anything but the journal-dir fsync.
		{name: "delete-one", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return s.Delete(ctx, "img2")
		}},
		{name: "put-blob", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return nil, s.PutBlob(ctx, testutil.Blob(layer, v1.MediaTypeImageLayer), bytes.NewReader(layer))
		}},
		{name: "put-manifest", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			cfg := []byte(`{"fresh":true}`)
			cd := testutil.Blob(cfg, v1.MediaTypeImageConfig)
			if err := s.PutBlob(ctx, cd, bytes.NewReader(cfg)); err != nil {
				return nil, err
			}
			m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
				v1.MediaTypeImageManifest, cd.MediaType, cd.Digest, cd.Size, v1.MediaTypeImageLayer, digest.FromBytes(layer), len(layer))
			var err error
			fresh, err = s.PutManifest(ctx, v1.MediaTypeImageManifest, []byte(m))
			return nil, err
		}},
		{name: "tag", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return nil, s.Tag(ctx, fresh, "fresh", "fresh-too")
		}},
		{name: "untag", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return nil, s.Untag(ctx, "img1")
		}},
		// Group commit: four changes queued behind a writer, committed as
		// one transaction; the one that fails changes nothing.
		{name: "group", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			errs, err := groupCommit(s, []func() (*store.Result, error){
				func() (*store.Result, error) { return nil, s.Tag(ctx, fresh, "grouped-1") },
				func() (*store.Result, error) { return nil, s.Tag(ctx, fresh, "grouped-2") },
				func() (*store.Result, error) { return nil, s.Untag(ctx, "grouped-1") },
				func() (*store.Result, error) { return s.Delete(ctx, "no-such-tag") },
			})
			if err != nil {
				return nil, err
			}
			if errs[0] != nil || errs[1] != nil || errs[2] != nil || !errors.Is(errs[3], store.ErrNotFound) {
				return nil, fmt.Errorf("group commit: %v", errs)
			}
			return nil, nil
		}},
		{name: "delete-batch", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			batch := []string{"fresh", "fresh-too", fresh.Digest.String(), "img0"}
			for i := 3; i < images; i++ {
				batch = append(batch, fmt.Sprintf("img%d", i))
			}
			return s.Delete(ctx, batch...)
		}},
		{name: "import", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			_, err := s.Import(ctx, importSrc, "imported")
			return nil, err
		}},
		// A lease holding a new blob and the imported image's own layer:
		// the delete that drops that layer's last reference keeps it.
		{name: "lease-put", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			var err error
			if lease, err = s.Lease(ctx, time.Hour); err != nil {
				return nil, err
			}
			own := []byte("imported own layer")
			if err := lease.Add(ctx, testutil.Blob(own, v1.MediaTypeImageLayerGzip)); err != nil {
				return nil, err
			}
			return nil, s.PutBlob(lease.Context(ctx), testutil.Blob(leased, v1.MediaTypeImageLayer), bytes.NewReader(leased))
		}},
		{name: "delete-leased", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return s.Delete(ctx, "imported")
		}},
		{name: "release", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return nil, lease.Release(ctx)
		}},
		// Two images of one repository and a signature of the older, in
		// one transaction; then a prune keeping the newest, whose one
		// transaction also takes the signature (referrer cascade).
		{name: "import-repo", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			_, err := s.Import(ctx, importSrc, "app:1", "app:2", "sig:1")
			return nil, err
		}},
		{name: "prune", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			res, err := s.Prune(ctx, store.Policy{KeepLast: 1, Refs: []string{"app:*"}})
			if err != nil {
				return nil, err
			}
			if len(res.Removed) != 2 {
				return nil, fmt.Errorf("prune removed %+v, want app:1 and its signature", res.Removed)
			}
			return &res.Result, nil
		}},
		// GC of the blobs the lease held and the delete left: one record,
		// unlinks, clear.
		{name: "gc", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			res, err := s.GC(ctx, store.GCOptions{Grace: time.Hour})
			if err != nil {
				return nil, err
			}
			if len(res.Freed) != 2 {
				return nil, fmt.Errorf("gc removed %v, want the 2 blobs the lease held", res.Freed)
			}
			return &res.Result, nil
		}},
		{name: "reopen", reopen: true},
	}
}

// groupCommit queues calls, in order, behind a held writer, so that they
// are committed as one group, and returns each call's error.
func groupCommit(s *store.Store, calls []func() (*store.Result, error)) ([]error, error) {
	release := store.HoldWriter(s)
	errs := make([]error, len(calls))
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, call := range calls {
		wg.Go(func() { _, errs[i] = call() })
		deadline := time.Now().Add(10 * time.Second)
		for store.QueuedChanges(s) < i+1 {
			if time.Now().After(deadline) {
				release()
				return nil, fmt.Errorf("only %d of %d changes queued", store.QueuedChanges(s), len(calls))
			}
			time.Sleep(50 * time.Microsecond)
		}
	}
	release()
	wg.Wait()
	return errs, nil
}

func t1ImportSource(t *testing.T) string {
	src := t.TempDir()
	blobs := map[digest.Digest][]byte{}
	d := testutil.RawImage(blobs, []byte(`{"imported":1}`), []byte("shared base layer"), []byte("imported own layer"))
	entries := []v1.Descriptor{testutil.Named(d, "imported")}
	entries = append(entries, t1PruneImages(t, blobs)...)
	testutil.WriteRawLayout(t, src, blobs, entries)
	return src
}

// t1PruneImages adds to blobs app:1 and app:2 (created on days 1 and 2, by
// annotation) and a signature of app:1, tagged sig:1, for the prune op. They
// reuse the blobs of "imported": three new blobs, few crash points.
func t1PruneImages(t *testing.T, blobs map[digest.Digest][]byte) []v1.Descriptor {
	cfg := testutil.Blob([]byte(`{"imported":1}`), v1.MediaTypeImageConfig)
	base := testutil.Blob([]byte("shared base layer"), v1.MediaTypeImageLayerGzip)
	put := func(m v1.Manifest, name string) v1.Descriptor {
		m.Versioned, m.MediaType = specs.Versioned{SchemaVersion: 2}, v1.MediaTypeImageManifest
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		blobs[digest.FromBytes(b)] = b
		return testutil.Named(testutil.Blob(b, v1.MediaTypeImageManifest), name)
	}
	var out []v1.Descriptor
	for i := 1; i <= 2; i++ {
		out = append(out, put(v1.Manifest{Config: cfg, Layers: []v1.Descriptor{base},
			Annotations: map[string]string{v1.AnnotationCreated: fmt.Sprintf("2026-01-0%dT00:00:00Z", i)}}, fmt.Sprintf("app:%d", i)))
	}
	subject := out[0]
	subject.Annotations = nil
	return append(out, put(v1.Manifest{Config: cfg, Layers: []v1.Descriptor{base}, Subject: &subject}, "sig:1"))
}

// runTier1 runs the scenario once, recording every crash point, then checks
// every crash state of every point.
func runTier1(t *testing.T, sizes t1Sizes, seed uint64) *t1Stats {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, t1JournalRel())), 0o755); err != nil {
		t.Fatal(err)
	}
	mem := memfs.New(dir)
	ops := t1Build(t, mem, t1ImportSource(t), max(sizes.images, 4))
	rec := newRecorder(mem, dir)

	// The uninterrupted run, recording crash points and what each op leaves.
	expects := make([]t1Expect, len(ops))
	var s *store.Store
	var err error
	for i, op := range ops {
		rec.op = i
		blobsBefore := blobSet(mem)
		var res *store.Result
		if op.reopen {
			if s != nil {
				s.Close()
			}
			s, err = t1Open(ctx, dir, mem, rec.commit)
		} else {
			res, err = op.run(ctx, s)
		}
		if op.wantErr != nil {
			if err == nil || !op.wantErr(err) {
				t.Fatalf("op %s: error %v, want its expected failure", op.name, err)
			}
			err, res = nil, nil
		}
		if err != nil {
			t.Fatalf("op %s: %v", op.name, err)
		}
		e := t1Expect{tags: listTags(t, s), ingested: map[digest.Digest]bool{}, freed: map[digest.Digest]bool{}}
		for d := range blobSet(mem) {
			if !blobsBefore[d] {
				e.ingested[d] = true
			}
		}
		if res != nil {
			for _, f := range res.Freed {
				e.freed[digest.Digest(f.Digest)] = true
			}
		}
		if op.wantErr != nil && (i == 0 || i+1 == len(ops) || len(e.ingested) > 0 || !equalMaps(e.tags, expects[i-1].tags)) {
			t.Fatalf("op %s failed but changed the layout (or has no previous op or retry)", op.name)
		}
		expects[i] = e
	}
	for i, op := range ops {
		if op.wantErr != nil {
			expects[i].applied = &expects[i+1]
		}
	}
	s.Close()
	rec.off = true

	start := t1Expect{tags: map[string]string{}}
	for k, v := range expects[0].tags { // adoption changes no tag
		start.tags[k] = v
	}
	stats := &t1Stats{ops: len(ops)}
	rng := rand.New(rand.NewPCG(seed, seed+7))
	scratch := t.TempDir()
	if t1Shared {
		// A shared journal knows the layout by its path: the crash states
		// are recovered where the layout was.
		scratch = dir
	}
	for k, ev := range rec.events {
		stats.points++
		acked := ev.op // ops before ev.op are acknowledged
		var ok []map[string]string
		if acked == 0 {
			ok = append(ok, start.tags)
		} else {
			ok = append(ok, expects[acked-1].tags)
		}
		ok = append(ok, expects[acked].tags)
		allowed, must := map[digest.Digest]bool{}, map[digest.Digest]bool{}
		for i := 0; i <= acked; i++ {
			for d := range expects[i].ingested {
				allowed[d] = true
				if i < acked {
					must[d] = true
				}
			}
		}
		for i := 0; i <= acked; i++ {
			for d := range expects[i].freed {
				if i < acked {
					delete(allowed, d)
				}
				delete(must, d)
			}
		}
		if a := expects[acked].applied; a != nil { // a failed op may be recovered as applied
			ok = append(ok, a.tags)
			for d := range a.freed {
				delete(must, d)
			}
		}
		where := fmt.Sprintf("point %d (%s, during %s)", k, ev.what, ops[ev.op].name)
		for _, keep := range subsets(ev.crash.Items(), sizes, rng) {
			stats.states++
			if _, msg := checkState(ctx, scratch, ev, keep, ok, allowed, must, stats, where); msg != "" {
				stats.violation("%s, kept %s: %s", where, describeKeep(ev.crash, keep), msg)
			}
			if sizes.firstViolation && stats.violations > 0 {
				return stats
			}
		}
		// Crash the recovery of a few of these states at each of its steps.
		for n, keep := range subsets(ev.crash.Items(), t1Sizes{exhaustive: 0, random: sizes.nested}, rng) {
			if n >= sizes.nested || sizes.nestedEvery > 1 && k%sizes.nestedEvery != 0 {
				break
			}
			stats.states += crashRecovery(ctx, scratch, ev, keep, ok, allowed, must, stats, where)
		}
		if sizes.firstViolation && stats.violations > 0 {
			return stats
		}
	}
	return stats
}

func describeKeep(c *memfs.Crash, keep []bool) string {
	var kept []string
	for i, k := range keep {
		if k {
			kept = append(kept, c.Describe(i))
		}
	}
	return fmt.Sprintf("%d of %d unsynced items %v", len(kept), len(keep), kept)
}

// subsets lists the choices of surviving items: all of them when there are
// few, else the two extremes plus random ones.
func subsets(n int, sizes t1Sizes, rng *rand.Rand) [][]bool {
	var out [][]bool
	if n <= sizes.exhaustive {
		for m := 0; m < 1<<n; m++ {
			keep := make([]bool, n)
			for i := range keep {
				keep[i] = m&(1<<i) != 0
			}
			out = append(out, keep)
		}
		return out
	}
	none, all := make([]bool, n), make([]bool, n)
	for i := range all {
		all[i] = true
	}
	out = append(out, none, all)
	for r := 0; r < sizes.random; r++ {
		keep := make([]bool, n)
		for i := range keep {
			keep[i] = rng.IntN(2) == 1
		}
		out = append(out, keep)
	}
	return out
}

// materialize prepares the crash state: the file system, and the journal
// file in scratch when its directory entry survived.
func materialize(scratch string, ev t1Event, keep []bool) (*memfs.FS, error) {
	mem, ext := ev.crash.Materialize(scratch, keep)
	jp := filepath.Join(scratch, t1JournalRel())
	if err := os.MkdirAll(filepath.Dir(jp), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(jp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	has := false
	for _, e := range ext {
		has = has || e == t1JournalRel()
	}
	if has && ev.journal != nil {
		if err := os.WriteFile(jp, ev.journal, 0o644); err != nil {
			return nil, err
		}
	} else if has {
		// Created, no commit yet: an empty file, as bbolt leaves it.
		if err := os.WriteFile(jp, nil, 0o644); err != nil {
			return nil, err
		}
	}
	return mem, nil
}

// checkState checks one crash state as a foreign reader sees it (a
// violation of that is reported to stats), then recovers it and checks it;
// it returns the tags recovery left, or a description of the violation.
func checkState(ctx context.Context, scratch string, ev t1Event, keep []bool, ok []map[string]string, allowed, must map[digest.Digest]bool, stats *t1Stats, where string) (map[string]string, string) {
	mem, err := materialize(scratch, ev, keep)
	if err != nil {
		return nil, "harness: " + err.Error()
	}
	stats.foreignCheck(mem, fmt.Sprintf("%s, kept %s", where, describeKeep(ev.crash, keep)))
	return verifyRecovered(ctx, scratch, mem, nil, ok, allowed, must)
}

// verifyRecovered opens (recovering) mem and checks the invariants. A
// recorder, when given, traces the recovery's own crash points.
func verifyRecovered(ctx context.Context, scratch string, mem *memfs.FS, rec *t1Recorder, ok []map[string]string, allowed, must map[digest.Digest]bool) (map[string]string, string) {
	var hook func()
	if rec != nil {
		hook = rec.commit
	}
	s, err := t1Open(ctx, scratch, mem, hook)
	if err != nil {
		return nil, "recovery failed: " + err.Error()
	}
	defer s.Close()
	if rec != nil {
		rec.off = true
	}
	imgs, err := s.List(ctx)
	if err != nil {
		return nil, "list: " + err.Error()
	}
	got := map[string]string{}
	for _, im := range imgs {
		name := im.Name
		if name == "" {
			name = "<none>" + im.Descriptor.Digest.String()
		}
		got[name] = im.Descriptor.Digest.String()
	}
	match := false
	for _, w := range ok {
		match = match || equalMaps(got, w)
	}
	if !match {
		return got, fmt.Sprintf("tags %v are neither of %v (atomicity or durability)", sortedKeys(got), keysOf(ok))
	}
	rep, err := s.Check(ctx, nil)
	if err != nil {
		return got, "check: " + err.Error()
	}
	for _, p := range rep.Problems {
		if p.Kind == recovery.KindOrphan && allowed[digest.Digest(p.Digest)] {
			continue
		}
		return got, "invariant: " + p.String()
	}
	for d := range must {
		if _, err := mem.Lstat(t1BlobPath(d)); err != nil {
			return got, fmt.Sprintf("acknowledged blob %s lost", d)
		}
	}
	if left := t1Trash(mem); len(left) > 0 {
		return got, fmt.Sprintf("recovery left %d files in the trash, e.g. %s", len(left), left[0])
	}
	before := t1Tree(mem)
	if _, err := s.Recover(ctx); err != nil {
		return got, "second recovery: " + err.Error()
	}
	if after := t1Tree(mem); !sameTree(before, after) {
		return got, "second recovery changed the layout (not idempotent)"
	}
	return got, ""
}

// crashRecovery recovers a crash state while recording the recovery's own
// crash points, then for each of them recovers that crash (keeping nothing
// unsynced, then everything) and requires the same final tags.
func crashRecovery(ctx context.Context, scratch string, ev t1Event, keep []bool, ok []map[string]string, allowed, must map[digest.Digest]bool, stats *t1Stats, where string) int {
	mem, err := materialize(scratch, ev, keep)
	if err != nil {
		stats.violation("%s: harness: %v", where, err)
		return 0
	}
	stats.foreignCheck(mem, where+" (traced recovery)")
	rec := newRecorder(mem, scratch)
	rec.journal, _ = os.ReadFile(filepath.Join(scratch, t1JournalRel()))
	if len(rec.journal) == 0 {
		rec.journal = nil
	}
	want, msg := verifyRecovered(ctx, scratch, mem, rec, ok, allowed, must)
	if msg != "" {
		stats.violation("%s (traced recovery): %s", where, msg)
		return 1
	}
	n := 1
	for i, rev := range rec.events {
		for _, all := range []bool{false, true} {
			k := make([]bool, rev.crash.Items())
			for j := range k {
				k[j] = all
			}
			n++
			m2, err := materialize(scratch, rev, k)
			if err != nil {
				stats.violation("%s: harness: %v", where, err)
				continue
			}
			stats.foreignCheck(m2, fmt.Sprintf("%s, recovery crashed at its step %d (%s), kept all=%v", where, i, rev.what, all))
			got, msg := verifyRecovered(ctx, scratch, m2, nil, ok, allowed, must)
			if msg == "" && !equalMaps(got, want) {
				msg = fmt.Sprintf("tags %v differ from an uninterrupted recovery's %v", sortedKeys(got), sortedKeys(want))
			}
			if msg != "" {
				stats.violation("%s, recovery crashed at its step %d (%s), kept all=%v: %s", where, i, rev.what, all, msg)
			}
		}
	}
	return n
}

// t1Tree is mem's tree without the space reserve, which holds no data: a
// Recover on a full disk releases it, by design (store/reserve.go).
func t1Tree(mem *memfs.FS) map[string][]byte {
	tree := mem.Tree()
	delete(tree, fsio.ReserveFile)
	delete(tree, "shared/"+fsio.ReserveFile)
	return tree
}

func sameTree(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

func blobSet(mem *memfs.FS) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for p := range mem.Tree() {
		parts := strings.Split(p, "/")
		if len(parts) == 3 && parts[0] == "blobs" && !t1Shared || len(parts) == 3 && parts[0] == "shared" && t1Shared {
			if d, ok := layout.ParseBlobPath(parts[1], parts[2]); ok {
				out[d] = true
			}
		}
	}
	return out
}

func listTags(t *testing.T, s *store.Store) map[string]string {
	imgs, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, im := range imgs {
		name := im.Name
		if name == "" {
			name = "<none>" + im.Descriptor.Digest.String()
		}
		out[name] = im.Descriptor.Digest.String()
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func keysOf(ms []map[string]string) [][]string {
	var out [][]string
	for _, m := range ms {
		out = append(out, sortedKeys(m))
	}
	return out
}

// TestTier1CrashStates is the enumeration; `make crash` runs it at full size.
func TestTier1CrashStates(t *testing.T) {
	reportTier1(t, "tier1", runTier1(t, t1Size(), 1))
}

// TestTier1SharedBlobDir is the same enumeration on a layout whose blobs
// and journal are in a shared blob directory (every operation, every crash
// point, every crash state across both directories).
func TestTier1SharedBlobDir(t *testing.T) {
	t1Shared = true
	t.Cleanup(func() { t1Shared = false })
	reportTier1(t, "tier1-shared", runTier1(t, t1Size(), 3))
}

// TestTier1Trash is the enumeration with every transaction that frees two
// blobs or more taking them out of the layout through the trash (which
// otherwise only transactions of protocol.DefaultTrashMin blobs do): every crash
// point of the links, the unlinks, their syncs and the trash's unlinking.
func TestTier1Trash(t *testing.T) {
	lowTrashMin(t)
	reportTier1(t, "tier1-trash", runTier1(t, t1Size(), 4))
	// With a shared blob directory the trash is in that directory's
	// .ocistore, beside the blobs it takes.
	t1Shared = true
	t.Cleanup(func() { t1Shared = false })
	reportTier1(t, "tier1-trash-shared", runTier1(t, t1Size(), 5))
}

// lowTrashMin makes transactions of two blobs or more use the trash until
// the test ends.
func lowTrashMin(t *testing.T) {
	t1TrashMin = 2
	t.Cleanup(func() { t1TrashMin = 0 })
}

// omitSync makes the file systems of the scenario leave out the fsyncs
// of purpose until the test ends.
func omitSync(t *testing.T, purpose string) {
	t1OmitSync = purpose
	t.Cleanup(func() { t1OmitSync = "" })
}

// reportTier1 prints an enumeration's summary line (make crash collects
// them) and fails on its violations.
func reportTier1(t *testing.T, name string, st *t1Stats) {
	t.Helper()
	fmt.Printf("%s: ops=%d crashpoints=%d states=%d foreign=%d violations=%d\n", name, st.ops, st.points, st.states, st.foreign, st.violations)
	if st.foreignBad > 0 {
		t.Errorf("%d of the %d violations are crash states a foreign reader (no recovery) cannot read", st.foreignBad, st.violations)
	}
	for _, m := range st.messages {
		t.Error(m)
	}
	if st.violations > 0 {
		t.Fatalf("%d violations", st.violations)
	}
}

// TestTier1FindsMissingFsync proves the harness can fail: with any one fsync
// of the protocol turned off, the enumeration must find a violation (with
// -short it stops there).
func TestTier1FindsMissingFsync(t *testing.T) {
	for _, purpose := range fsio.SyncPurposes {
		t.Run(purpose, func(t *testing.T) {
			omitSync(t, purpose)
			st := runTier1(t, t1FindSize(), 2)
			if st.violations == 0 {
				t.Fatalf("with the %s fsync off, %d crash states over %d points showed no violation: the harness cannot see this fsync", purpose, st.states, st.points)
			}
			t.Logf("%s off: %d violations in %d states, e.g. %s", purpose, st.violations, st.states, st.messages[0])
		})
	}
	// Moves into the trash are durable by the same sync as unlinks.
	t.Run(fsio.SyncBlobDir+"-trash", func(t *testing.T) {
		lowTrashMin(t)
		omitSync(t, fsio.SyncBlobDir)
		st := runTier1(t, t1FindSize(), 2)
		if st.violations == 0 {
			t.Fatalf("with the blob directory's fsync off after moves into the trash, %d crash states over %d points showed no violation", st.states, st.points)
		}
		t.Logf("%d violations in %d states, e.g. %s", st.violations, st.states, st.messages[0])
	})
}
