package journal_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
)

func TestLeases(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	now := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	a, b, c := digest.FromString("a"), digest.FromString("b"), digest.SHA512.FromString("c")
	err := db.Update(func(tx *journal.Tx) error {
		if err := tx.AddLeaseBlobs("nope", a); !errors.Is(err, errdef.ErrNotFound) {
			t.Errorf("AddLeaseBlobs to a missing lease = %v, want ErrNotFound", err)
		}
		for _, l := range []journal.Lease{
			{ID: "live", Created: now, Expires: now.Add(time.Hour)},
			{ID: "dead", Created: now.Add(-2 * time.Hour), Expires: now.Add(-time.Hour)},
		} {
			if err := tx.PutLease(l); err != nil {
				return err
			}
		}
		if err := tx.AddLeaseBlobs("live", a, c); err != nil {
			return err
		}
		if err := tx.AddLeaseBlobs("dead", b); err != nil {
			return err
		}
		if err := tx.AddLeaseBlobs("live", "sha256:../x"); !errors.Is(err, errdef.ErrInvalidDigest) {
			t.Errorf("AddLeaseBlobs of a bad digest = %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "a b", "é", string(make([]byte, journal.MaxLeaseID+1))} {
		if err := journal.ValidLeaseID(id); !errors.Is(err, errdef.ErrInvalidArgument) {
			t.Errorf("ValidLeaseID(%q) = %v", id, err)
		}
	}
	db.View(func(tx *journal.Tx) error {
		ls, err := tx.Leases()
		if err != nil || len(ls) != 2 || ls[0].ID != "dead" || ls[1].ID != "live" || !ls[1].Expires.Equal(now.Add(time.Hour)) || !ls[1].Created.Equal(now) {
			t.Errorf("Leases = %+v, %v", ls, err)
		}
		l, ok, err := tx.GetLease("live")
		if !ok || err != nil || l.Expired(now) || !l.Expired(now.Add(time.Hour)) {
			t.Errorf("GetLease = %+v %v %v", l, ok, err)
		}
		if _, ok, _ := tx.GetLease("nope"); ok {
			t.Error("GetLease of a missing lease")
		}
		got, err := tx.Leased(now)
		if err != nil || len(got) != 2 || !got[a] || !got[c] || got[b] {
			t.Errorf("Leased = %v, %v (an expired lease protects nothing)", got, err)
		}
		return nil
	})
	// Renewing keeps the blobs; sweeping drops only the expired lease.
	err = db.Update(func(tx *journal.Tx) error {
		if err := tx.PutLease(journal.Lease{ID: "live", Created: now, Expires: now.Add(2 * time.Hour)}); err != nil {
			return err
		}
		gone, err := tx.SweepLeases(now)
		if err != nil || len(gone) != 1 || gone[0].ID != "dead" {
			t.Errorf("SweepLeases = %+v, %v", gone, err)
		}
		ds, err := tx.LeaseBlobs("live")
		if err != nil || len(ds) != 2 {
			t.Errorf("LeaseBlobs after renew = %v, %v", ds, err)
		}
		if _, err := tx.LeaseBlobs("dead"); !errors.Is(err, errdef.ErrNotFound) {
			t.Errorf("LeaseBlobs of a swept lease = %v", err)
		}
		if err := tx.DeleteLease("live"); err != nil {
			return err
		}
		return tx.DeleteLease("live") // twice: no error
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		if ls, _ := tx.Leases(); len(ls) != 0 {
			t.Errorf("leases left: %+v", ls)
		}
		return nil
	})
	if errs := db.Check(); len(errs) != 0 {
		t.Errorf("Check: %v", errs)
	}
}

// writeV1 writes a version 1 journal as the first release of ocistore did:
// four buckets, schema 1, a committed index, a pending record and a refcount.
func writeV1(t *testing.T, path string) (idx, blob digest.Digest) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	idx, blob = digest.FromString("index v1"), digest.FromString("blob")
	err = bdb.Update(func(tx *bolt.Tx) error {
		for _, n := range []string{"meta", "indexes", "pending", "refs"} {
			if _, err := tx.CreateBucket([]byte(n)); err != nil {
				return err
			}
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], 1)
		m := tx.Bucket([]byte("meta"))
		if err := m.Put([]byte("schema"), v[:]); err != nil {
			return err
		}
		if err := m.Put([]byte("index"), []byte(idx)); err != nil {
			return err
		}
		if err := tx.Bucket([]byte("indexes")).Put([]byte(idx), []byte("index v1")); err != nil {
			return err
		}
		rec := journal.Record{ID: 1, Op: "delete x", OldIndex: idx, NewIndex: idx}
		binary.BigEndian.PutUint64(v[:], 1)
		if err := tx.Bucket([]byte("pending")).Put(v[:], rec.Encode()); err != nil {
			return err
		}
		return tx.Bucket([]byte("refs")).Put([]byte(blob), []byte{3, 10, 0})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := bdb.Close(); err != nil {
		t.Fatal(err)
	}
	return idx, blob
}

func TestUpgradeV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	idx, blob := writeV1(t, path)

	// Read-only: read as it is, no leases, nothing written.
	ro := open(t, path, journal.Options{ReadOnly: true})
	ro.View(func(tx *journal.Tx) error {
		if tx.SchemaVersion() != 1 || tx.IndexDigest() != idx {
			t.Errorf("read-only v1: version %d, index %s", tx.SchemaVersion(), tx.IndexDigest())
		}
		if ls, err := tx.Leases(); err != nil || len(ls) != 0 {
			t.Errorf("read-only v1 leases: %v, %v", ls, err)
		}
		if l, err := tx.Leased(time.Now()); err != nil || len(l) != 0 {
			t.Errorf("read-only v1 leased: %v, %v", l, err)
		}
		return nil
	})
	ro.Close()

	// Read-write: upgraded in place, every bit of state kept.
	db := open(t, path, journal.Options{})
	if db.Created {
		t.Error("an upgraded journal is reported as Created")
	}
	db.View(func(tx *journal.Tx) error {
		if tx.SchemaVersion() != journal.SchemaVersion {
			t.Errorf("version %d after upgrade", tx.SchemaVersion())
		}
		if tx.IndexDigest() != idx {
			t.Errorf("committed index lost: %s", tx.IndexDigest())
		}
		if b, ok := tx.IndexBytes(idx); !ok || string(b) != "index v1" {
			t.Errorf("index copy lost")
		}
		recs, err := tx.Pending()
		if err != nil || len(recs) != 1 || recs[0].Op != "delete x" {
			t.Errorf("pending lost: %+v, %v", recs, err)
		}
		if r, err := tx.GetRef(blob); err != nil || r.Count != 3 || r.Size != 10 {
			t.Errorf("refcount lost: %+v, %v", r, err)
		}
		return nil
	})
	if err := db.Update(func(tx *journal.Tx) error {
		return tx.PutLease(journal.Lease{ID: "x", Created: time.Now(), Expires: time.Now().Add(time.Hour)})
	}); err != nil {
		t.Fatalf("lease after upgrade: %v", err)
	}
	if errs := db.Check(); len(errs) != 0 {
		t.Errorf("Check: %v", errs)
	}
	db.Close()
	db = open(t, path, journal.Options{})
	db.View(func(tx *journal.Tx) error {
		if ls, _ := tx.Leases(); len(ls) != 1 {
			t.Errorf("lease lost on reopen: %+v", ls)
		}
		return nil
	})
}

func TestNewerSchemaRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	db := open(t, path, journal.Options{})
	db.Close()
	bdb, err := bolt.Open(path, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	bdb.Update(func(tx *bolt.Tx) error {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], journal.SchemaVersion+1)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v[:])
	})
	bdb.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		_, err := journal.Open(path, journal.Options{ReadOnly: ro})
		if !errors.Is(err, errdef.ErrJournalNewer) || errors.Is(err, errdef.ErrCorrupt) {
			t.Errorf("read-only %v: open of a newer schema = %v, want ErrJournalNewer and not ErrCorrupt", ro, err)
		}
		if want := fmt.Sprintf("format version %d, this ocistore reads up to %d", journal.SchemaVersion+1, journal.SchemaVersion); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("read-only %v: %v does not say %q", ro, err, want)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Errorf("refusing a newer journal changed its bytes")
	}
}

// copyFixture copies journal/testdata/name to a temp file.
func copyFixture(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "journal.db")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestUpgradeV2: a version 2 journal (written by the previous build: refs
// without children) is upgraded in place; its refs read as before, with no
// children recorded, and a ref stored after it records them.
func TestUpgradeV2(t *testing.T) {
	path := copyFixture(t, "v2-clean.db")
	ro := open(t, path, journal.Options{ReadOnly: true})
	var before map[digest.Digest]journal.Ref
	ro.View(func(tx *journal.Tx) error {
		if tx.SchemaVersion() != 2 {
			t.Errorf("fixture is version %d", tx.SchemaVersion())
		}
		before = refs(t, tx)
		return nil
	})
	ro.Close()
	if len(before) == 0 {
		t.Fatal("fixture has no refs")
	}

	db := open(t, path, journal.Options{})
	defer db.Close()
	var some digest.Digest
	db.View(func(tx *journal.Tx) error {
		if tx.SchemaVersion() != journal.SchemaVersion {
			t.Errorf("version %d after upgrade", tx.SchemaVersion())
		}
		after := refs(t, tx)
		if len(after) != len(before) {
			t.Errorf("%d refs after upgrade, %d before", len(after), len(before))
		}
		for d, r := range before {
			a := after[d]
			if a.Count != r.Count || a.Size != r.Size || a.Expanded != r.Expanded || a.Children != nil || tx.ChildrenRecorded(d) {
				t.Errorf("%s: %+v after upgrade, %+v before", d, a, r)
			}
			some = d
		}
		return nil
	})
	kids := []v1.Descriptor{{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromString("c"), Size: 2}}
	if err := db.Update(func(tx *journal.Tx) error {
		r, _ := tx.GetRef(some)
		r.Expanded, r.Children = true, kids
		return tx.PutRef(some, r)
	}); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		if r, err := tx.GetRef(some); err != nil || !tx.ChildrenRecorded(some) || len(r.Children) != 1 || !reflect.DeepEqual(r.Children, kids) {
			t.Errorf("children not stored: %+v, %v", r, err)
		}
		return nil
	})
	if errs := db.Check(); len(errs) != 0 {
		t.Errorf("Check: %v", errs)
	}
}

// TestUpgradeDamagedFreelist: the upgrade is a write; when bbolt finds the
// freelist damaged while committing it (it panics), Open returns ErrCorrupt
// naming the file instead of crashing the process.
func TestUpgradeDamagedFreelist(t *testing.T) {
	path := copyFixture(t, "v2-page-freed-in-use.db")
	_, err := journal.Open(path, journal.Options{})
	if !errors.Is(err, errdef.ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("open = %v, want ErrCorrupt naming %s", err, path)
	}
	// Nothing was written: a read-only open still reads it as version 2.
	ro := open(t, path, journal.Options{ReadOnly: true})
	defer ro.Close()
	ro.View(func(tx *journal.Tx) error {
		if tx.SchemaVersion() != 2 {
			t.Errorf("version %d after a failed upgrade", tx.SchemaVersion())
		}
		return nil
	})
}

func refs(t *testing.T, tx *journal.Tx) map[digest.Digest]journal.Ref {
	out := map[digest.Digest]journal.Ref{}
	if err := tx.ForEachRef(func(d digest.Digest, r journal.Ref) error { out[d] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}
