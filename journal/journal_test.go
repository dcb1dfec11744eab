package journal_test

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"testing"
	"time"

	ij "github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/journal"
	"github.com/ocistore/ocistore/store"
)

// layoutWithLease makes a layout with two images and a live lease holding
// one blob, and closes it.
func layoutWithLease(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	s := testutil.Open(t, dir)
	b := testutil.NewBuilder(t, s, 1)
	b.Tag(b.Manifest(nil, 1), "a:1")
	b.Tag(b.Manifest(nil, 1), "b:1")
	l, err := s.Lease(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Add(ctx, b.Random(10)); err != nil {
		t.Fatal(err)
	}
	testutil.Close(t, s)
	return dir
}

// TestReadChangesNothing: Read reports the journal and leaves every byte of
// the layout and of the journal as it was; behind a writer it does not
// wait, reads the last commit and says so (InFlight), still changing
// nothing.
func TestReadChangesNothing(t *testing.T) {
	dir := layoutWithLease(t)
	before := testutil.Snapshot(t, dir)
	c, err := journal.Read(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if c.SchemaVersion != journal.SchemaVersion || len(c.Pending) != 0 || len(c.Leases) != 1 || c.Leases[0].Blobs != 1 {
		t.Fatalf("Read = %+v", c)
	}
	if c.Path != filepath.Join(dir, protocol.JournalFile) {
		t.Fatalf("path %s", c.Path)
	}
	if after := testutil.Snapshot(t, dir); !maps.Equal(before, after) {
		t.Fatalf("Read changed the layout:\nbefore %v\nafter  %v", before, after)
	}

	// A writer holds the journal (its file lock): Read does not wait for
	// it (a timeout of an hour would fail the test by its deadline); it
	// reads the last commit and says a transaction is in flight.
	db, err := ij.Open(filepath.Join(dir, protocol.JournalFile), ij.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c, err = journal.Read(dir, time.Hour)
	db.Close()
	if err != nil || !c.InFlight || len(c.Leases) != 1 {
		t.Fatalf("Read behind a writer = %+v, %v; want the last commit, in flight", c, err)
	}
	if after := testutil.Snapshot(t, dir); !maps.Equal(before, after) {
		t.Fatalf("Read behind a writer changed the layout")
	}
}

// TestReadNoJournal: a layout ocistore never opened has no journal: Read
// says not found and creates nothing.
func TestReadNoJournal(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteRawLayout(t, dir, nil, nil)
	before := testutil.Snapshot(t, dir)
	if _, err := journal.Read(dir, time.Second); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Read of a layout without a journal = %v, want ErrNotFound", err)
	}
	if after := testutil.Snapshot(t, dir); !maps.Equal(before, after) {
		t.Fatalf("Read made files: %v", after)
	}
}
