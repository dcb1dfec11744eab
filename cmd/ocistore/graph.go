package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/store"
)

// graph reads manifests and indexes through the store to describe and size
// images. It keeps what it parsed, so that ls reads each manifest once.
type graph struct {
	s    *store.Store
	kids map[digest.Digest][]v1.Descriptor
}

func newGraph(s *store.Store) *graph {
	return &graph{s: s, kids: map[digest.Digest][]v1.Descriptor{}}
}

// readManifest reads the blob of a manifest or index (size and digest are
// verified by Fetch). A manifest that index.json names but that is missing is
// corruption, not a reference that was not found.
func readManifest(ctx context.Context, s *store.Store, d v1.Descriptor) ([]byte, error) {
	if d.Size > layout.MaxManifestSize {
		return nil, fmt.Errorf("manifest %s: %d bytes, limit %d: %w", d.Digest, d.Size, layout.MaxManifestSize, store.ErrTooLarge)
	}
	rc, err := s.Fetch(ctx, d)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("manifest %s is missing from the layout (run ocistore fsck): %w", d.Digest, store.ErrCorrupt)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", d.Digest, err)
	}
	return b, nil
}

// children returns the descriptors a manifest or index references (config,
// layers, manifests, blobs; not the subject, which is a weak reference), or
// nil for a leaf. A root (an index.json entry) is read whatever its media
// type says, as the store counts it (layout.Parsed).
func (g *graph) children(ctx context.Context, d v1.Descriptor, root bool) ([]v1.Descriptor, error) {
	if !layout.Parsed(d, root) {
		return nil, nil
	}
	if k, ok := g.kids[d.Digest]; ok {
		return k, nil
	}
	b, err := readManifest(ctx, g.s, d)
	if err != nil {
		return nil, err
	}
	c, err := layout.ParseChildrenAs("manifest "+d.Digest.String(), d.MediaType, b)
	if err != nil && layout.Sniffed(d, err) {
		c, err = layout.Children{}, nil // a root that is not a manifest: a leaf
	}
	if err != nil {
		return nil, err
	}
	g.kids[d.Digest] = c.Refs
	return c.Refs, nil
}

// size returns the number and total size of the distinct blobs of d's graph,
// d included: for an image, manifest + config + layers; for an index, itself
// and its children's graphs, a blob shared by two platforms counted once.
// Sizes are the descriptors'; only manifests are read.
func (g *graph) size(ctx context.Context, d v1.Descriptor) (blobs int, bytes int64, err error) {
	seen := map[digest.Digest]bool{}
	var walk func(d v1.Descriptor, depth int) error
	walk = func(d v1.Descriptor, depth int) error {
		if seen[d.Digest] {
			return nil
		}
		if depth > layout.MaxDepth {
			return fmt.Errorf("manifest %s: nested deeper than %d: %w", d.Digest, layout.MaxDepth, store.ErrCorrupt)
		}
		seen[d.Digest] = true
		blobs++
		bytes += d.Size
		kids, err := g.children(ctx, d, depth == 0)
		if err != nil {
			return err
		}
		for _, k := range kids {
			if err := walk(k, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(d, 0); err != nil {
		return 0, 0, err
	}
	return blobs, bytes, nil
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
