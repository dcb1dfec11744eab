package journal_test

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
)

// leased makes a journal holding two leases (one with two blobs, one
// with none) and returns its path.
func leased(t *testing.T, now time.Time) (string, []journal.SalvagedLease) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal.db")
	db := open(t, path, journal.Options{})
	defer db.Close()
	want := []journal.SalvagedLease{
		{Lease: journal.Lease{ID: "a", Created: now, Expires: now.Add(time.Hour)},
			Blobs: []digest.Digest{digest.FromString("x"), digest.FromString("y")}},
		{Lease: journal.Lease{ID: "b", Created: now, Expires: now.Add(2 * time.Hour)}},
	}
	if digest.FromString("y") < digest.FromString("x") {
		want[0].Blobs[0], want[0].Blobs[1] = want[0].Blobs[1], want[0].Blobs[0]
	}
	err := db.Update(func(tx *journal.Tx) error {
		for _, l := range want {
			if err := tx.PutLease(l.Lease); err != nil {
				return err
			}
			if err := tx.AddLeaseBlobs(l.ID, l.Blobs...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return path, want
}

// rawUpdate changes the database at path with bbolt itself (damage).
func rawUpdate(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if err := bdb.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// TestSalvageLeases: salvage reads every lease whole (times and blobs);
// a leases bucket that is missing, or a lease that does not decode, is
// reported as leases lost (their blobs are unknown), keeping the others.
func TestSalvageLeases(t *testing.T) {
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	path, want := leased(t, now)
	s, err := journal.SalvageFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Leases, want) || s.LeasesLost || s.Schema != journal.SchemaVersion || s.Newer() {
		t.Fatalf("salvaged leases %+v, lost %v, schema %d; want %+v", s.Leases, s.LeasesLost, s.Schema, want)
	}

	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("leases")).Bucket([]byte("b")).Delete([]byte("expires"))
	})
	s, err = journal.SalvageFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Leases, want[:1]) || !s.LeasesLost {
		t.Fatalf("with lease b damaged: salvaged %+v, lost %v; want lease a and lost", s.Leases, s.LeasesLost)
	}

	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("leases")) })
	s, err = journal.SalvageFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Leases) != 0 || !s.LeasesLost {
		t.Fatalf("without a leases bucket: salvaged %+v, lost %v; want none and lost", s.Leases, s.LeasesLost)
	}
}

// TestSalvageNewer: salvage reads the version of a database a newer
// ocistore wrote, so that a caller refuses it rather than rebuild it.
func TestSalvageNewer(t *testing.T) {
	path, _ := leased(t, time.Now())
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], 99)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v[:])
	})
	s, err := journal.SalvageFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Newer() || s.Schema != 99 {
		t.Fatalf("salvaged schema %d, newer %v; want 99, newer", s.Schema, s.Newer())
	}
	if err := s.NewerError(path); !errors.Is(err, errdef.ErrJournalNewer) || errors.Is(err, errdef.ErrCorrupt) {
		t.Fatalf("NewerError = %v", err)
	}
}

// TestPinnedUntil: the pin a rebuild records is read back; a journal
// without one has none.
func TestPinnedUntil(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	since := time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC)
	read := func() (until, at time.Time) {
		if err := db.View(func(tx *journal.Tx) error { until, at = tx.PinnedUntil(); return nil }); err != nil {
			t.Fatal(err)
		}
		return until, at
	}
	if until, at := read(); !until.IsZero() || !at.IsZero() {
		t.Fatalf("a new journal is pinned: %v %v", until, at)
	}
	if err := db.Update(func(tx *journal.Tx) error { return tx.SetPinnedUntil(since, since.Add(24*time.Hour)) }); err != nil {
		t.Fatal(err)
	}
	if until, at := read(); !until.Equal(since.Add(24*time.Hour)) || !at.Equal(since) {
		t.Fatalf("pinned until %v since %v, want %v since %v", until, at, since.Add(24*time.Hour), since)
	}
}
