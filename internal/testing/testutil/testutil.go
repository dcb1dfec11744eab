// Package testutil builds test images in a layout through the store API, or
// as raw files the way other tools write them.
package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/store"
)

// Blob makes a descriptor for b with media type mt (sha256).
func Blob(b []byte, mt string) v1.Descriptor {
	return v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// Builder writes images into a store.
type Builder struct {
	T   testing.TB
	S   *store.Store
	Rng *rand.Rand
	Alg digest.Algorithm // sha256 when empty
}

// NewBuilder returns a builder with a fixed seed.
func NewBuilder(t testing.TB, s *store.Store, seed uint64) *Builder {
	return &Builder{T: t, S: s, Rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (b *Builder) alg() digest.Algorithm {
	if b.Alg == "" {
		return digest.SHA256
	}
	return b.Alg
}

// Put stores content with media type mt and returns its descriptor.
func (b *Builder) Put(content []byte, mt string) v1.Descriptor {
	b.T.Helper()
	d := v1.Descriptor{MediaType: mt, Digest: b.alg().FromBytes(content), Size: int64(len(content))}
	if err := b.S.PutBlob(context.Background(), d, bytes.NewReader(content)); err != nil {
		b.T.Fatalf("put blob: %v", err)
	}
	return d
}

// Random stores n random bytes as a layer.
func (b *Builder) Random(n int) v1.Descriptor {
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(b.Rng.Uint32())
	}
	return b.Put(buf, v1.MediaTypeImageLayerGzip)
}

// Manifest stores an OCI image manifest with a fresh config and the given
// layers (plus own random layers) and returns its descriptor, untagged.
func (b *Builder) Manifest(layers []v1.Descriptor, own int) v1.Descriptor {
	b.T.Helper()
	cfg := b.Put([]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z","n":%d}`, b.Rng.Uint64())), v1.MediaTypeImageConfig)
	ls := append([]v1.Descriptor(nil), layers...)
	for i := 0; i < own; i++ {
		ls = append(ls, b.Random(64+b.Rng.IntN(512)))
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: ls}
	raw, _ := json.Marshal(m)
	return b.Put(raw, v1.MediaTypeImageManifest)
}

// Index stores an image index over manifests.
func (b *Builder) Index(manifests ...v1.Descriptor) v1.Descriptor {
	b.T.Helper()
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: manifests}
	raw, _ := json.Marshal(ix)
	return b.Put(raw, v1.MediaTypeImageIndex)
}

// Tag tags d.
func (b *Builder) Tag(d v1.Descriptor, names ...string) {
	b.T.Helper()
	if err := b.S.Tag(context.Background(), d, names...); err != nil {
		b.T.Fatalf("tag: %v", err)
	}
}

// Open opens the layout in dir (creating it) with the default options,
// failing the test on an error.
func Open(t testing.TB, dir string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Close closes s, failing the test on an error.
func Close(t testing.TB, s *store.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// MustCheck fails the test unless the quick fsck finds no problem.
func MustCheck(t testing.TB, s *store.Store) {
	t.Helper()
	rep, err := s.Check(context.Background(), nil)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	for _, p := range rep.Problems {
		t.Errorf("fsck: %s", p)
	}
	if !rep.OK() {
		t.FailNow()
	}
}

// WriteBlobs writes blobs as files <alg>/<hex> under blobDir: the blobs/
// of a layout, or a shared blob directory.
func WriteBlobs(t testing.TB, blobDir string, blobs map[digest.Digest][]byte) {
	t.Helper()
	for d, c := range blobs {
		p := filepath.Join(blobDir, d.Algorithm().String(), d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// WriteRawLayout writes a layout the way another tool would (no journal):
// blobs as given and index.json with entries; it returns dir.
func WriteRawLayout(t testing.TB, dir string, blobs map[digest.Digest][]byte, entries []v1.Descriptor) string {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	WriteBlobs(t, filepath.Join(dir, layout.BlobsDir), blobs)
	must(os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755))
	must(os.WriteFile(filepath.Join(dir, layout.LayoutFile), layout.LayoutFileContent(), 0o644))
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: entries}
	if ix.Manifests == nil {
		ix.Manifests = []v1.Descriptor{}
	}
	raw, _ := json.Marshal(ix)
	must(os.WriteFile(filepath.Join(dir, layout.IndexFile), raw, 0o644))
	return dir
}

// Named returns d annotated with a tag.
func Named(d v1.Descriptor, name string) v1.Descriptor {
	d.Annotations = map[string]string{v1.AnnotationRefName: name}
	return d
}
