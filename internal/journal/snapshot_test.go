package journal_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
)

func refDigest(i int) digest.Digest { return digest.FromString(fmt.Sprintf("blob %d", i)) }

// A snapshot opens at once behind a writer that holds the lock, sees what
// it committed, and changes no byte of the file; a writable snapshot's
// writes stay in the copy.
func TestSnapshotBehindWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	w := open(t, path, journal.Options{})
	if err := w.Update(func(tx *journal.Tx) error { return tx.PutRef(refDigest(1), journal.Ref{Count: 1, Size: 10}) }); err != nil {
		t.Fatal(err)
	}
	if busy, err := journal.Busy(path); err != nil || !busy {
		t.Fatalf("Busy behind a writer = %v, %v; want true", busy, err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A reader that locks fails at once (-1: no wait); a snapshot does not lock.
	if _, err := journal.Open(path, journal.Options{ReadOnly: true, LockTimeout: -1}); !errors.Is(err, errdef.ErrLocked) {
		t.Fatalf("read-only open behind a writer = %v, want ErrLocked", err)
	}
	for _, ro := range []bool{true, false} {
		snap, err := journal.Open(path, journal.Options{Snapshot: true, ReadOnly: ro, LockTimeout: -1})
		if err != nil {
			t.Fatalf("snapshot (read-only %v) behind a writer: %v", ro, err)
		}
		var got journal.Ref
		if err := snap.View(func(tx *journal.Tx) (err error) { got, err = tx.GetRef(refDigest(1)); return err }); err != nil || got.Count != 1 {
			t.Errorf("snapshot (read-only %v) sees %+v, %v; want the committed count 1", ro, got, err)
		}
		err = snap.Update(func(tx *journal.Tx) error { return tx.PutRef(refDigest(2), journal.Ref{Count: 1, Size: 5}) })
		if ro && err == nil {
			t.Errorf("a read-only snapshot took a write")
		}
		if !ro && err != nil {
			t.Errorf("a writable snapshot refused a write: %v", err)
		}
		if err := snap.Close(); err != nil {
			t.Fatal(err)
		}
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a snapshot changed the journal file")
	}
	var got journal.Ref
	if err := w.View(func(tx *journal.Tx) (err error) { got, err = tx.GetRef(refDigest(2)); return err }); err != nil || got.Count != 0 {
		t.Errorf("the writable snapshot's write reached the journal: %+v, %v", got, err)
	}
	if busy, err := journal.Busy(path); err != nil || !busy {
		t.Errorf("the writer lost its lock to a snapshot: busy %v, %v", busy, err)
	}
}

func TestSnapshotMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	if _, err := journal.Open(path, journal.Options{Snapshot: true, ReadOnly: true}); !errors.Is(err, errdef.ErrNotFound) {
		t.Errorf("snapshot of a missing journal = %v, want ErrNotFound", err)
	}
	if busy, err := journal.Busy(path); err != nil || busy {
		t.Errorf("Busy of a missing journal = %v, %v", busy, err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a snapshot created the journal: %v", err)
	}
}

// Snapshots taken while a writer commits as fast as it can, reusing the
// pages that earlier versions freed, each see one committed version whole:
// the window of refs [i-window, i) and the marker i, never a mix.
func TestSnapshotConsistentUnderCommits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	w := open(t, path, journal.Options{})
	// A window large enough that a copy of the file takes as long as
	// several commits.
	const window = 20000
	marker := digest.FromString("marker")
	if err := w.Update(func(tx *journal.Tx) error {
		for k := 1; k <= window; k++ {
			if err := tx.PutRef(refDigest(k), journal.Ref{Count: uint64(k), Size: int64(k)}); err != nil {
				return err
			}
		}
		return tx.PutRef(marker, journal.Ref{Count: window, Size: 1})
	}); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := window + 1; !stop.Load(); i++ {
			err := w.Update(func(tx *journal.Tx) error {
				if err := tx.PutRef(refDigest(i), journal.Ref{Count: uint64(i), Size: int64(i)}); err != nil {
					return err
				}
				if err := tx.PutRef(refDigest(i-window), journal.Ref{}); err != nil {
					return err
				}
				return tx.PutRef(marker, journal.Ref{Count: uint64(i), Size: 1})
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()
	snapshots, locked := 40, 0
	if testing.Short() {
		snapshots = 10
	}
	for n := 0; n < snapshots; n++ {
		snap, err := journal.Open(path, journal.Options{Snapshot: true, ReadOnly: true, LockTimeout: -1})
		if errors.Is(err, errdef.ErrLocked) {
			locked++ // every copy raced a commit, and the fallback does not wait
			continue
		}
		if err != nil {
			t.Fatalf("snapshot %d: %v", n, err)
		}
		err = snap.View(func(tx *journal.Tx) error {
			m, err := tx.GetRef(marker)
			if err != nil {
				return err
			}
			i := int(m.Count)
			want := map[digest.Digest]int{}
			for k := max(1, i-window+1); k <= i; k++ {
				want[refDigest(k)] = k
			}
			seen := 0
			if err := tx.ForEachRef(func(d digest.Digest, r journal.Ref) error {
				if d == marker {
					return nil
				}
				k, ok := want[d]
				if !ok || int(r.Count) != k {
					return fmt.Errorf("version %d holds %s with count %d", i, d, r.Count)
				}
				seen++
				return nil
			}); err != nil {
				return err
			}
			if seen != len(want) {
				return fmt.Errorf("version %d holds %d refs, want %d", i, seen, len(want))
			}
			return nil
		})
		snap.Close()
		if err != nil {
			t.Fatalf("snapshot %d: %v", n, err)
		}
	}
	t.Logf("%d snapshots, %d fell back to the lock", snapshots, locked)
}
