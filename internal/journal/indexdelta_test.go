package journal_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/journal"
)

// fakeIndex renders an index-like document of n entries, entry skip left
// out (-1: none), with extra appended.
func fakeIndex(n, skip int, extra string) []byte {
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"manifests":[`)
	first := true
	for i := 0; i < n; i++ {
		if i == skip {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&b, `{"mediaType":"m","digest":"sha256:%064x","size":%d,"annotations":{"org.opencontainers.image.ref.name":"img%d"}}`, i, 500+i, i)
	}
	b.WriteString(extra)
	b.WriteString("]}\n")
	return []byte(b.String())
}

// commitChain commits indexes one after the other as transactions do:
// record with the new index (as a delta against the committed one), then
// clear it.
func commitChain(t *testing.T, db *journal.DB, idx [][]byte) {
	t.Helper()
	for i, b := range idx {
		err := db.Update(func(tx *journal.Tx) error {
			var base []byte
			if i > 0 {
				base = idx[i-1]
			}
			r := &journal.Record{Op: "t", NewIndex: digest.FromBytes(b), OldIndex: tx.IndexDigest()}
			if err := tx.AddPendingFrom(r, b, base); err != nil {
				return err
			}
			if err := tx.DeletePending(r.ID); err != nil {
				return err
			}
			if i == 0 {
				return tx.SetCommittedIndex(r.NewIndex, b)
			}
			return tx.SetCommittedIndex(r.NewIndex, nil)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestIndexDeltas: a long run of small changes is stored as deltas (the
// journal stays small), every committed copy reads back whole, the chain
// is cut at its depth limit, and the copies no longer needed are dropped.
func TestIndexDeltas(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "j.db"), journal.Options{})
	const n, steps = 400, 40
	idx := [][]byte{fakeIndex(n, -1, "")}
	for i := 1; i < steps; i++ {
		idx = append(idx, fakeIndex(n, i, ""))
	}
	commitChain(t, db, idx)
	last := idx[len(idx)-1]
	err := db.View(func(tx *journal.Tx) error {
		got, ok := tx.IndexBytes(digest.FromBytes(last))
		if !ok || !bytes.Equal(got, last) {
			t.Errorf("the committed index reads back as %d bytes (ok=%v), want %d", len(got), ok, len(last))
		}
		if _, ok := tx.IndexBytes(digest.FromBytes(idx[0])); ok && steps > 20 {
			t.Errorf("the first index is still stored after %d commits (the chain is cut at 16)", steps)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stored := journal.StoredIndexSizes(t, db)
	db.Close()
	s, err := journal.SalvageFile(db.Path(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Indexes[digest.FromBytes(last)]; !bytes.Equal(got, last) {
		t.Errorf("salvage reads the committed index as %d bytes, want %d", len(got), len(last))
	}
	for _, p := range s.Problems {
		t.Errorf("salvage: %v", p)
	}
	total := 0
	for _, sz := range stored {
		total += sz
	}
	if sz := stored[digest.FromBytes(last)]; sz > 1024 {
		t.Errorf("the last index (one entry changed) is stored in %d bytes, want a delta", sz)
	}
	// At most two whole copies (the chain restarts every 16) plus small deltas.
	if total > 2*len(last)+steps*1024 {
		t.Errorf("indexes bucket holds %d bytes for %d copies of %d bytes: deltas not used", total, len(stored), len(last))
	}
}

// TestIndexDeltaBrokenChain: a delta whose base is gone is no copy (never
// a wrong index).
func TestIndexDeltaBrokenChain(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "j.db"), journal.Options{})
	a, b := fakeIndex(200, -1, ""), fakeIndex(200, 7, "")
	commitChain(t, db, [][]byte{a, b})
	journal.DropStoredIndex(t, db, digest.FromBytes(a))
	err := db.View(func(tx *journal.Tx) error {
		if got, ok := tx.IndexBytes(digest.FromBytes(b)); ok {
			t.Errorf("a delta without its base read back as %d bytes", len(got))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestWholeCopyNotRewritten: a large whole copy lives in a bucket of its
// own, so the transactions that add and drop deltas beside it do not write
// it again (bbolt rewrites a leaf with every value it holds).
func TestWholeCopyNotRewritten(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "j.db"), journal.Options{})
	// Deletes one after the other: each index lacks one more entry.
	skip := map[int]bool{}
	idx := [][]byte{fakeIndexWithout(3000, skip)}
	for i := 1; i <= 8; i++ {
		skip[i*300] = true
		idx = append(idx, fakeIndexWithout(3000, skip))
	}
	commitChain(t, db, idx[:1])
	whole := digest.FromBytes(idx[0])
	if !journal.StoredInBucket(t, db, whole) {
		t.Errorf("a whole copy of %d bytes is a plain value", len(idx[0]))
	}
	before := journal.PageAllocBytes(db)
	for i := 1; i < len(idx); i++ {
		commitPair(t, db, idx[i-1], idx[i])
	}
	// Each transaction writes a few pages (the delta, the record, the
	// branches above them, the freelist), never the whole copy again.
	if written := journal.PageAllocBytes(db) - before; written > int64(len(idx[0])) {
		t.Errorf("8 transactions of deltas wrote %d bytes of pages; the whole copy is %d bytes", written, len(idx[0]))
	}
	last := idx[len(idx)-1]
	err := db.View(func(tx *journal.Tx) error {
		if got, ok := tx.IndexBytes(digest.FromBytes(last)); !ok || string(got) != string(last) {
			t.Errorf("the last copy does not read back")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fakeIndexWithout is fakeIndex without the entries in skip.
func fakeIndexWithout(n int, skip map[int]bool) []byte {
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"manifests":[`)
	first := true
	for i := 0; i < n; i++ {
		if skip[i] {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&b, `{"mediaType":"m","digest":"sha256:%064x","size":%d,"annotations":{"org.opencontainers.image.ref.name":"img%d"}}`, i, 500+i, i)
	}
	b.WriteString("]}\n")
	return []byte(b.String())
}

// commitPair commits b over prev as a transaction does: the record in one
// bbolt transaction, the clear in another.
func commitPair(t *testing.T, db *journal.DB, prev, b []byte) {
	t.Helper()
	var id uint64
	err := db.Update(func(tx *journal.Tx) error {
		r := &journal.Record{Op: "t", NewIndex: digest.FromBytes(b), OldIndex: tx.IndexDigest()}
		err := tx.AddPendingFrom(r, b, prev)
		id = r.ID
		return err
	})
	if err == nil {
		err = db.Update(func(tx *journal.Tx) error {
			if err := tx.DeletePending(id); err != nil {
				return err
			}
			return tx.SetCommittedIndex(digest.FromBytes(b), nil)
		})
	}
	if err != nil {
		t.Fatal(err)
	}
}
