package store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// An upload in chunks, resumed by another handle after its writer went
// away, commits a blob that holds exactly what was sent.
func TestUploadChunksAndResume(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(t, 3<<20+17)
	u, err := s.NewUpload(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := u.Write(ctx, 0, bytes.NewReader(data[:1<<20])); err != nil || n != 1<<20 {
		t.Fatalf("first chunk: %d, %v", n, err)
	}
	// A chunk that does not start where the upload ends is refused and
	// changes nothing.
	if _, err := u.Write(ctx, 5, bytes.NewReader(data[5:10])); !errors.Is(err, store.ErrUploadOffset) {
		t.Fatalf("chunk at the wrong offset: %v, want ErrUploadOffset", err)
	}
	if u.Size() != 1<<20 {
		t.Fatalf("size %d after a refused chunk", u.Size())
	}
	id := u.ID
	u.Close()
	s.Close()

	s2, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r, err := s2.ResumeUpload(ctx, id, time.Hour)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if r.Size() != 1<<20 {
		t.Fatalf("resumed upload holds %d bytes, want %d", r.Size(), 1<<20)
	}
	if _, err := r.Write(ctx, r.Size(), bytes.NewReader(data[1<<20:])); err != nil {
		t.Fatal(err)
	}
	// A wrong digest is refused, and the session stays.
	if _, err := r.Commit(ctx, v1.Descriptor{Digest: digest.FromString("other"), Size: -1}); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("commit with a wrong digest: %v", err)
	}
	// sha512: the resumed session has no running hash of it; the file is
	// hashed whole.
	want := digest.SHA512.FromBytes(data)
	desc, err := r.Commit(ctx, v1.Descriptor{Digest: want, Size: int64(len(data))})
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	if desc.Size != int64(len(data)) {
		t.Fatalf("committed size %d", desc.Size)
	}
	got, err := os.ReadFile(filepath.Join(dir, "blobs", "sha512", want.Encoded()))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob file: %d bytes, %v", len(got), err)
	}
	if _, err := s2.ResumeUpload(ctx, id, time.Hour); !errors.Is(err, store.ErrNotFound) {
		// The lease lives on (it holds the blob), the staging file is gone.
		t.Fatalf("resume a committed upload: %v, want ErrNotFound", err)
	}
	// The blob stays in the session's lease: GC keeps it, unreferenced.
	res, err := s2.GC(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Freed) != 0 || res.Leased != 1 {
		t.Fatalf("GC after the commit: freed %v, leased %d; want the blob kept by the lease", res.Freed, res.Leased)
	}
}

// An upload nobody finishes expires with its lease; GC then removes its
// staging file, and only then.
func TestUploadAbandonedIsReclaimed(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	o := &store.Options{}
	store.SetTestClock(o, clock)
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, err := s.NewUpload(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Write(ctx, 0, strings.NewReader("half a layer")); err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(dir, ".ocistore", "ingest", "uploads", u.ID)
	res, err := s.GC(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploads != 0 {
		t.Fatalf("GC removed %d live upload(s)", res.Uploads)
	}
	if _, err := os.Stat(staged); err != nil {
		t.Fatalf("live upload's file: %v", err)
	}
	// A session lives at least its TTL after its last write, at most twice.
	mu.Lock()
	now = now.Add(59 * time.Second)
	mu.Unlock()
	res, err = s.GC(ctx, store.GCOptions{})
	if err != nil || res.Uploads != 0 {
		t.Fatalf("GC within the TTL of the last write removed %d upload(s) (%v)", res.Uploads, err)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, err := u.Write(ctx, u.Size(), strings.NewReader("more")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("write to an expired upload: %v, want ErrNotFound", err)
	}
	res, err = s.GC(ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploads != 1 || res.UploadBytes != int64(len("half a layer")) {
		t.Fatalf("GC of an expired upload: %d uploads, %d bytes", res.Uploads, res.UploadBytes)
	}
	if _, err := os.Stat(staged); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("expired upload's file after GC: %v", err)
	}
	if _, err := s.ResumeUpload(ctx, u.ID, time.Minute); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("resume an expired upload: %v", err)
	}
}

// Cancel removes what the session staged and ends its lease.
func TestUploadCancel(t *testing.T) {
	l := newLib(t)
	u, err := l.s.NewUpload(l.ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Write(l.ctx, 0, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := u.Cancel(l.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(l.dir, ".ocistore", "ingest", "uploads", u.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cancelled upload's file: %v", err)
	}
	ls, err := l.s.Leases(l.ctx)
	if err != nil || len(ls) != 0 {
		t.Fatalf("leases after cancel: %v, %v", ls, err)
	}
	if _, err := l.s.ResumeUpload(l.ctx, "../../index.json", 0); !errors.Is(err, store.ErrInvalidArgument) {
		t.Fatalf("resume with a path for an id: %v", err)
	}
}

// DeleteBlob removes an unreferenced blob, even one a lease holds (the
// client deletes what it pushed), and refuses a referenced one.
func TestDeleteBlob(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 1)
	l.tag(img, "app:1")
	kids := l.graph(img)
	if _, err := l.s.DeleteBlob(l.ctx, kids[len(kids)-1]); !errors.Is(err, store.ErrReferenced) {
		t.Fatalf("delete a referenced blob: %v, want ErrReferenced", err)
	}
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	loose := []byte("loose blob")
	d := digest.FromBytes(loose)
	if err := l.s.PutBlob(lease.Context(l.ctx), v1.Descriptor{Digest: d, Size: int64(len(loose))}, bytes.NewReader(loose)); err != nil {
		t.Fatal(err)
	}
	n, err := l.s.DeleteBlob(l.ctx, d)
	if err != nil || n != int64(len(loose)) {
		t.Fatalf("delete a leased blob: %d, %v", n, err)
	}
	l.wantBlobs(false, d)
	if _, err := l.s.DeleteBlob(l.ctx, d); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete it again: %v, want ErrNotFound", err)
	}
	// Put again under the same lease, it is protected again (the handle
	// does not trust its memory of the lease).
	if err := l.s.PutBlob(lease.Context(l.ctx), v1.Descriptor{Digest: d, Size: int64(len(loose))}, bytes.NewReader(loose)); err != nil {
		t.Fatal(err)
	}
	res, err := l.s.GC(l.ctx, store.GCOptions{})
	if err != nil || len(res.Freed) != 0 {
		t.Fatalf("GC freed %v (%v): the lease holds it again", res, err)
	}
	l.clean()
}

// PutManifestWith names a manifest by sha512 and keeps an untagged one.
func TestPutManifestSHA512Untagged(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 1)
	content, err := l.s.FetchManifest(l.ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := l.s.PutManifestWith(l.ctx, content, store.ManifestOptions{MediaType: img.MediaType, Algorithm: digest.SHA512, Untagged: true})
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != digest.SHA512.FromBytes(content) {
		t.Fatalf("digest %s", desc.Digest)
	}
	got, err := l.s.Resolve(l.ctx, desc.Digest.String())
	if err != nil || got.Digest != desc.Digest {
		t.Fatalf("resolve by sha512: %v, %v", got, err)
	}
	imgs, err := l.s.List(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, im := range imgs {
		found = found || im.Descriptor.Digest == desc.Digest && im.Name == ""
	}
	if !found {
		t.Fatalf("no untagged entry for %s in %v", desc.Digest, imgs)
	}
	if _, err := l.s.GC(l.ctx, store.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	l.wantBlobs(true, desc.Digest)
	l.clean()
}

// A prune with Linger unlinks nothing: what it frees stays in a lease
// until Linger has passed, so that a pull that read a pruned manifest can
// fetch its blobs; GC frees them after.
func TestPruneLinger(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	now := time.Now()
	var mu sync.Mutex
	o := &store.Options{}
	store.SetTestClock(o, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := &lib{t: t, ctx: ctx, dir: dir, s: s, b: testutil.NewBuilder(t, s, 7)}
	old := l.image(nil, 2)
	l.tag(old, "app:old")
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	l.tag(l.image(nil, 2), "app:new")
	gone := l.graph(old)
	res, err := s.Prune(ctx, store.Policy{KeepLast: 1, Linger: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || len(res.Freed) != 0 || len(res.Lingering) != len(gone) {
		t.Fatalf("prune: removed %d, freed %d, lingering %d; want 1, 0, %d", len(res.Removed), len(res.Freed), len(res.Lingering), len(gone))
	}
	if _, err := s.Resolve(ctx, "app:old"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pruned tag: %v", err)
	}
	l.wantBlobs(true, gone...)
	// A pull that read the manifest before the prune gets it and its blobs.
	if _, err := s.FetchManifest(ctx, old); err != nil {
		t.Fatalf("fetch the pruned manifest: %v", err)
	}
	gc, err := s.GC(ctx, store.GCOptions{})
	if err != nil || len(gc.Freed) != 0 {
		t.Fatalf("GC while lingering: %+v, %v", gc, err)
	}
	mu.Lock()
	now = now.Add(11 * time.Minute)
	mu.Unlock()
	gc, err = s.GC(ctx, store.GCOptions{})
	if err != nil || len(gc.Freed) != len(gone) {
		t.Fatalf("GC after Linger freed %d (%v), want %d", len(gc.Freed), err, len(gone))
	}
	l.wantBlobs(false, gone...)
	l.clean()
}

// A prune with Limit removes at most that many images per transaction and
// says when there is more; run again, it goes on where it stopped, in the
// order the rules choose (least recently used first for a budget).
func TestPruneLimit(t *testing.T) {
	l := newLib(t)
	var imgs []v1.Descriptor
	for i := range 5 {
		d := l.image(nil, 1)
		l.tag(d, "app:"+strconv.Itoa(i))
		imgs = append(imgs, d)
		time.Sleep(5 * time.Millisecond) // distinct first-seen times: the LRU order
	}
	var sizes []int64
	for _, d := range imgs {
		_, n, err := l.s.Size(l.ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n)
	}
	budget := sizes[4] // room for the newest only
	var order []string
	for round := 0; ; round++ {
		res, err := l.s.Prune(l.ctx, store.Policy{MaxSize: budget, Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Removed) > 2 {
			t.Fatalf("round %d removed %d images, limit 2", round, len(res.Removed))
		}
		for _, r := range res.Removed {
			order = append(order, r.Name)
		}
		if !res.More {
			if res.OverBudget {
				t.Errorf("round %d: over budget without more to remove", round)
			}
			break
		}
		if round > 5 {
			t.Fatal("the prune never finished")
		}
	}
	if got, want := strings.Join(order, " "), "app:0 app:1 app:2 app:3"; got != want {
		t.Errorf("removed %s, want %s (least recently used first, two at a time)", got, want)
	}
	if err := (&store.Policy{KeepLast: 1, Limit: -1}).Validate(); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("Limit -1: %v, want ErrInvalidArgument", err)
	}
	l.clean()
}
