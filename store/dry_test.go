package store_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

func actionKinds(acts []recovery.Action) []string {
	var kinds []string
	for _, a := range acts {
		kinds = append(kinds, a.Kind)
	}
	return kinds
}

func freedDigests(r store.Result) []string {
	var ds []string
	for _, b := range r.Freed {
		ds = append(ds, b.Digest)
	}
	slices.Sort(ds)
	return ds
}

// A dry run of prune or GC changes no byte of the layout (the journal
// included), takes no lock (it runs while another process holds the
// journal, on a read-only handle too), and says what the recovery a real
// run does first would do; its plan is the real run's.
func TestDryRunChangesNothing(t *testing.T) {
	ctx := context.Background()
	l := newLib(t)
	a := l.image(nil, 2)
	l.tag(a, "app:1")
	b := l.image(nil, 2)
	l.tag(b, "app:2")
	before3 := l.indexFile()
	c := l.image(nil, 3)
	l.tag(c, "app:3")
	l.s.Close()
	// A writable handle, opened (recovery, under the lock) before the rest.
	rw, err := store.Open(ctx, l.dir, &store.Options{LockTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	// Another tool writes index.json: app:3 is gone, which the journal
	// does not know yet; a real run recounts first.
	if err := os.WriteFile(filepath.Join(l.dir, "index.json"), before3, 0o644); err != nil {
		t.Fatal(err)
	}
	before := testutil.Snapshot(t, l.dir)
	// Another process's writer holds the journal. LockTimeout -1: a run
	// that waited for the lock would fail at once.
	held, err := journal.Open(filepath.Join(l.dir, protocol.JournalFile), journal.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := store.Open(ctx, l.dir, &store.Options{ReadOnly: true, LockTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for _, s := range []*store.Store{rw, ro} {
		gc, err := s.GC(ctx, store.GCOptions{DryRun: true, Grace: -1})
		if err != nil {
			t.Fatalf("gc --dry-run behind a writer: %v", err)
		}
		if !slices.Contains(actionKinds(gc.Recovery), "recount") {
			t.Errorf("gc --dry-run after another tool's write: recovery %v, want a recount", gc.Recovery)
		}
		if len(gc.Freed) == 0 {
			t.Errorf("gc --dry-run frees nothing; app:3's blobs are unreferenced once recounted")
		}
		pr, err := s.Prune(ctx, store.Policy{KeepLast: 1, DryRun: true})
		if err != nil {
			t.Fatalf("prune --dry-run behind a writer: %v", err)
		}
		if !slices.Contains(actionKinds(pr.Recovery), "recount") || len(pr.Removed) != 1 || pr.Removed[0].Name != "app:1" {
			t.Errorf("prune --dry-run: recovery %v, removed %+v; want a recount and app:1", pr.Recovery, pr.Removed)
		}
		testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, l.dir))
		if got := testutil.Snapshot(t, l.dir); len(got) != len(before) {
			t.Errorf("a dry run added files: %d before, %d after", len(before), len(got))
		}
	}
	rw.Close()
	ro.Close()
	held.Close()

	// The real GC frees what its dry run said.
	s, err := store.Open(ctx, l.dir, &store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	dry, err := s.GC(ctx, store.GCOptions{DryRun: true, Grace: -1})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	w := testutil.Open(t, l.dir)
	defer w.Close()
	real, err := w.GC(ctx, store.GCOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := freedDigests(real.Result), freedDigests(dry.Result); !slices.Equal(got, want) {
		t.Errorf("gc freed %v, its dry run said %v", got, want)
	}
}
