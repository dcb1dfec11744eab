package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// setJournalSchema writes version v in the journal at path, as a newer
// ocistore would have.
func setJournalSchema(t *testing.T, path string, v uint64) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o644, nil)
	must(t, err)
	defer bdb.Close()
	must(t, bdb.Update(func(tx *bolt.Tx) error {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], v)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), b[:])
	}))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// asidesOf lists the journals kept aside in the state directory stateRoot.
func asidesOf(t *testing.T, stateRoot string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(stateRoot, protocol.JournalFile+".corrupt-*"))
	must(t, err)
	return m
}

// wantNewer fails unless err says the journal is newer (and not corrupt),
// naming both versions.
func wantNewer(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, store.ErrJournalNewer) || errors.Is(err, store.ErrCorrupt) {
		t.Errorf("%s: %v, want ErrJournalNewer (not ErrCorrupt)", what, err)
		return
	}
	if want := fmt.Sprintf("format version 99, this ocistore reads up to %d", journal.SchemaVersion); !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v does not say %q", what, err, want)
	}
}

// newerLayout makes a layout with one image, an unreferenced blob and a
// journal that says a newer ocistore (schema 99) wrote it. It returns the
// layout and the unreferenced blob.
func newerLayout(t *testing.T) (string, v1.Descriptor) {
	t.Helper()
	l := newLib(t)
	l.tag(l.image(nil, 2), "app:1")
	orphan := l.b.Random(64)
	must(t, l.s.Close())
	setJournalSchema(t, filepath.Join(l.dir, protocol.JournalFile), 99)
	return l.dir, orphan
}

// TestNewerJournalRefused: a journal that a newer ocistore wrote is refused
// by every way in (a read-write or read-only open, the check, the pending
// records, repair), with ErrJournalNewer and both versions in the message,
// and left as it is, byte for byte: never moved aside, never rebuilt.
// Repair with RebuildJournal rebuilds it, and then frees nothing for
// RebuildPin (what only the newer version reads may have protected blobs).
func TestNewerJournalRefused(t *testing.T) {
	ctx := context.Background()
	dir, orphan := newerLayout(t)
	path := filepath.Join(dir, protocol.JournalFile)
	before := fileSum(t, path)
	unchanged := func(what string) {
		t.Helper()
		if fileSum(t, path) != before {
			t.Errorf("%s changed the journal", what)
		}
		if a := asidesOf(t, dir); len(a) != 0 {
			t.Errorf("%s moved the journal aside: %v", what, a)
		}
	}
	for _, ro := range []bool{false, true} {
		s, err := store.Open(ctx, dir, &store.Options{ReadOnly: ro, LockTimeout: time.Second})
		if err == nil {
			s.Close()
		}
		wantNewer(t, "open", err)
		unchanged("open")
	}
	_, err := store.PendingRecords(dir, time.Second)
	wantNewer(t, "pending records", err)
	unchanged("pending records")
	_, err = store.Repair(ctx, dir, &store.RepairOptions{LockTimeout: time.Second})
	wantNewer(t, "repair", err)
	unchanged("repair")

	rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: time.Second})
	must(t, err)
	if ps := libProblems(rep.Problems, recovery.KindJournalNewer); len(ps) != 1 || !strings.Contains(ps[0].Detail, "format version 99") {
		t.Errorf("check: %v, want one journal-newer problem", rep.Problems)
	}
	if ps := libProblems(rep.Problems, recovery.KindJournalCorrupt); len(ps) != 0 {
		t.Errorf("check reports a newer journal as corrupt: %v", ps)
	}
	unchanged("check")

	res, err := store.Repair(ctx, dir, &store.RepairOptions{LockTimeout: time.Second, RebuildJournal: true})
	must(t, err)
	if a := asidesOf(t, dir); len(a) != 1 || fileSum(t, a[0]) != before {
		t.Fatalf("repair --rebuild-journal kept aside %v, want the newer journal as it was", a)
	}
	var kinds []string
	for _, a := range res.Actions {
		kinds = append(kinds, a.Kind)
	}
	if got := strings.Join(kinds, " "); !strings.Contains(got, recovery.ActionJournalRebuilt) || !strings.Contains(got, recovery.ActionPinned) {
		t.Errorf("repair --rebuild-journal did %v, want a rebuild and a pin", got)
	}
	if !testutil.HasBlob(t, dir, orphan.Digest) {
		t.Errorf("repair --rebuild-journal freed an unreferenced blob during the pin")
	}
	if got := tags(t, dir); len(got) != 1 || got["app:1"] == "" {
		t.Errorf("tags after the rebuild: %v", got)
	}
}

// TestNewerSharedJournalRefused: the same for the journal of a shared blob
// directory (blob-dir/.ocistore/journal.db).
func TestNewerSharedJournalRefused(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dir, shared := filepath.Join(root, "layout"), filepath.Join(root, "blobs")
	s, err := store.Open(ctx, dir, &store.Options{SharedBlobDir: shared})
	must(t, err)
	b := testutil.NewBuilder(t, s, 1)
	b.Tag(b.Manifest(nil, 1), "app:1")
	must(t, s.Close())
	path := filepath.Join(shared, protocol.JournalFile)
	setJournalSchema(t, path, 99)
	before := fileSum(t, path)
	for _, ro := range []bool{false, true} {
		s, err := store.Open(ctx, dir, &store.Options{ReadOnly: ro, LockTimeout: time.Second})
		if err == nil {
			s.Close()
		}
		wantNewer(t, "open", err)
	}
	_, err = store.PendingRecords(dir, time.Second)
	wantNewer(t, "pending records", err)
	rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: time.Second})
	must(t, err)
	if ps := libProblems(rep.Problems, recovery.KindJournalNewer); len(ps) != 1 {
		t.Errorf("check: %v, want one journal-newer problem", rep.Problems)
	}
	if fileSum(t, path) != before || len(asidesOf(t, shared)) != 0 {
		t.Errorf("the shared journal was changed or moved aside")
	}
}

// TestNewerDamagedJournalRefused: a journal whose version says newer and
// that is damaged too (it cannot be opened) is refused as newer, not
// rebuilt as corrupt: its version is read by salvage.
func TestNewerDamagedJournalRefused(t *testing.T) {
	dir, _ := newerLayout(t)
	path := filepath.Join(dir, protocol.JournalFile)
	scribbleFreelist(t, path)
	before := fileSum(t, path)
	s, err := store.Open(context.Background(), dir, &store.Options{LockTimeout: time.Second})
	if err == nil {
		s.Close()
	}
	wantNewer(t, "open", err)
	_, err = store.Repair(context.Background(), dir, &store.RepairOptions{LockTimeout: time.Second})
	wantNewer(t, "repair", err)
	if fileSum(t, path) != before || len(asidesOf(t, dir)) != 0 {
		t.Errorf("a damaged newer journal was changed or moved aside")
	}
}

// scribbleFreelist overwrites the freelist pages both meta pages of the
// bbolt file at path name (4 KiB pages): a read-write open refuses it as
// corrupt, a read-only one (salvage) still reads its buckets.
func scribbleFreelist(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	for _, meta := range []int{0, 4096} {
		// page header (16 bytes), magic, version, page size, flags, root
		// bucket (16 bytes), then the freelist page id.
		pg := int64(binary.LittleEndian.Uint64(b[meta+16+32:]))
		_, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 4096), pg*4096)
		must(t, err)
	}
}

// leasedLayout makes a layout with one image and a blob that only a live
// lease (an hour from now) holds; it closes the store.
func leasedLayout(t *testing.T, now time.Time) (dir string, lease *store.Lease, held v1.Descriptor) {
	t.Helper()
	ctx := context.Background()
	dir = filepath.Join(t.TempDir(), "layout")
	o := &store.Options{}
	store.SetTestClock(o, func() time.Time { return now })
	s, err := store.Open(ctx, dir, o)
	must(t, err)
	b := testutil.NewBuilder(t, s, 1)
	b.Tag(b.Manifest(nil, 1), "app:1")
	lease, err = s.Lease(ctx, time.Hour)
	must(t, err)
	content := []byte("a layer of a pull in progress")
	held = testutil.Blob(content, v1.MediaTypeImageLayer)
	must(t, s.PutBlob(lease.Context(ctx), held, bytes.NewReader(content)))
	must(t, s.Close())
	return dir, lease, held
}

// testClockBase is the store clock of a test: an hour ahead of the real
// one, so that the files the test writes are older than its "now" (GC's
// grace period counts from the file times) and a lease taken at it is
// live for repair, which reads the real clock.
func testClockBase() time.Time { return time.Now().Add(time.Hour).Truncate(time.Second) }

func openAt(t *testing.T, dir string, now time.Time) *store.Store {
	t.Helper()
	o := &store.Options{LockTimeout: time.Second}
	store.SetTestClock(o, func() time.Time { return now })
	s, err := store.Open(context.Background(), dir, o)
	if err != nil {
		t.Fatalf("open at %s: %v", now, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestRebuildKeepsLeases: a corrupt journal that an open (or repair)
// rebuilds keeps the leases salvage reads, with their expiry and blobs: a
// GC right after keeps the leased blob, and frees it once the lease ended.
func TestRebuildKeepsLeases(t *testing.T) {
	ctx := context.Background()
	now := testClockBase()
	for _, via := range []string{"open", "repair"} {
		t.Run(via, func(t *testing.T) {
			dir, lease, held := leasedLayout(t, now)
			scribbleFreelist(t, filepath.Join(dir, protocol.JournalFile))
			if via == "repair" {
				res, err := store.Repair(ctx, dir, &store.RepairOptions{LockTimeout: time.Second})
				must(t, err)
				var kinds []string
				for _, a := range res.Actions {
					kinds = append(kinds, a.Kind)
				}
				if got := strings.Join(kinds, " "); !strings.Contains(got, recovery.ActionLeasesKept) || strings.Contains(got, recovery.ActionPinned) {
					t.Errorf("repair did %v, want the lease kept and no pin", got)
				}
			}
			s := openAt(t, dir, now.Add(time.Minute))
			if len(asidesOf(t, dir)) != 1 {
				t.Fatalf("the corrupt journal was not rebuilt")
			}
			ls, err := s.Leases(ctx)
			must(t, err)
			if len(ls) != 1 || ls[0].ID != lease.ID || !ls[0].Expires.Equal(lease.Expires) {
				t.Fatalf("leases after the rebuild: %+v, want %s until %s", ls, lease.ID, lease.Expires)
			}
			gc, err := s.GC(ctx, store.GCOptions{})
			must(t, err)
			if !testutil.HasBlob(t, dir, held.Digest) || gc.Leased != 1 || gc.Pinned != "" {
				t.Fatalf("gc after the rebuild: %+v; the leased blob must stay, and nothing be pinned", gc)
			}
			must(t, s.Close())
			s = openAt(t, dir, lease.Expires.Add(time.Second))
			gc, err = s.GC(ctx, store.GCOptions{})
			must(t, err)
			if testutil.HasBlob(t, dir, held.Digest) || len(gc.Freed) != 1 {
				t.Fatalf("gc once the lease ended: %+v; the blob must go", gc)
			}
		})
	}
}

// TestRebuildWithoutLeasesPins: a journal rebuilt when its leases cannot
// be read (it holds no database at all) frees nothing for RebuildPin: GC,
// a delete and a prune commit their changes of index.json but unlink no
// blob (they stay as orphans), and say why; after the pin, GC frees them.
func TestRebuildWithoutLeasesPins(t *testing.T) {
	ctx := context.Background()
	now := testClockBase()
	dir, _, held := leasedLayout(t, now)
	l := libOpen(t, dir, 2)
	extra := l.image(nil, 1)
	l.tag(extra, "extra:1")
	l.tag(l.image(nil, 1), "old:1")
	must(t, l.s.Close())
	extraBlobs := testutil.Graph(t, dir, extra)
	must(t, os.WriteFile(filepath.Join(dir, protocol.JournalFile), bytes.Repeat([]byte("not a bbolt database "), 1000), 0o644))

	rebuilt := now.Add(time.Minute)
	s := openAt(t, dir, rebuilt)
	if len(asidesOf(t, dir)) != 1 {
		t.Fatalf("the corrupt journal was not rebuilt")
	}
	gc, err := s.GC(ctx, store.GCOptions{})
	must(t, err)
	if !strings.Contains(gc.Pinned, "without its leases") || len(gc.Freed) != 0 || !testutil.HasBlob(t, dir, held.Digest) {
		t.Fatalf("gc during the pin: %+v", gc)
	}
	del, err := s.Delete(ctx, "extra:1")
	must(t, err)
	if del.Pinned == "" || len(del.Freed) != 0 {
		t.Fatalf("delete during the pin: %+v", del)
	}
	pr, err := s.Prune(ctx, store.Policy{Refs: []string{"old:*"}, OlderThan: time.Nanosecond})
	must(t, err)
	// A prune is for space: during the pin it removes nothing.
	if len(pr.Removed) != 0 || pr.Pinned == "" || len(pr.Freed) != 0 {
		t.Fatalf("prune during the pin: %+v", pr)
	}
	for _, d := range extraBlobs {
		if !testutil.HasBlob(t, dir, d) {
			t.Fatalf("blob %s of the deleted image was unlinked during the pin", d)
		}
	}
	must(t, s.Close())

	s = openAt(t, dir, rebuilt.Add(store.RebuildPin).Add(-time.Second))
	gc, err = s.GC(ctx, store.GCOptions{})
	must(t, err)
	if gc.Pinned == "" || len(gc.Freed) != 0 {
		t.Fatalf("gc a second before the pin ends: %+v", gc)
	}
	must(t, s.Close())

	s = openAt(t, dir, rebuilt.Add(store.RebuildPin))
	gc, err = s.GC(ctx, store.GCOptions{})
	must(t, err)
	if gc.Pinned != "" || testutil.HasBlob(t, dir, held.Digest) || len(gc.Freed) < len(extraBlobs)+1 {
		t.Fatalf("gc once the pin ended: %+v", gc)
	}
	checkClean(t, dir, false)
}
