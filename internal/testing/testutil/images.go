package testutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// Docker schema 2 media types of configs and layers.
const (
	MediaTypeDockerConfig = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer  = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// Bytes returns n random bytes from the builder's generator.
func (b *Builder) Bytes(n int) []byte {
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(b.Rng.Uint32())
	}
	return buf
}

// RandomAs stores n random bytes with media type mt.
func (b *Builder) RandomAs(n int, mt string) v1.Descriptor {
	b.T.Helper()
	return b.Put(b.Bytes(n), mt)
}

// putJSON marshals v and stores it with media type mt.
func (b *Builder) putJSON(v any, mt string) v1.Descriptor {
	b.T.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		b.T.Fatalf("marshal: %v", err)
	}
	return b.Put(raw, mt)
}

// DockerManifest stores a Docker schema 2 manifest with a fresh config, the
// given layers and own new random layers.
func (b *Builder) DockerManifest(layers []v1.Descriptor, own int) v1.Descriptor {
	b.T.Helper()
	cfg := b.RandomAs(32, MediaTypeDockerConfig)
	ls := append([]v1.Descriptor(nil), layers...)
	for i := 0; i < own; i++ {
		ls = append(ls, b.RandomAs(64+b.Rng.IntN(256), MediaTypeDockerLayer))
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: layout.MediaTypeDockerManifest, Config: cfg, Layers: ls}
	return b.putJSON(m, layout.MediaTypeDockerManifest)
}

// DockerList stores a Docker manifest list over manifests.
func (b *Builder) DockerList(manifests ...v1.Descriptor) v1.Descriptor {
	b.T.Helper()
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: layout.MediaTypeDockerManifestList, Manifests: manifests}
	return b.putJSON(ix, layout.MediaTypeDockerManifestList)
}

// Artifact stores an OCI 1.1 artifact manifest: the empty config, one layer
// per media type in layerTypes (random content), and subject when not nil.
func (b *Builder) Artifact(artifactType string, subject *v1.Descriptor, layerTypes ...string) v1.Descriptor {
	b.T.Helper()
	empty := b.Put([]byte("{}"), v1.MediaTypeEmptyJSON)
	var ls []v1.Descriptor
	for _, mt := range layerTypes {
		ls = append(ls, b.RandomAs(16+b.Rng.IntN(64), mt))
	}
	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		ArtifactType: artifactType, Config: empty, Layers: ls, Subject: subject,
	}
	return b.putJSON(m, v1.MediaTypeImageManifest)
}

// IndexOf stores an index with media type mt (an OCI index or a Docker list)
// whose manifests are the given descriptors, whatever their media types.
func (b *Builder) IndexOf(mt string, manifests ...v1.Descriptor) v1.Descriptor {
	b.T.Helper()
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: mt, Manifests: manifests}
	return b.putJSON(ix, mt)
}

// Graph returns every blob digest reachable from d (d included), read from
// the files of the layout in dir. Unknown media types are leaves. It fails
// the test when a manifest cannot be read.
func Graph(t testing.TB, dir string, d v1.Descriptor) []digest.Digest {
	t.Helper()
	seen := map[digest.Digest]bool{}
	var walk func(d v1.Descriptor)
	walk = func(d v1.Descriptor) {
		if seen[d.Digest] {
			return
		}
		seen[d.Digest] = true
		if !layout.IsManifest(d.MediaType) {
			return
		}
		raw, err := os.ReadFile(BlobFile(dir, d.Digest))
		if err != nil {
			t.Fatalf("graph of %s: %v", d.Digest, err)
		}
		kids, err := layout.ParseChildren(d.Digest.String(), raw)
		if err != nil {
			t.Fatalf("graph of %s: %v", d.Digest, err)
		}
		for _, k := range kids.Refs {
			walk(k)
		}
	}
	walk(d)
	out := make([]digest.Digest, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// BlobFile is the path of d's blob in the layout in dir.
func BlobFile(dir string, d digest.Digest) string {
	return filepath.Join(dir, filepath.FromSlash(layout.BlobPath(d)))
}

// HasBlob reports whether d's blob file exists in the layout in dir.
func HasBlob(t testing.TB, dir string, d digest.Digest) bool {
	t.Helper()
	_, err := os.Lstat(BlobFile(dir, d))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// Snapshot maps every regular file under dir (relative, slash-separated) to
// the sha256 of its content. Files under skip prefixes are left out.
func Snapshot(t testing.TB, dir string, skip ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := WalkRel(dir, func(rel, p string, d fs.DirEntry) error {
		for _, s := range skip {
			if strings.HasPrefix(rel, s) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		if !d.Type().IsRegular() || rel == fsio.ReserveFile {
			return nil // the space reserve holds no data
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		out[rel] = hex.EncodeToString(h[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// AssertNothingRemoved fails the test when a file of before is missing from
// after or has other content.
func AssertNothingRemoved(t testing.TB, before, after map[string]string) {
	t.Helper()
	for p, h := range before {
		switch ah, ok := after[p]; {
		case !ok:
			t.Errorf("file %s was removed", p)
		case ah != h:
			t.Errorf("file %s was changed", p)
		}
	}
}

// Refcounts reads the stored reference counts of the layout in dir from its
// journal (shared lock; no recovery runs).
func Refcounts(t testing.TB, dir string) map[digest.Digest]uint64 {
	t.Helper()
	db, err := journal.Open(filepath.Join(dir, protocol.JournalFile), journal.Options{ReadOnly: true, LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("open journal: %v", err)
	}
	defer db.Close()
	out := map[digest.Digest]uint64{}
	err = db.View(func(tx *journal.Tx) error {
		return tx.ForEachRef(func(d digest.Digest, r journal.Ref) error {
			out[d] = r.Count
			return nil
		})
	})
	if err != nil {
		t.Fatalf("read refcounts: %v", err)
	}
	return out
}

// Problems runs the store's quick fsck and returns its findings, leaving out
// the kinds in ignore.
func Problems(t testing.TB, s *store.Store, ignore ...string) []recovery.Problem {
	t.Helper()
	rep, err := s.Check(context.Background(), nil)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	var out []recovery.Problem
	for _, p := range rep.Problems {
		skip := false
		for _, k := range ignore {
			if p.Kind == k {
				skip = true
			}
		}
		if !skip {
			out = append(out, p)
		}
	}
	return out
}

// RawImage adds an OCI image (config cfg, then layers) to blobs, the way
// another tool writes one, and returns the manifest's descriptor.
func RawImage(blobs map[digest.Digest][]byte, cfg []byte, layers ...[]byte) v1.Descriptor {
	add := func(b []byte, mt string) v1.Descriptor {
		d := Blob(b, mt)
		blobs[d.Digest] = b
		return d
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: add(cfg, v1.MediaTypeImageConfig)}
	for _, l := range layers {
		m.Layers = append(m.Layers, add(l, v1.MediaTypeImageLayerGzip))
	}
	raw, _ := json.Marshal(m)
	return add(raw, v1.MediaTypeImageManifest)
}
