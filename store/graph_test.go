package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// libVisit is one call of a WalkFunc: "digest@depth".
func libVisit(d v1.Descriptor, depth int) string { return fmt.Sprintf("%s@%d", d.Digest, depth) }

// walk walks root and returns the nodes met, in order, and Walk's error.
func (l *lib) walk(root v1.Descriptor) ([]store.GraphNode, error) {
	l.t.Helper()
	var nodes []store.GraphNode
	err := l.s.Walk(l.ctx, root, func(n store.GraphNode) error {
		nodes = append(nodes, n)
		return nil
	})
	return nodes, err
}

func libVisits(nodes []store.GraphNode) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = libVisit(n.Descriptor, n.Depth)
	}
	return out
}

// manifestOf returns the config and layers of an image manifest, from disk.
func (l *lib) manifestOf(d v1.Descriptor) v1.Manifest {
	l.t.Helper()
	var m v1.Manifest
	b, err := libFetchAll(l.ctx, l.s, d)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		l.t.Fatal(err)
	}
	return m
}

// TestWalkIndexSharedLayers: an index of an index of two platform manifests
// that share a layer, plus one of them again: every blob is visited once, at
// its first reference, depth first in document order, with the descriptor
// (platform included) of that reference; Size counts each blob once.
func TestWalkIndexSharedLayers(t *testing.T) {
	l := newLib(t)
	base := l.b.Random(3000)
	m1, m2 := l.image([]v1.Descriptor{base}, 1), l.image([]v1.Descriptor{base}, 1)
	m1.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	m2.Platform = &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	ix := l.b.Index(m1, m2)
	outer := l.b.Index(ix, m1)
	l.tag(outer, "outer")
	mm1, mm2 := l.manifestOf(m1), l.manifestOf(m2)

	nodes, err := l.walk(outer)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		libVisit(outer, 0), libVisit(ix, 1),
		libVisit(m1, 2), libVisit(mm1.Config, 3), libVisit(base, 3), libVisit(mm1.Layers[1], 3),
		libVisit(m2, 2), libVisit(mm2.Config, 3), libVisit(mm2.Layers[1], 3), // base: visited already
	}
	if got := libVisits(nodes); !slices.Equal(got, want) {
		t.Fatalf("walk visits\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := digests(nodes[1].Children...); !slices.Equal(got, digests(m1, m2)) {
		t.Errorf("children of the inner index %v, want %v", got, digests(m1, m2))
	}
	if got := digests(nodes[0].Children...); !slices.Equal(got, digests(ix, m1)) {
		t.Errorf("children of the outer index %v, want %v", got, digests(ix, m1))
	}
	if p := nodes[6].Descriptor.Platform; p == nil || p.Architecture != "arm64" || p.Variant != "v8" {
		t.Errorf("m2 visited with platform %+v: want the index's descriptor", p)
	}
	if got := digests(nodes[2].Children...); !slices.Equal(got, digests(append([]v1.Descriptor{mm1.Config}, mm1.Layers...)...)) {
		t.Errorf("children of m1 %v: want config then layers", got)
	}
	for _, n := range nodes {
		if n.Depth == 3 && n.Children != nil {
			t.Errorf("leaf %s has children %v", n.Descriptor.Digest, n.Children)
		}
	}

	// Size: the distinct blobs, each once.
	var wantBytes int64
	seen := map[digest.Digest]bool{}
	for _, d := range []v1.Descriptor{outer, ix, m1, m2, base, mm1.Config, mm1.Layers[1], mm2.Config, mm2.Layers[1]} {
		seen[d.Digest] = true
		wantBytes += d.Size
	}
	blobs, size, err := l.s.Size(l.ctx, outer)
	if err != nil || blobs != len(seen) || size != wantBytes || blobs != len(l.graph(outer)) {
		t.Errorf("Size(outer) = %d, %d, %v; want %d, %d", blobs, size, err, len(seen), wantBytes)
	}
	if blobs, size, err := l.s.Size(l.ctx, m1); err != nil || blobs != 4 || size != m1.Size+mm1.Config.Size+base.Size+mm1.Layers[1].Size {
		t.Errorf("Size(m1) = %d, %d, %v", blobs, size, err)
	}
	// A leaf is its own graph.
	if blobs, size, err := l.s.Size(l.ctx, base); err != nil || blobs != 1 || size != base.Size {
		t.Errorf("Size(layer) = %d, %d, %v", blobs, size, err)
	}
}

// TestWalkSkipAndStop: ErrSkipChildren prunes a node (what another reference
// reaches is still visited); any other error stops the walk and is
// returned as it is.
func TestWalkSkipAndStop(t *testing.T) {
	l := newLib(t)
	m1, m2 := l.image(nil, 1), l.image(nil, 1)
	ix := l.b.Index(m1, m2)
	outer := l.b.Index(ix, m1)
	var got []string
	err := l.s.Walk(l.ctx, outer, func(n store.GraphNode) error {
		got = append(got, libVisit(n.Descriptor, n.Depth))
		if n.Descriptor.Digest == ix.Digest || n.Depth == 1 && n.Descriptor.Digest == m1.Digest {
			return store.ErrSkipChildren
		}
		return nil
	})
	if want := []string{libVisit(outer, 0), libVisit(ix, 1), libVisit(m1, 1)}; err != nil || !slices.Equal(got, want) {
		t.Errorf("skipping: visited %v, %v; want %v", got, err, want)
	}

	stop := errors.New("stop")
	n := 0
	err = l.s.Walk(l.ctx, outer, func(store.GraphNode) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Errorf("fn's error: Walk returned %v after %d nodes; want it as it is after 3", err, n)
	}
}

// TestWalkMissing: a manifest of the graph that is not in the layout stops
// the walk as corruption (the layout holds whole graphs), not as a
// reference not found; a missing leaf is not read, and is sized by its
// descriptor. FetchManifest says not found.
func TestWalkMissing(t *testing.T) {
	l := newLib(t)
	base := l.b.Random(100)
	m1, m2 := l.image([]v1.Descriptor{base}, 1), l.image([]v1.Descriptor{base}, 1)
	ix := l.b.Index(m1, m2)
	l.tag(ix, "ix")
	if err := os.Remove(testutil.BlobFile(l.dir, base.Digest)); err != nil {
		t.Fatal(err)
	}
	if blobs, _, err := l.s.Size(l.ctx, ix); err != nil || blobs != len(l.graph(ix)) {
		t.Errorf("a missing layer: Size = %d, %v; want %d blobs, no error", blobs, err, len(l.graph(ix)))
	}

	if err := os.Remove(testutil.BlobFile(l.dir, m2.Digest)); err != nil {
		t.Fatal(err)
	}
	nodes, err := l.walk(ix)
	if !errors.Is(err, store.ErrCorrupt) || errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), m2.Digest.String()+" is missing") {
		t.Errorf("a missing platform manifest: Walk = %v; want ErrCorrupt (not ErrNotFound) naming %s", err, m2.Digest)
	}
	if len(nodes) != 5 { // ix, m1 and its config and two layers
		t.Errorf("visited %v before the missing manifest", libVisits(nodes))
	}
	if blobs, size, err := l.s.Size(l.ctx, ix); !errors.Is(err, store.ErrCorrupt) || blobs != 0 || size != 0 {
		t.Errorf("Size = %d, %d, %v; want ErrCorrupt", blobs, size, err)
	}
	// The root itself.
	if _, err := l.walk(m2); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("a missing root: Walk = %v; want ErrCorrupt", err)
	}
	if _, err := l.s.FetchManifest(l.ctx, m2); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FetchManifest of a missing manifest = %v; want ErrNotFound", err)
	}
	if b, err := l.s.FetchManifest(l.ctx, m1); err != nil || digest.FromBytes(b) != m1.Digest {
		t.Errorf("FetchManifest(m1) = %d bytes, %v", len(b), err)
	}
}

// TestWalkTooLarge: a manifest whose descriptor is over MaxManifestSize is
// not read (ErrTooLarge); a root of an unknown media type that large is a
// leaf, as a child of an unknown media type is whatever its size.
func TestWalkTooLarge(t *testing.T) {
	l := newLib(t)
	big := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromString("big"), Size: store.MaxManifestSize + 1}
	ix := l.b.Index(l.image(nil, 1), big)
	for _, root := range []v1.Descriptor{ix, big} {
		if _, err := l.walk(root); !errors.Is(err, store.ErrTooLarge) || !strings.Contains(err.Error(), big.Digest.String()) {
			t.Errorf("Walk(%s) = %v; want ErrTooLarge naming %s", root.Digest, err, big.Digest)
		}
	}
	if _, err := l.s.FetchManifest(l.ctx, big); !errors.Is(err, store.ErrTooLarge) {
		t.Errorf("FetchManifest of an over-limit manifest = %v; want ErrTooLarge", err)
	}
	// At the limit, the blob is read (and is missing here).
	atLimit := big
	atLimit.Size = store.MaxManifestSize
	if _, err := l.walk(atLimit); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Walk of a missing manifest at the size limit = %v; want ErrCorrupt (it is read)", err)
	}

	leaf := v1.Descriptor{MediaType: "application/x-unknown", Digest: digest.FromString("leaf"), Size: store.MaxManifestSize + 1}
	if blobs, size, err := l.s.Size(l.ctx, leaf); err != nil || blobs != 1 || size != leaf.Size {
		t.Errorf("Size of a large root of an unknown media type = %d, %d, %v; want a leaf", blobs, size, err)
	}
	small := leaf
	small.Size = 10 // not in the layout: a child of an unknown type is never read
	withLeaf := l.b.Index(small)
	if blobs, _, err := l.s.Size(l.ctx, withLeaf); err != nil || blobs != 2 {
		t.Errorf("Size of an index over a blob of an unknown type = %d, %v; want 2, nil", blobs, err)
	}
}

// TestWalkDepth: a graph may nest MaxDepth deep below its root, no deeper.
func TestWalkDepth(t *testing.T) {
	l := newLib(t)
	m := l.image(nil, 1) // its layers are one level below it
	chain := func(n int) v1.Descriptor {
		d := m
		for i := 0; i < n; i++ {
			d = l.b.Index(d)
		}
		return d
	}
	ok := chain(store.MaxDepth - 1)
	nodes, err := l.walk(ok)
	if err != nil {
		t.Fatalf("a graph %d deep: %v", store.MaxDepth, err)
	}
	if last := nodes[len(nodes)-1]; last.Depth != store.MaxDepth {
		t.Errorf("deepest node at depth %d, want %d", last.Depth, store.MaxDepth)
	}
	deep := chain(store.MaxDepth)
	nodes, err = l.walk(deep)
	if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "nested deeper than") {
		t.Errorf("a graph %d deep: Walk = %v; want ErrCorrupt", store.MaxDepth+1, err)
	}
	if len(nodes) != store.MaxDepth+1 { // the indexes and m; not m's config
		t.Errorf("visited %d nodes before the depth limit, want %d", len(nodes), store.MaxDepth+1)
	}
}

// TestWalkVerifies: a manifest is read as Fetch reads it: content that is
// not its descriptor's (digest, size) stops the walk, whichever walk read
// the same digest before; a document that does not parse is corruption.
func TestWalkVerifies(t *testing.T) {
	l := newLib(t)
	m := l.image(nil, 1)
	if _, _, err := l.s.Size(l.ctx, m); err != nil {
		t.Fatal(err)
	}
	wrong := m
	wrong.Size++
	for _, root := range []v1.Descriptor{wrong, l.b.Index(wrong)} {
		if _, _, err := l.s.Size(l.ctx, root); !errors.Is(err, store.ErrSizeMismatch) {
			t.Errorf("Size over a manifest descriptor of the wrong size = %v; want ErrSizeMismatch", err)
		}
	}

	bad := l.b.Put([]byte(`{"manifests": 5`), v1.MediaTypeImageIndex)
	if _, err := l.walk(l.b.Index(bad)); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("an index that does not parse: Walk = %v; want ErrCorrupt", err)
	}

	flipped := l.image(nil, 1)
	p := testutil.BlobFile(l.dir, flipped.Digest)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[3] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.walk(l.b.Index(flipped)); !errors.Is(err, store.ErrDigestMismatch) {
		t.Errorf("a damaged manifest: Walk = %v; want ErrDigestMismatch", err)
	}
}

// TestWalkRoots: a root is read whatever its media type says (some tools
// write none), and is a leaf when it does not parse; below the root, a
// blob of an unknown media type is a leaf. The subject of a manifest is not
// a child.
func TestWalkRoots(t *testing.T) {
	l := newLib(t)
	m := l.image(nil, 2)
	untyped := m
	untyped.MediaType = ""
	if blobs, _, err := l.s.Size(l.ctx, untyped); err != nil || blobs != 4 {
		t.Errorf("Size of a manifest root without media type = %d, %v; want 4", blobs, err)
	}
	notJSON := l.b.Put([]byte("not a manifest"), "application/x-unknown")
	nodes, err := l.walk(notJSON)
	if err != nil || len(nodes) != 1 || nodes[0].Children != nil {
		t.Errorf("a root that is not a manifest: %v, %v; want one leaf", libVisits(nodes), err)
	}
	// Below the root, a manifest of an unknown media type is not read.
	hidden := m
	hidden.MediaType = "application/x-unknown"
	if blobs, _, err := l.s.Size(l.ctx, l.b.Index(hidden)); err != nil || blobs != 2 {
		t.Errorf("Size of an index over a manifest of another media type = %d, %v; want 2 (a leaf)", blobs, err)
	}
	// But a manifest of a manifest media type that does not parse is broken.
	if _, err := l.walk(l.b.Index(v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: notJSON.Digest, Size: notJSON.Size})); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("a manifest that does not parse: Walk = %v; want ErrCorrupt", err)
	}

	sig := l.b.Artifact("application/x-sig", &m, "application/x-sig-layer")
	nodes, err = l.walk(sig)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Descriptor.Digest == m.Digest || slices.Contains(digests(n.Children...), m.Digest) {
			t.Errorf("the subject was walked as a child: %v", libVisits(nodes))
		}
	}
	if len(nodes) != 3 { // the artifact manifest, its empty config, its layer
		t.Errorf("artifact graph %v", libVisits(nodes))
	}
}

// TestWalkContextAndClosed: a canceled walk stops with ctx's error; a closed
// store refuses.
func TestWalkContextAndClosed(t *testing.T) {
	l := newLib(t)
	ix := l.b.Index(l.image(nil, 1), l.image(nil, 1))
	ctx, cancel := context.WithCancel(l.ctx)
	n := 0
	err := l.s.Walk(ctx, ix, func(store.GraphNode) error {
		if n++; n == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || n != 2 {
		t.Errorf("canceled walk: %v after %d nodes; want context.Canceled after 2", err, n)
	}
	if err := l.s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.s.Size(l.ctx, ix); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Size on a closed store = %v; want ErrClosed", err)
	}
	if _, err := l.s.FetchManifest(l.ctx, ix); !errors.Is(err, store.ErrClosed) {
		t.Errorf("FetchManifest on a closed store = %v; want ErrClosed", err)
	}
}

// TestSizesFromJournal: Sizes answers from the children the journal
// recorded when it counted each manifest, reading none (a manifest whose
// bytes changed in place, size kept, is not noticed: that is fsck's), and
// gives the results Size gives by reading them. A root the journal has
// not counted is read.
func TestSizesFromJournal(t *testing.T) {
	l := newLib(t)
	base := l.b.Random(100)
	m1, m2 := l.image([]v1.Descriptor{base}, 2), l.image([]v1.Descriptor{base}, 1)
	ix := l.b.Index(m1, m2)
	l.tag(ix, "ix")
	l.tag(m1, "m1")
	roots := []v1.Descriptor{ix, m1, m2, base}
	want := make([]store.GraphSize, len(roots))
	for i, r := range roots {
		b, n, err := l.s.Size(l.ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = store.GraphSize{Blobs: b, Bytes: n}
	}
	got, err := l.s.Sizes(l.ctx, roots)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Sizes = %+v, %v; want %+v", got, err, want)
	}
	// m1's bytes replaced in place by others of the same size.
	p := testutil.BlobFile(l.dir, m1.Digest)
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Repeat([]byte{' '}, len(old)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.walk(m1); !errors.Is(err, store.ErrDigestMismatch) {
		t.Fatalf("Walk of the changed manifest = %v, want ErrDigestMismatch", err)
	}
	if got, err := l.s.Sizes(l.ctx, roots); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Sizes read a manifest the journal counted: %+v, %v; want %+v", got, err, want)
	}
	// A manifest the journal never counted is read.
	m3 := l.image([]v1.Descriptor{base}, 1)
	got, err = l.s.Sizes(l.ctx, []v1.Descriptor{m3})
	if err != nil || got[0].Err != nil || got[0].Blobs != len(l.graph(m3)) {
		t.Errorf("Sizes of an uncounted manifest = %+v, %v; want %d blobs", got, err, len(l.graph(m3)))
	}
}
