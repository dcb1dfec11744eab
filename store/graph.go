package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// Graph walks: the blobs an image references, read with the rules the store
// counts references by (the same media types are manifests, the same limits
// hold, a root is read whatever its media type says), but for a root of an
// unknown media type too large to be read: a leaf here, where the counts
// take what it references as unknown.
//
// A walk reads and verifies every manifest and index of the graph. The
// children the journal records of live manifests (digest, size and media
// type) would spare those reads, but they drop the rest of a descriptor
// (platform, annotations), they do not show a manifest that went missing or
// was damaged after it was counted, and reading them takes the journal's
// lock, which a reader such as `ocistore ls` never waits for.

// Limits of what the store reads of a graph.
const (
	// MaxManifestSize is the largest manifest or index blob the store
	// reads (ErrTooLarge beyond).
	MaxManifestSize = 8 << 20
	// MaxDepth is how deep a graph may nest below its root: a blob at a
	// greater depth is corruption (ErrCorrupt).
	MaxDepth = 32
)

// The limits are the parser's (internal/layout): this fails to compile
// when they differ.
const _ = uint64(MaxManifestSize-layout.MaxManifestSize) + uint64(layout.MaxManifestSize-MaxManifestSize) +
	uint64(MaxDepth-layout.MaxDepth) + uint64(layout.MaxDepth-MaxDepth)

// IsManifest reports whether mediaType is one whose blob references other
// blobs: an OCI image manifest or index, a Docker manifest or manifest
// list, or the artifact manifest of the image-spec 1.1 release candidates.
func IsManifest(mediaType string) bool { return layout.IsManifest(mediaType) }

// GraphNode is one blob of an image's graph, as Walk meets it.
type GraphNode struct {
	// Descriptor is the blob's descriptor as the reference Walk followed
	// to it names it (for the root, the caller's).
	Descriptor v1.Descriptor
	// Depth is 0 for the root, 1 for what the root references, and so on.
	Depth int
	// Children are the descriptors the blob references, in the order of
	// its document: config, layers, manifests, blobs. The subject of an
	// OCI 1.1 manifest is not one (it points at the image the manifest is
	// about). Nil for a leaf (a config, a layer, a blob of another media
	// type) and for a manifest that references nothing.
	Children []v1.Descriptor
}

// ErrSkipChildren, returned by a WalkFunc, makes Walk go on without visiting
// the children of the node: they are not visited from there, though another
// reference may reach them.
var ErrSkipChildren = errors.New("skip children")

// WalkFunc is what Walk calls on each node. An error other than
// ErrSkipChildren stops the walk: Walk returns it as it is.
type WalkFunc func(n GraphNode) error

// Walk visits the graph of root, an image of the layout (an index.json
// entry, or a manifest or blob one references): root, then depth first,
// in the order of each document, what it references. Each distinct blob
// (digest) is visited once, at the first reference met, so that a layer
// that several platforms of an index share is visited once. fn is called
// on a node once its children are known, before they are visited.
//
// Walk reads the manifests and indexes of the graph (verified, as Fetch
// does, though not counted as a use of the image), no other blob: a leaf
// is what its descriptor says, whether its blob is present or not. A
// manifest or index is a blob of a manifest media type (IsManifest), or
// the root whatever its media type says when it is small enough to be one
// (some tools write index.json entries without media types); a root that
// does not parse as a manifest is then a leaf.
//
// Walk stops at the first manifest it cannot read: one missing from the
// layout (ErrCorrupt, since the layout holds whole graphs; fsck tells
// more), over MaxManifestSize (ErrTooLarge), not of its descriptor's size
// or digest (ErrSizeMismatch, ErrDigestMismatch) or that does not parse
// (ErrCorrupt); and at a blob nested deeper than MaxDepth (ErrCorrupt).
// It checks ctx between nodes.
func (s *Store) Walk(ctx context.Context, root v1.Descriptor, fn WalkFunc) error {
	if err := s.reading(ctx); err != nil {
		return err
	}
	return s.walk(ctx, root, s.children, fn)
}

// walk is Walk with the children of each node from kids.
func (s *Store) walk(ctx context.Context, root v1.Descriptor, kids func(d v1.Descriptor, root bool) ([]v1.Descriptor, error), fn WalkFunc) error {
	seen := map[digest.Digest]bool{}
	var walk func(d v1.Descriptor, depth int) error
	walk = func(d v1.Descriptor, depth int) error {
		if seen[d.Digest] {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if depth > MaxDepth {
			return fmt.Errorf("manifest %s: nested deeper than %d: %w", d.Digest, MaxDepth, errdef.ErrCorrupt)
		}
		seen[d.Digest] = true
		ks, err := kids(d, depth == 0)
		if err != nil {
			return err
		}
		switch err := fn(GraphNode{Descriptor: d, Depth: depth, Children: ks}); {
		case errors.Is(err, ErrSkipChildren):
			return nil
		case err != nil:
			return err
		}
		for _, k := range ks {
			if err := walk(k, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(root, 0)
}

// Size returns the number and total size of the distinct blobs of root's
// graph (Walk's nodes), root included: for an image manifest, the manifest,
// its config and its layers; for an index, the index and the graph of each
// of its manifests, a blob they share counted once. The sizes are the
// descriptors'; only manifests and indexes are read. Its errors are Walk's.
func (s *Store) Size(ctx context.Context, root v1.Descriptor) (blobs int, size int64, err error) {
	r, err := s.Sizes(ctx, []v1.Descriptor{root})
	if err != nil {
		return 0, 0, err
	}
	return r[0].Blobs, r[0].Bytes, r[0].Err
}

// GraphSize is what Sizes found of one root: Size's results.
type GraphSize struct {
	Blobs int
	Bytes int64
	Err   error // the root's own error (its graph could not be read); the others go on
}

// Sizes is Size of each of roots, in one pass: the manifests the journal
// counted are not read, since it recorded their children when it counted
// them (content addressed: what a digest references never changes), so
// that a listing of 100,000 images reads no manifest. Such a manifest is
// looked up (one stat): one missing from the layout, or not of its
// descriptor's size, stops its root's walk as Walk's read does (a
// manifest whose bytes changed in place is fsck's to find). A manifest the
// journal has not counted (a layout not adopted yet, or that another tool
// changed since) is read, as Walk reads it. The error returned is one that
// stops the whole pass (ctx, the journal); a root whose graph cannot be
// read has its own in its GraphSize.
func (s *Store) Sizes(ctx context.Context, roots []v1.Descriptor) ([]GraphSize, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	out := make([]GraphSize, len(roots))
	// In digest order, so that one lookup in the journal lands near the
	// last (the refs are keyed by digest).
	order := make([]int, len(roots))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(string(roots[a].Digest), string(roots[b].Digest)) })
	sizeAll := func(kids func(d v1.Descriptor, root bool) ([]v1.Descriptor, error)) error {
		for _, i := range order {
			root := roots[i]
			r := &out[i]
			r.Err = s.walk(ctx, root, kids, func(n GraphNode) error {
				r.Blobs++
				r.Bytes += n.Descriptor.Size
				return nil
			})
			if r.Err != nil {
				r.Blobs, r.Bytes = 0, 0
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	walked := false
	err := s.journalRead(func(tx *journal.Tx) error {
		walked = true
		return sizeAll(func(d v1.Descriptor, isRoot bool) ([]v1.Descriptor, error) {
			if !layout.Parsed(d, isRoot) {
				return nil, nil // a leaf: nothing to look up
			}
			if r, err := tx.GetRef(d.Digest); err == nil && r.Count > 0 && r.Children != nil {
				return r.Children, s.manifestPresent(d)
			}
			return s.children(d, isRoot)
		})
	})
	if err == nil && !walked {
		err = sizeAll(s.children) // no journal yet
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// manifestPresent reports, as readManifest would, a manifest missing from
// the layout or of another size than d says, with a stat of its blob.
func (s *Store) manifestPresent(d v1.Descriptor) error {
	p := layout.BlobPath(d.Digest)
	fi, err := s.lay.FS.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("manifest %s is missing from the layout (run ocistore fsck): %w", d.Digest, errdef.ErrCorrupt)
	case err != nil:
		return fmt.Errorf("fetch %s (%s): %w", d.Digest, p, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("fetch %s (%s): %w", d.Digest, p, fsio.ErrNotRegular)
	case d.Size >= 0 && fi.Size() != d.Size:
		return fmt.Errorf("read manifest %s (%s): %d bytes, descriptor says %d: %w", d.Digest, p, fi.Size(), d.Size, errdef.ErrSizeMismatch)
	}
	return nil
}

// FetchManifest reads the whole blob of desc, a manifest or index, verified
// as Fetch verifies it: ErrNotFound when it is not in the layout,
// ErrTooLarge (before anything is read) when desc says it is larger than
// MaxManifestSize, ErrSizeMismatch or ErrDigestMismatch when its content is
// not what desc says. desc's media type is not checked. As Fetch, it counts
// as a use of the image (prune's last use) when desc is a manifest.
func (s *Store) FetchManifest(ctx context.Context, desc v1.Descriptor) ([]byte, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	b, err := s.readManifest(desc)
	if err != nil {
		return nil, err
	}
	if layout.IsManifest(desc.MediaType) {
		s.recordUse(desc.Digest)
	}
	return b, nil
}

// readManifest reads and verifies the blob of a manifest or index, within
// MaxManifestSize.
func (s *Store) readManifest(d v1.Descriptor) ([]byte, error) {
	if d.Size > MaxManifestSize {
		return nil, fmt.Errorf("manifest %s: %d bytes, limit %d: %w", d.Digest, d.Size, MaxManifestSize, errdef.ErrTooLarge)
	}
	if err := layout.ValidateDigest(d.Digest); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	p := layout.BlobPath(d.Digest)
	f, err := s.lay.FS.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("fetch %s: %w", d.Digest, errdef.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s (%s): %w", d.Digest, p, err)
	}
	defer f.Close()
	v := layout.NewVerifyReader(f, d)
	// The bound holds for a size that says "unknown" (negative) too.
	b, err := io.ReadAll(io.LimitReader(v, MaxManifestSize+1))
	switch {
	case err != nil:
	case len(b) > MaxManifestSize:
		err = fmt.Errorf("blob %s: more than %d bytes: %w", d.Digest, MaxManifestSize, errdef.ErrTooLarge)
	default:
		err = v.Verify()
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", d.Digest, err)
	}
	return b, nil
}

// children returns the descriptors d references (GraphNode.Children); root
// says whether d is the root of the walk.
func (s *Store) children(d v1.Descriptor, root bool) ([]v1.Descriptor, error) {
	if !layout.Parsed(d, root) {
		return nil, nil
	}
	b, err := s.readManifest(d)
	if errors.Is(err, errdef.ErrNotFound) {
		return nil, fmt.Errorf("manifest %s is missing from the layout (run ocistore fsck): %w", d.Digest, errdef.ErrCorrupt)
	}
	if err != nil {
		return nil, err
	}
	c, err := layout.ParseChildrenAs("manifest "+d.Digest.String(), d.MediaType, b)
	if err != nil && layout.Sniffed(d, err) {
		return nil, nil // a root that is not a manifest: a leaf
	}
	if err != nil {
		return nil, err
	}
	return c.Refs, nil
}

// ManifestChildren returns the descriptors a manifest or index of media
// type mediaType references (config, layers, manifests, blobs; not its
// subject), as the store reads them: content that does not parse as that
// media type is ErrCorrupt.
func ManifestChildren(mediaType string, content []byte) ([]v1.Descriptor, error) {
	kids, err := layout.ParseChildrenAs("manifest", mediaType, content)
	if err != nil {
		return nil, err
	}
	return kids.Refs, nil
}
