package journal_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
)

func open(t *testing.T, path string, o journal.Options) *journal.DB {
	t.Helper()
	db, err := journal.Open(path, o)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestOpenCreateReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	if _, err := journal.Open(path, journal.Options{ReadOnly: true}); !errors.Is(err, errdef.ErrNotFound) {
		t.Fatalf("read-only open of a missing journal = %v, want ErrNotFound", err)
	}
	db := open(t, path, journal.Options{})
	if !db.Created || db.Path() != path {
		t.Errorf("Created=%v Path=%q", db.Created, db.Path())
	}
	if errs := db.Check(); len(errs) != 0 {
		t.Errorf("Check: %v", errs)
	}
	db.Close()
	db = open(t, path, journal.Options{})
	if db.Created {
		t.Error("reopen says Created")
	}
	db.Close()
	ro := open(t, path, journal.Options{ReadOnly: true})
	if err := ro.Update(func(*journal.Tx) error { return nil }); err == nil {
		t.Error("Update on a read-only journal succeeded")
	}
	ro.Close()

	// An empty file (a crash right after creation) is initialized.
	empty := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if db := open(t, empty, journal.Options{}); !db.Created {
		t.Error("an empty file is not reported as Created")
	}
}

func TestOpenCorrupt(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]byte{
		"garbage": bytes.Repeat([]byte("not a bbolt database "), 1000),
		"zeros":   make([]byte, 16384),
	}
	for name, content := range cases {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{false, true} {
			db, err := journal.Open(path, journal.Options{ReadOnly: ro, LockTimeout: time.Second})
			if err == nil {
				db.Close()
				t.Errorf("%s (read-only %v): Open succeeded", name, ro)
				continue
			}
			if !errors.Is(err, errdef.ErrCorrupt) {
				t.Errorf("%s (read-only %v): Open = %v, want ErrCorrupt", name, ro, err)
			}
		}
	}
	// A directory where the file should be.
	if _, err := journal.Open(dir, journal.Options{}); err == nil {
		t.Error("Open of a directory succeeded")
	}
}

func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	db := open(t, path, journal.Options{})
	start := time.Now()
	_, err := journal.Open(path, journal.Options{LockTimeout: -1})
	if !errors.Is(err, errdef.ErrLocked) {
		t.Errorf("second writer = %v, want ErrLocked", err)
	}
	_, err = journal.Open(path, journal.Options{LockTimeout: 30 * time.Millisecond})
	if !errors.Is(err, errdef.ErrLocked) {
		t.Errorf("second writer with a timeout = %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("lock timeouts not honoured: %s", time.Since(start))
	}
	db.Close()
	open(t, path, journal.Options{LockTimeout: -1})
}

func TestPendingRecords(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	old, n1, n2 := digest.FromString("old"), digest.FromString("new1"), digest.FromString("new2")
	var r1, r2 journal.Record
	err := db.Update(func(tx *journal.Tx) error {
		if tx.IndexDigest() != "" {
			t.Errorf("fresh journal has index %s", tx.IndexDigest())
		}
		if err := tx.SetCommittedIndex(old, []byte("old index")); err != nil {
			return err
		}
		r1 = journal.Record{Op: "delete x", OldIndex: old, NewIndex: n1, Unlink: []digest.Digest{digest.FromString("blob")}}
		if err := tx.AddPending(&r1, []byte("new index 1")); err != nil {
			return err
		}
		r2 = journal.Record{Op: "tag y", OldIndex: n1, NewIndex: n2}
		return tx.AddPending(&r2, []byte("new index 2"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID == 0 || r2.ID != r1.ID+1 {
		t.Errorf("ids %d, %d", r1.ID, r2.ID)
	}
	err = db.View(func(tx *journal.Tx) error {
		recs, err := tx.Pending()
		if err != nil {
			return err
		}
		if len(recs) != 2 || recs[0].ID != r1.ID || recs[1].ID != r2.ID || recs[0].Op != "delete x" || len(recs[0].Unlink) != 1 {
			t.Errorf("pending %+v", recs)
		}
		for d, want := range map[digest.Digest]string{old: "old index", n1: "new index 1", n2: "new index 2"} {
			if b, ok := tx.IndexBytes(d); !ok || string(b) != want {
				t.Errorf("IndexBytes(%s) = %q, %v", d, b, ok)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Finishing r1: its record goes, the committed index moves, copies that
	// nothing needs are dropped, the pending r2's copy stays.
	err = db.Update(func(tx *journal.Tx) error {
		if err := tx.DeletePending(r1.ID); err != nil {
			return err
		}
		return tx.SetCommittedIndex(n1, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		if tx.IndexDigest() != n1 {
			t.Errorf("committed index %s, want %s", tx.IndexDigest(), n1)
		}
		if _, ok := tx.IndexBytes(old); ok {
			t.Error("the old index copy was kept")
		}
		if _, ok := tx.IndexBytes(n2); !ok {
			t.Error("a pending record's index copy was dropped")
		}
		recs, _ := tx.Pending()
		if len(recs) != 1 || recs[0].ID != r2.ID {
			t.Errorf("pending %+v", recs)
		}
		return nil
	})
	// A failed Update leaves nothing behind, and ids are not reused after a commit.
	boom := errors.New("boom")
	err = db.Update(func(tx *journal.Tx) error {
		r := journal.Record{NewIndex: digest.FromString("never")}
		if err := tx.AddPending(&r, []byte("x")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	db.Update(func(tx *journal.Tx) error {
		recs, _ := tx.Pending()
		if len(recs) != 1 {
			t.Errorf("a rolled-back record is pending: %+v", recs)
		}
		r := journal.Record{NewIndex: digest.FromString("n3")}
		if err := tx.AddPending(&r, []byte("3")); err != nil {
			return err
		}
		if r.ID != r2.ID+1 {
			t.Errorf("id %d after %d", r.ID, r2.ID)
		}
		return nil
	})
	if errs := db.Check(); len(errs) != 0 {
		t.Errorf("Check: %v", errs)
	}
}

func TestRefs(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.SHA512.FromString("c")
	err := db.Update(func(tx *journal.Tx) error {
		if r, err := tx.GetRef(a); err != nil || !reflect.DeepEqual(r, journal.Ref{}) {
			t.Errorf("GetRef of an uncounted blob = %+v, %v", r, err)
		}
		for d, r := range map[digest.Digest]journal.Ref{a: {Count: 2, Size: 10, Expanded: true}, b: {Count: 1, Size: 5}, c: {Count: 7, Size: 1 << 40}} {
			if err := tx.PutRef(d, r); err != nil {
				return err
			}
		}
		return tx.PutRef(b, journal.Ref{}) // count 0: the key goes
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[digest.Digest]journal.Ref{}
	db.View(func(tx *journal.Tx) error {
		return tx.ForEachRef(func(d digest.Digest, r journal.Ref) error { got[d] = r; return nil })
	})
	if len(got) != 2 || !reflect.DeepEqual(got[a], journal.Ref{Count: 2, Size: 10, Expanded: true}) || got[c].Count != 7 || got[c].Size != 1<<40 {
		t.Errorf("refs %+v", got)
	}
	err = db.Update(func(tx *journal.Tx) error {
		return tx.ReplaceRefs(map[digest.Digest]journal.Ref{b: {Count: 1, Size: 3}, c: {Count: 0}})
	})
	if err != nil {
		t.Fatal(err)
	}
	got = map[digest.Digest]journal.Ref{}
	db.View(func(tx *journal.Tx) error {
		return tx.ForEachRef(func(d digest.Digest, r journal.Ref) error { got[d] = r; return nil })
	})
	if len(got) != 1 || got[b].Count != 1 {
		t.Errorf("after ReplaceRefs: %+v", got)
	}
}

// TestCounted: Counted finds exactly the digests with a stored count,
// whether they lie next to each other in the bucket (the cursor steps) or
// far apart (it seeks), in any order, with digests that have none between.
func TestCounted(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	var all []digest.Digest
	want := map[digest.Digest]bool{}
	err := db.Update(func(tx *journal.Tx) error {
		for i := range 3000 {
			d := digest.FromString(fmt.Sprint(i))
			all = append(all, d)
			if i%3 == 0 {
				continue // never stored
			}
			if err := tx.PutRef(d, journal.Ref{Count: 1, Size: 1}); err != nil {
				return err
			}
			want[d] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 5, 100, 3000} {
		ask := make([]digest.Digest, 0, n)
		for _, i := range rng.Perm(len(all))[:n] {
			ask = append(ask, all[i])
		}
		db.View(func(tx *journal.Tx) error {
			got := tx.Counted(ask)
			n := 0
			for _, d := range ask {
				if got[d] != want[d] {
					t.Errorf("asking %d: %s counted=%v, want %v", len(ask), d, got[d], want[d])
				}
				if want[d] {
					n++
				}
			}
			if len(got) != n {
				t.Errorf("asking %d: %d counted, want %d", len(ask), len(got), n)
			}
			return nil
		})
	}
}

// TestRefsWithinTransaction: counts changed in a transaction (held back
// from the bucket until the commit, or deleted through GetRef's cursor)
// read back the same in it, through every reader, and are all stored at
// the commit.
func TestRefsWithinTransaction(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	ds := make([]digest.Digest, 6)
	for i := range ds {
		ds[i] = digest.FromString(fmt.Sprint(i))
	}
	kids := []v1.Descriptor{{MediaType: v1.MediaTypeImageLayer, Digest: ds[5], Size: 3}}
	if err := db.Update(func(tx *journal.Tx) error {
		for i, d := range ds[:4] {
			if err := tx.PutRef(d, journal.Ref{Count: uint64(i + 1), Size: 10}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[digest.Digest]journal.Ref{
		ds[0]: {Count: 1, Size: 10}, ds[2]: {Count: 9, Size: 10},
		ds[4]: {Count: 1, Size: 7, Expanded: true, Children: kids},
	}
	check := func(tx *journal.Tx, when string) {
		t.Helper()
		for _, d := range ds {
			if r, err := tx.GetRef(d); err != nil || !reflect.DeepEqual(r, want[d]) {
				t.Errorf("%s: GetRef(%d) = %+v, %v; want %+v", when, slices.Index(ds, d), r, err, want[d])
			}
		}
		counted := tx.Counted(ds)
		for _, d := range ds {
			if counted[d] != (want[d].Count > 0) {
				t.Errorf("%s: Counted(%d) = %v", when, slices.Index(ds, d), counted[d])
			}
		}
		if !tx.ChildrenRecorded(ds[4]) || tx.ChildrenRecorded(ds[0]) {
			t.Errorf("%s: ChildrenRecorded wrong", when)
		}
		got := map[digest.Digest]journal.Ref{}
		if err := tx.ForEachRef(func(d digest.Digest, r journal.Ref) error { got[d] = r; return nil }); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: ForEachRef = %+v, want %+v", when, got, want)
		}
	}
	if err := db.Update(func(tx *journal.Tx) error {
		steps := []struct {
			d digest.Digest
			r journal.Ref
		}{
			{ds[2], journal.Ref{Count: 9, Size: 10}}, // stored, changed: held back
			{ds[1], journal.Ref{}},                   // stored, dropped (through GetRef's cursor)
			{ds[4], journal.Ref{Count: 2, Size: 7}},  // new: held back
			{ds[4], want[ds[4]]},                     // and changed again
			{ds[5], journal.Ref{Count: 1, Size: 3}},  // new, then dropped before the commit (no cursor)
			{ds[5], journal.Ref{}},                   //
			{ds[3], journal.Ref{Count: 8, Size: 10}}, // stored, held back, then dropped
			{ds[3], journal.Ref{}},                   //
		}
		for _, st := range steps {
			if err := tx.PutRef(st.d, st.r); err != nil {
				return err
			}
		}
		check(tx, "in the transaction")
		// ForEachRef wrote the held-back counts: later changes go on.
		if err := tx.PutRef(ds[0], journal.Ref{Count: 1, Size: 10}); err != nil {
			return err
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error { check(tx, "after the commit"); return nil })
}

// TestCommitHook: an error of the hook fails the commit as a failed write
// or fsync would (rolled back, ErrDurability); an error of its after
// function is a commit reported failed although it is durable.
func TestCommitHook(t *testing.T) {
	errInjected := errors.New("injected")
	var fail, failAfter bool
	afterCommits := 0
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{
		AfterCommit: func() { afterCommits++ },
		CommitHook: func(tx *journal.Tx) (func() error, error) {
			if _, ok, err := tx.GetLease("l"); err != nil || !ok {
				t.Errorf("the hook does not see the transaction's writes: %v, %v", ok, err)
			}
			switch {
			case fail:
				return nil, errInjected
			case failAfter:
				return func() error { return errInjected }, nil
			}
			return nil, nil
		},
	})
	afterCommits = 0 // the initialization's
	put := func() error {
		return db.Update(func(tx *journal.Tx) error {
			return tx.PutLease(journal.Lease{ID: "l", Created: time.Now(), Expires: time.Now().Add(time.Hour)})
		})
	}
	stored := func() bool {
		var ok bool
		if err := db.View(func(tx *journal.Tx) (err error) {
			_, ok, err = tx.GetLease("l")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	fail = true
	if err := put(); !errors.Is(err, errdef.ErrDurability) || !errors.Is(err, errInjected) {
		t.Fatalf("failed commit: %v", err)
	}
	if stored() || afterCommits != 0 {
		t.Fatalf("a failed commit was committed (stored %v, AfterCommit %d)", stored(), afterCommits)
	}
	fail, failAfter = false, true
	if err := put(); !errors.Is(err, errdef.ErrDurability) || !errors.Is(err, errInjected) {
		t.Fatalf("commit reported failed: %v", err)
	}
	if !stored() || afterCommits != 1 {
		t.Fatalf("a commit reported failed after it was durable is not there (stored %v, AfterCommit %d)", stored(), afterCommits)
	}
	// An error of fn is fn's: no commit, no hook.
	fail, failAfter = true, false
	errFn := errors.New("fn")
	if err := db.Update(func(*journal.Tx) error { return errFn }); !errors.Is(err, errFn) || errors.Is(err, errdef.ErrDurability) {
		t.Fatalf("fn's error: %v", err)
	}
}

// TestMapHint: a journal opened with a hint of its size keeps what it
// commits past its first mapping (no remap), and a hint below bbolt's
// allocation step leaves a small journal small.
func TestMapHint(t *testing.T) {
	dir := t.TempDir()
	big, small := filepath.Join(dir, "big.db"), filepath.Join(dir, "small.db")
	fill := func(path string, hint int64, n int) {
		t.Helper()
		db, err := journal.Open(path, journal.Options{MapHint: hint})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.Update(func(tx *journal.Tx) error {
			m := map[digest.Digest]journal.Ref{}
			for i := range n {
				m[digest.FromString(fmt.Sprint(i))] = journal.Ref{Count: 1, Size: int64(i)}
			}
			return tx.ReplaceRefs(m)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	fill(big, 64<<20, 200_000) // about 20 MB of refs: past the first mapping
	db := open(t, big, journal.Options{ReadOnly: true})
	n := 0
	db.View(func(tx *journal.Tx) error {
		return tx.ForEachRef(func(d digest.Digest, r journal.Ref) error {
			if r.Count != 1 {
				t.Fatalf("%s: %+v", d, r)
			}
			n++
			return nil
		})
	})
	if n != 200_000 {
		t.Errorf("%d refs read back, want 200000", n)
	}
	fill(small, 1<<20, 10)
	if fi, err := os.Stat(small); err != nil || fi.Size() > 1<<20 {
		t.Errorf("a small journal opened with a small hint: %v, %v", fi.Size(), err)
	}
}
