package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/store"
)

// TestReadOnly: a read-only store takes no lock, runs no recovery, writes
// nothing, and refuses writes.
func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	before := fixture(t, dir)
	holder, err := bolt.Open(filepath.Join(dir, protocol.JournalFile), 0o644, nil)
	must(t, err)
	defer holder.Close()
	s, err := store.Open(ctx, dir, &store.Options{ReadOnly: true, LockTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("read-only open while a writer holds the lock: %v", err)
	}
	defer s.Close()
	imgs, err := s.List(ctx)
	must(t, err)
	if len(imgs) != len(before) {
		t.Fatalf("list: %d entries, want %d", len(imgs), len(before))
	}
	d, err := s.Resolve(ctx, "img0")
	must(t, err)
	if _, err := s.Delete(ctx, "img0"); !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("delete: %v", err)
	}
	if err := s.Tag(ctx, d, "x"); !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("tag: %v", err)
	}
	if err := s.Untag(ctx, "img0"); !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("untag: %v", err)
	}

	empty := filepath.Join(t.TempDir(), "none")
	if _, err := store.Open(ctx, empty, &store.Options{ReadOnly: true}); !errors.Is(err, store.ErrNotLayout) {
		t.Fatalf("read-only open of a missing dir: %v", err)
	}
	if _, err := os.Stat(empty); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("read-only open created a directory")
	}
}
