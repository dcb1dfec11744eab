// Package orasstore makes an ocistore store an oras-go v2 target, so that
// oras.Copy, oras.ExtendedCopy and oras.Fetch move images between ocistore
// and any other oras-go target: a registry (registry/remote), an OCI layout
// (content/oci), memory.
//
// A Target is one copy into the store: every blob and manifest it is given
// is written under one lease of the store (store.Lease), so that a GC or a
// prune running meanwhile never frees what the copy wrote and has not
// tagged yet. Close ends the copy: it keeps the referrers the copy pushed
// (see below) and releases the lease; Abort ends a copy that failed,
// keeping nothing. If the process dies first, the lease expires
// (Options.LeaseTTL) and GC frees what the copy left untagged.
//
// Manifests pushed without a tag are not made roots of index.json (oras-go's
// own OCI store does that, leaving untagged entries for a later prune to
// clean): a platform manifest is held by its index once the index is
// tagged; a plain manifest never tagged is freed by GC once the lease ends.
// The exception is a referrer (a manifest with a subject: a signature, an
// SBOM), which nothing tags: when the copy ends, each one pushed whose
// subject the store holds becomes an untagged entry of index.json, so that
// it stays, is listed by Referrers and Predecessors, and goes with its
// subject when prune removes that. (A referrer whose subject the copy
// pushed but nothing tagged goes with that subject, once the lease ends.)
package orasstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"

	"github.com/ocistore/ocistore/store"
)

// DefaultLeaseTTL is the life of a Target's lease when Options says none:
// renewed while the copy pushes, it ends an hour after the last push of a
// copy whose process died.
const DefaultLeaseTTL = time.Hour

// Options configure New. A nil *Options means the defaults.
type Options struct {
	// LeaseTTL is the life of the copy's lease, renewed at half-life
	// while it pushes; zero means DefaultLeaseTTL.
	LeaseTTL time.Duration
}

// Target is an oras-go target on a store, for one copy: oras.Target
// (content.Storage and content.TagResolver), content.Deleter,
// content.GraphStorage (content.PredecessorFinder: referrers from the
// journal) and registry.TagLister. It is safe for concurrent use (oras
// copies push blobs in parallel). Close it when the copy ends.
type Target struct {
	s   *store.Store
	ttl time.Duration

	mu        sync.Mutex
	lease     *store.Lease
	renewed   time.Time
	referrers map[digest.Digest]referrer // pushed, not yet kept
	closed    bool
}

// referrer is a manifest with a subject that the copy pushed.
type referrer struct {
	desc    v1.Descriptor
	subject digest.Digest
}

// New returns a Target on s. It takes no lease until the first push.
func New(s *store.Store, o *Options) *Target {
	t := &Target{s: s, ttl: DefaultLeaseTTL, referrers: map[digest.Digest]referrer{}}
	if o != nil && o.LeaseTTL > 0 {
		t.ttl = o.LeaseTTL
	}
	return t
}

// Store is the store the target writes to.
func (t *Target) Store() *store.Store { return t.s }

// Fetch opens the content of desc, verified as it is read (store.Fetch).
func (t *Target) Fetch(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error) {
	rc, err := t.s.Fetch(ctx, desc)
	return rc, mapErr(err)
}

// Exists reports whether the store holds desc's content.
func (t *Target) Exists(ctx context.Context, desc v1.Descriptor) (bool, error) {
	ok, err := t.s.Exists(ctx, desc)
	return ok, mapErr(err)
}

// Push writes content, which must match expected, under the copy's lease.
// Content the store holds already is errdef.ErrAlreadyExists, as oras-go's
// stores say. A manifest with a subject is remembered, to be kept when
// the copy ends (Close).
func (t *Target) Push(ctx context.Context, expected v1.Descriptor, r io.Reader) error {
	if ok, err := t.s.Exists(ctx, expected); err != nil {
		return mapErr(err)
	} else if ok {
		return fmt.Errorf("%s: %w", expected.Digest, errdef.ErrAlreadyExists)
	}
	lctx, err := t.leased(ctx)
	if err != nil {
		return err
	}
	if !store.IsManifest(expected.MediaType) {
		return mapErr(t.s.PutBlob(lctx, expected, r))
	}
	if expected.Size > store.MaxManifestSize {
		return fmt.Errorf("manifest %s: %d bytes, limit %d: %w", expected.Digest, expected.Size, store.MaxManifestSize, errdef.ErrSizeExceedsLimit)
	}
	b, err := content.ReadAll(r, expected)
	if err != nil {
		return err
	}
	if err := t.s.PutBlob(lctx, expected, bytes.NewReader(b)); err != nil {
		return mapErr(err)
	}
	var m struct {
		Subject *v1.Descriptor `json:"subject"`
	}
	if json.Unmarshal(b, &m) == nil && m.Subject != nil && m.Subject.Digest.Validate() == nil {
		t.mu.Lock()
		t.referrers[expected.Digest] = referrer{desc: expected, subject: m.Subject.Digest}
		t.mu.Unlock()
	}
	return nil
}

// Reserve adds descs to the copy's lease ahead of their push, in one
// journal commit, whether the store holds them yet or not. A Push adds its
// blob to the lease first, one commit per blob, unless the blob is in it
// already: a copy that reserves a manifest's successors once it knows them
// (FindSuccessors does) commits once per manifest instead of once per blob.
func (t *Target) Reserve(ctx context.Context, descs ...v1.Descriptor) error {
	if len(descs) == 0 {
		return nil
	}
	if _, err := t.leased(ctx); err != nil {
		return err
	}
	t.mu.Lock()
	l := t.lease
	t.mu.Unlock()
	return mapErr(l.Add(ctx, descs...))
}

// FindSuccessors returns the successors of desc as content.Successors
// does, and reserves them with desc (Reserve) when it has any. A copy into
// t passes it as oras.CopyGraphOptions.FindSuccessors: oras asks for a
// node's successors before it pushes them and then the node, so that
// every Push of the copy finds its blob in the lease already.
func (t *Target) FindSuccessors(ctx context.Context, fetcher content.Fetcher, desc v1.Descriptor) ([]v1.Descriptor, error) {
	succ, err := content.Successors(ctx, fetcher, desc)
	if err != nil || len(succ) == 0 {
		return succ, err
	}
	return succ, t.Reserve(ctx, append(slices.Clone(succ), desc)...)
}

// leased returns ctx carrying the copy's lease, taking it first, and
// renewing it at half-life.
func (t *Target) leased(ctx context.Context) (context.Context, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("orasstore: push after Close: %w", store.ErrClosed)
	}
	now := time.Now()
	switch {
	case t.lease == nil:
		l, err := t.s.Lease(ctx, t.ttl)
		if err != nil {
			return nil, mapErr(err)
		}
		t.lease, t.renewed = l, now
	case now.Sub(t.renewed) > t.ttl/2:
		if err := t.lease.Renew(ctx, t.ttl); err != nil {
			return nil, mapErr(err)
		}
		t.renewed = now
	}
	return t.lease.Context(ctx), nil
}

// Tag names desc reference in index.json (store.Tag). A digest reference
// names nothing: desc must be in the store, and nothing changes.
func (t *Target) Tag(ctx context.Context, desc v1.Descriptor, reference string) error {
	if d, err := digest.Parse(reference); err == nil {
		if d != desc.Digest {
			return fmt.Errorf("tag %s as %s: %w", desc.Digest, reference, errdef.ErrInvalidReference)
		}
		ok, err := t.s.Exists(ctx, desc)
		if err != nil {
			return mapErr(err)
		}
		if !ok {
			return fmt.Errorf("tag %s: %w", desc.Digest, errdef.ErrNotFound)
		}
		return nil
	}
	return mapErr(t.s.Tag(ctx, desc, reference))
}

// Resolve returns the descriptor of a tag, or of any manifest by digest
// (store.Resolve).
func (t *Target) Resolve(ctx context.Context, reference string) (v1.Descriptor, error) {
	desc, err := t.s.Resolve(ctx, reference)
	return desc, mapErr(err)
}

// Delete removes a manifest or index that index.json lists, with the
// blobs only it used (store.Delete, one transaction). The store frees any
// other blob when nothing references it (GC): deleting one directly is
// errdef.ErrUnsupported.
func (t *Target) Delete(ctx context.Context, desc v1.Descriptor) error {
	if store.IsManifest(desc.MediaType) {
		_, err := t.s.Delete(ctx, desc.Digest.String())
		if err == nil || !errors.Is(err, store.ErrNotFound) {
			return mapErr(err)
		}
	}
	ok, err := t.s.Exists(ctx, desc)
	if err != nil {
		return mapErr(err)
	}
	if !ok {
		return fmt.Errorf("delete %s: %w", desc.Digest, errdef.ErrNotFound)
	}
	return fmt.Errorf("delete %s: a blob is freed when nothing references it (ocistore gc): %w", desc.Digest, errdef.ErrUnsupported)
}

// Predecessors returns the manifests whose subject is node: its referrers,
// from the journal (store.Referrers), and those this copy pushed. (The
// store does not index which manifests list a blob; oras.ExtendedCopy
// asks for predecessors to find referrers.)
func (t *Target) Predecessors(ctx context.Context, node v1.Descriptor) ([]v1.Descriptor, error) {
	out, err := t.s.Referrers(ctx, node.Digest, "")
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, mapErr(err)
	}
	t.mu.Lock()
	for _, r := range t.referrers {
		if r.subject == node.Digest && !slices.ContainsFunc(out, func(d v1.Descriptor) bool { return d.Digest == r.desc.Digest }) {
			out = append(out, r.desc)
		}
	}
	t.mu.Unlock()
	return out, nil
}

// Tags lists the names of index.json in order, those after last
// (registry.TagLister), in one call of fn.
func (t *Target) Tags(ctx context.Context, last string, fn func(tags []string) error) error {
	imgs, err := t.s.List(ctx)
	if err != nil {
		return mapErr(err)
	}
	var tags []string
	for _, im := range imgs {
		if im.Name != "" && im.Name > last {
			tags = append(tags, im.Name)
		}
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if len(tags) == 0 {
		return nil
	}
	return fn(tags)
}

// Close ends the copy: the referrers it pushed whose subject index.json
// reaches become untagged entries of index.json (one transaction), then
// its lease is released. A Target is not used after Close.
func (t *Target) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	refs := make([]referrer, 0, len(t.referrers))
	for _, r := range t.referrers {
		refs = append(refs, r)
	}
	lease := t.lease
	t.mu.Unlock()

	// A referrer is kept when index.json reaches its subject (a root, or
	// a platform manifest of one): one whose subject the copy pushed but
	// never tagged goes with it, when the lease ends.
	var keep []v1.Descriptor
	for _, r := range refs {
		if ok, err := t.s.Referenced(ctx, r.subject); err == nil && ok {
			keep = append(keep, r.desc)
		}
	}
	slices.SortFunc(keep, func(a, b v1.Descriptor) int { return cmp.Compare(a.Digest, b.Digest) })
	err := t.s.AddUntagged(ctx, keep...)
	if lease != nil {
		if rerr := lease.Release(ctx); err == nil {
			err = rerr
		}
	}
	return mapErr(err)
}

// Abort ends a copy that failed: it releases the lease and keeps nothing,
// not even the referrers Close would keep, so that index.json is as it was
// before the copy. What the copy wrote and nothing references is GC's once
// the lease is gone. A Target is not used after Abort; Close after Abort
// does nothing.
func (t *Target) Abort(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	lease := t.lease
	t.mu.Unlock()
	if lease == nil {
		return nil
	}
	return mapErr(lease.Release(ctx))
}

// mapErr adds to a store error the oras-go error of its category, so that
// errors.Is answers for both (oras.Copy looks for errdef.ErrNotFound and
// errdef.ErrAlreadyExists).
func mapErr(err error) error {
	var cat error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		cat = errdef.ErrNotFound
	case errors.Is(err, store.ErrInvalidDigest):
		cat = errdef.ErrInvalidDigest
	case errors.Is(err, store.ErrDigestMismatch), errors.Is(err, store.ErrSizeMismatch):
		cat = content.ErrMismatchedDigest
	case errors.Is(err, store.ErrTooLarge):
		cat = errdef.ErrSizeExceedsLimit
	case errors.Is(err, store.ErrInvalidArgument):
		cat = errdef.ErrInvalidReference
	default:
		return err
	}
	return fmt.Errorf("%w (%w)", err, cat)
}
