package store_test

// Fault tests: each fault point of the write protocol (a failed fsync,
// rename, unlink, short write or journal commit) is injected into a store
// opened on an errorfs over the real file system, or into its journal
// (a CommitHook). Then: the operation's error says what the code makes of
// the fault (a durability failure, ErrIncomplete, or the error as it is);
// the handle is poisoned after a durability failure, and usable otherwise;
// and nothing is lost: once the layout is opened again on the real file
// system (recovery runs), fsck (deep: every blob hashed) finds nothing
// wrong but the orphans an interrupted ingest may leave, every image is
// whole, and the images are those before the operation or those after it,
// never a mix.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/memfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// openOnErrorFS opens the layout in dir (which must exist) on an errorfs
// over the real file system, with o (nil: the defaults). The store is
// closed when the test ends.
func openOnErrorFS(t *testing.T, dir string, o *store.Options) (*store.Store, *errorfs.FS) {
	t.Helper()
	osfs, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	efs := errorfs.New(osfs)
	if o == nil {
		o = &store.Options{}
	}
	store.SetTestFS(o, efs)
	s, err := store.Open(context.Background(), dir, o)
	if err != nil {
		t.Fatalf("open on errorfs: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, efs
}

// indexRenamed returns a function that reports whether efs has renamed a
// file over index.json since it was called.
func indexRenamed(efs *errorfs.FS) func(errorfs.Event) bool {
	var renamed atomic.Bool
	efs.Add(errorfs.Rule{Op: errorfs.OpRename, Path: "index.json", After: true, Hook: func(errorfs.Event) { renamed.Store(true) }})
	return func(errorfs.Event) bool { return renamed.Load() }
}

// afterIndexSynced runs fn once, where the crash point IndexSynced is: a
// transaction's new index.json renamed, the layout directory synced, and
// the stamp of index.json taken (the first Lstat of it after that sync).
func afterIndexSynced(efs *errorfs.FS, fn func()) {
	var stage atomic.Int32
	renamed := indexRenamed(efs)
	efs.Add(errorfs.Rule{Op: errorfs.OpSyncDir, Path: ".", After: true, Hook: func(ev errorfs.Event) {
		if renamed(ev) {
			stage.CompareAndSwap(0, 1)
		}
	}})
	efs.Add(errorfs.Rule{Op: errorfs.OpLstat, Path: "index.json", After: true, Hook: func(errorfs.Event) {
		if stage.CompareAndSwap(1, 2) {
			fn()
		}
	}})
}

// commitFault fails a journal commit (journal.Options.CommitHook): the
// first one, once armed, for which when (nil: any) returns true. With
// after, the commit is durable and still reported as failed.
type commitFault struct {
	armed atomic.Bool
	fired atomic.Int32
	when  func(*journal.Tx) bool
	err   error
	after bool
}

func (c *commitFault) hook(tx *journal.Tx) (func() error, error) {
	if !c.armed.Load() || c.when != nil && !c.when(tx) || !c.armed.CompareAndSwap(true, false) {
		return nil, nil
	}
	c.fired.Add(1)
	if c.after {
		return func() error { return c.err }, nil
	}
	return nil, c.err
}

// pendingRecords is a commitFault.when: the commit leaves a pending
// record (step 2 of the protocol: a transaction's journal commit).
func pendingRecords(tx *journal.Tx) bool {
	recs, err := tx.Pending()
	return err == nil && len(recs) > 0
}

// afterTxnCommitted is a commitFault.when: the first commit after the one
// of a transaction (step 5: its record cleared).
func afterTxnCommitted() func(*journal.Tx) bool {
	seen := false
	return func(tx *journal.Tx) bool {
		if pendingRecords(tx) {
			seen = true
			return false
		}
		return seen
	}
}

// leaseStored is a commitFault.when: the commit stores a lease.
func leaseStored(tx *journal.Tx) bool {
	ls, err := tx.Leases()
	return err == nil && len(ls) > 0
}

// faultFixture is a layout (crash_test's fixture) with a layout to import
// from beside it.
type faultFixture struct {
	dir, src string
	before   map[string]string // the tags of dir
	imported v1.Descriptor     // the image of src, tagged "imported"
}

// newFaultFixture makes the layouts once per test; each case works on a copy.
func newFaultFixture(t *testing.T) *faultFixture {
	f := &faultFixture{dir: t.TempDir(), src: t.TempDir()}
	f.before = fixture(t, f.dir)
	s, err := store.Open(context.Background(), f.src, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s, 42)
	f.imported = b.Manifest(nil, 3)
	b.Tag(f.imported, "imported")
	s.Close()
	return f
}

func (f *faultFixture) copy(t *testing.T) string {
	dir := t.TempDir()
	copyDir(t, f.dir, dir)
	return dir
}

// faultOp is an operation a fault case runs: arm arms the fault, once the
// operation has done what must not meet it.
type faultOp struct {
	name string
	run  func(ctx context.Context, s *store.Store, arm func()) error
	// after is the tags the operation leaves when it takes effect.
	after func(f *faultFixture) map[string]string
	// leases is the number of leases it leaves when it takes effect,
	// leasesOld when it does not (the import's own lease is not counted:
	// a handle poisoned before it could end it leaves it to expire).
	leases, leasesOld int
}

var (
	opDelete = faultOp{name: "delete", run: func(ctx context.Context, s *store.Store, arm func()) error {
		arm()
		_, err := s.Delete(ctx, "img2")
		return err
	}, after: func(f *faultFixture) map[string]string { return without(f.before, "img2") }}

	faultBlob = bytes.Repeat([]byte("a blob ingested while the disk fails\n"), 300)

	opPutBlob = faultOp{name: "put-blob", run: func(ctx context.Context, s *store.Store, arm func()) error {
		arm()
		return s.PutBlob(ctx, testutil.Blob(faultBlob, v1.MediaTypeImageLayer), bytes.NewReader(faultBlob))
	}, after: func(f *faultFixture) map[string]string { return f.before }}

	opLease = faultOp{name: "lease", run: func(ctx context.Context, s *store.Store, arm func()) error {
		arm()
		_, err := s.Lease(ctx, time.Hour)
		return err
	}, after: func(f *faultFixture) map[string]string { return f.before }, leases: 1}

	// opLeaseBlob adds a blob to a lease (the lease is made first).
	opLeaseBlob = faultOp{name: "put-blob-under-lease", run: func(ctx context.Context, s *store.Store, arm func()) error {
		l, err := s.Lease(ctx, time.Hour)
		if err != nil {
			return fmt.Errorf("harness: %w", err)
		}
		arm()
		return s.PutBlob(store.WithLease(ctx, l.ID), testutil.Blob(faultBlob, v1.MediaTypeImageLayer), bytes.NewReader(faultBlob))
	}, after: func(f *faultFixture) map[string]string { return f.before }, leases: 1, leasesOld: 1}
)

// opImport imports the fixture's src layout.
func opImport(f *faultFixture) faultOp {
	return faultOp{name: "import", run: func(ctx context.Context, s *store.Store, arm func()) error {
		arm()
		_, err := s.Import(ctx, f.src, "imported")
		return err
	}, after: func(f *faultFixture) map[string]string {
		m := maps.Clone(f.before)
		m["imported"] = f.imported.Digest.String()
		return m
	}}
}

// Outcomes of a fault case, once the layout is recovered.
const (
	outOld    = "old"    // as before the operation
	outNew    = "new"    // as the operation leaves it
	outEither = "either" // one or the other
)

type faultCase struct {
	name  string
	op    faultOp
	trash bool // transactions of two blobs or more take the trash
	// rules arms the fault in efs, or cf (the journal's), and returns the
	// rules that must have fired.
	rules func(efs *errorfs.FS, cf *commitFault) []*errorfs.Handle
	// errIs are what the operation's error must wrap; none: it must succeed.
	errIs []error
	// notIs are what it must not wrap.
	notIs    []error
	poisoned bool
	outcome  string
	orphans  bool // fsck may report orphans (blobs ingested, not referenced)
}

var errEIO error = syscall.EIO

func faultCases(f *faultFixture) []faultCase {
	eio := func(r errorfs.Rule) func(*errorfs.FS, *commitFault) []*errorfs.Handle {
		return func(efs *errorfs.FS, _ *commitFault) []*errorfs.Handle {
			if r.Err == nil {
				r.Err = errEIO
			}
			return []*errorfs.Handle{efs.Add(r)}
		}
	}
	journalFault := func(when func(*journal.Tx) bool, after bool) func(*errorfs.FS, *commitFault) []*errorfs.Handle {
		return func(_ *errorfs.FS, cf *commitFault) []*errorfs.Handle {
			cf.when, cf.err, cf.after = when, errEIO, after
			cf.armed.Store(true)
			return nil
		}
	}
	durable := []error{store.ErrDurability, errEIO}
	incomplete := []error{store.ErrDurability, store.ErrIncomplete, errEIO}
	return []faultCase{
		// A transaction's new index.json, written and synced under a temp
		// name before the journal commit.
		{name: "index-temp-sync", op: opDelete, rules: eio(errorfs.Rule{Op: errorfs.OpSync, Path: ".index.json-*"}),
			errIs: durable, notIs: []error{store.ErrIncomplete}, poisoned: true, outcome: outOld},
		{name: "index-temp-short-write", op: opDelete, rules: eio(errorfs.Rule{Op: errorfs.OpWrite, Path: ".index.json-*", Short: 7}),
			errIs: []error{errEIO}, notIs: []error{store.ErrDurability}, outcome: outOld},
		// Step 2: the journal commit fails (bbolt rolls back), or is
		// durable and reported failed (an fsync error after the pages
		// reached the disk): recovery then replays it.
		{name: "journal-commit-txn", op: opDelete, rules: journalFault(pendingRecords, false),
			errIs: durable, notIs: []error{store.ErrIncomplete}, poisoned: true, outcome: outOld},
		{name: "journal-commit-txn-durable", op: opDelete, rules: journalFault(pendingRecords, true),
			errIs: durable, poisoned: true, outcome: outNew},
		// Step 3: the rename over index.json, the layout directory's sync.
		{name: "index-rename", op: opDelete, rules: eio(errorfs.Rule{Op: errorfs.OpRename, Path: "index.json"}),
			errIs: []error{errEIO}, notIs: []error{store.ErrDurability, store.ErrIncomplete}, outcome: outOld},
		{name: "index-rename-done", op: opDelete, rules: eio(errorfs.Rule{Op: errorfs.OpRename, Path: "index.json", After: true}),
			errIs: incomplete, poisoned: true, outcome: outNew},
		{name: "layout-dir-sync", op: opDelete, rules: func(efs *errorfs.FS, _ *commitFault) []*errorfs.Handle {
			return []*errorfs.Handle{efs.Add(errorfs.Rule{Op: errorfs.OpSyncDir, Path: ".", If: indexRenamed(efs), Nth: 1, Err: errEIO})}
		}, errIs: incomplete, poisoned: true, outcome: outNew},
		// Step 4: the unlinks, in place or through the trash, and the
		// syncs of their directories.
		{name: "blob-unlink", op: opDelete, rules: eio(errorfs.Rule{Op: errorfs.OpRemove, Path: "blobs/*/*", Nth: 2}),
			errIs: []error{store.ErrIncomplete, errEIO}, notIs: []error{store.ErrDurability}, outcome: outNew},
		{name: "blob-dir-sync", op: opDelete, rules: eio(errorfs.Rule{Op: errorfs.OpSyncDir, Path: "blobs/*"}),
			errIs: incomplete, poisoned: true, outcome: outNew},
		{name: "trash-move", op: opDelete, trash: true, rules: eio(errorfs.Rule{Op: errorfs.OpLink, Path: protocol.TrashDir + "/*", Nth: 2}),
			errIs: []error{store.ErrIncomplete, errEIO}, notIs: []error{store.ErrDurability}, outcome: outNew},
		{name: "trash-blob-dir-sync", op: opDelete, trash: true, rules: eio(errorfs.Rule{Op: errorfs.OpSyncDir, Path: "blobs/*"}),
			errIs: incomplete, poisoned: true, outcome: outNew},
		{name: "trash-dir-sync", op: opDelete, trash: true, rules: eio(errorfs.Rule{Op: errorfs.OpSyncDir, Path: protocol.TrashDir}),
			errIs: incomplete, poisoned: true, outcome: outNew},
		// Step 5: the commit that clears the record.
		{name: "journal-commit-clear", op: opDelete, rules: journalFault(afterTxnCommitted(), false),
			errIs: incomplete, poisoned: true, outcome: outNew},
		// Ingest: the temp file's data and sync, its rename into blobs/,
		// the blob directory's sync.
		{name: "ingest-create", op: opPutBlob, rules: eio(errorfs.Rule{Op: errorfs.OpCreate, Path: protocol.IngestDir + "/*"}),
			errIs: []error{errEIO}, notIs: []error{store.ErrDurability}, outcome: outOld},
		{name: "ingest-short-write", op: opPutBlob, rules: eio(errorfs.Rule{Op: errorfs.OpWrite, Path: protocol.IngestDir + "/*", Nth: 1}),
			errIs: []error{errEIO}, notIs: []error{store.ErrDurability}, outcome: outOld},
		{name: "ingest-sync", op: opPutBlob, rules: eio(errorfs.Rule{Op: errorfs.OpSync, Path: protocol.IngestDir + "/*"}),
			errIs: durable, poisoned: true, outcome: outOld},
		{name: "ingest-rename", op: opPutBlob, rules: eio(errorfs.Rule{Op: errorfs.OpRename, From: protocol.IngestDir + "/*"}),
			errIs: []error{errEIO}, notIs: []error{store.ErrDurability}, outcome: outOld},
		{name: "ingest-rename-done", op: opPutBlob, rules: eio(errorfs.Rule{Op: errorfs.OpRename, From: protocol.IngestDir + "/*", After: true}),
			errIs: []error{errEIO}, notIs: []error{store.ErrDurability}, outcome: outOld, orphans: true},
		{name: "ingest-dir-sync", op: opPutBlob, rules: eio(errorfs.Rule{Op: errorfs.OpSyncDir, Path: "blobs/*"}),
			errIs: durable, poisoned: true, outcome: outOld, orphans: true},
		{name: "import-ingest-sync", op: opImport(f), rules: eio(errorfs.Rule{Op: errorfs.OpSync, Path: protocol.IngestDir + "/*", Nth: 2}),
			errIs: durable, poisoned: true, outcome: outOld, orphans: true},
		{name: "import-ingest-dir-sync", op: opImport(f), rules: eio(errorfs.Rule{Op: errorfs.OpSyncDir, Path: "blobs/*", Nth: 2}),
			errIs: durable, poisoned: true, outcome: outOld, orphans: true},
		// Leases: their journal commits.
		{name: "journal-commit-lease", op: opLease, rules: journalFault(leaseStored, false),
			errIs: durable, poisoned: true, outcome: outOld},
		{name: "journal-commit-lease-blob", op: opLeaseBlob, rules: journalFault(nil, false),
			errIs: durable, poisoned: true, outcome: outOld},
	}
}

// TestFaults runs each fault case on a copy of one fixture.
func TestFaults(t *testing.T) {
	f := newFaultFixture(t)
	for _, c := range faultCases(f) {
		t.Run(c.name, func(t *testing.T) { runFault(t, f, c) })
	}
}

func runFault(t *testing.T, f *faultFixture, c faultCase) {
	ctx := context.Background()
	dir := f.copy(t)
	cf := &commitFault{}
	o := &store.Options{}
	store.SetTestCommitHook(o, cf.hook)
	store.SetTestSyncReclaim(o) // the trash's unlinks in the call, not meanwhile
	if c.trash {
		store.SetTestTrashMin(o, 2)
	}
	s, efs := openOnErrorFS(t, dir, o)
	var must []*errorfs.Handle
	err := c.op.run(ctx, s, func() { must = c.rules(efs, cf) })
	for _, h := range must {
		if h.Fired() == 0 {
			t.Fatalf("the fault was never injected (its rule matched %d operations); the operation returned %v", h.Matched(), err)
		}
	}
	if cf.armed.Load() {
		t.Fatalf("the journal fault was never injected; the operation returned %v", err)
	}
	efs.Clear()
	switch {
	case len(c.errIs) == 0 && err != nil:
		t.Fatalf("%s: %v", c.op.name, err)
	case len(c.errIs) > 0 && err == nil:
		t.Fatalf("%s succeeded despite the fault", c.op.name)
	}
	for _, want := range c.errIs {
		if !errors.Is(err, want) {
			t.Errorf("%s: %v; want an error wrapping %v", c.op.name, err, want)
		}
	}
	for _, not := range c.notIs {
		if errors.Is(err, not) {
			t.Errorf("%s: %v; want no error wrapping %v", c.op.name, err, not)
		}
	}
	t.Logf("%s: %v", c.op.name, err)

	// The next write: refused when poisoned, else it runs (and its
	// recovery finishes what the failed operation left pending).
	probe := probeWrite(ctx, s)
	switch {
	case c.poisoned && !errors.Is(probe, store.ErrPoisoned):
		t.Errorf("write after the fault: %v, want ErrPoisoned", probe)
	case !c.poisoned && probe != nil:
		t.Errorf("write after a fault that must not poison the handle: %v", probe)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}

	// Nothing lost: reopened on the real file system.
	var want []map[string]string
	switch c.outcome {
	case outOld:
		want = append(want, f.before)
	case outNew:
		want = append(want, c.op.after(f))
	default:
		want = append(want, f.before, c.op.after(f))
	}
	got := checkWhole(t, dir, c.orphans)
	if !anyEqual(got, want) {
		t.Errorf("images after recovery: %v; want %s: %v", got, c.outcome, want)
	}
	if n := leaseCount(t, dir); c.outcome == outOld && n != c.op.leasesOld || c.outcome == outNew && n != c.op.leases {
		t.Errorf("%d leases after recovery, outcome %s", n, c.outcome)
	}
}

// probeWrite is a write that changes nothing when it runs: img0 tagged
// again where it is.
func probeWrite(ctx context.Context, s *store.Store) error {
	d, err := s.Resolve(ctx, "img0")
	if err != nil {
		return fmt.Errorf("harness: resolve img0: %w", err)
	}
	return s.Tag(ctx, d, "img0")
}

func anyEqual(got map[string]string, wants []map[string]string) bool {
	for _, w := range wants {
		if maps.Equal(got, w) {
			return true
		}
	}
	return false
}

// checkWhole opens the layout in dir on the real file system (recovery
// runs), checks it with the deep fsck, which must find nothing but
// orphans (when allowed), checks that every image is whole (each blob it
// reaches is there and hashes to its digest) and that a second open
// finds nothing to recover, and returns the images (as tags does).
func checkWhole(t *testing.T, dir string, allowOrphans bool) map[string]string {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatalf("open after the fault: %v", err)
	}
	rep, err := s.Check(ctx, &recovery.CheckOptions{Deep: true})
	if err != nil {
		t.Fatalf("fsck: %v", err)
	}
	for _, p := range rep.Problems {
		if allowOrphans && p.Kind == recovery.KindOrphan {
			continue
		}
		t.Errorf("fsck after recovery: %s", p)
	}
	imgs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		for _, d := range testutil.Graph(t, dir, im.Descriptor) {
			b, err := os.ReadFile(testutil.BlobFile(dir, d))
			if err != nil {
				t.Errorf("image %s: blob %s: %v", im.Name, d, err)
				continue
			}
			if d.Algorithm().FromBytes(b) != d {
				t.Errorf("image %s: blob %s does not hash to its digest", im.Name, d)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	acts, err := s.Recover(ctx)
	if err != nil || len(acts) != 0 {
		t.Errorf("a second recovery: %v, %v", acts, err)
	}
	return tags(t, dir)
}

func leaseCount(t *testing.T, dir string) int {
	t.Helper()
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ls, err := s.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range ls {
		if !strings.HasPrefix(l.ID, "op-") { // an operation's own (holdBlobs)
			n++
		}
	}
	return n
}

// TestFaultRecoveryReplace: a transaction's journal commit is durable but
// reported failed (the handle that made it is poisoned and leaves its
// record pending, index.json untouched); another handle's next write runs
// recovery, which replays the record (WriteIndex: ReplaceFile), and the
// fsync of the replayed index.json fails there. That handle is poisoned
// too, and the next open replays the record: the delete, whole.
func TestFaultRecoveryReplace(t *testing.T) {
	ctx := context.Background()
	f := newFaultFixture(t)
	dir := f.copy(t)
	b, befs := openOnErrorFS(t, dir, nil) // opened first: a clean open

	cf := &commitFault{when: pendingRecords, err: errEIO, after: true}
	cf.armed.Store(true)
	o := &store.Options{}
	store.SetTestCommitHook(o, cf.hook)
	a, _ := openOnErrorFS(t, dir, o)
	if _, err := a.Delete(ctx, "img2"); !errors.Is(err, store.ErrDurability) {
		t.Fatalf("delete whose journal commit is reported failed: %v", err)
	}
	if err := probeWrite(ctx, a); !errors.Is(err, store.ErrPoisoned) {
		t.Fatalf("write after a failed journal commit: %v, want ErrPoisoned", err)
	}
	a.Close()
	if recs, err := store.PendingRecords(dir, 0); err != nil || len(recs) != 1 {
		t.Fatalf("pending records %v, %v; want the delete's", recs, err)
	}

	h := befs.Add(errorfs.Rule{Op: errorfs.OpSync, Path: ".index.json-*", Err: errEIO})
	replace := befs.Add(errorfs.Rule{Op: errorfs.OpReplace, Path: "index.json"})
	err := probeWrite(ctx, b)
	if h.Fired() != 1 || replace.Fired() != 1 {
		t.Fatalf("the replay's fsync never failed (%d, %d): %v", h.Fired(), replace.Fired(), err)
	}
	if !errors.Is(err, store.ErrDurability) || !errors.Is(err, errEIO) {
		t.Fatalf("write whose recovery failed to sync the replayed index.json: %v", err)
	}
	befs.Clear()
	if err := probeWrite(ctx, b); !errors.Is(err, store.ErrPoisoned) {
		t.Fatalf("write after a failed fsync in recovery: %v, want ErrPoisoned", err)
	}
	b.Close()
	if got, want := checkWhole(t, dir, false), without(f.before, "img2"); !maps.Equal(got, want) {
		t.Fatalf("after recovery: %v, want %v", got, want)
	}
}

// TestFaultShortWriteNoSpace: the new index.json's temp file meets a
// full disk (a short write, ENOSPC) during a delete. A delete frees space:
// it releases the space reserve and runs again, and then succeeds; the
// handle is not poisoned (no fsync failed, nothing was committed). Without
// a reserve (a file system that cannot hold one) it fails and changes
// nothing.
func TestFaultShortWriteNoSpace(t *testing.T) {
	ctx := context.Background()
	f := newFaultFixture(t)
	dir := f.copy(t)
	s, efs := openOnErrorFS(t, dir, nil)
	reserve := fsio.ReserveBytes(efs) > 0
	h := efs.Add(errorfs.Rule{Op: errorfs.OpWrite, Path: ".index.json-*", Nth: 1, Err: syscall.ENOSPC})
	_, err := s.Delete(ctx, "img2")
	if h.Fired() != 1 {
		t.Fatalf("no short write: %v", err)
	}
	want := without(f.before, "img2")
	switch {
	case reserve && err != nil:
		t.Fatalf("delete on a full disk, with a reserve to release: %v", err)
	case !reserve && !errors.Is(err, syscall.ENOSPC):
		t.Fatalf("delete on a full disk, without a reserve: %v, want ENOSPC", err)
	case !reserve:
		want = f.before
	}
	if errors.Is(err, store.ErrDurability) {
		t.Errorf("a short write is no durability failure: %v", err)
	}
	if err := probeWrite(ctx, s); err != nil {
		t.Errorf("write after a full disk: %v", err)
	}
	s.Close()
	if got := checkWhole(t, dir, false); !maps.Equal(got, want) {
		t.Fatalf("after recovery: %v, want %v", got, want)
	}
}

// TestFaultIngestRenameDone: the rename of an ingested blob into blobs/
// takes place but reports an error (as a network file system can). The
// caller, told the ingest failed, puts the blob again: it is found
// present, so it must be durable already, or a power cut after an image
// that uses it is committed would lose it. On memfs, which keeps only what
// was synced through the cut.
func TestFaultIngestRenameDone(t *testing.T) {
	ctx := context.Background()
	dir, mem, efs, open := memStore(t)
	s := open()
	defer s.Close()
	layer := bytes.Repeat([]byte("a layer whose rename reported an error\n"), 200)
	// A sha512 blob: the ingests of the sha256 blobs that follow do not
	// sync its directory.
	ld := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.SHA512.FromBytes(layer), Size: int64(len(layer))}
	h := efs.Add(errorfs.Rule{Op: errorfs.OpRename, From: protocol.IngestDir + "/*", Nth: 1, After: true, Err: errEIO})
	if err := s.PutBlob(ctx, ld, bytes.NewReader(layer)); !errors.Is(err, errEIO) || h.Fired() != 1 {
		t.Fatalf("put blob whose rename reports EIO: %v (fired %d)", err, h.Fired())
	}
	// The caller tries again, then commits an image that uses the blob.
	if err := s.PutBlob(ctx, ld, bytes.NewReader(layer)); err != nil {
		if errors.Is(err, store.ErrPoisoned) {
			return // the handle refuses: nothing more can be committed through it
		}
		t.Fatalf("put blob again: %v", err)
	}
	commitLayerImage(t, s, ld)
	scratch, cut := cutPower(t, mem, dir)
	if err := testutil.ForeignReadableFS(cut, nil); err != nil {
		t.Errorf("after the power cut, before recovery: %v", err)
	}
	o2 := &store.Options{LockTimeout: -1}
	store.SetTestFS(o2, cut)
	s2, err := store.Open(ctx, scratch, o2)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Resolve(ctx, "app"); err != nil {
		t.Fatalf("the committed image after the power cut: %v", err)
	}
	testutil.MustCheck(t, s2)
}

// TestPresentBlobNameMadeDurable: a writer dies between its blob's rename
// into blobs/ and the sync of the directory (here: the sync fails, which
// poisons its handle), leaving a name a power cut would take back. Another
// handle finds the blob present, by PutBlob or by Exists, and commits an
// image that uses it: the commit makes the name durable, so that the image
// keeps its layer through a power cut. The same holds for a manifest found
// present: the child of an index.
func TestPresentBlobNameMadeDurable(t *testing.T) {
	for _, how := range []string{"put again", "exists", "child manifest"} {
		t.Run(how, func(t *testing.T) { presentBlobNameMadeDurable(t, how) })
	}
}

func presentBlobNameMadeDurable(t *testing.T, how string) {
	ctx := context.Background()
	dir, mem, efs, open := memStore(t)
	// What the dead writer leaves: a sha512 layer, or (child manifest) a
	// sha512 manifest over a synced layer.
	layer := bytes.Repeat([]byte("a layer whose writer died before its directory was synced\n"), 200)
	ld := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.SHA512.FromBytes(layer), Size: int64(len(layer))}
	var md v1.Descriptor
	var mb []byte
	if how == "child manifest" {
		ld.Digest = digest.SHA256.FromBytes(layer)
		cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
		cd := testutil.Blob(cfg, v1.MediaTypeImageConfig)
		mb = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
			v1.MediaTypeImageManifest, cd.MediaType, cd.Digest, cd.Size, ld.MediaType, ld.Digest, ld.Size))
		md = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.SHA512.FromBytes(mb), Size: int64(len(mb))}
		s := open()
		for _, b := range []struct {
			d v1.Descriptor
			c []byte
		}{{ld, layer}, {cd, cfg}} {
			if err := s.PutBlob(ctx, b.d, bytes.NewReader(b.c)); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
	}
	h := efs.Add(errorfs.Rule{Op: errorfs.OpSyncDir, Path: "blobs/sha512", Nth: 1, Err: errEIO})
	dead := open()
	var err error
	if how == "child manifest" {
		err = dead.PutBlob(ctx, md, bytes.NewReader(mb))
	} else {
		err = dead.PutBlob(ctx, ld, bytes.NewReader(layer))
	}
	if !errors.Is(err, store.ErrDurability) || h.Fired() != 1 {
		t.Fatalf("put blob whose directory sync fails: %v (fired %d)", err, h.Fired())
	}
	dead.Close()

	s := open()
	defer s.Close()
	switch how {
	case "put again":
		if err := s.PutBlob(ctx, ld, bytes.NewReader(layer)); err != nil {
			t.Fatalf("put the blob that is present: %v", err)
		}
		commitLayerImage(t, s, ld)
	case "exists":
		if ok, err := s.Exists(ctx, ld); err != nil || !ok {
			t.Fatalf("exists: %v, %v", ok, err)
		}
		commitLayerImage(t, s, ld)
	case "child manifest":
		ix := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
			v1.MediaTypeImageIndex, md.MediaType, md.Digest, md.Size)
		if _, err := s.PutManifest(ctx, v1.MediaTypeImageIndex, []byte(ix), "app"); err != nil {
			t.Fatal(err)
		}
	}
	scratch, cut := cutPower(t, mem, dir)
	o2 := &store.Options{LockTimeout: -1}
	store.SetTestFS(o2, cut)
	s2, err := store.Open(ctx, scratch, o2)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	gone := ld
	if how == "child manifest" {
		gone = md
	}
	if ok, err := s2.Exists(ctx, gone); err != nil || !ok {
		t.Fatalf("a blob of the committed image is gone after the power cut: %v, %v", ok, err)
	}
	testutil.MustCheck(t, s2)
}

// memStore is a layout on memfs (what a power cut keeps: what was synced)
// under errorfs; open opens a store on it.
func memStore(t *testing.T) (dir string, mem *memfs.FS, efs *errorfs.FS, open func() *store.Store) {
	t.Helper()
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".ocistore"), 0o755); err != nil {
		t.Fatal(err)
	}
	mem = memfs.New(dir)
	efs = errorfs.New(mem)
	open = func() *store.Store {
		t.Helper()
		o := &store.Options{LockTimeout: -1}
		store.SetTestFS(o, efs)
		store.SetTestJournalHook(o, func() { _ = mem.AddExternal(journalRel) })
		s, err := store.Open(context.Background(), dir, o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return dir, mem, efs, open
}

// commitLayerImage tags "app", an image of layer ld (in the store) and a
// config it writes.
func commitLayerImage(t *testing.T, s *store.Store, ld v1.Descriptor) {
	t.Helper()
	ctx := context.Background()
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := testutil.Blob(cfg, v1.MediaTypeImageConfig)
	if err := s.PutBlob(ctx, cd, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		v1.MediaTypeImageManifest, cd.MediaType, cd.Digest, cd.Size, ld.MediaType, ld.Digest, ld.Size)
	if _, err := s.PutManifest(ctx, v1.MediaTypeImageManifest, []byte(m), "app"); err != nil {
		t.Fatal(err)
	}
}

// cutPower cuts the power under mem (the files of the layout in dir): what
// was synced is written to a new directory, returned with a file system
// on it.
func cutPower(t *testing.T, mem *memfs.FS, dir string) (string, fsio.FS) {
	t.Helper()
	c := mem.Snapshot()
	jb, err := os.ReadFile(filepath.Join(dir, journalRel))
	if err != nil {
		t.Fatal(err)
	}
	scratch := t.TempDir()
	cut, err := materialize(scratch, t1Event{crash: c, journal: jb}, make([]bool, c.Items()))
	if err != nil {
		t.Fatal(err)
	}
	return scratch, cut
}
