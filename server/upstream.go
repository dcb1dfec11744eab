package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/ocistore/ocistore/store"
)

// Upstream is a registry the server pulls through: a manifest or blob a
// client asks for and the layout does not hold is fetched from it (with
// the whole graph of a manifest, under a lease of the store), stored, and
// served. What the layout holds is served when the upstream is down.
type Upstream struct {
	// Prefix chooses the repositories of this upstream: "docker.io"
	// serves docker.io/library/alpine from the upstream's library/alpine.
	// Empty: every repository that no other prefix takes, by its own name.
	Prefix string
	// Registry is the upstream's host[:port].
	Registry string
	// PlainHTTP talks to it over HTTP instead of HTTPS.
	PlainHTTP bool
	// Client sends the requests (an oras-go auth.Client carries the
	// credentials); nil means oras-go's default client, anonymous.
	Client remote.Client
	// TagTTL is how long a tag fetched or checked is served without
	// asking the upstream again whether it moved; a check that fails (the
	// upstream down) serves what the layout has. Zero means a minute.
	TagTTL time.Duration
}

// puller is the pull-through side of a server.
type puller struct {
	s   *Server
	ups []Upstream

	flight  singleflight.Group // one fetch at a time per manifest ref and per blob
	mu      sync.Mutex
	checked map[string]time.Time // repo:tag -> when the upstream last agreed
}

// upstreamFor returns the upstream of the repository name and the name
// the repository has there.
func (p *puller) upstreamFor(name string) (*Upstream, string, bool) {
	var best *Upstream
	var rest string
	for i := range p.ups {
		u := &p.ups[i]
		switch {
		case u.Prefix == "":
			if best == nil {
				best, rest = u, name
			}
		case name == u.Prefix:
			// A prefix alone names no repository upstream.
		case strings.HasPrefix(name, u.Prefix+"/") && (best == nil || len(u.Prefix) > len(best.Prefix)):
			best, rest = u, name[len(u.Prefix)+1:]
		}
	}
	return best, rest, best != nil
}

// repository is the upstream repository of name.
func (u *Upstream) repository(name string) (*remote.Repository, error) {
	r, err := remote.NewRepository(u.Registry + "/" + name)
	if err != nil {
		return nil, err
	}
	r.PlainHTTP = u.PlainHTTP
	if u.Client != nil {
		r.Client = u.Client
	}
	return r, nil
}

// fetchTimeout bounds a fetch of a whole image from the upstream.
const fetchTimeout = 30 * time.Minute

// checkTimeout bounds the upstream's answer to whether a tag moved.
const checkTimeout = 5 * time.Second

// manifest makes sure the layout holds the manifest the request names,
// fetching it from the upstream of the repository when it does not (or,
// for a tag checked longer than TagTTL ago, when the upstream moved it).
// It returns false when the repository has no upstream.
func (p *puller) manifest(r *http.Request, rt route) (bool, error) {
	u, name, ok := p.upstreamFor(rt.name)
	if !ok {
		return false, nil
	}
	ctx := r.Context()
	byTag := !isDigest(rt.arg)
	local, lerr := p.s.resolveManifest(r, rt)
	if lerr == nil && !byTag {
		p.s.opts.Metrics.CacheHit("manifest")
		return true, nil
	}
	key := refName(rt.name, rt.arg)
	if lerr == nil {
		ttl := u.TagTTL
		if ttl == 0 {
			ttl = time.Minute
		}
		p.mu.Lock()
		fresh := time.Since(p.checked[key]) < ttl
		p.mu.Unlock()
		if fresh {
			p.s.opts.Metrics.CacheHit("manifest")
			return true, nil
		}
		repo, err := u.repository(name)
		if err != nil {
			return true, err
		}
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		desc, err := repo.Resolve(cctx, rt.arg)
		cancel()
		if err != nil || desc.Digest == local.Digest {
			if err != nil && !errors.Is(err, errdef.ErrNotFound) {
				// Down or failing: served from the layout, and not asked
				// again before the TTL, so that every pull of a cached
				// tag does not wait for a dead upstream.
				p.s.log.Warn("upstream: cannot check a tag; serving the cached one", "ref", key, "upstream", u.Registry, "err", err)
			}
			p.markChecked(key) // the same, a tag of this server's own, or unknown for now
			p.s.opts.Metrics.CacheHit("manifest")
			return true, nil
		}
	} else {
		var ae *apiError
		if !errors.As(lerr, &ae) || ae.status != http.StatusNotFound {
			return true, lerr
		}
	}
	p.s.opts.Metrics.CacheMiss("manifest")
	// Concurrent misses of one ref share one fetch, which outlives the
	// request that started it (another client may be waiting for it).
	ch := p.flight.DoChan("m "+key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		return nil, p.fetchImage(fctx, u, name, rt)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return true, res.Err
		}
	case <-ctx.Done():
		return true, ctx.Err()
	}
	if byTag {
		p.markChecked(key)
	}
	return true, nil
}

func (p *puller) markChecked(key string) {
	p.mu.Lock()
	if p.checked == nil {
		p.checked = map[string]time.Time{}
	}
	p.checked[key] = time.Now()
	p.mu.Unlock()
}

// fetchImage copies the image rt names from the upstream into the layout,
// under a lease: every blob and child manifest, then the manifest, tagged
// (by tag) or kept as an untagged entry (by digest).
func (p *puller) fetchImage(ctx context.Context, u *Upstream, name string, rt route) error {
	repo, err := u.repository(name)
	if err != nil {
		return upstreamErr(err, u, name, rt.arg)
	}
	root, rc, err := repo.FetchReference(ctx, rt.arg)
	if err != nil {
		return upstreamErr(err, u, name, rt.arg)
	}
	content, err := readAllLimited(rc, root.Size, p.s.opts.MaxManifestSize)
	rc.Close()
	if err != nil {
		return upstreamErr(err, u, name, rt.arg)
	}
	p.s.opts.Metrics.UpstreamFetch("manifest", int64(len(content)), nil)
	if err := verify(root, content); err != nil {
		return upstreamErr(err, u, name, rt.arg)
	}
	if !store.IsManifest(root.MediaType) {
		return apiErr(http.StatusNotFound, codeManifestUnknown, "upstream %s: %s:%s is a %s, not a manifest", u.Registry, name, rt.arg, root.MediaType)
	}
	lease, err := p.s.st.Lease(ctx, fetchTimeout)
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "pull through %s", rt.arg)
	}
	defer func() {
		if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
			p.s.log.Warn("cannot release a pull-through lease; it will expire", "lease", lease.ID, "err", err)
		}
	}()
	lctx := lease.Context(ctx)
	if err := p.fetchChildren(lctx, lease, repo, u, root, content, 0); err != nil {
		return err
	}
	o := store.ManifestOptions{MediaType: root.MediaType, Algorithm: root.Digest.Algorithm()}
	if isDigest(rt.arg) {
		o.Untagged = true
	} else {
		o.Tags = []string{refName(rt.name, rt.arg)}
	}
	err = p.s.txn("put_manifest", func() error {
		_, err := p.s.st.PutManifestWith(lctx, content, o)
		return err
	})
	if err != nil {
		return storeErr(err, codeManifestUnknown, codeManifestInvalid, "pull through %s:%s", rt.name, rt.arg)
	}
	p.s.log.Info("pulled through", "repository", rt.name, "ref", rt.arg, "digest", root.Digest, "upstream", u.Registry)
	return nil
}

// maxDepth bounds the nesting of indexes fetched from an upstream.
const maxDepth = 8

// fetchChildren fetches what the manifest content references into the
// layout, a few at a time: blobs, and child manifests with their own
// children (stored without a name: the root holds them).
func (p *puller) fetchChildren(ctx context.Context, lease *store.Lease, repo *remote.Repository, u *Upstream, desc v1.Descriptor, content []byte, depth int) error {
	if depth > maxDepth {
		return apiErr(http.StatusBadRequest, codeManifestInvalid, "upstream %s: %s: indexes nested deeper than %d", u.Registry, desc.Digest, maxDepth)
	}
	kids, err := store.ManifestChildren(desc.MediaType, content)
	if err != nil {
		return apiErr(http.StatusBadGateway, codeManifestInvalid, "upstream %s: manifest %s: %v", u.Registry, desc.Digest, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, k := range kids {
		if len(k.URLs) > 0 {
			continue // a non-distributable layer: not the registry's to serve
		}
		g.Go(func() error {
			if store.IsManifest(k.MediaType) {
				return p.fetchChildManifest(gctx, lease, repo, u, k, depth+1)
			}
			return p.ensureBlob(gctx, lease, repo, u, k)
		})
	}
	return g.Wait()
}

func (p *puller) fetchChildManifest(ctx context.Context, lease *store.Lease, repo *remote.Repository, u *Upstream, k v1.Descriptor, depth int) error {
	_, err, _ := p.flight.Do("c "+k.Digest.String(), func() (any, error) {
		if err := lease.Add(ctx, k); err != nil {
			return nil, storeErr(err, codeManifestUnknown, codeManifestInvalid, "pull through %s", k.Digest)
		}
		if ok, err := p.s.st.Exists(ctx, k); err == nil && ok {
			// Present (and now in the lease): its children are fetched
			// unless present too.
			b, err := p.s.st.FetchManifest(ctx, k)
			if err == nil {
				return nil, p.fetchChildren(ctx, lease, repo, u, k, b, depth)
			}
		}
		rc, err := repo.Fetch(ctx, k)
		if err != nil {
			return nil, upstreamErr(err, u, repo.Reference.Repository, k.Digest.String())
		}
		content, err := readAllLimited(rc, k.Size, p.s.opts.MaxManifestSize)
		rc.Close()
		if err == nil {
			err = verify(k, content)
		}
		if err != nil {
			return nil, upstreamErr(err, u, repo.Reference.Repository, k.Digest.String())
		}
		p.s.opts.Metrics.UpstreamFetch("manifest", int64(len(content)), nil)
		if err := p.fetchChildren(ctx, lease, repo, u, k, content, depth); err != nil {
			return nil, err
		}
		_, err = p.s.st.PutManifestWith(ctx, content, store.ManifestOptions{MediaType: k.MediaType, Algorithm: k.Digest.Algorithm()})
		return nil, storeErr(err, codeManifestUnknown, codeManifestInvalid, "pull through %s", k.Digest)
	})
	return err
}

// ensureBlob fetches the blob k into the layout unless it holds it, and
// puts it in the lease (first: a blob present but unreferenced is then
// safe from GC); concurrent calls for one blob share one fetch.
func (p *puller) ensureBlob(ctx context.Context, lease *store.Lease, repo *remote.Repository, u *Upstream, k v1.Descriptor) error {
	if err := lease.Add(ctx, k); err != nil {
		return storeErr(err, codeBlobUnknown, codeBlobUnknown, "pull through %s", k.Digest)
	}
	if ok, err := p.s.st.Exists(ctx, k); err == nil && ok {
		return nil
	}
	_, err, _ := p.flight.Do("b "+k.Digest.String(), func() (any, error) {
		if ok, err := p.s.st.Exists(ctx, k); err == nil && ok {
			return nil, nil
		}
		rc, err := repo.Blobs().Fetch(ctx, k)
		if err != nil {
			p.s.opts.Metrics.UpstreamFetch("blob", 0, err)
			return nil, upstreamErr(err, u, repo.Reference.Repository, k.Digest.String())
		}
		defer rc.Close()
		cr := &countingReader{r: rc}
		err = p.s.st.PutBlob(ctx, k, cr)
		p.s.opts.Metrics.UpstreamFetch("blob", cr.n, err)
		if err != nil {
			return nil, storeErr(err, codeBlobUnknown, codeBlobUnknown, "pull through blob %s from %s", k.Digest, u.Registry)
		}
		return nil, nil
	})
	return err
}

// blob makes sure the layout holds the blob d of the repository, fetching
// it from the upstream when it does not (under a lease of its own, which
// keeps it until a manifest references it). False when the repository
// has no upstream.
func (p *puller) blob(r *http.Request, rt route, d digest.Digest) (bool, error) {
	u, name, ok := p.upstreamFor(rt.name)
	if !ok {
		return false, nil
	}
	ctx := r.Context()
	desc := v1.Descriptor{Digest: d, Size: -1}
	if ok, err := p.s.st.Exists(ctx, desc); err == nil && ok {
		p.s.opts.Metrics.CacheHit("blob")
		return true, nil
	}
	p.s.opts.Metrics.CacheMiss("blob")
	repo, err := u.repository(name)
	if err != nil {
		return true, upstreamErr(err, u, name, d.String())
	}
	ch := p.flight.DoChan("B "+d.String(), func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		k, err := repo.Blobs().Resolve(fctx, d.String())
		if err != nil {
			return nil, upstreamErr(err, u, name, d.String())
		}
		lease, err := p.s.st.Lease(fctx, p.s.opts.UploadTTL)
		if err != nil {
			return nil, storeErr(err, codeBlobUnknown, codeBlobUnknown, "pull through blob %s", d)
		}
		return nil, p.ensureBlob(lease.Context(fctx), lease, repo, u, k)
	})
	select {
	case res := <-ch:
		return true, res.Err
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// upstreamErr maps an error of the upstream: not found there is 404, a
// registry that does not answer is 502 (the client may retry).
func upstreamErr(err error, u *Upstream, name, ref string) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	if errors.Is(err, errdef.ErrNotFound) {
		return &apiError{status: http.StatusNotFound, code: codeManifestUnknown, msg: fmt.Sprintf("%s:%s: not in the cache, nor upstream at %s", name, ref, u.Registry), cause: err}
	}
	if errors.Is(err, context.Canceled) {
		return &apiError{status: 499, code: codeUnavailable, msg: "canceled", cause: err}
	}
	return &apiError{status: http.StatusBadGateway, code: codeUnavailable, msg: fmt.Sprintf("%s:%s: not in the cache, and upstream %s failed", name, ref, u.Registry), cause: err}
}

// readAllLimited reads a manifest of size bytes (or, when size < 0, up to
// limit).
func readAllLimited(r io.Reader, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, fmt.Errorf("manifest of %d bytes, more than %d: %w", size, limit, store.ErrTooLarge)
	}
	n := limit
	if size >= 0 {
		n = size
	}
	b, err := io.ReadAll(io.LimitReader(r, n+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > n {
		return nil, fmt.Errorf("manifest longer than %d bytes: %w", n, store.ErrSizeMismatch)
	}
	return b, nil
}

// verify checks that content is what desc says.
func verify(desc v1.Descriptor, content []byte) error {
	if desc.Size >= 0 && int64(len(content)) != desc.Size {
		return fmt.Errorf("%s: %d bytes, descriptor says %d: %w", desc.Digest, len(content), desc.Size, store.ErrSizeMismatch)
	}
	if got := desc.Digest.Algorithm().FromBytes(content); got != desc.Digest {
		return fmt.Errorf("%s: content hashes to %s: %w", desc.Digest, got, store.ErrDigestMismatch)
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
