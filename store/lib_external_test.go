package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
)

// libSkopeoAdd does what skopeo copy to oci:DIR:tag does: write the blobs of a
// new image raw (one layer shared with an image already there), then rewrite
// index.json with one more entry. It returns the new manifest's descriptor and
// its blobs.
func libSkopeoAdd(t *testing.T, dir, tag string, shared v1.Descriptor, inPlace bool) (v1.Descriptor, []digest.Digest) {
	t.Helper()
	blobs := map[digest.Digest][]byte{}
	put := func(b []byte, mt string) v1.Descriptor {
		d := testutil.Blob(b, mt)
		blobs[d.Digest] = b
		return d
	}
	cfg := put([]byte(`{"architecture":"arm64","os":"linux","skopeo":true}`), v1.MediaTypeImageConfig)
	own := put([]byte("a layer only skopeo's image has"), v1.MediaTypeImageLayerGzip)
	mraw, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{shared, own}})
	m := put(mraw, v1.MediaTypeImageManifest)
	for d, b := range blobs {
		if err := os.WriteFile(testutil.BlobFile(dir, d), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ixPath := filepath.Join(dir, "index.json")
	raw, err := os.ReadFile(ixPath)
	if err != nil {
		t.Fatal(err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	ix.Manifests = append(ix.Manifests, testutil.Named(m, tag))
	out, _ := json.MarshalIndent(ix, "", "   ")
	if inPlace { // O_TRUNC over the same inode, like older containers/image
		err = os.WriteFile(ixPath, out, 0o644)
	} else {
		tmp := ixPath + ".tmp"
		if err = os.WriteFile(tmp, out, 0o644); err == nil {
			err = os.Rename(tmp, ixPath)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return m, []digest.Digest{m.Digest, cfg.Digest, own.Digest, shared.Digest}
}

// TestExternalIndexChange: after the store committed, another tool adds an
// image to index.json whose blobs it wrote raw, sharing a layer with an
// image of the store. Deleting that image through the store keeps the tag
// the tool added and every blob of its image, the shared layer included.
func TestExternalIndexChange(t *testing.T) {
	for _, inPlace := range []bool{false, true} {
		name := "rename"
		if inPlace {
			name = "in-place"
		}
		t.Run(name, func(t *testing.T) {
			l := newLib(t)
			shared := l.b.Random(400)
			ours := l.image([]v1.Descriptor{shared}, 2)
			other := l.image(nil, 1)
			l.tag(ours, "ours")
			l.tag(other, "other")
			og := l.graph(ours)
			l.clean()

			m, theirs := libSkopeoAdd(t, l.dir, "by-skopeo", shared, inPlace)
			// Readers see the change.
			if d, err := l.s.Resolve(l.ctx, "by-skopeo"); err != nil || d.Digest != m.Digest {
				t.Fatalf("Resolve(by-skopeo) = %v, %v", d.Digest, err)
			}
			// The store flags the change until its next transaction recounts.
			if ext := libProblems(testutil.Problems(t, l.s), recovery.KindExternalChange); len(ext) != 1 {
				t.Errorf("fsck after the external change: %v", testutil.Problems(t, l.s))
			}

			res := l.del("ours")
			for _, f := range res.Freed {
				if slices.Contains(theirs, digest.Digest(f.Digest)) {
					t.Errorf("delete freed %s, a blob of the image another tool added", f.Digest)
				}
			}
			l.wantBlobs(true, theirs...)
			l.wantBlobs(false, libMinus(og, theirs)...)
			if d, err := l.s.Resolve(l.ctx, "by-skopeo"); err != nil || d.Digest != m.Digest {
				t.Fatalf("the tag another tool added is gone: %v, %v", d.Digest, err)
			}
			if rc := l.refs(); rc[shared.Digest] != 1 || rc[m.Digest] != 1 {
				t.Errorf("counts shared=%d theirs=%d, want 1 1", rc[shared.Digest], rc[m.Digest])
			}
			l.clean()
			// And the tool's image is a normal image of the store now.
			l.del("by-skopeo")
			l.wantBlobs(false, theirs...)
			l.wantBlobs(true, l.graph(other)...)
			l.clean()
		})
	}
}

// TestExternalRemoval: another tool removes an entry from index.json (and
// leaves its blobs). The store recounts before its next transaction and never
// unlinks what the index on disk still references.
func TestExternalRemoval(t *testing.T) {
	l := newLib(t)
	shared := l.b.Random(100)
	a, b := l.image([]v1.Descriptor{shared}, 1), l.image([]v1.Descriptor{shared}, 1)
	l.tag(a, "a")
	l.tag(b, "b")
	ag, bg := l.graph(a), l.graph(b)
	// The tool rewrites index.json with b only.
	raw, _ := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{testutil.Named(b, "b")}})
	if err := os.WriteFile(filepath.Join(l.dir, "index.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	c := l.image(nil, 1)
	l.tag(c, "c")
	l.wantBlobs(true, bg...)
	l.wantBlobs(true, ag...) // orphans now: only GC removes them
	if ps := testutil.Problems(t, l.s, recovery.KindOrphan); len(ps) != 0 {
		t.Errorf("fsck: %v", ps)
	}
	// Deleting b frees the shared layer too: only a, gone from the index,
	// still lists it. a's own blobs stay as orphans; c is untouched.
	l.del("b")
	l.wantBlobs(false, bg...)
	l.wantBlobs(true, l.graph(c)...)
	l.wantBlobs(true, libMinus(ag, digests(shared))...)
	if ps := testutil.Problems(t, l.s, recovery.KindOrphan); len(ps) != 0 {
		t.Errorf("fsck: %v", ps)
	}
}

// TestTwoHandles: two Stores on one layout stand for two processes. Writes
// through one are seen by the other, and a transaction of one keeps what the
// other added.
func TestTwoHandles(t *testing.T) {
	ctx := context.Background()
	l1 := newLib(t)
	l2 := libOpen(t, l1.dir, 2)
	shared := l1.b.Random(300)
	x := l1.image([]v1.Descriptor{shared}, 1)
	l1.tag(x, "x")

	// h2 sees h1's tag.
	if d, err := l2.s.Resolve(ctx, "x"); err != nil || d.Digest != x.Digest {
		t.Fatalf("h2 Resolve(x) = %v, %v", d.Digest, err)
	}
	// h2 adds an image sharing the layer, h1 sees it.
	y := l2.image([]v1.Descriptor{shared}, 1)
	l2.tag(y, "y")
	if got := l1.index(); !slices.Equal(got, []string{"x=" + x.Digest.String(), "y=" + y.Digest.String()}) {
		t.Fatalf("h1 List = %v", got)
	}
	// h1 adds z, h2 deletes x: z and y survive, and the shared layer.
	z := l1.image(nil, 1)
	l1.tag(z, "z")
	xg := l1.graph(x)
	l2.del("x")
	for _, l := range []*lib{l1, l2} {
		if got := l.index(); !slices.Equal(got, []string{"y=" + y.Digest.String(), "z=" + z.Digest.String()}) {
			t.Errorf("List = %v", got)
		}
	}
	l1.wantBlobs(true, l1.graph(y)...)
	l1.wantBlobs(true, l1.graph(z)...)
	l1.wantBlobs(false, libMinus(xg, digests(shared))...)
	l1.clean()
	l2.clean()
	// Alternating writes keep both consistent.
	for i := 0; i < 10; i++ {
		w, o := l1, l2
		if i%2 == 1 {
			w, o = l2, l1
		}
		m := w.image([]v1.Descriptor{shared}, 1)
		name := "alt" + string(rune('a'+i))
		w.tag(m, name)
		if d, err := o.s.Resolve(ctx, name); err != nil || d.Digest != m.Digest {
			t.Fatalf("other handle Resolve(%s) = %v, %v", name, d.Digest, err)
		}
		if i > 0 {
			o.del("alt" + string(rune('a'+i-1)))
		}
	}
	l1.clean()
	l2.clean()
	if rc := l1.refs(); rc[shared.Digest] != 2 { // y and altj
		t.Errorf("shared count %d, want 2", rc[shared.Digest])
	}
}

// TestExternalSameSizeRewrite: right after a commit, another tool rewrites
// index.json in place with content of the same size (a tag renamed). The next
// read and the next transaction must see the new content, not the cached one.
func TestExternalSameSizeRewrite(t *testing.T) {
	l := newLib(t)
	a, b := l.image(nil, 1), l.image(nil, 1)
	l.tag(b, "bb")
	l.tag(a, "keep-a")
	for i := 0; i < 20; i++ {
		from, to := "t"+string(rune('a'+i)), "u"+string(rune('a'+i))
		l.tag(a, from)
		ixPath := filepath.Join(l.dir, "index.json")
		raw, err := os.ReadFile(ixPath)
		if err != nil {
			t.Fatal(err)
		}
		edited := []byte(strings.Replace(string(raw), `"`+from+`"`, `"`+to+`"`, 1))
		if err := os.WriteFile(ixPath, edited, 0o644); err != nil {
			t.Fatal(err)
		}
		if d, err := l.s.Resolve(l.ctx, to); err != nil || d.Digest != a.Digest {
			t.Fatalf("round %d: Resolve(%s) after an in-place rewrite = %v, %v", i, to, d.Digest, err)
		}
		l.tag(b, "bb"+to) // a transaction on top of the edited index
		if d, err := l.s.Resolve(l.ctx, to); err != nil || d.Digest != a.Digest {
			t.Fatalf("round %d: the store's transaction dropped the tool's tag %s: %v", i, to, err)
		}
		l.del(to)
	}
	l.clean()
}

// TestTwoHandlesConcurrent: goroutines writing through two handles at once
// lose no update: every tag each one added and did not remove is there.
func TestTwoHandlesConcurrent(t *testing.T) {
	l1 := newLib(t)
	l2 := libOpen(t, l1.dir, 2)
	m := l1.image(nil, 1)
	l1.tag(m, "base")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		s := l1.s
		if g%2 == 1 {
			s = l2.s
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 8; i++ {
				name := fmt.Sprintf("h%d-%d", g, i)
				if err := s.Tag(l1.ctx, m, name); err != nil {
					errs <- err
					return
				}
				if i%2 == 1 {
					if err := s.Untag(l1.ctx, name); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, l := range []*lib{l1, l2} {
		got := map[string]bool{}
		for _, e := range l.index() {
			got[strings.SplitN(e, "=", 2)[0]] = true
		}
		for g := 0; g < 8; g++ {
			for i := 0; i < 8; i++ {
				name := fmt.Sprintf("h%d-%d", g, i)
				if got[name] != (i%2 == 0) {
					t.Errorf("tag %s present=%v", name, got[name])
				}
			}
		}
	}
	l1.clean()
}
