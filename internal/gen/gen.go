// Package gen writes synthetic OCI image layouts the way other tools write
// them (plain files, no journal), for the demo, tests and benchmarks: N
// images, each a manifest, a config and layers, some layers drawn from a few
// shared base sets so that images share blobs as real ones do.
package gen

import (
	_ "crypto/sha256" // registers sha256 for go-digest
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Spec describes a layout to generate.
type Spec struct {
	Images     int    // number of tagged images
	BaseSets   int    // number of shared base layer sets (default 10)
	BaseLayers int    // layers per base set (default 3)
	OwnLayers  int    // layers of each image's own (default 2)
	LayerSize  int    // bytes per layer (default 256)
	Seed       uint64 // random seed
	// Repos spreads the tags over this many repository names
	// ("repoN:tag"); 0 uses plain tags "imgN".
	Repos int
}

func (s *Spec) defaults() {
	if s.BaseSets == 0 {
		s.BaseSets = 10
	}
	if s.BaseLayers == 0 {
		s.BaseLayers = 3
	}
	if s.OwnLayers == 0 {
		s.OwnLayers = 2
	}
	if s.LayerSize == 0 {
		s.LayerSize = 256
	}
}

// Stats describes what Write wrote.
type Stats struct {
	Images int
	Blobs  int
	Bytes  int64
	Tags   []string
}

type writer struct {
	dir   string
	rng   *rand.Rand
	stats *Stats
}

func (w *writer) blob(b []byte, mt string) (v1.Descriptor, error) {
	d := digest.FromBytes(b)
	p := filepath.Join(w.dir, "blobs", "sha256", d.Encoded())
	if _, err := os.Stat(p); err != nil {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return v1.Descriptor{}, err
		}
		w.stats.Blobs++
		w.stats.Bytes += int64(len(b))
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(b))}, nil
}

func (w *writer) random(n int) (v1.Descriptor, error) {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := w.rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return w.blob(b, v1.MediaTypeImageLayerGzip)
}

// Write creates dir (which must not hold a layout) and fills it.
func Write(dir string, s Spec) (*Stats, error) {
	s.defaults()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	w := &writer{dir: dir, rng: rand.New(rand.NewPCG(s.Seed, s.Seed+1)), stats: &Stats{}}
	bases := make([][]v1.Descriptor, s.BaseSets)
	for i := range bases {
		for j := 0; j < s.BaseLayers; j++ {
			d, err := w.random(s.LayerSize)
			if err != nil {
				return nil, err
			}
			bases[i] = append(bases[i], d)
		}
	}
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}}
	for i := 0; i < s.Images; i++ {
		cfg, err := w.blob([]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:%02dZ","config":{"Labels":{"n":"%d"}},"rootfs":{"type":"layers","diff_ids":[]}}`, i%60, i)), v1.MediaTypeImageConfig)
		if err != nil {
			return nil, err
		}
		layers := append([]v1.Descriptor(nil), bases[i%s.BaseSets]...)
		for j := 0; j < s.OwnLayers; j++ {
			d, err := w.random(s.LayerSize)
			if err != nil {
				return nil, err
			}
			layers = append(layers, d)
		}
		raw, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers})
		m, err := w.blob(raw, v1.MediaTypeImageManifest)
		if err != nil {
			return nil, err
		}
		tag := fmt.Sprintf("img%d", i)
		if s.Repos > 0 {
			tag = fmt.Sprintf("example.com/repo%d:v%d", i%s.Repos, i/s.Repos)
		}
		m.Annotations = map[string]string{v1.AnnotationRefName: tag}
		ix.Manifests = append(ix.Manifests, m)
		w.stats.Tags = append(w.stats.Tags, tag)
	}
	w.stats.Images = s.Images
	raw, _ := json.Marshal(ix)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), raw, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return nil, err
	}
	return w.stats, nil
}
