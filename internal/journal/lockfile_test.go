package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
)

// TestOpenJudgesUnderLock: a journal that looks damaged while its writer
// holds it (here truncated under the writer, as a reader without the lock
// could see a commit in progress) is never judged by another open: it
// waits for the lock and reports ErrLocked, and once the writer is done
// the journal opens.
func TestOpenJudgesUnderLock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "journal.db")
	w, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Update(func(tx *Tx) error { return tx.SetPinnedUntil(time.Unix(1, 0), time.Unix(2, 0)) }); err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 2*4096); err != nil { // the meta pages say it is longer
		t.Fatal(err)
	}
	for _, o := range []Options{{LockTimeout: 100 * time.Millisecond}, {LockTimeout: -1}, {ReadOnly: true, LockTimeout: -1}} {
		if db, err := Open(p, o); !errors.Is(err, errdef.ErrLocked) {
			if db != nil {
				db.Close()
			}
			t.Errorf("open %+v while the writer holds a journal that looks truncated: %v, want ErrLocked", o, err)
		}
	}
	if s, err := SalvageFile(p, 50*time.Millisecond); !errors.Is(err, errdef.ErrLocked) {
		t.Errorf("salvage while the writer holds it: %v %v, want ErrLocked", s, err)
	}
	if d, err := LockDamaged(p, 50*time.Millisecond); !errors.Is(err, errdef.ErrLocked) {
		if d != nil {
			d.Close()
		}
		t.Errorf("LockDamaged while the writer holds it: %v, want ErrLocked", err)
	}
	if err := os.WriteFile(p, whole, 0o644); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r, err := Open(p, Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatalf("open once the writer is done: %v", err)
	}
	r.Close()
}

// TestOpenWaitingForAJournalReplaced: an open that waits for the lock of
// a journal that is replaced meanwhile (a rebuild renames a new one over
// it) gets the new file, not the lock of the old one, which nobody opens
// by its path any more.
func TestOpenWaitingForAJournalReplaced(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "journal.db")
	old, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "journal.db.rebuild")
	n, err := Open(fresh, Options{})
	if err != nil {
		t.Fatal(err)
	}
	until := time.Unix(1e9, 0).UTC()
	if err := n.Update(func(tx *Tx) error { return tx.SetPinnedUntil(time.Unix(1, 0), until) }); err != nil {
		t.Fatal(err)
	}
	n.Close()
	got := make(chan *DB, 1)
	go func() {
		db, err := Open(p, Options{LockTimeout: 10 * time.Second})
		if err != nil {
			t.Error(err)
		}
		got <- db
	}()
	time.Sleep(200 * time.Millisecond) // the open has opened the old file and waits for its lock
	if err := os.Rename(fresh, p); err != nil {
		t.Fatal(err)
	}
	old.Close()
	db := <-got
	if db == nil {
		return
	}
	defer db.Close()
	var pinned time.Time
	if err := db.View(func(tx *Tx) error { pinned, _ = tx.PinnedUntil(); return nil }); err != nil {
		t.Fatal(err)
	}
	if !pinned.Equal(until) {
		t.Fatalf("the waiting open got the journal that was replaced (pin %v, want the new one's %v)", pinned, until)
	}
}

// TestLockDamaged: judged under the lock, a sound journal is not damaged
// (nothing to rebuild) and a damaged one says why, with what could be
// salvaged and a copy of its bytes.
func TestLockDamaged(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "journal.db")
	db, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	d, err := LockDamaged(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d.Why != nil || d.Salvaged != nil {
		t.Errorf("a sound journal judged damaged: %v", d.Why)
	}
	// Held: a writer waits.
	if w, err := Open(p, Options{LockTimeout: -1}); !errors.Is(err, errdef.ErrLocked) {
		if w != nil {
			w.Close()
		}
		t.Errorf("open while LockDamaged holds the journal: %v, want ErrLocked", err)
	}
	d.Close()

	garbage := bytes.Repeat([]byte("not a bbolt database "), 1000)
	if err := os.WriteFile(p, garbage, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err = LockDamaged(p, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !errors.Is(d.Why, errdef.ErrCorrupt) {
		t.Errorf("garbage judged: %v, want ErrCorrupt", d.Why)
	}
	var cp bytes.Buffer
	if _, err := d.WriteTo(&cp); err != nil || !bytes.Equal(cp.Bytes(), garbage) {
		t.Errorf("copy of the damaged bytes: %d bytes, %v", cp.Len(), err)
	}
}
