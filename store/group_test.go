package store_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// freedList is the digests a result says it freed.
func freedList(res *store.Result) []digest.Digest {
	if res == nil {
		return nil
	}
	var out []digest.Digest
	for _, f := range res.Freed {
		out = append(out, digest.Digest(f.Digest))
	}
	slices.Sort(out)
	return out
}

// TestGroupCommitOneTransaction: deletes queued behind a writer are
// committed as ONE transaction (one record id), each caller gets exactly the
// blobs its own image used, and the layout is consistent.
func TestGroupCommitOneTransaction(t *testing.T) {
	l := newLib(t)
	base := []v1.Descriptor{l.b.Random(300), l.b.Random(400)}
	const n = 12
	own := make([][]digest.Digest, n)
	for i := range n {
		img := l.image(base, 2)
		l.tag(img, fmt.Sprintf("img%d", i))
		own[i] = libMinus(l.graph(img), digests(base...))
		slices.Sort(own[i])
	}
	l.tag(l.image(base, 1), "keeper") // keeps the base layers alive

	results := make([]*store.Result, n)
	calls := make([]func() (*store.Result, error), n)
	for i := range n {
		calls[i] = func() (*store.Result, error) {
			res, err := l.s.Delete(l.ctx, fmt.Sprintf("img%d", i))
			results[i] = res
			return res, err
		}
	}
	errs, err := groupCommit(l.s, calls)
	if err != nil {
		t.Fatal(err)
	}
	txns := map[uint64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("delete img%d: %v", i, errs[i])
		}
		txns[results[i].Txn] = true
		if got := freedList(results[i]); !slices.Equal(got, own[i]) {
			t.Errorf("img%d freed %v, want its own blobs %v", i, got, own[i])
		}
		l.wantBlobs(false, own[i]...)
	}
	if len(txns) != 1 {
		t.Errorf("%d deletes committed in %d transactions %v, want one", n, len(txns), txns)
	}
	l.wantBlobs(true, digests(base...)...)
	if got := l.index(); len(got) != 1 {
		t.Errorf("index.json holds %v, want keeper alone", got)
	}
	l.clean()
}

// TestGroupCommitOrderAndShared: the changes of a group apply in the order
// they were queued, each seeing the ones before; a manifest whose two tags
// are deleted by two members is freed once, reported by the member whose
// change freed it; a member whose plan fails changes nothing and the others
// commit.
func TestGroupCommitOrderAndShared(t *testing.T) {
	l := newLib(t)
	m := l.image(nil, 2)
	l.tag(m, "a", "b")
	want := l.graph(m)
	slices.Sort(want)
	other := l.image(nil, 1)
	l.tag(other, "other")

	var resA, resB *store.Result
	errs, err := groupCommit(l.s, []func() (*store.Result, error){
		func() (*store.Result, error) { return nil, l.s.Tag(l.ctx, other, "other2") },
		func() (*store.Result, error) { return nil, l.s.Untag(l.ctx, "other") }, // sees other2: the entry goes
		func() (*store.Result, error) { r, err := l.s.Delete(l.ctx, "a"); resA = r; return r, err },
		func() (*store.Result, error) { return l.s.Delete(l.ctx, "no-such") },
		func() (*store.Result, error) { r, err := l.s.Delete(l.ctx, "b"); resB = r; return r, err },
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range errs {
		if i == 3 {
			if !errors.Is(e, store.ErrNotFound) {
				t.Errorf("delete of a missing tag in a group: %v, want ErrNotFound", e)
			}
			continue
		}
		if e != nil {
			t.Errorf("change %d: %v", i, e)
		}
	}
	if got := freedList(resA); len(got) != 0 {
		t.Errorf("delete a (b still tagged then) freed %v", got)
	}
	l.wantBlobs(false, want...)
	if got := freedList(resB); !slices.Equal(got, want) {
		t.Errorf("delete b freed %v, want the image %v", got, want)
	}
	if got, want := l.index(), []string{"other2=" + other.Digest.String()}; !slices.Equal(got, want) {
		t.Errorf("index.json %v, want %v", got, want)
	}
	l.clean()
}

// TestGroupCommitSoloRetry: a member that fails while its refcounts are
// applied (a tag of a manifest whose layer is missing) rolls the group back;
// the others commit without it and it gets the error it would get alone.
func TestGroupCommitSoloRetry(t *testing.T) {
	l := newLib(t)
	keep := l.image(nil, 1)
	l.tag(keep, "keep", "gone")
	cfg := l.b.Random(50)
	missing := testutil.Blob([]byte("a layer never stored"), v1.MediaTypeImageLayerGzip)
	raw, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: cfg, Layers: []v1.Descriptor{missing}})
	if err != nil {
		t.Fatal(err)
	}
	broken := testutil.Blob(raw, v1.MediaTypeImageManifest)
	if err := l.s.PutBlob(l.ctx, broken, bytes.NewReader(raw)); err != nil { // a blob: no closure check
		t.Fatal(err)
	}
	errs, err := groupCommit(l.s, []func() (*store.Result, error){
		func() (*store.Result, error) { return nil, l.s.Tag(l.ctx, keep, "new") },
		func() (*store.Result, error) { return nil, l.s.Tag(l.ctx, broken, "broken") },
		func() (*store.Result, error) { return nil, l.s.Untag(l.ctx, "gone") },
	})
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("the good changes failed: %v", errs)
	}
	if !errors.Is(errs[1], store.ErrMissingDependency) {
		t.Errorf("tag of a manifest whose layer is missing: %v, want ErrMissingDependency", errs[1])
	}
	if got, want := l.index(), []string{"keep=" + keep.Digest.String(), "new=" + keep.Digest.String()}; !slices.Equal(got, want) {
		t.Errorf("index.json %v, want %v", got, want)
	}
	l.cleanButOrphans()
}

// TestGroupCommitRace: goroutines tag, untag and delete at once, without a
// held writer (group commit as it happens under load), under -race; every
// call gets its own outcome and the layout ends consistent with them.
func TestGroupCommitRace(t *testing.T) {
	l := newLib(t)
	const workers, per = 8, 6
	imgs := make([]v1.Descriptor, workers)
	for w := range workers {
		imgs[w] = l.image([]v1.Descriptor{}, 1)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*per*3)
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				name := fmt.Sprintf("w%d-%d", w, i)
				if err := l.s.Tag(l.ctx, imgs[w], name, name+"-x"); err != nil {
					errs <- fmt.Errorf("tag %s: %w", name, err)
				}
				if err := l.s.Untag(l.ctx, name+"-x"); err != nil {
					errs <- fmt.Errorf("untag %s-x: %w", name, err)
				}
				if i%2 == 1 {
					if _, err := l.s.Delete(l.ctx, name); err != nil {
						errs <- fmt.Errorf("delete %s: %w", name, err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var want []string
	for w := range workers {
		for i := 0; i < per; i += 2 {
			want = append(want, fmt.Sprintf("w%d-%d=%s", w, i, imgs[w].Digest))
		}
	}
	got := l.index()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("index.json %v, want %v", got, want)
	}
	l.clean()
}

// TestFinishKeepsCountedBlobs: the last step of a transaction unlinks no
// blob the journal still counts, whatever its record lists (the second
// guard of a group that frees a blob and references it again; the first,
// in the plan, keeps such a blob out of the record, so no plan reaches this
// one). A record listing an image's blobs and an orphan unlinks the orphan
// alone.
func TestFinishKeepsCountedBlobs(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 2)
	l.tag(img, "a")
	orphan := l.b.Random(100)
	if err := store.FinishCrafted(l.ctx, l.s, append(l.graph(img), orphan.Digest)); err != nil {
		t.Fatal(err)
	}
	l.wantBlobs(true, l.graph(img)...)
	l.wantBlobs(false, orphan.Digest)
	if recs, err := store.PendingRecords(l.s.Dir(), 0); err != nil || len(recs) != 0 {
		t.Fatalf("pending after the record was finished: %v, %v", recs, err)
	}
	if got, want := l.index(), []string{"a=" + img.Digest.String()}; !slices.Equal(got, want) {
		t.Errorf("index.json %v, want %v", got, want)
	}
	l.clean()
}
