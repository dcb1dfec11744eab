package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// TestRepairLockWaitHonoursContext: Repair behind another process's writer
// lock gives up when its context ends, not after the lock timeout, and
// changes nothing; on a layout of its own and on one of a shared blob
// directory (whose registration it reads first).
func TestRepairLockWaitHonoursContext(t *testing.T) {
	for _, shared := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "layout")
		o := &store.Options{}
		state := dir
		if shared {
			o.SharedBlobDir = filepath.Join(t.TempDir(), "shared")
			state = o.SharedBlobDir
		}
		s, err := store.Open(context.Background(), dir, o)
		if err != nil {
			t.Fatal(err)
		}
		b := testutil.NewBuilder(t, s, 3)
		b.Tag(b.Manifest(nil, 1), "app:1")
		s.Close()
		before := testutil.Snapshot(t, dir)

		// Another process's writer: the journal's file lock, held.
		held, err := journal.Open(filepath.Join(state, protocol.JournalFile), journal.Options{LockTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err = store.Repair(ctx, dir, &store.RepairOptions{LockTimeout: 10 * time.Second, SharedBlobDir: o.SharedBlobDir})
		cancel()
		held.Close()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("shared %v: Repair behind a held lock, its context ending = %v, want context.DeadlineExceeded (not the lock timeout)", shared, err)
		}
		testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, dir))
	}
}
