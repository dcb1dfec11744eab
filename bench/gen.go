package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// genSpec describes a generated layout. It has the shape of the main
// module's internal/gen (which this module cannot import): N images, each a
// manifest, a config and BaseLayers+OwnLayers layers, the base layers drawn
// from one of BaseSets shared sets, so that images share blobs as real ones do.
type genSpec struct {
	Images     int
	BaseSets   int    // shared base layer sets (10)
	BaseLayers int    // layers per base set (3)
	OwnLayers  int    // layers of each image's own (2)
	LayerSize  int    // bytes per layer (256: the benchmark is about metadata cost)
	Seed       uint64 // random seed
}

func (s *genSpec) defaults() {
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

// genStats says what generate wrote.
type genStats struct {
	Images int   `json:"images"`
	Blobs  int   `json:"blobs"`
	Bytes  int64 `json:"bytes"`
}

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtIndex    = "application/vnd.oci.image.index.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	refName    = "org.opencontainers.image.ref.name"
)

// desc is the subset of an OCI descriptor the generator and the checker use.
type desc struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type manifest struct {
	SchemaVersion int    `json:"schemaVersion"`
	MediaType     string `json:"mediaType,omitempty"`
	Config        *desc  `json:"config,omitempty"`
	Layers        []desc `json:"layers,omitempty"`
	Manifests     []desc `json:"manifests,omitempty"`
	Subject       *desc  `json:"subject,omitempty"`
}

// tagOf is the tag of image i in a generated layout.
func tagOf(i int) string { return fmt.Sprintf("img%d", i) }

type genWriter struct {
	dir   string
	rng   *rand.Rand
	stats genStats
}

func (w *genWriter) blob(b []byte, mt string) (desc, error) {
	sum := sha256.Sum256(b)
	hx := hex.EncodeToString(sum[:])
	p := filepath.Join(w.dir, "blobs", "sha256", hx)
	if _, err := os.Lstat(p); err != nil {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return desc{}, err
		}
		w.stats.Blobs++
		w.stats.Bytes += int64(len(b))
	}
	return desc{MediaType: mt, Digest: "sha256:" + hx, Size: int64(len(b))}, nil
}

func (w *genWriter) random(n int) (desc, error) {
	b := make([]byte, n)
	fillRandom(w.rng, b)
	return w.blob(b, mtLayer)
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

// generate writes a layout of s.Images tagged images into dir (created; it
// must not hold a layout) as a tool without a journal would: plain files.
func generate(dir string, s genSpec) (*genStats, error) {
	s.defaults()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	w := &genWriter{dir: dir, rng: rand.New(rand.NewPCG(s.Seed, s.Seed+1))}
	bases := make([][]desc, s.BaseSets)
	for i := range bases {
		for j := 0; j < s.BaseLayers; j++ {
			d, err := w.random(s.LayerSize)
			if err != nil {
				return nil, err
			}
			bases[i] = append(bases[i], d)
		}
	}
	ix := manifest{SchemaVersion: 2, MediaType: mtIndex, Manifests: []desc{}}
	for i := 0; i < s.Images; i++ {
		cfg, err := w.blob([]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:%02dZ","config":{"Labels":{"n":"%d"}},"rootfs":{"type":"layers","diff_ids":[]}}`, i%60, i)), mtConfig)
		if err != nil {
			return nil, err
		}
		layers := append([]desc(nil), bases[i%s.BaseSets]...)
		for j := 0; j < s.OwnLayers; j++ {
			d, err := w.random(s.LayerSize)
			if err != nil {
				return nil, err
			}
			layers = append(layers, d)
		}
		raw, err := json.Marshal(manifest{SchemaVersion: 2, MediaType: mtManifest, Config: &cfg, Layers: layers})
		if err != nil {
			return nil, err
		}
		m, err := w.blob(raw, mtManifest)
		if err != nil {
			return nil, err
		}
		m.Annotations = map[string]string{refName: tagOf(i)}
		ix.Manifests = append(ix.Manifests, m)
	}
	w.stats.Images = s.Images
	raw, err := json.Marshal(ix)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), raw, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return nil, err
	}
	return &w.stats, nil
}

// blobStream is the large-blob mode: size bytes of incompressible data,
// the same bytes for every reader of the same size and seed (a 4 MiB random
// block repeated, each repetition salted with its number so that no two
// blocks are equal), produced without holding the blob in memory.
type blobStream struct {
	block []byte
	size  int64
	off   int64
}

const streamBlock = 4 << 20

func newBlobStream(size int64, seed uint64) *blobStream {
	b := make([]byte, streamBlock)
	fillRandom(rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), b)
	return &blobStream{block: b, size: size}
}

func (s *blobStream) Read(p []byte) (int, error) {
	if s.off >= s.size {
		return 0, io.EOF
	}
	if rem := s.size - s.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	n := 0
	for n < len(p) {
		pos := int((s.off + int64(n)) % streamBlock)
		c := copy(p[n:], s.block[pos:])
		if pos < 8 { // salt: the block number in the block's first 8 bytes
			blk := uint64((s.off + int64(n)) / streamBlock)
			for j := pos; j < 8 && j-pos < c; j++ {
				p[n+j-pos] ^= byte(blk >> (8 * j))
			}
		}
		n += c
	}
	s.off += int64(n)
	return n, nil
}

// streamDigest hashes the stream of size and seed.
func streamDigest(size int64, seed uint64) (string, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(h, newBlobStream(size, seed), buf); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
