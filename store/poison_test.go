package store_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// failingFS fails every fsync once armed, as a disk that reports EIO would.
type failingFS struct {
	fsio.FS
	fail atomic.Bool
}

func (f *failingFS) SyncDir(name string) error {
	if f.fail.Load() {
		return syscall.EIO
	}
	return f.FS.SyncDir(name)
}

// TestFsyncFailurePoisons: a failed fsync during a transaction makes the
// handle refuse every later write (a retried fsync can lie), and the next
// open finishes the journaled transaction.
func TestFsyncFailurePoisons(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s0, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s0, 5)
	m := b.Manifest(nil, 2)
	b.Tag(m, "a", "b")
	b.Tag(b.Manifest(nil, 1), "c")
	s0.Close()

	osfs, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ffs := &failingFS{FS: osfs}
	var o store.Options
	store.SetTestFS(&o, ffs)
	s, err := store.Open(ctx, dir, &o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Err(); err != nil {
		t.Fatalf("Err of a healthy handle: %v", err)
	}
	ffs.fail.Store(true)
	_, err = s.Delete(ctx, "c")
	if !errors.Is(err, errdef.ErrDurability) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("delete with failing fsync: %v", err)
	}
	if err := s.Err(); !errors.Is(err, store.ErrPoisoned) || !errors.Is(err, syscall.EIO) && !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("Err after a failed fsync: %v, want ErrPoisoned naming the failure", err)
	}
	ffs.fail.Store(false) // the disk "recovers": the handle must not trust it
	if err := s.Untag(ctx, "a"); !errors.Is(err, store.ErrPoisoned) {
		t.Fatalf("write after a failed fsync: %v, want ErrPoisoned", err)
	}
	if _, err := s.Delete(ctx, "b"); !errors.Is(err, store.ErrPoisoned) {
		t.Fatalf("delete after a failed fsync: %v, want ErrPoisoned", err)
	}
	// Reads still work.
	if _, err := s.Resolve(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Resolve(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("journaled delete not finished on reopen: %v", err)
	}
	testutil.MustCheck(t, s2)
}
