package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

func (l *lib) gc(o store.GCOptions) *store.GCResult {
	l.t.Helper()
	res, err := l.s.GC(l.ctx, o)
	if err != nil {
		l.t.Fatalf("gc: %v", err)
	}
	return res
}

// age sets the modification time of blobs to d ago.
func (l *lib) age(d time.Duration, ds ...digest.Digest) {
	l.t.Helper()
	when := time.Now().Add(-d)
	for _, x := range ds {
		if err := os.Chtimes(testutil.BlobFile(l.dir, x), when, when); err != nil {
			l.t.Fatal(err)
		}
	}
}

func freedSet(r store.Result) map[digest.Digest]int64 {
	out := map[digest.Digest]int64{}
	for _, f := range r.Freed {
		out[digest.Digest(f.Digest)] = f.Size
	}
	return out
}

// TestGC: GC removes what nothing reachable uses (a blob put and never
// tagged, the blobs of an untagged-then-removed image, a blob another tool
// dropped in), keeps what is referenced, leased or younger than the grace
// period, and leaves files that are not blobs alone. It reads no blob.
func TestGC(t *testing.T) {
	l := newLib(t)
	base := []v1.Descriptor{l.b.Random(500)}
	keep := l.image(base, 2)
	l.tag(keep, "keep")
	gone := l.image(base, 2)
	l.tag(gone, "gone")
	goneOnly := libMinus(l.graph(gone), l.graph(keep))
	orphan := l.b.Random(700)
	// Another tool's blob, written behind the store's back.
	foreign := []byte("written by another tool")
	fd := digest.FromBytes(foreign)
	if err := os.WriteFile(testutil.BlobFile(l.dir, fd), foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	// Not blobs: a file not named by a digest, a directory, a symlink.
	junk := filepath.Join(l.dir, "blobs", "sha256", "README")
	if err := os.WriteFile(junk, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(l.dir, "blobs", "sha256", digest.FromString("dir").Encoded()), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(l.dir, "blobs", "sha256", digest.FromString("link").Encoded())
	if err := os.Symlink(testutil.BlobFile(l.dir, orphan.Digest), link); err != nil {
		t.Fatal(err)
	}
	// Untag keeps the data; the untagged entry is still referenced.
	if err := l.s.Untag(l.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if res := l.gc(store.GCOptions{}); len(res.Freed) != 2 {
		t.Fatalf("gc after untag removed %v, want only the orphan and the foreign blob", res.Freed)
	}
	l.wantBlobs(true, l.graph(gone)...)
	l.wantBlobs(false, orphan.Digest, fd)

	// Delete frees gone's blobs itself; put some back as another tool would.
	l.del(gone.Digest.String())
	l.wantBlobs(false, goneOnly...)
	orphan2 := l.b.Random(300)
	young := l.b.Random(400)
	l.age(2*time.Hour, orphan2.Digest)
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leased := l.putUnder(lease.Context(l.ctx), []byte("leased blob"))
	l.age(2*time.Hour, leased.Digest)

	dry := l.gc(store.GCOptions{Grace: time.Hour, DryRun: true})
	if f := freedSet(dry.Result); len(f) != 1 || f[orphan2.Digest] != orphan2.Size || dry.BytesFreed != orphan2.Size || !dry.DryRun || dry.Txn != 0 {
		t.Errorf("dry run: %+v", dry)
	}
	if dry.Young != 1 || dry.Leased != 1 {
		t.Errorf("dry run kept young %d leased %d, want 1 and 1", dry.Young, dry.Leased)
	}
	l.wantBlobs(true, orphan2.Digest, young.Digest, leased.Digest)

	res := l.gc(store.GCOptions{Grace: time.Hour})
	if f := freedSet(res.Result); len(f) != 1 || f[orphan2.Digest] != orphan2.Size || res.Txn == 0 {
		t.Errorf("gc: %+v", res)
	}
	l.wantBlobs(false, orphan2.Digest)
	l.wantBlobs(true, young.Digest, leased.Digest)
	l.wantBlobs(true, l.graph(keep)...)

	// Without grace the young blob goes; the leased one until released.
	res = l.gc(store.GCOptions{})
	if f := freedSet(res.Result); len(f) != 1 || f[young.Digest] == 0 {
		t.Errorf("gc without grace: %+v", res)
	}
	if err := lease.Release(l.ctx); err != nil {
		t.Fatal(err)
	}
	res = l.gc(store.GCOptions{})
	if f := freedSet(res.Result); len(f) != 1 || f[leased.Digest] == 0 {
		t.Errorf("gc after release: %+v", res)
	}
	if res := l.gc(store.GCOptions{}); len(res.Freed) != 0 || res.Txn != 0 {
		t.Errorf("second gc: %+v", res)
	}
	for _, p := range []string{junk, link, filepath.Join(l.dir, "blobs", "sha256", digest.FromString("dir").Encoded())} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("gc touched %s: %v", p, err)
		}
	}
	os.Remove(junk)
	os.Remove(link)
	os.Remove(filepath.Join(l.dir, "blobs", "sha256", digest.FromString("dir").Encoded()))
	l.clean()
	if recs, err := store.PendingRecords(l.s.Dir(), 0); err != nil || len(recs) != 0 {
		t.Errorf("pending after gc: %v, %v", recs, err)
	}
}

func TestGCRefused(t *testing.T) {
	l := newLib(t)
	ro, err := store.Open(l.ctx, l.dir, &store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.GC(l.ctx, store.GCOptions{}); !errors.Is(err, store.ErrReadOnly) {
		t.Errorf("GC on a read-only store = %v", err)
	}
	ctx, cancel := context.WithCancel(l.ctx)
	cancel()
	if _, err := l.s.GC(ctx, store.GCOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("GC with a cancelled context = %v", err)
	}
}

// TestGCRollForwardRechecks: recovery of a GC record that names a blob the
// index on disk references unlinks it not (invariant 8), whatever the
// record says, and still removes the rest.
func TestGCRollForwardRechecks(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 1)
	l.tag(img, "app")
	orphan := l.b.Random(100)
	l.s.Close()
	// A hand-made pending GC record listing the image's manifest too.
	db, err := journal.Open(filepath.Join(l.dir, protocol.JournalFile), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *journal.Tx) error {
		cur := tx.IndexDigest()
		b, _ := tx.IndexBytes(cur)
		rec := journal.Record{Op: "gc", OldIndex: cur, NewIndex: cur, Unlink: []digest.Digest{img.Digest, orphan.Digest}}
		return tx.AddPending(&rec, b)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	l = libOpen(t, l.dir, 2)
	l.wantBlobs(true, l.graph(img)...)
	l.wantBlobs(false, orphan.Digest)
	l.clean()
}

// TestLeaseAgainstConcurrentGC: pullers write layers under a lease, then
// put and tag the manifest, while GC (no grace) and deletes of other
// images run in other goroutines. No pull may lose a blob.
func TestLeaseAgainstConcurrentGC(t *testing.T) {
	l := newLib(t)
	baseBytes := bytes.Repeat([]byte("base layer "), 100)
	const pullers, pulls = 4, 8
	ctx, cancel := context.WithCancel(l.ctx)
	var wg, bg sync.WaitGroup
	errs := make(chan error, pullers*pulls+8)
	for g := 0; g < 2; g++ {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for ctx.Err() == nil {
				if _, err := l.s.GC(ctx, store.GCOptions{}); err != nil && ctx.Err() == nil {
					errs <- fmt.Errorf("gc: %w", err)
					return
				}
			}
		}()
	}
	for p := 0; p < pullers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < pulls; i++ {
				if err := pull(l.ctx, l.s, baseBytes, p, i); err != nil {
					errs <- err
					return
				}
				// Remove the previous pull: its own layers go, the base is
				// leased again by the next pull.
				if i > 0 {
					if _, err := l.s.Delete(l.ctx, fmt.Sprintf("p%d:%d", p, i-1)); err != nil {
						errs <- fmt.Errorf("delete: %w", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(l.index()); got != pullers {
		t.Errorf("%d images left, want %d", got, pullers)
	}
	l.gc(store.GCOptions{})
	l.clean()
}

// pull does what a registry client does: a lease, the layers (one shared
// with other pulls) and the config under it, then the manifest, tagged,
// then the lease is released.
func pull(ctx context.Context, s *store.Store, baseBytes []byte, p, i int) error {
	lease, err := s.Lease(ctx, time.Minute)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer lease.Release(ctx)
	lctx := lease.Context(ctx)
	put := func(b []byte, mt string) (v1.Descriptor, error) {
		d := testutil.Blob(b, mt)
		return d, s.PutBlob(lctx, d, bytes.NewReader(b))
	}
	// The base layer is shared: present (PutBlob leases it and returns) or
	// not (another pull's image was deleted and GC took it).
	base, err := put(baseBytes, v1.MediaTypeImageLayerGzip)
	if err != nil {
		return fmt.Errorf("base: %w", err)
	}
	own, err := put([]byte(fmt.Sprintf("own layer of pull %d/%d", p, i)), v1.MediaTypeImageLayerGzip)
	if err != nil {
		return err
	}
	cfg, err := put([]byte(fmt.Sprintf(`{"pull":"%d/%d"}`, p, i)), v1.MediaTypeImageConfig)
	if err != nil {
		return err
	}
	time.Sleep(time.Millisecond) // let a GC run between the layers and the tag
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d},{"mediaType":%q,"digest":%q,"size":%d}]}`,
		v1.MediaTypeImageManifest, cfg.MediaType, cfg.Digest, cfg.Size, base.MediaType, base.Digest, base.Size, own.MediaType, own.Digest, own.Size)
	if _, err := s.PutManifest(lctx, v1.MediaTypeImageManifest, []byte(m), fmt.Sprintf("p%d:%d", p, i)); err != nil {
		return fmt.Errorf("put manifest: %w", err)
	}
	return nil
}

// storedLeaseBlobs lists the blobs of every stored lease (test helper for
// leases taken by an operation itself).
func storedLeaseBlobs(t *testing.T, dir string) []string {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, protocol.JournalFile), 0o644, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []string
	db.View(func(tx *bolt.Tx) error {
		lb := tx.Bucket([]byte("leases"))
		if lb == nil {
			return nil
		}
		return lb.ForEachBucket(func(k []byte) error {
			return lb.Bucket(k).Bucket([]byte("blobs")).ForEach(func(d, _ []byte) error {
				out = append(out, string(d))
				return nil
			})
		})
	})
	sort.Strings(out)
	return out
}

// TestImportHoldsItsBlobs: an import leases every blob of what it imports
// until its transaction commits, and releases the lease after.
func TestImportHoldsItsBlobs(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	sl := libOpen(t, src, 3)
	img := sl.image([]v1.Descriptor{sl.b.Random(100)}, 2)
	sl.tag(img, "imported")
	sl.s.Close()

	l := newLib(t)
	var during []string
	o := &store.ImportOptions{Progress: func(done, total int) {
		if done == 1 {
			during = storedLeaseBlobs(t, l.dir)
		}
	}}
	if _, err := l.s.ImportWith(l.ctx, src, nil, o); err != nil {
		t.Fatal(err)
	}
	if len(during) != len(sl.graph(img)) {
		t.Errorf("during the copy the lease held %d blobs, want the %d of the image", len(during), len(sl.graph(img)))
	}
	if after := storedLeaseBlobs(t, l.dir); len(after) != 0 {
		t.Errorf("lease left after the import: %v", after)
	}
	l.clean()
	if _, err := l.s.Leases(l.ctx); err != nil {
		t.Fatal(err)
	}
	if rep, _ := l.s.Check(l.ctx, nil); rep != nil {
		for _, p := range rep.Problems {
			if p.Kind == recovery.KindOrphan {
				t.Errorf("orphan after import: %s", p)
			}
		}
	}
}
