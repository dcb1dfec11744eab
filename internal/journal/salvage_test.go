package journal_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
)

// filled makes a journal with many refcounts (so that the refs bucket spans
// pages), a committed index and one pending record; it returns its path,
// the committed index bytes and the record.
func filled(t *testing.T) (string, []byte, *journal.Record, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	db, err := journal.Open(path, journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	committed := []byte(`{"schemaVersion":2,"manifests":[]}` + "\n")
	next := []byte(`{"schemaVersion":2,"manifests":[],"annotations":{"n":"1"}}` + "\n")
	rec := &journal.Record{Op: "delete x", Time: time.Unix(1700000000, 0).UTC(), OldIndex: digest.FromBytes(committed),
		NewIndex: digest.FromBytes(next), Unlink: []digest.Digest{digest.FromString("gone")}}
	err = db.Update(func(tx *journal.Tx) error {
		for i := range 3000 {
			if err := tx.PutRef(digest.FromString(fmt.Sprint(i)), journal.Ref{Count: 1, Size: int64(i)}); err != nil {
				return err
			}
		}
		if err := tx.SetCommittedIndex(digest.FromBytes(committed), committed); err != nil {
			return err
		}
		return tx.AddPending(rec, next)
	})
	if err != nil {
		t.Fatal(err)
	}
	return path, committed, rec, next
}

// TestOpenTruncated: a journal cut short at any length (a power cut while
// the file grew, a disk that lost its tail) is refused as corrupt by Open,
// read-only or not: never a panic or a fault. Only the preallocated tail
// past the last page in use may go without harm.
func TestOpenTruncated(t *testing.T) {
	path, _, rec, _ := filled(t)
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for n := len(full) - 4096; n > 0; n -= 4096 * 7 {
		p := filepath.Join(t.TempDir(), "journal.db")
		if err := os.WriteFile(p, full[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		db, err := journal.Open(p, journal.Options{LockTimeout: time.Second})
		if err != nil {
			if !errors.Is(err, errdef.ErrCorrupt) {
				t.Fatalf("%d bytes: Open = %v, want ErrCorrupt", n, err)
			}
			continue
		}
		s := db.Salvage()
		errs := db.Check()
		db.Close()
		if len(errs) != 0 || len(s.Problems) != 0 || len(s.Pending) != 1 || s.Pending[0].NewIndex != rec.NewIndex {
			t.Fatalf("%d bytes: opened, but %v %+v", n, errs, s)
		}
	}
	for _, n := range []int{len(full) / 2, 3 * 4096, 2 * 4096, 4096 + 100, 4096, 100} {
		for _, ro := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d-ro=%v", n, ro), func(t *testing.T) {
				p := filepath.Join(t.TempDir(), "journal.db")
				if err := os.WriteFile(p, full[:n], 0o644); err != nil {
					t.Fatal(err)
				}
				db, err := journal.Open(p, journal.Options{ReadOnly: ro, LockTimeout: time.Second})
				if err == nil {
					db.Close()
					t.Fatal("a truncated journal opened")
				}
				if !errors.Is(err, errdef.ErrCorrupt) {
					t.Fatalf("Open = %v, want ErrCorrupt", err)
				}
			})
		}
	}
}

// TestSalvage: what a healthy journal holds is all salvaged; a journal with
// scribbled data pages gives what it can without panicking; one that
// bbolt cannot open at all gives an error.
func TestSalvage(t *testing.T) {
	path, committed, rec, next := filled(t)
	s, err := journal.SalvageFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Pending) != 1 || s.Pending[0].NewIndex != rec.NewIndex || s.Committed != digest.FromBytes(committed) ||
		!bytes.Equal(s.Indexes[rec.NewIndex], next) || !bytes.Equal(s.Indexes[s.Committed], committed) || len(s.Problems) != 0 {
		t.Fatalf("salvaged %+v", s)
	}

	full, _ := os.ReadFile(path)
	for page := 2; page*4096 < len(full); page++ {
		b := bytes.Clone(full)
		copy(b[page*4096:], bytes.Repeat([]byte{0xA5}, 4096))
		p := filepath.Join(t.TempDir(), "journal.db")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := journal.SalvageFile(p, time.Second) // must not panic
		if err != nil {
			continue
		}
		for _, r := range s.Pending {
			if r.NewIndex != rec.NewIndex {
				t.Errorf("page %d: salvaged a record that was never written: %+v", page, r)
			}
		}
		for d, b := range s.Indexes {
			if digest.FromBytes(b) != d {
				t.Errorf("page %d: salvaged index %s does not hash to its key", page, d)
			}
		}
		if db, err := journal.Open(p, journal.Options{LockTimeout: time.Second}); err == nil {
			db.Check() // must not panic either
			db.Close()
		}
	}

	b := bytes.Clone(full)
	for _, off := range []int{16, 4096 + 16} {
		copy(b[off:], bytes.Repeat([]byte{0xA5}, 64))
	}
	p := filepath.Join(t.TempDir(), "journal.db")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := journal.SalvageFile(p, time.Second); !errors.Is(err, errdef.ErrCorrupt) {
		t.Errorf("salvage with both meta pages bad = %v, want ErrCorrupt", err)
	}
}
