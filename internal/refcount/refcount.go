// Package refcount keeps reference counts over the layout's graph. The same
// code counts incrementally (a transaction adds and removes index entries)
// and from scratch (Recount), so both always agree.
//
// A blob's count is the number of references to it: one per index.json entry
// naming it, plus one per reference from each live manifest or index (a blob
// is live while its count is above zero). When a manifest becomes live its
// children are counted, and the Ref is marked Expanded and records them (so
// that a release reads no blob); when it dies they are released, whatever
// media type a later reference claims. DESIGN.md §8.1 and §8.2 describe the
// rules and the unknown closures a lenient count records.
package refcount

import (
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// Table is where counts live: a journal transaction or a map.
type Table interface {
	GetRef(digest.Digest) (journal.Ref, error)
	PutRef(digest.Digest, journal.Ref) error
}

// Loader returns the children of a manifest or index blob.
type Loader func(v1.Descriptor) (layout.Children, error)

// Counter applies reference changes to a Table.
type Counter struct {
	T    Table
	Load Loader
	// Lenient counts past manifests that cannot be loaded (recording them in
	// Problems and leaving them unexpanded) instead of failing.
	Lenient  bool
	Problems []error
	// Present, when set, is called for every blob that becomes live (a
	// leaf, or a manifest once read), to verify that it is on disk with its
	// descriptor's size and make its name durable.
	Present func(v1.Descriptor) error
	// Freed collects blobs whose count dropped to zero, with their sizes.
	Freed []v1.Descriptor
	// Deltas sums the change of every count touched.
	Deltas map[digest.Digest]int64
}

// Reserve sizes Deltas for about n counts touched, when it is not made
// yet: a prune touches tens of thousands, and growing the map to that
// size rehashed it a dozen times.
func (c *Counter) Reserve(n int) {
	if c.Deltas == nil {
		c.Deltas = make(map[digest.Digest]int64, n)
	}
}

func (c *Counter) delta(d digest.Digest, n int64) {
	if c.Deltas == nil {
		c.Deltas = map[digest.Digest]int64{}
	}
	c.Deltas[d] += n
	if c.Deltas[d] == 0 {
		delete(c.Deltas, d)
	}
}

// Inc adds one reference to d.
func (c *Counter) Inc(d v1.Descriptor) error { return c.inc(d, 0) }

func (c *Counter) inc(d v1.Descriptor, depth int) error {
	if depth > layout.MaxDepth {
		err := fmt.Errorf("blob %s: nesting deeper than %d: %w", d.Digest, layout.MaxDepth, errdef.ErrCorrupt)
		if !c.Lenient {
			return err
		}
		// Counted, so that its parent's release finds it, but not
		// followed: what it reaches is unknown.
		return c.incUnknown(d, err)
	}
	r, err := c.T.GetRef(d.Digest)
	if err != nil {
		return err
	}
	r.Count++
	c.delta(d.Digest, 1)
	// A live blob is expanded at most once; one first met under a leaf media
	// type is expanded when a reference says it is a manifest, or its
	// children would go uncounted (and be freed under it) depending on the
	// order of the references.
	if r.Count > 1 && (r.Expanded || !layout.IsManifest(d.MediaType) && r.Unknown == "") {
		return c.T.PutRef(d.Digest, r)
	}
	if r.Count == 1 {
		r.Size = d.Size
	}
	var kids layout.Children
	switch {
	case layout.Parsed(d, depth == 0):
		kids, err = c.Load(d)
		switch {
		case err == nil:
			r.Expanded, r.Unknown = true, ""
			r.Children = children(kids.Refs)
			if c.Present != nil {
				if err := c.Present(d); err != nil {
					return err
				}
			}
		case layout.Sniffed(d, err): // a root that is not a manifest: a leaf
			kids = layout.Children{}
			if c.Present != nil {
				if err := c.Present(d); err != nil {
					return err
				}
			}
		case c.Lenient:
			c.Problems = append(c.Problems, err)
			r.Unknown = reason(err)
		case c.Present != nil && errors.Is(err, errdef.ErrNotFound):
			// Verifying a graph that becomes live (Tag, PutManifest): a
			// missing manifest or index below it is a missing dependency,
			// as a missing leaf is (Present), not a reference not found.
			return fmt.Errorf("blob %s (%s): %w", d.Digest, layout.BlobPath(d.Digest), errdef.ErrMissingDependency)
		default:
			return err
		}
	case depth == 0 && !r.Expanded && layout.TooLargeToSniff(d):
		// A root too large to be sniffed: index.json lists manifests, and
		// this one may be one that cannot be read. Unknown, not a leaf.
		err := fmt.Errorf("blob %s: root of media type %q is %d bytes, over the %d-byte limit of a manifest: %w",
			d.Digest, d.MediaType, d.Size, layout.MaxManifestSize, errdef.ErrTooLarge)
		if !c.Lenient {
			return err
		}
		c.Problems = append(c.Problems, err)
		r.Unknown = reason(err)
	case c.Present != nil:
		if err := c.Present(d); err != nil {
			return err
		}
	}
	// Stored before the children are visited: a (hostile) cycle then finds
	// the count above one and stops.
	if err := c.T.PutRef(d.Digest, r); err != nil {
		return err
	}
	for _, k := range kids.Refs {
		if err := c.inc(k, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// incUnknown counts a reference to d without following it, and marks its
// closure unknown (why) when it is not expanded already.
func (c *Counter) incUnknown(d v1.Descriptor, why error) error {
	r, err := c.T.GetRef(d.Digest)
	if err != nil {
		return err
	}
	r.Count++
	c.delta(d.Digest, 1)
	if r.Count == 1 {
		r.Size = d.Size
	}
	if !r.Expanded && layout.Parsed(d, false) {
		c.Problems = append(c.Problems, why)
		r.Unknown = reason(why)
	}
	return c.T.PutRef(d.Digest, r)
}

// reason is what a Ref records of why its closure is unknown.
func reason(err error) string {
	const max = 512
	s := err.Error()
	if len(s) > max {
		s = s[:max]
	}
	if s == "" {
		s = "unknown"
	}
	return s
}

// Dec removes one reference to d; at zero, d is Freed and its children released.
func (c *Counter) Dec(d v1.Descriptor) error { return c.dec(d.Digest, d.MediaType, 0) }

func (c *Counter) dec(d digest.Digest, mt string, depth int) error {
	// Expanded blobs are at most MaxDepth deep (inc): one level more
	// holds the unexpanded ones a lenient count stopped at.
	if depth > layout.MaxDepth+1 {
		return fmt.Errorf("blob %s: nesting deeper than %d: %w", d, layout.MaxDepth, errdef.ErrCorrupt)
	}
	r, err := c.T.GetRef(d)
	if err != nil {
		return err
	}
	if r.Count == 0 {
		return fmt.Errorf("blob %s: reference count would go below zero: %w", d, errdef.ErrCorrupt)
	}
	r.Count--
	c.delta(d, -1)
	if err := c.T.PutRef(d, r); err != nil {
		return err
	}
	if r.Count > 0 {
		return nil
	}
	c.Freed = append(c.Freed, v1.Descriptor{Digest: d, Size: r.Size})
	if r.Unknown != "" {
		// Its children were never counted: there is nothing to release.
		// What they are is unknown, so they stay on disk as orphans until
		// a GC can tell (nothing is freed while a closure is unknown).
		return nil
	}
	if !r.Expanded {
		// Its children were never counted: it could not be read when it
		// became live. A manifest that still cannot be read is refused, as
		// when an expanded one cannot be: its image is broken, and freeing
		// it would hide that and strand its children.
		if layout.IsManifest(mt) {
			if _, err := c.Load(v1.Descriptor{MediaType: mt, Digest: d, Size: r.Size}); err != nil {
				return fmt.Errorf("release %s: %w", d, err)
			}
		}
		return nil
	}
	kids := r.Children
	if kids == nil { // counted before children were recorded (schema v2)
		c, err := c.Load(v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: d, Size: r.Size})
		if err != nil {
			return fmt.Errorf("release children of %s: %w", d, err)
		}
		kids = c.Refs
	}
	for _, k := range kids {
		if err := c.dec(k.Digest, k.MediaType, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// children is what a Ref records of a manifest's references: digest, size
// and media type, never nil.
func children(refs []v1.Descriptor) []v1.Descriptor {
	// Shared when there is nothing to strip (the usual manifest): the
	// reader's slice is never written, and a copy of the children of
	// 100,000 manifests is 50 MB.
	if refs != nil && !slices.ContainsFunc(refs, func(k v1.Descriptor) bool {
		return k.URLs != nil || k.Annotations != nil || k.Data != nil || k.Platform != nil || k.ArtifactType != ""
	}) {
		return refs
	}
	out := make([]v1.Descriptor, len(refs))
	for i, k := range refs {
		out[i] = v1.Descriptor{MediaType: k.MediaType, Digest: k.Digest, Size: k.Size}
	}
	return out
}

// Map is an in-memory Table.
type Map map[digest.Digest]journal.Ref

func (m Map) GetRef(d digest.Digest) (journal.Ref, error) { return m[d], nil }

func (m Map) PutRef(d digest.Digest, r journal.Ref) error {
	if r.Count == 0 {
		delete(m, d)
	} else {
		m[d] = r
	}
	return nil
}

// Recount counts the whole graph of ix from scratch. Manifests that cannot
// be read are reported in the returned problems and left unexpanded.
func Recount(ix *layout.Index, load Loader) (Map, []error) { return RecountSized(ix, load, 0) }

// RecountSized is Recount with room for n blobs made up front, for a
// caller that knows how many the closure has (fsck's walk): its maps do
// not grow by rehashing (a tenth of fsck's time at 400,000 blobs).
func RecountSized(ix *layout.Index, load Loader, n int) (Map, []error) {
	m := make(Map, n)
	c := &Counter{T: m, Load: load, Lenient: true}
	if n > 0 {
		c.Deltas = make(map[digest.Digest]int64, n)
	}
	for _, e := range ix.Entries {
		if err := c.Inc(e.Desc); err != nil {
			c.Problems = append(c.Problems, err)
		}
	}
	return m, c.Problems
}

// Overlay is a Table that reads through to Base and keeps its writes to
// itself: a plan simulates a transaction's decrements on it (what would be
// freed) without changing the journal.
type Overlay struct {
	Base Table
	m    map[digest.Digest]journal.Ref
}

func (o *Overlay) GetRef(d digest.Digest) (journal.Ref, error) {
	if r, ok := o.m[d]; ok {
		return r, nil
	}
	return o.Base.GetRef(d)
}

func (o *Overlay) PutRef(d digest.Digest, r journal.Ref) error {
	if o.m == nil {
		o.m = map[digest.Digest]journal.Ref{}
	}
	o.m[d] = r
	return nil
}
