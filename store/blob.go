package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
)

// Exists reports whether the blob of desc is in the layout, with desc's
// size when desc says it (a negative size, or zero for a digest other than
// the empty blob's, is unknown: any size will do).
func (s *Store) Exists(ctx context.Context, desc v1.Descriptor) (bool, error) {
	if err := s.reading(ctx); err != nil {
		return false, err
	}
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return false, err
	}
	fi, err := s.lay.FS.Lstat(layout.BlobPath(desc.Digest))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("exists %s: %w", desc.Digest, err)
	}
	return fi.Mode().IsRegular() && (!sizeKnown(desc) || fi.Size() == desc.Size), nil
}

// Fetch opens the blob of desc. The reader checks size and digest as it is
// read: its last Read returns ErrSizeMismatch or ErrDigestMismatch instead of
// io.EOF when the content is not what desc says. Once ctx is done, its
// Reads fail with ctx's error.
func (s *Store) Fetch(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	p := layout.BlobPath(desc.Digest)
	f, err := s.lay.FS.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("fetch %s: %w", desc.Digest, errdef.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s (%s): %w", desc.Digest, p, err)
	}
	if layout.IsManifest(desc.MediaType) {
		s.recordUse(desc.Digest) // kept when it is a root: prune's last use
	}
	return &verifyingReadCloser{ctx: ctx, v: layout.NewVerifyReader(f, desc), c: f}, nil
}

type verifyingReadCloser struct {
	ctx context.Context
	v   *layout.VerifyReader
	c   io.Closer
}

func (r *verifyingReadCloser) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.v.Read(p)
	if err == io.EOF {
		if verr := r.v.Verify(); verr != nil {
			return n, verr
		}
	}
	return n, err
}

func (r *verifyingReadCloser) Close() error { return r.c.Close() }

// PutBlob streams r into the layout as the blob of desc: into a temp file,
// hashing while writing, then the digest and size are verified, the file is
// synced, renamed into blobs/<alg>/<hex> and the directory synced. A blob
// already present is not written again (its name is made durable: its
// writer may not have synced the directory yet). desc.Size < 0 means
// unknown.
// The blob is not referenced until a manifest that uses it is tagged: under
// a lease (WithLease), it is added to the lease first, so that no GC or
// prune deletes it before then.
func (s *Store) PutBlob(ctx context.Context, desc v1.Descriptor, r io.Reader) error {
	if err := s.putBlob(ctx, desc, r); err != nil {
		return fmt.Errorf("put blob %s: %w", desc.Digest, err)
	}
	return nil
}

func (s *Store) putBlob(ctx context.Context, desc v1.Descriptor, r io.Reader) error {
	s.ingests.RLock()
	defer s.ingests.RUnlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return err
	}
	// Under a lease, the blob is in the lease before it can be seen (or,
	// when present, before anyone may delete it in the meantime).
	if id, ok := LeaseFromContext(ctx); ok {
		if err := s.leaseBlobs(ctx, id, []digest.Digest{desc.Digest}); err != nil {
			return err
		}
	}
	final := layout.BlobPath(desc.Digest)
	if fi, err := s.lay.FS.Lstat(final); err == nil && fi.Mode().IsRegular() && (desc.Size < 0 || fi.Size() == desc.Size) {
		s.log.Debug("blob already present", attrDigest, desc.Digest)
		// Present is as good as written only once its name is durable: a
		// caller may acknowledge the blob by itself (a registry's 201),
		// before any commit references it.
		return s.durableBlobName(final, fi)
	}
	if _, err := fsio.MkdirDurable(s.lay.FS, layout.StateDir); err != nil {
		return s.check(err)
	}
	if _, err := fsio.MkdirDurable(s.lay.FS, protocol.IngestDir); err != nil {
		return s.check(err)
	}
	tok, err := s.owner()
	if err != nil {
		return err
	}
	tmp, err := s.lay.FS.CreateTemp(protocol.IngestDir, protocol.TempPrefix(tok))
	if err != nil {
		return err
	}
	published := false
	defer func() {
		if !published {
			tmp.Close()
			if err := s.lay.FS.Remove(tmp.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("cannot remove ingest temp file", "path", tmp.Name(), "err", err)
			}
		}
	}()
	vr := layout.NewVerifyReader(&ctxReader{ctx: ctx, r: r}, desc)
	// The hash and the write overlap (ingestCopy), and the disk writes a
	// large blob while it is still being hashed and written (WriteBehind),
	// instead of all of it at the fsync below.
	if _, err := ingestCopy(fsio.WriteBehind(tmp), vr); err != nil {
		return err
	}
	if err := vr.Verify(); err != nil {
		return err
	}
	if err := fsio.SyncFileFor(s.lay.FS, fsio.SyncIngestFile, tmp); err != nil {
		return s.poison(err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	crash.Point(crash.IngestWritten)
	algDir := layout.BlobsDir + "/" + desc.Digest.Algorithm().String()
	if _, err := fsio.MkdirDurable(s.lay.FS, layout.BlobsDir); err != nil {
		return s.check(err)
	}
	if _, err := fsio.MkdirDurable(s.lay.FS, algDir); err != nil {
		return s.check(err)
	}
	if err := s.lay.FS.Rename(tmp.Name(), final); err != nil {
		// A rename that reports an error may have taken place all the
		// same (a network file system can): the blob's entry would be in
		// blobs/ unsynced, and a retry, finding the blob present, would
		// not sync it. Whatever has its name now is made durable.
		if fi, lerr := s.lay.FS.Lstat(final); lerr == nil && fi.Mode().IsRegular() {
			if serr := fsio.SyncDirFor(s.lay.FS, fsio.SyncIngestDir, algDir); serr != nil {
				return s.poison(fmt.Errorf("%w (and then %w)", err, serr))
			}
		}
		return err
	}
	published = true
	crash.Point(crash.IngestRenamed)
	if err := s.syncBlobDir(algDir, final); err != nil {
		return s.poison(err)
	}
	crash.Point(crash.IngestSynced)
	s.log.Debug("blob written", attrDigest, desc.Digest, "size", vr.N())
	return nil
}

// durableBlobName makes sure the name of a blob found present (fi)
// survives a power cut before a transaction references it, or before
// PutBlob, MountBlob or an upload's Commit returns for it (a registry
// acknowledges each blob with a 201 of its own): its writer may have died
// between its rename into blobs/ and the sync of the directory (another
// process, or a handle poisoned by that sync; PutBlob and Exists then find
// it present), or still be between the two (a concurrent push of the same
// blob), leaving a name a power cut takes back. The directory is synced
// unless this handle synced it after the name appeared (by its ctime;
// always where the file system gives none), or renamed the name in itself
// and synced it.
func (s *Store) durableBlobName(final string, fi fs.FileInfo) error {
	dir := fsio.Dir(final)
	ctime := fsio.StampOf(fi).Ctime
	s.dirSynced.Lock()
	since := s.dirSynced.m[dir]
	_, own := s.dirSynced.recent[final]
	s.dirSynced.Unlock()
	if own || ctime != 0 && ctime < since {
		return nil
	}
	if err := s.syncBlobDir(dir); err != nil {
		// Poisoned at once: a group commit retries its members alone,
		// and a sync is never tried again after it failed.
		return s.poison(err)
	}
	return nil
}

// MountBlob reports whether the blob of desc is in the layout, as Exists
// does, for a caller that acknowledges it as stored when it is (a
// registry's cross-repository mount): its name is then made durable first,
// as PutBlob does for a blob it finds present, unless this handle knows it
// is (see durableBlobName). A negative size is unknown: any size will do.
func (s *Store) MountBlob(ctx context.Context, desc v1.Descriptor) (bool, error) {
	s.ingests.RLock()
	defer s.ingests.RUnlock()
	if err := s.writable(); err != nil {
		return false, fmt.Errorf("mount %s: %w", desc.Digest, err)
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return false, fmt.Errorf("mount: %w", err)
	}
	final := layout.BlobPath(desc.Digest)
	fi, err := s.lay.FS.Lstat(final)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mount %s: %w", desc.Digest, err)
	}
	if !fi.Mode().IsRegular() || sizeKnown(desc) && fi.Size() != desc.Size {
		return false, nil
	}
	if err := s.durableBlobName(final, fi); err != nil {
		return false, fmt.Errorf("mount %s: %w", desc.Digest, err)
	}
	return true, nil
}

// blobNameMargin is how much earlier than its sync a blob directory is
// taken as durable: a file system's timestamps come from a coarse clock,
// which may lag the one syncBlobDir reads.
const blobNameMargin = time.Second

// syncBlobDir syncs a blob directory, after the rename of names into it
// (an ingest) or for names found there, and notes that every name it held
// a little before is durable, and names too.
func (s *Store) syncBlobDir(dir string, names ...string) error {
	before := time.Now().Add(-blobNameMargin).UnixNano()
	if err := fsio.SyncDirFor(s.lay.FS, fsio.SyncIngestDir, dir); err != nil {
		return err
	}
	now := time.Now().UnixNano()
	s.dirSynced.Lock()
	defer s.dirSynced.Unlock()
	if s.dirSynced.m == nil {
		s.dirSynced.m, s.dirSynced.recent = map[string]int64{}, map[string]int64{}
	}
	s.dirSynced.m[dir] = max(s.dirSynced.m[dir], before)
	for p, at := range s.dirSynced.recent {
		if at < s.dirSynced.m[fsio.Dir(p)] {
			delete(s.dirSynced.recent, p) // renamed in before that: covered by the time
		}
	}
	for _, n := range names {
		s.dirSynced.recent[n] = now
	}
	return nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// PutManifest stores a manifest or index and, when names are given, tags it
// in the same transaction. Every blob it references must already be in the
// layout. It returns the manifest's descriptor.
func (s *Store) PutManifest(ctx context.Context, mediaType string, content []byte, names ...string) (v1.Descriptor, error) {
	return s.PutManifestWith(ctx, content, ManifestOptions{MediaType: mediaType, Tags: names})
}

// ManifestOptions tune PutManifestWith.
type ManifestOptions struct {
	// MediaType is the manifest's media type; its content's mediaType
	// field, when it has one, must agree.
	MediaType string
	// Algorithm names the manifest by a digest of this algorithm (sha256
	// when empty): a registry client may push one as sha512.
	Algorithm digest.Algorithm
	// Tags name it in index.json, in one transaction with its write.
	Tags []string
	// Untagged, without Tags, makes it an untagged entry of index.json
	// (unless an entry holds it already), so that it stays without a
	// tag: a manifest pushed by digest.
	Untagged bool
}

// PutManifestWith stores a manifest or index, as PutManifest does, named
// by the digest algorithm of o, and tags it or keeps it as an untagged
// entry as o says. Every blob it references must already be in the layout
// (ErrMissingDependency), but its subject (OCI 1.1: a referrer may come
// before what it refers to) and a layer with URLs (a non-distributable
// layer). It returns the manifest's descriptor.
func (s *Store) PutManifestWith(ctx context.Context, content []byte, o ManifestOptions) (v1.Descriptor, error) {
	alg := o.Algorithm
	if alg == "" {
		alg = digest.SHA256
	}
	if !alg.Available() {
		return v1.Descriptor{}, fmt.Errorf("put manifest: digest algorithm %q: %w", alg, errdef.ErrInvalidDigest)
	}
	mediaType := o.MediaType
	desc := v1.Descriptor{MediaType: mediaType, Digest: alg.FromBytes(content), Size: int64(len(content))}
	if !layout.IsManifest(mediaType) {
		return desc, fmt.Errorf("put manifest: media type %q is not a manifest or index: %w", mediaType, errdef.ErrInvalidArgument)
	}
	for _, n := range o.Tags {
		if err := validTag(n); err != nil {
			return desc, fmt.Errorf("put manifest %s: %w", desc.Digest, err)
		}
	}
	kids, err := layout.ParseChildrenAs("manifest "+desc.Digest.String(), mediaType, content)
	if err != nil {
		return desc, fmt.Errorf("put manifest: %w", err)
	}
	if kids.MediaType != "" && kids.MediaType != mediaType {
		return desc, fmt.Errorf("put manifest %s: content says media type %s, caller says %s: %w", desc.Digest, kids.MediaType, mediaType, errdef.ErrInvalidArgument)
	}
	if kids.Subject != nil {
		desc.ArtifactType = artifactTypeOf(content, kids)
	}
	ds := []digest.Digest{desc.Digest}
	for _, k := range kids.Refs {
		ds = append(ds, k.Digest)
	}
	// In use by this handle until the transaction references them: its
	// own GC and prunes leave them (another process's respect leases).
	defer s.use(ds)()
	if id, ok := LeaseFromContext(ctx); ok {
		// The manifest and its children in one commit, before they are checked.
		if err := s.leaseBlobs(ctx, id, ds); err != nil {
			return desc, fmt.Errorf("put manifest %s: %w", desc.Digest, err)
		}
	}
	for _, k := range kids.Refs {
		if ok, err := s.Exists(ctx, k); err != nil || !ok {
			if err == nil && len(k.URLs) > 0 {
				continue
			}
			if err == nil {
				err = errdef.ErrMissingDependency
			}
			return desc, fmt.Errorf("put manifest %s: blob %s: %w", desc.Digest, k.Digest, err)
		}
	}
	if len(o.Tags) == 0 && !o.Untagged {
		if err := s.PutBlob(ctx, desc, bytes.NewReader(content)); err != nil {
			return desc, fmt.Errorf("put manifest: %w", err)
		}
		return desc, nil
	}
	// The transaction checks under the writer lock that every blob it
	// references is present; a GC between the write and the transaction
	// may have removed the manifest's own blob (present before, and
	// unreferenced): it is written again.
	for try := 0; ; try++ {
		if err := s.PutBlob(ctx, desc, bytes.NewReader(content)); err != nil {
			return desc, fmt.Errorf("put manifest: %w", err)
		}
		if len(o.Tags) > 0 {
			err = s.Tag(ctx, desc, o.Tags...)
		} else {
			err = s.AddUntagged(ctx, desc)
		}
		if err == nil {
			return desc, nil
		}
		if try == 2 || !errors.Is(err, errdef.ErrMissingDependency) {
			return desc, fmt.Errorf("put manifest: %w", err)
		}
		if ok, xerr := s.Exists(ctx, desc); xerr != nil || ok {
			return desc, fmt.Errorf("put manifest: %w", err) // a child went missing
		}
	}
}

// artifactTypeOf is a referrer's artifact type as the referrers API gives
// it: its artifactType, else its config's media type.
func artifactTypeOf(content []byte, kids layout.Children) string {
	var m struct {
		ArtifactType string `json:"artifactType"`
	}
	if json.Unmarshal(content, &m) == nil && m.ArtifactType != "" {
		return m.ArtifactType
	}
	if kids.Config != nil {
		return kids.Config.MediaType
	}
	return ""
}
