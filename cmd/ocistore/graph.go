package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

// sizer sizes image graphs through the store (store.Size), once per
// distinct root: the tags of one image (a, a2) share the result, so that ls
// reads each of their manifests once.
type sizer struct {
	s    *store.Store
	done map[sizeKey]sizeResult
}

// sizeKey is what of a root Size's result depends on.
type sizeKey struct {
	d    digest.Digest
	size int64
	mt   string
}

type sizeResult struct {
	blobs int
	bytes int64
	err   error
}

func newSizer(s *store.Store) *sizer {
	return &sizer{s: s, done: map[sizeKey]sizeResult{}}
}

// sizeAll sizes the graphs of ds on every core (each manifest read and
// verified once), so that size then answers from what it found: ls of a
// large layout reads its manifests in parallel.
func (z *sizer) sizeAll(ctx context.Context, ds []v1.Descriptor) {
	workers := runtime.GOMAXPROCS(0)
	if workers < 2 || len(ds) < 64 {
		return
	}
	var mu sync.Mutex
	next := make(chan v1.Descriptor)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for d := range next {
				blobs, bytes, err := z.s.Size(ctx, d)
				if ctx.Err() != nil {
					continue
				}
				mu.Lock()
				z.done[sizeKey{d.Digest, d.Size, d.MediaType}] = sizeResult{blobs, bytes, err}
				mu.Unlock()
			}
		})
	}
	seen := map[sizeKey]bool{}
	for _, d := range ds {
		if k := (sizeKey{d.Digest, d.Size, d.MediaType}); !seen[k] && ctx.Err() == nil {
			seen[k] = true
			next <- d
		}
	}
	close(next)
	wg.Wait()
}

// size returns the number and total size of the distinct blobs of d's graph,
// d included (store.Size).
func (z *sizer) size(ctx context.Context, d v1.Descriptor) (blobs int, bytes int64, err error) {
	k := sizeKey{d.Digest, d.Size, d.MediaType}
	if r, ok := z.done[k]; ok {
		return r.blobs, r.bytes, r.err
	}
	blobs, bytes, err = z.s.Size(ctx, d)
	if ctx.Err() == nil {
		z.done[k] = sizeResult{blobs, bytes, err}
	}
	return blobs, bytes, err
}

// readManifest reads the blob of a manifest or index (size and digest are
// verified). A manifest that index.json names but that is missing is
// corruption, not a reference that was not found.
func readManifest(ctx context.Context, s *store.Store, d v1.Descriptor) ([]byte, error) {
	b, err := s.FetchManifest(ctx, d)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("manifest %s is missing from the layout (run ocistore fsck): %w", d.Digest, store.ErrCorrupt)
	}
	return b, err
}

// manifestDoc is what inspect shows of a manifest, an index, or their
// Docker equivalents; fields that a kind does not have stay empty.
type manifestDoc struct {
	MediaType    string            `json:"mediaType,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Config       *v1.Descriptor    `json:"config,omitempty"`
	Layers       []v1.Descriptor   `json:"layers,omitempty"`
	Manifests    []v1.Descriptor   `json:"manifests,omitempty"`
	Blobs        []v1.Descriptor   `json:"blobs,omitempty"`
	Subject      *v1.Descriptor    `json:"subject,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func parseManifestDoc(d v1.Descriptor, b []byte) (*manifestDoc, error) {
	var m manifestDoc
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %v", d.Digest, store.ErrCorrupt, err)
	}
	return &m, nil
}

// platformString formats a platform as os/arch[/variant], "" for none.
func platformString(p *v1.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	if p.OSVersion != "" {
		s += " (" + p.OSVersion + ")"
	}
	return s
}
