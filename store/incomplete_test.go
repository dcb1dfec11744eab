package store_test

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// faultFS injects the failures of a full or failing disk into the steps
// of a transaction, one kind at a time.
type faultFS struct {
	fsio.FS
	tempWrite atomic.Bool // writes to a temp index.json fail with ENOSPC
	rename    atomic.Bool // the rename over index.json fails with EIO
	unlink    atomic.Bool // unlinks under blobs/ fail with EIO
}

type faultTemp struct {
	fsio.TempFile
	f *faultFS
}

func (t faultTemp) Write(b []byte) (int, error) {
	if t.f.tempWrite.Load() {
		return 0, syscall.ENOSPC
	}
	return t.TempFile.Write(b)
}

func (f *faultFS) CreateTemp(dir, prefix string) (fsio.TempFile, error) {
	tf, err := f.FS.CreateTemp(dir, prefix)
	if err != nil || !strings.HasPrefix(prefix, ".index.json") {
		return tf, err
	}
	return faultTemp{TempFile: tf, f: f}, nil
}

// ReplaceFile fails as the two steps it stands for would.
func (f *faultFS) ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error {
	switch {
	case name == "index.json" && f.tempWrite.Load():
		return syscall.ENOSPC
	case name == "index.json" && f.rename.Load():
		return syscall.EIO
	}
	return f.FS.ReplaceFile(name, tmpDir, data, perm)
}

func (f *faultFS) Rename(oldname, newname string) error {
	if newname == "index.json" && f.rename.Load() {
		return syscall.EIO
	}
	return f.FS.Rename(oldname, newname)
}

func (f *faultFS) Remove(name string) error {
	if strings.HasPrefix(name, "blobs/") && f.unlink.Load() {
		return syscall.EIO
	}
	return f.FS.Remove(name)
}

// openFault opens dir (a layout with images a, b and c) on a faultFS.
func openFault(t *testing.T) (string, *store.Store, *faultFS) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	s0, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s0, 7)
	base := b.Random(100)
	b.Tag(b.Manifest(nil, 2), "a")
	b.Tag(b.Manifest([]v1.Descriptor{base}, 2), "b")
	b.Tag(b.Manifest([]v1.Descriptor{base}, 1), "c")
	s0.Close()
	osfs, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ffs := &faultFS{FS: osfs}
	var o store.Options
	store.SetTestFS(&o, ffs)
	s, err := store.Open(ctx, dir, &o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return dir, s, ffs
}

// names lists the tags of index.json.
func names(t *testing.T, s *store.Store) string {
	t.Helper()
	imgs, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range imgs {
		out = append(out, im.Name)
	}
	return strings.Join(out, ",")
}

// noPending fails unless the journal holds no pending record.
func noPending(t *testing.T, s *store.Store) {
	t.Helper()
	recs, err := store.PendingRecords(s.Dir(), 0)
	if err != nil || len(recs) != 0 {
		t.Fatalf("pending records %v, %v", recs, err)
	}
}

// TestFailedTransactionChangesNothing: a transaction that fails before its
// new index.json is in place (the disk full while it is written, or its
// rename refused) is rolled back in the process: the error means nothing
// changed, and no later command (an unrelated tag, a reopen) applies it.
func TestFailedTransactionChangesNothing(t *testing.T) {
	for _, fault := range []string{"full disk", "rename"} {
		t.Run(fault, func(t *testing.T) {
			ctx := context.Background()
			dir, s, ffs := openFault(t)
			before := testutil.Snapshot(t, dir, ".ocistore")
			sw := &ffs.tempWrite
			if fault == "rename" {
				sw = &ffs.rename
			}
			sw.Store(true)
			_, err := s.Delete(ctx, "c")
			if err == nil || errors.Is(err, store.ErrIncomplete) {
				t.Fatalf("delete with %s: %v", fault, err)
			}
			if want := map[string]error{"full disk": syscall.ENOSPC, "rename": syscall.EIO}[fault]; !errors.Is(err, want) {
				t.Errorf("delete: %v, want %v", err, want)
			}
			noPending(t, s)
			sw.Store(false)
			testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, dir, ".ocistore"))
			// An unrelated change, then a reopen: c is still there.
			if err := s.Tag(ctx, mustResolve(t, s, "a"), "a2"); err != nil {
				t.Fatal(err)
			}
			if got := names(t, s); got != "a,b,c,a2" {
				t.Errorf("index after an unrelated tag: %s", got)
			}
			s.Close()
			s2, err := store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if got := names(t, s2); got != "a,b,c,a2" {
				t.Errorf("index after a reopen: %s", got)
			}
			testutil.MustCheck(t, s2)
		})
	}
}

// TestFailedCleanupIsIncomplete: a transaction that fails after its new
// index.json is in place says so (ErrIncomplete): the change happened,
// its cleanup is pending, and the next recovery finishes it.
func TestFailedCleanupIsIncomplete(t *testing.T) {
	ctx := context.Background()
	dir, s, ffs := openFault(t)
	cg := testutil.Graph(t, dir, mustResolve(t, s, "c"))
	ffs.unlink.Store(true)
	_, err := s.Delete(ctx, "c")
	if !errors.Is(err, store.ErrIncomplete) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("delete with failing unlinks: %v", err)
	}
	if got := names(t, s); got != "a,b" {
		t.Errorf("index after an incomplete delete: %s", got)
	}
	if recs, err := store.PendingRecords(s.Dir(), 0); err != nil || len(recs) != 1 {
		t.Fatalf("pending %v, %v", recs, err)
	}
	ffs.unlink.Store(false)
	acts, err := s.Recover(ctx)
	if err != nil || len(acts) == 0 {
		t.Fatalf("recover: %v, %v", acts, err)
	}
	noPending(t, s)
	gone := 0
	for _, d := range cg {
		if !testutil.HasBlob(t, dir, d) {
			gone++
		}
	}
	if gone != 3 { // manifest, config, own layer; the base stays for b
		t.Errorf("%d of c's blobs gone after recovery, want 3", gone)
	}
	testutil.MustCheck(t, s)
}

func mustResolve(t *testing.T, s *store.Store, ref string) v1.Descriptor {
	t.Helper()
	d, err := s.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
