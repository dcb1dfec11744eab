package store_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// testClock is a settable clock for lease expiry and ages.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// libOpenClock opens dir with a test clock.
func libOpenClock(t *testing.T, dir string, clock *testClock) *lib {
	t.Helper()
	ctx := context.Background()
	o := &store.Options{}
	store.SetTestClock(o, clock.Now)
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return &lib{t: t, ctx: ctx, dir: dir, s: s, b: testutil.NewBuilder(t, s, 1)}
}

func (l *lib) putUnder(ctx context.Context, content []byte) v1.Descriptor {
	l.t.Helper()
	d := libDesc(content, v1.MediaTypeImageLayer)
	if err := l.s.PutBlob(ctx, d, bytes.NewReader(content)); err != nil {
		l.t.Fatalf("put blob under lease: %v", err)
	}
	return d
}

func orphans(t *testing.T, s *store.Store) map[digest.Digest]bool {
	t.Helper()
	out := map[digest.Digest]bool{}
	for _, p := range testutil.Problems(t, s) {
		if p.Kind != recovery.KindOrphan {
			t.Errorf("fsck: %s", p)
			continue
		}
		out[digest.Digest(p.Digest)] = true
	}
	return out
}

// TestLeaseProtectsFromDelete: a blob written under a lease is not an
// orphan for fsck, and a Delete that drops its last reference leaves it on
// disk while the lease lives; after Release it is an ordinary orphan.
func TestLeaseProtectsFromDelete(t *testing.T) {
	l := newLib(t)
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if lease.ID == "" || !lease.Expires.After(lease.Created) {
		t.Fatalf("lease %+v", lease)
	}
	lctx := lease.Context(l.ctx)
	if id, ok := store.LeaseFromContext(lctx); !ok || id != lease.ID {
		t.Fatalf("LeaseFromContext = %q, %v", id, ok)
	}
	fresh := l.putUnder(lctx, []byte("a layer being pulled"))
	if o := orphans(t, l.s); len(o) != 0 {
		t.Errorf("leased blob reported as orphan: %v", o)
	}

	// An image whose layer is also leased: deleting the image keeps it.
	shared := l.b.Random(300)
	img := l.image([]v1.Descriptor{shared}, 1)
	l.tag(img, "app")
	if err := lease.Add(l.ctx, shared); err != nil {
		t.Fatal(err)
	}
	res := l.del("app")
	for _, f := range res.Freed {
		if f.Digest == shared.Digest.String() {
			t.Error("Delete reports a leased blob as freed")
		}
	}
	l.wantBlobs(true, shared.Digest, fresh.Digest)
	l.wantBlobs(false, img.Digest)
	if o := orphans(t, l.s); len(o) != 0 {
		t.Errorf("orphans while leased: %v", o)
	}
	ls, err := l.s.Leases(l.ctx)
	if err != nil || len(ls) != 1 || ls[0].ID != lease.ID {
		t.Fatalf("Leases = %v, %v", ls, err)
	}

	if err := lease.Release(l.ctx); err != nil {
		t.Fatal(err)
	}
	if err := lease.Release(l.ctx); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if o := orphans(t, l.s); len(o) != 2 || !o[shared.Digest] || !o[fresh.Digest] {
		t.Errorf("orphans after release: %v", o)
	}
	// A released lease cannot take blobs.
	if err := l.s.PutBlob(lctx, libDesc([]byte("x"), "x"), bytes.NewReader([]byte("x"))); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutBlob under a released lease = %v, want ErrNotFound", err)
	}
}

func TestLeaseArguments(t *testing.T) {
	l := newLib(t)
	for _, ttl := range []time.Duration{0, -time.Second} {
		if _, err := l.s.Lease(l.ctx, ttl); !errors.Is(err, store.ErrInvalidArgument) {
			t.Errorf("Lease(ttl %s) = %v", ttl, err)
		}
	}
	bad := store.WithLease(l.ctx, "no-such-lease")
	if err := l.s.PutBlob(bad, libDesc([]byte("x"), "x"), bytes.NewReader([]byte("x"))); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutBlob under an unknown lease = %v", err)
	}
	if l.has(digest.FromBytes([]byte("x"))) {
		t.Error("a blob was written under an unknown lease")
	}
	if err := l.s.PutBlob(store.WithLease(l.ctx, "bad id"), libDesc([]byte("x"), "x"), bytes.NewReader([]byte("x"))); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("PutBlob under a malformed lease id = %v", err)
	}
	clock := newClock()
	l = libOpenClock(t, l.dir, clock)
	lease, err := l.s.Lease(l.ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if err := lease.Renew(l.ctx, time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Renew of an expired lease = %v, want ErrNotFound", err)
	}
	if lease, err = l.s.Lease(l.ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := lease.Renew(l.ctx, 0); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("Renew(0) = %v", err)
	}
	if err := lease.Add(l.ctx, v1.Descriptor{Digest: "sha256:nope"}); !errors.Is(err, store.ErrInvalidDigest) {
		t.Errorf("Add(bad digest) = %v", err)
	}

	roOpts := &store.Options{ReadOnly: true}
	store.SetTestClock(roOpts, clock.Now)
	ro, err := store.Open(l.ctx, l.dir, roOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.Lease(l.ctx, time.Hour); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("Lease on a read-only store = %v", err)
	}
	if ls, err := ro.Leases(l.ctx); err != nil || len(ls) != 1 {
		t.Errorf("Leases on a read-only store = %v, %v", ls, err)
	}
}

// TestLeaseExpiryAcrossRestart: a lease survives a restart and keeps
// protecting its blobs until it expires; then the next write sweeps it and
// its blobs are orphans; renewing before expiry extends it.
func TestLeaseExpiryAcrossRestart(t *testing.T) {
	clock := newClock()
	dir := filepath.Join(t.TempDir(), "layout")
	l := libOpenClock(t, dir, clock)
	short, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	long, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a := l.putUnder(short.Context(l.ctx), []byte("blob of the short lease"))
	b := l.putUnder(long.Context(l.ctx), []byte("blob of the long lease"))
	l.s.Close()

	// Restart 30 minutes later: both leases are there; the long one is renewed.
	clock.Advance(30 * time.Minute)
	l = libOpenClock(t, dir, clock)
	ls, err := l.s.Leases(l.ctx)
	if err != nil || len(ls) != 2 {
		t.Fatalf("after restart: leases %v, %v", ls, err)
	}
	for _, x := range ls {
		if x.ID == long.ID {
			if err := x.Renew(l.ctx, 3*time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Known from before the restart: the id alone keeps working.
	c := l.putUnder(store.WithLease(l.ctx, short.ID), []byte("another blob of the short lease"))
	if o := orphans(t, l.s); len(o) != 0 {
		t.Errorf("orphans while leased: %v", o)
	}
	l.s.Close()

	// Restart after the short lease expired: its blobs are orphans, the
	// long one's are not; the next write sweeps the expired lease.
	clock.Advance(time.Hour)
	l = libOpenClock(t, dir, clock)
	if o := orphans(t, l.s); len(o) != 2 || !o[a.Digest] || !o[c.Digest] || o[b.Digest] {
		t.Errorf("orphans after expiry: %v", o)
	}
	if err := l.s.PutBlob(short.Context(l.ctx), libDesc([]byte("y"), "y"), bytes.NewReader([]byte("y"))); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutBlob under an expired lease = %v, want ErrNotFound", err)
	}
	if err := short.Renew(l.ctx, time.Hour); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Renew through the handle that made the lease, closed = %v, want ErrClosed", err)
	}
	ls, _ = l.s.Leases(l.ctx)
	if len(ls) != 1 || ls[0].ID != long.ID {
		t.Errorf("leases after expiry: %v", ls)
	}
	if got := storedLeases(t, dir); len(got) != 2 {
		t.Errorf("swept before any write: %v", got)
	}
	l.putUnder(ls[0].Context(l.ctx), []byte("a write sweeps"))
	ls, _ = l.s.Leases(l.ctx)
	if len(ls) != 1 || ls[0].ID != long.ID {
		t.Errorf("leases after the sweep: %v", ls)
	}
	if got := storedLeases(t, dir); len(got) != 1 {
		t.Errorf("the expired lease was not swept from the journal: %v", got)
	}
}

// storedLeases reads the lease ids in the journal, expired or not.
func storedLeases(t *testing.T, dir string) []string {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, protocol.JournalFile), 0o644, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []string
	db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("leases")); b != nil {
			return b.ForEachBucket(func(k []byte) error { out = append(out, string(k)); return nil })
		}
		return nil
	})
	return out
}

// TestLeaseOnUpgradedJournal: a layout whose journal a version 1 build
// wrote (no leases bucket) opens, is upgraded in place, and takes leases.
func TestLeaseOnUpgradedJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	l := libOpen(t, dir, 1)
	img := l.image(nil, 2)
	l.tag(img, "app")
	l.s.Close()
	db, err := bolt.Open(filepath.Join(dir, protocol.JournalFile), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket([]byte("leases")); err != nil {
			return err
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], 1)
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v[:])
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	l = libOpen(t, dir, 2)
	if got := l.index(); len(got) != 1 {
		t.Fatalf("index after upgrade: %v", got)
	}
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatalf("lease on an upgraded journal: %v", err)
	}
	l.putUnder(lease.Context(l.ctx), []byte("leased"))
	l.del("app")
	l.clean()
}
