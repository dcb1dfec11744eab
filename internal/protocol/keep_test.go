package protocol

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// TestUnreadableIndexKeepsRecord: a pending record whose new index is not
// in the journal, with index.json missing, cannot be replayed nor rolled
// back (nothing can be recounted): recovery fails and keeps the record.
// Once index.json is back, the record is rolled back and the counts it
// changed are recounted. Dropping it at the first run would leave its
// refcount changes in the counts of an index that looks consistent, so
// that a GC could free what the restored index uses.
func TestUnreadableIndexKeepsRecord(t *testing.T) {
	env, db, dir := lazyEnv(t)
	ctx := context.Background()
	old := committed(t, db)
	ghost := digest.FromString("a blob the record's counts claim")
	if err := db.Update(func(tx *journal.Tx) error {
		rec := &journal.Record{Op: "test", OldIndex: digest.Digest(old), NewIndex: digest.FromString("an index the journal does not hold")}
		if err := tx.AddPending(rec, nil); err != nil {
			return err
		}
		return tx.PutRef(ghost, journal.Ref{Count: 3, Size: 1})
	}); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(filepath.Join(dir, layout.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, layout.IndexFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, env, db, nil); err == nil {
		t.Fatalf("recovery with index.json missing = %v, want an error", err)
	}
	pending := func() int {
		var n int
		if err := db.View(func(tx *journal.Tx) error {
			recs, err := tx.Pending()
			n = len(recs)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := pending(); n != 1 {
		t.Fatalf("%d pending records after the failed recovery, want the record kept", n)
	}
	if err := os.WriteFile(filepath.Join(dir, layout.IndexFile), saved, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := Run(ctx, env, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := pending(); n != 0 || len(st.Actions) == 0 || st.Actions[0].Kind != "roll-back" {
		t.Fatalf("after index.json came back: %d pending, actions %v", n, st.Actions)
	}
	if err := db.View(func(tx *journal.Tx) error {
		r, err := tx.GetRef(ghost)
		if err == nil && r.Count != 0 {
			t.Errorf("the record's count of %s survived: %+v", ghost, r)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
