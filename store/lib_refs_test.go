package store_test

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

func TestTag(t *testing.T) {
	l := newLib(t)
	a, b := l.image(nil, 1), l.image(nil, 1)
	as, bs := a.Digest.String(), b.Digest.String()

	l.tag(a, "a", "latest")
	if got, want := l.index(), []string{"a=" + as, "latest=" + as}; !slices.Equal(got, want) {
		t.Fatalf("index %v, want %v", got, want)
	}
	// Tagging again with the same names changes nothing.
	before := l.indexFile()
	l.tag(a, "latest")
	if !bytes.Equal(before, l.indexFile()) {
		t.Errorf("re-tagging rewrote index.json:\n%s\n%s", before, l.indexFile())
	}
	// Move latest to b: a keeps its other tag, nothing is freed.
	l.tag(b, "latest")
	if got, want := l.index(), []string{"a=" + as, "latest=" + bs}; !slices.Equal(got, want) {
		t.Fatalf("after move: index %v, want %v", got, want)
	}
	// Move a's last tag away: a stays, where it was, as an untagged entry
	// with all its blobs.
	l.tag(b, "a")
	if got, want := l.index(), []string{"=" + as, "latest=" + bs, "a=" + bs}; !slices.Equal(got, want) {
		t.Fatalf("after moving a's last tag: index %v, want %v", got, want)
	}
	l.wantBlobs(true, l.graph(a)...)
	// Tagging the untagged manifest again replaces its untagged entry.
	l.tag(a, "back")
	if got, want := l.index(), []string{"latest=" + bs, "a=" + bs, "back=" + as}; !slices.Equal(got, want) {
		t.Fatalf("after re-tagging: index %v, want %v", got, want)
	}
	l.clean()

	// Errors change nothing.
	before = l.indexFile()
	errCases := []struct {
		name  string
		desc  v1.Descriptor
		names []string
		want  error
	}{
		{"no name", a, nil, store.ErrInvalidArgument},
		{"empty name", a, []string{""}, store.ErrInvalidArgument},
		{"control character", a, []string{"a\x00b"}, store.ErrInvalidArgument},
		{"digest-shaped name", a, []string{bs}, store.ErrInvalidArgument},
		{"layer media type", v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: a.Digest, Size: a.Size}, []string{"x"}, store.ErrInvalidArgument},
		{"malformed digest", v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: "sha256:zz", Size: 1}, []string{"x"}, store.ErrInvalidDigest},
		{"escape digest", v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: "sha256:../../../x", Size: 1}, []string{"x"}, store.ErrInvalidDigest},
		{"wrong size", v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: a.Digest, Size: a.Size + 1}, []string{"x"}, store.ErrSizeMismatch},
	}
	for _, c := range errCases {
		if err := l.s.Tag(l.ctx, c.desc, c.names...); !errors.Is(err, c.want) {
			t.Errorf("%s: Tag = %v, want %v", c.name, err, c.want)
		}
	}
	// A manifest that is not in the layout.
	ghost := libDesc([]byte(`{"schemaVersion":2}`), v1.MediaTypeImageManifest)
	if err := l.s.Tag(l.ctx, ghost, "ghost"); err == nil || !strings.Contains(err.Error(), ghost.Digest.String()) {
		t.Errorf("Tag of an absent manifest = %v", err)
	}
	if !bytes.Equal(before, l.indexFile()) {
		t.Error("a failed Tag changed index.json")
	}
	l.clean()
}

// TestTagMissingLayer: a manifest whose layer was never stored (or was
// removed) cannot be tagged; index.json and the refcounts stay as they were.
func TestTagMissingLayer(t *testing.T) {
	l := newLib(t)
	keep := l.image(nil, 1)
	l.tag(keep, "keep")
	m := l.image(nil, 2)
	g := l.graph(m)
	layer := libMinus(g, []digest.Digest{m.Digest})[1] // some non-manifest blob
	if err := os.Remove(testutil.BlobFile(l.dir, layer)); err != nil {
		t.Fatal(err)
	}
	before, refs := l.indexFile(), l.refs()
	err := l.s.Tag(l.ctx, m, "broken")
	if !errors.Is(err, store.ErrMissingDependency) {
		t.Fatalf("Tag = %v, want ErrMissingDependency", err)
	}
	if !strings.Contains(err.Error(), layer.String()) {
		t.Errorf("error %q does not name the missing blob %s", err, layer)
	}
	if !bytes.Equal(before, l.indexFile()) {
		t.Error("index.json changed")
	}
	if after := l.refs(); !mapsEqual(refs, after) {
		t.Errorf("refcounts changed: %v -> %v", refs, after)
	}
	if _, err := l.s.Resolve(l.ctx, "broken"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Resolve(broken) = %v", err)
	}
	for _, p := range testutil.Problems(t, l.s, recovery.KindOrphan) {
		t.Errorf("fsck: %s", p)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestUntag(t *testing.T) {
	l := newLib(t)
	a, b := l.image(nil, 1), l.image(nil, 1)
	as, bs := a.Digest.String(), b.Digest.String()
	l.tag(a, "a", "a2")
	l.tag(b, "b")

	// Not found, digest, empty: nothing changes.
	before, refs := l.indexFile(), l.refs()
	for _, c := range []struct {
		names []string
		want  error
	}{
		{[]string{"nope"}, store.ErrNotFound},
		{[]string{"a", "nope"}, store.ErrNotFound},
		{[]string{"nope", "a"}, store.ErrNotFound},
		{[]string{as}, store.ErrInvalidArgument},
		{nil, store.ErrInvalidArgument},
	} {
		if err := l.s.Untag(l.ctx, c.names...); !errors.Is(err, c.want) {
			t.Errorf("Untag(%v) = %v, want %v", c.names, err, c.want)
		}
	}
	if !bytes.Equal(before, l.indexFile()) {
		t.Fatal("a failed Untag changed index.json")
	}
	if !mapsEqual(refs, l.refs()) {
		t.Fatal("a failed Untag changed refcounts")
	}

	// One of two tags: the other still holds the manifest.
	if err := l.s.Untag(l.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got, want := l.index(), []string{"a2=" + as, "b=" + bs}; !slices.Equal(got, want) {
		t.Fatalf("index %v, want %v", got, want)
	}
	// The last tag of each, in one call: both stay as untagged entries, no blob is freed.
	if err := l.s.Untag(l.ctx, "a2", "b"); err != nil {
		t.Fatal(err)
	}
	if got, want := l.index(), []string{"=" + as, "=" + bs}; !slices.Equal(got, want) {
		t.Fatalf("index %v, want %v", got, want)
	}
	ag := l.graph(a)
	l.wantBlobs(true, ag...)
	l.wantBlobs(true, l.graph(b)...)
	l.clean()
	// Untagged entries are deleted by digest.
	l.del(as)
	l.wantBlobs(false, ag...)
	l.clean()
}

func TestResolve(t *testing.T) {
	l := newLib(t)
	a, b := l.image(nil, 1), l.image(nil, 1)
	l.tag(a, "a")
	l.tag(b, "b", "b2")
	if err := l.s.Untag(l.ctx, "a"); err != nil { // a: untagged entry
		t.Fatal(err)
	}
	cases := []struct {
		ref  string
		want digest.Digest
		err  error
	}{
		{"b", b.Digest, nil},
		{"b2", b.Digest, nil},
		{b.Digest.String(), b.Digest, nil},
		{a.Digest.String(), a.Digest, nil},
		{"a", "", store.ErrNotFound},
		{"B", "", store.ErrNotFound},
		{digest.FromString("x").String(), "", store.ErrNotFound},
		{"", "", store.ErrInvalidArgument},
		{"sha256:abc", "", store.ErrInvalidDigest},
		{"sha256:../../x", "", store.ErrInvalidDigest},
	}
	for _, c := range cases {
		d, err := l.s.Resolve(l.ctx, c.ref)
		if !errors.Is(err, c.err) || d.Digest != c.want {
			t.Errorf("Resolve(%q) = %s, %v; want %s, %v", c.ref, d.Digest, err, c.want, c.err)
		}
		if err == nil && (d.Size == 0 || d.MediaType != v1.MediaTypeImageManifest) {
			t.Errorf("Resolve(%q) descriptor %+v", c.ref, d)
		}
	}
}

func TestList(t *testing.T) {
	l := newLib(t)
	if got := l.index(); len(got) != 0 {
		t.Fatalf("empty store lists %v", got)
	}
	a, b := l.image(nil, 1), l.image(nil, 1)
	l.tag(a, "x")
	l.tag(b, "y", "z")
	l.tag(b, "x") // a loses its only tag: its entry stays where it was, untagged
	imgs, err := l.s.List(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name string
		d    digest.Digest
	}{{"", a.Digest}, {"y", b.Digest}, {"z", b.Digest}, {"x", b.Digest}}
	if len(imgs) != len(want) {
		t.Fatalf("List = %v", imgs)
	}
	for i, w := range want {
		if imgs[i].Name != w.name || imgs[i].Descriptor.Digest != w.d {
			t.Errorf("List[%d] = %s %s, want %s %s", i, imgs[i].Name, imgs[i].Descriptor.Digest, w.name, w.d)
		}
		if imgs[i].Descriptor.Size <= 0 || imgs[i].Descriptor.MediaType != v1.MediaTypeImageManifest {
			t.Errorf("List[%d] descriptor %+v", i, imgs[i].Descriptor)
		}
	}
}

func TestDelete(t *testing.T) {
	type world struct {
		l          *lib
		base       []v1.Descriptor
		a, b, c, d v1.Descriptor
	}
	setup := func(t *testing.T) *world {
		l := newLib(t)
		w := &world{l: l, base: []v1.Descriptor{l.b.Random(100), l.b.Random(200)}}
		w.a = l.image(w.base, 2)
		w.b = l.image(w.base, 1)
		w.c = l.image(nil, 1)
		w.d = l.image(w.base[:1], 1)
		l.tag(w.a, "a", "a-alias")
		l.tag(w.b, "b")
		l.tag(w.c, "c")
		l.tag(w.d, "d")
		return w
	}
	own := func(w *world, m v1.Descriptor) []digest.Digest {
		return libMinus(w.l.graph(m), []digest.Digest{w.base[0].Digest, w.base[1].Digest})
	}

	t.Run("one ref", func(t *testing.T) {
		w := setup(t)
		cg := own(w, w.c)
		res := w.l.del("c")
		if len(res.Freed) != len(cg) || res.Txn == 0 {
			t.Errorf("result %+v, want %d blobs freed", res, len(cg))
		}
		var sum int64
		for _, f := range res.Freed {
			sum += f.Size
			if !slices.Contains(cg, digest.Digest(f.Digest)) {
				t.Errorf("freed %s, not c's", f.Digest)
			}
		}
		if sum != res.BytesFreed {
			t.Errorf("BytesFreed %d, sizes sum to %d", res.BytesFreed, sum)
		}
		w.l.wantBlobs(false, cg...)
		if _, err := w.l.s.Resolve(w.l.ctx, "c"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Resolve(c) after delete = %v", err)
		}
		w.l.clean()
	})
	t.Run("many refs in one transaction", func(t *testing.T) {
		w := setup(t)
		all := append(own(w, w.b), own(w, w.c)...)
		all = append(all, own(w, w.d)...)
		res := w.l.del("b", "c", "d")
		if len(res.Freed) != len(all) {
			t.Errorf("freed %d blobs, want %d", len(res.Freed), len(all))
		}
		w.l.wantBlobs(false, all...)
		w.l.wantBlobs(true, w.l.graph(w.a)...)
		if got := w.l.index(); len(got) != 2 {
			t.Errorf("index %v", got)
		}
		if pend, err := store.PendingRecords(w.l.s.Dir(), 0); err != nil || len(pend) != 0 {
			t.Errorf("pending records %v, %v", pend, err)
		}
		w.l.clean()
	})
	t.Run("missing ref changes nothing", func(t *testing.T) {
		w := setup(t)
		before, refs := w.l.indexFile(), w.l.refs()
		files := testutil.Snapshot(t, w.l.dir, ".ocistore")
		for _, refs := range [][]string{
			{"b", "nope"}, {"nope", "b"}, {"b", "c", digest.FromString("absent").String()}, {"b", ""}, {"b", "sha256:1234"},
		} {
			_, err := w.l.s.Delete(w.l.ctx, refs...)
			if err == nil {
				t.Fatalf("Delete(%v) succeeded", refs)
			}
			if !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrInvalidArgument) && !errors.Is(err, store.ErrInvalidDigest) {
				t.Errorf("Delete(%v) = %v", refs, err)
			}
		}
		if _, err := w.l.s.Delete(w.l.ctx, "b", "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Delete(b, nope) = %v, want ErrNotFound", err)
		}
		if _, err := w.l.s.Delete(w.l.ctx); !errors.Is(err, store.ErrInvalidArgument) {
			t.Errorf("Delete() = %v, want ErrInvalidArgument", err)
		}
		if !bytes.Equal(before, w.l.indexFile()) {
			t.Error("index.json changed")
		}
		if !mapsEqual(refs, w.l.refs()) {
			t.Error("refcounts changed")
		}
		if after := testutil.Snapshot(t, w.l.dir, ".ocistore"); !mapsEqual(files, after) {
			t.Error("files changed")
		}
		w.l.clean()
	})
	t.Run("by digest removes every tag", func(t *testing.T) {
		w := setup(t)
		ag := own(w, w.a)
		res := w.l.del(w.a.Digest.String())
		if len(res.Freed) != len(ag) {
			t.Errorf("freed %d, want %d", len(res.Freed), len(ag))
		}
		for _, n := range []string{"a", "a-alias"} {
			if _, err := w.l.s.Resolve(w.l.ctx, n); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Resolve(%s) = %v", n, err)
			}
		}
		w.l.wantBlobs(false, ag...)
		w.l.wantBlobs(true, w.base[0].Digest, w.base[1].Digest)
		w.l.clean()
	})
	t.Run("one tag of two frees nothing", func(t *testing.T) {
		w := setup(t)
		res := w.l.del("a")
		if len(res.Freed) != 0 {
			t.Errorf("freed %v while a-alias holds the image", res.Freed)
		}
		w.l.wantBlobs(true, w.l.graph(w.a)...)
		w.l.clean()
	})
	t.Run("tag and digest of the same image", func(t *testing.T) {
		w := setup(t)
		ag := own(w, w.a)
		res := w.l.del("a", w.a.Digest.String(), "a-alias")
		if len(res.Freed) != len(ag) {
			t.Errorf("freed %d, want %d", len(res.Freed), len(ag))
		}
		w.l.clean()
	})
	t.Run("everything frees everything", func(t *testing.T) {
		w := setup(t)
		w.l.del("a", "a-alias", "b", "c", "d")
		for p := range testutil.Snapshot(t, w.l.dir, ".ocistore") {
			if strings.HasPrefix(p, "blobs/") {
				t.Errorf("%s left after deleting every image", p)
			}
		}
		w.l.clean()
	})
}
