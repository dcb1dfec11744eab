package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// libPutImage stores an image (shared layers plus one own layer) with
// PutManifest and tags it, returning errors instead of failing the test, so
// that it can run on any goroutine.
func libPutImage(ctx context.Context, s *store.Store, rng *rand.Rand, shared [][]byte, tag string) error {
	put := func(b []byte, mt string) (v1.Descriptor, error) {
		d := testutil.Blob(b, mt)
		return d, s.PutBlob(ctx, d, bytes.NewReader(b))
	}
	cfg, err := put(fmt.Appendf(nil, `{"n":%d}`, rng.Uint64()), v1.MediaTypeImageConfig)
	if err != nil {
		return err
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg}
	for _, i := range rng.Perm(len(shared))[:1+rng.IntN(2)] {
		d, err := put(shared[i], v1.MediaTypeImageLayerGzip)
		if err != nil {
			return err
		}
		m.Layers = append(m.Layers, d)
	}
	own := make([]byte, 100+rng.IntN(400))
	for i := range own {
		own[i] = byte(rng.Uint32())
	}
	d, err := put(own, v1.MediaTypeImageLayerGzip)
	if err != nil {
		return err
	}
	m.Layers = append(m.Layers, d)
	raw, _ := json.Marshal(m)
	_, err = s.PutManifest(ctx, v1.MediaTypeImageManifest, raw, tag)
	return err
}

// TestConcurrentOps runs 8 goroutines mixing every operation on one Store
// (bounded by iterations, not time). Failures that races make legitimate (a
// tag deleted by another goroutine, a shared layer unlinked between PutBlob
// and the transaction that would have used it) are allowed; anything else
// fails. Afterwards the layout is consistent: fsck finds nothing but orphans
// of images never tagged, every listed tag resolves and its graph is
// complete.
func TestConcurrentOps(t *testing.T) {
	const goroutines, iterations = 8, 80
	l := newLib(t)
	ctx := l.ctx
	shared := make([][]byte, 4)
	for i := range shared {
		shared[i] = l.b.Bytes(300 + 100*i)
	}
	for i := 0; i < 4; i++ {
		if err := libPutImage(ctx, l.s, l.b.Rng, shared, fmt.Sprintf("seed%d", i)); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	counts := map[string]int{}
	var failures []string
	note := func(op string, err error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil:
			counts[op+" ok"]++
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrMissingDependency):
			counts[op+" raced"]++
		default:
			failures = append(failures, fmt.Sprintf("%s: %v", op, err))
		}
	}
	randomTag := func(rng *rand.Rand) (store.Image, bool) {
		imgs, err := l.s.List(ctx)
		note("list", err)
		var named []store.Image
		for _, im := range imgs {
			if im.Name != "" {
				named = append(named, im)
			}
		}
		if len(named) == 0 {
			return store.Image{}, false
		}
		return named[rng.IntN(len(named))], true
	}

	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			for i := 0; i < iterations; i++ {
				tag := fmt.Sprintf("g%d-%d", g, i)
				switch op := rng.IntN(10); op {
				case 0, 1, 2:
					note("put", libPutImage(ctx, l.s, rng, shared, tag))
				case 3:
					if im, ok := randomTag(rng); ok {
						note("tag", l.s.Tag(ctx, im.Descriptor, tag))
					}
				case 4:
					if im, ok := randomTag(rng); ok {
						note("untag", l.s.Untag(ctx, im.Name))
					}
				case 5, 6:
					if im, ok := randomTag(rng); ok {
						ref := im.Name
						if rng.IntN(3) == 0 {
							ref = im.Descriptor.Digest.String()
						}
						_, err := l.s.Delete(ctx, ref)
						note("delete", err)
					}
				case 7:
					if im, ok := randomTag(rng); ok {
						_, err := l.s.Resolve(ctx, im.Name)
						note("resolve", err)
					}
				case 8:
					if im, ok := randomTag(rng); ok {
						b, err := libFetchAll(ctx, l.s, im.Descriptor)
						if err == nil && digest.FromBytes(b) != im.Descriptor.Digest {
							err = fmt.Errorf("fetched %s: wrong content", im.Descriptor.Digest)
						}
						note("fetch", err)
					}
				case 9:
					_, err := l.s.Exists(ctx, v1.Descriptor{Digest: digest.FromBytes(shared[rng.IntN(len(shared))]), Size: 1})
					note("exists", err)
					_, err = l.s.List(ctx)
					note("list", err)
				}
			}
		}()
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	t.Logf("operations: %v", counts)
	if counts["put ok"] == 0 || counts["delete ok"] == 0 || counts["tag ok"] == 0 {
		t.Errorf("the mix did not exercise writes: %v", counts)
	}

	for _, p := range testutil.Problems(t, l.s, recovery.KindOrphan) {
		t.Errorf("fsck: %s", p)
	}
	imgs, err := l.s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range imgs {
		if im.Name == "" {
			continue
		}
		d, err := l.s.Resolve(ctx, im.Name)
		if err != nil || d.Digest != im.Descriptor.Digest {
			t.Errorf("Resolve(%s) = %v, %v", im.Name, d.Digest, err)
			continue
		}
		libCompleteGraph(t, l, d)
	}
	// A reopened store agrees: nothing pending, nothing to recover.
	l.s.Close()
	l2 := libOpen(t, l.dir, 9)
	if acts, err := l2.s.Recover(ctx); err != nil || len(acts) != 0 {
		t.Errorf("recovery after the run: %v, %v", acts, err)
	}
	for _, p := range testutil.Problems(t, l2.s, recovery.KindOrphan) {
		t.Errorf("fsck after reopen: %s", p)
	}
}

// libCompleteGraph fails unless every blob of d's graph is present, with the
// size and digest its descriptor says.
func libCompleteGraph(t *testing.T, l *lib, d v1.Descriptor) {
	t.Helper()
	var walk func(d v1.Descriptor)
	walk = func(d v1.Descriptor) {
		b, err := os.ReadFile(testutil.BlobFile(l.dir, d.Digest))
		if err != nil {
			t.Errorf("graph: %v", err)
			return
		}
		if int64(len(b)) != d.Size || d.Digest.Algorithm().FromBytes(b) != d.Digest {
			t.Errorf("graph: blob %s is not what its descriptor says", d.Digest)
			return
		}
		if !layout.IsManifest(d.MediaType) {
			return
		}
		kids, err := layout.ParseChildren(d.Digest.String(), b)
		if err != nil {
			t.Errorf("graph: %v", err)
			return
		}
		for _, k := range kids.Refs {
			walk(k)
		}
	}
	walk(d)
}
