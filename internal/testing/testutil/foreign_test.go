package testutil

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
)

// TestForeignReadable shows that the foreign-reader check passes on a sound
// layout and fails on each way a crash could leave it unreadable to
// skopeo: index.json missing or torn, a reachable blob missing, short or
// not its digest, at any depth; a foreign layer (urls) may be absent; a
// shared blob directory is where the blobs are looked up.
func TestForeignReadable(t *testing.T) {
	blobs := map[digest.Digest][]byte{}
	img := RawImage(blobs, []byte(`{"cfg":1}`), []byte("layer one"), []byte("layer two"))
	inner := RawImage(blobs, []byte(`{"cfg":2}`), []byte("layer three"))
	idx, err := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{inner}})
	if err != nil {
		t.Fatal(err)
	}
	idxDesc := Blob(idx, v1.MediaTypeImageIndex)
	blobs[idxDesc.Digest] = idx
	foreign := Blob([]byte("a foreign layer"), "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
	foreign.URLs = []string{"https://example.com/layer"}
	cfg := Blob([]byte(`{"cfg":3}`), v1.MediaTypeImageConfig)
	blobs[cfg.Digest] = []byte(`{"cfg":3}`)
	withForeign, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{foreign}})
	if err != nil {
		t.Fatal(err)
	}
	fd := Blob(withForeign, v1.MediaTypeImageManifest)
	blobs[fd.Digest] = withForeign
	untyped := fd
	untyped.MediaType = "" // a root read by the mediaType its blob declares

	write := func(t *testing.T) string {
		return WriteRawLayout(t, t.TempDir(), blobs, []v1.Descriptor{Named(img, "img"), Named(idxDesc, "multi"), Named(untyped, "foreign")})
	}
	blobFile := func(dir string, d digest.Digest) string {
		return filepath.Join(dir, filepath.FromSlash(layout.BlobPath(d)))
	}
	if err := ForeignReadableDir(write(t), ""); err != nil {
		t.Fatalf("a sound layout: %v", err)
	}
	for _, tc := range []struct {
		name, want string
		damage     func(t *testing.T, dir string)
	}{
		{"index missing", "index.json", func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, "index.json"))) }},
		{"index torn", "does not parse", func(t *testing.T, dir string) {
			raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
			must(t, err)
			must(t, os.WriteFile(filepath.Join(dir, "index.json"), raw[:len(raw)/2], 0o644))
		}},
		{"manifest missing", img.Digest.String(), func(t *testing.T, dir string) { must(t, os.Remove(blobFile(dir, img.Digest))) }},
		{"layer missing", "layer", func(t *testing.T, dir string) {
			must(t, os.Remove(blobFile(dir, digest.FromBytes([]byte("layer two")))))
		}},
		{"nested layer missing", "cannot read", func(t *testing.T, dir string) {
			must(t, os.Remove(blobFile(dir, digest.FromBytes([]byte("layer three")))))
		}},
		{"config of an untyped root missing", cfg.Digest.String(), func(t *testing.T, dir string) { must(t, os.Remove(blobFile(dir, cfg.Digest))) }},
		{"layer short", "bytes", func(t *testing.T, dir string) {
			must(t, os.WriteFile(blobFile(dir, digest.FromBytes([]byte("layer one"))), []byte("layer"), 0o644))
		}},
		{"layer not its digest", "hashes to", func(t *testing.T, dir string) {
			must(t, os.WriteFile(blobFile(dir, digest.FromBytes([]byte("layer one"))), []byte("LAYER ONE"), 0o644))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := write(t)
			tc.damage(t, dir)
			err := ForeignReadableDir(dir, "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	t.Run("shared blob directory", func(t *testing.T) {
		dir := write(t)
		shared := filepath.Join(t.TempDir(), "shared")
		must(t, os.Rename(filepath.Join(dir, "blobs"), shared))
		if err := ForeignReadableDir(dir, shared); err != nil {
			t.Fatalf("blobs in the shared directory: %v", err)
		}
		if err := ForeignReadableDir(dir, ""); err == nil {
			t.Fatal("blobs looked up in the layout, which has none: no error")
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
