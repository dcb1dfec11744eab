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

// sizeAll sizes the graphs of ds (store.Sizes: from the journal's record
// of each manifest's children, or reading the manifests it has not
// counted), in one part per core, so that size then answers from what it
// found.
func (z *sizer) sizeAll(ctx context.Context, ds []v1.Descriptor) {
	todo := make([]v1.Descriptor, 0, len(ds))
	seen := make(map[sizeKey]bool, len(ds))
	for _, d := range ds {
		if k := (sizeKey{d.Digest, d.Size, d.MediaType}); !seen[k] {
			seen[k] = true
			todo = append(todo, d)
		}
	}
	if len(todo) < 64 {
		return
	}
	if len(z.done) == 0 {
		z.done = make(map[sizeKey]sizeResult, len(todo))
	}
	parts := runtime.GOMAXPROCS(0)
	results := make([][]store.GraphSize, parts)
	per := (len(todo) + parts - 1) / parts
	var wg sync.WaitGroup
	for i := range parts {
		part := todo[min(i*per, len(todo)):min((i+1)*per, len(todo))]
		wg.Go(func() {
			results[i], _ = z.s.Sizes(ctx, part) // on error: sized one by one later
		})
	}
	wg.Wait()
	for i, r := range results {
		for j, g := range r {
			d := todo[i*per+j]
			z.done[sizeKey{d.Digest, d.Size, d.MediaType}] = sizeResult{g.Blobs, g.Bytes, g.Err}
		}
	}
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
