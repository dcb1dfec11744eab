package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
)

// ErrUploadOffset: a chunk does not start where the upload ends.
var ErrUploadOffset = errdef.ErrUploadOffset

// DefaultUploadTTL is how long an upload session lives without a write.
const DefaultUploadTTL = time.Hour

// Upload is a resumable blob upload: the chunked upload of the OCI
// distribution spec, whose digest is known only at its end. Its bytes are
// staged in one file of the ingest directory (.ocistore/ingest/uploads/ID),
// and the session is a lease of the journal with the same ID: it survives
// a restart of its writer (Store.ResumeUpload). Commit verifies the digest, syncs the file and renames it
// into blobs/ as PutBlob does, and holds the blob (Store.Hold) for the
// session's TTL. A session that nobody writes to expires with its lease
// (each Write renews it); GC then removes its file.
//
// A session lives at least its TTL after its last write, and at most twice
// that. Writes are not synced: a crash may take back a suffix of what was
// written (a power cut), which the client learns from Size when it
// resumes; Commit syncs before the blob becomes visible, and verifies the
// digest of every byte, so nothing a crash damaged can become a blob.
//
// An Upload is safe for concurrent use; its writes are serialized.
type Upload struct {
	ID string

	s     *Store
	lease *Lease
	ttl   time.Duration

	mu   sync.Mutex
	f    fsio.RWFile // nil once committed or cancelled
	size int64
	h    hash.Hash // sha256 of [0, size), nil when not known (resumed)
}

// uploadPath is the staging file of the upload id.
func uploadPath(id string) string { return protocol.UploadsDir + "/" + id }

// validUploadID reports whether id can name an upload: the lease IDs the
// store makes (128 random bits in hex), so that no path can be built
// from a request.
func validUploadID(id string) error {
	if !fsio.IsToken(id) {
		return fmt.Errorf("upload id %q: %w", id, errdef.ErrInvalidArgument)
	}
	return nil
}

// NewUpload starts an upload session that expires ttl after its last
// write (DefaultUploadTTL when ttl is zero).
func (s *Store) NewUpload(ctx context.Context, ttl time.Duration) (*Upload, error) {
	if ttl == 0 {
		ttl = DefaultUploadTTL
	}
	s.ingests.RLock()
	defer s.ingests.RUnlock()
	if err := s.writable(); err != nil {
		return nil, fmt.Errorf("new upload: %w", err)
	}
	fsys, ok := s.lay.FS.(fsio.RWOpener)
	if !ok {
		return nil, fmt.Errorf("new upload: the layout's file system cannot hold one: %w", errors.ErrUnsupported)
	}
	l, err := s.Lease(ctx, 2*ttl) // see keepAlive
	if err != nil {
		return nil, fmt.Errorf("new upload: %w", err)
	}
	f, err := s.createUploadFile(fsys, l.ID)
	if err != nil {
		if rerr := l.Release(context.WithoutCancel(ctx)); rerr != nil {
			s.log.Warn("cannot release the lease of a failed upload; it will expire", attrLease, l.ID, "err", rerr)
		}
		return nil, fmt.Errorf("new upload %s: %w", l.ID, err)
	}
	s.log.Debug("upload started", "upload", l.ID, "expires", l.Expires)
	return &Upload{ID: l.ID, s: s, lease: l, ttl: ttl, f: f, h: sha256.New()}, nil
}

func (s *Store) createUploadFile(fsys fsio.RWOpener, id string) (fsio.RWFile, error) {
	for _, dir := range []string{layout.StateDir, protocol.IngestDir, protocol.UploadsDir} {
		if _, err := fsio.MkdirDurable(s.lay.FS, dir); err != nil {
			return nil, s.check(err)
		}
	}
	// The file's name is not synced: a session lost with it to a power
	// cut is one its client resumes from nothing (Size 0 is not found:
	// ResumeUpload says the session is unknown, and the client starts
	// again).
	return fsys.OpenRW(uploadPath(id), true)
}

// ResumeUpload reopens the upload session id (after a restart of the
// process that began it, or from another handle). ErrNotFound when it
// never existed, was committed or cancelled, or expired.
func (s *Store) ResumeUpload(ctx context.Context, id string, ttl time.Duration) (*Upload, error) {
	if ttl == 0 {
		ttl = DefaultUploadTTL
	}
	if err := validUploadID(id); err != nil {
		return nil, fmt.Errorf("resume upload: %w", err)
	}
	if err := s.writable(); err != nil {
		return nil, fmt.Errorf("resume upload %s: %w", id, err)
	}
	fsys, ok := s.lay.FS.(fsio.RWOpener)
	if !ok {
		return nil, fmt.Errorf("resume upload %s: %w", id, errors.ErrUnsupported)
	}
	var l journal.Lease
	now := s.now()
	err := s.journalRead(func(tx *journal.Tx) error {
		var err error
		l, err = liveLease(tx, id, now)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("resume upload %s: %w", id, err)
	}
	f, err := fsys.OpenRW(uploadPath(id), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("resume upload %s: %w", id, errdef.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("resume upload %s: %w", id, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("resume upload %s: %w", id, err)
	}
	return &Upload{ID: id, s: s, lease: s.leaseOf(l), ttl: ttl, f: f, size: fi.Size()}, nil
}

// Size is how many bytes the upload holds.
func (u *Upload) Size() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.size
}

// Expires is when the session ends unless written to.
func (u *Upload) Expires() time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lease.Expires
}

// errUploadDone: the session was committed or cancelled.
var errUploadDone = fmt.Errorf("upload session ended: %w", errdef.ErrNotFound)

// Write appends what r gives to the upload, which must hold exactly off
// bytes (ErrUploadOffset otherwise: a chunk out of order), and returns how
// many it appended. On an error the bytes appended before it stay: Size
// says where the upload now ends.
func (u *Upload) Write(ctx context.Context, off int64, r io.Reader) (int64, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.f == nil {
		return 0, fmt.Errorf("upload %s: write: %w", u.ID, errUploadDone)
	}
	if off != u.size {
		return 0, fmt.Errorf("upload %s: write at %d: it holds %d bytes: %w", u.ID, off, u.size, ErrUploadOffset)
	}
	if err := u.s.writable(); err != nil {
		return 0, fmt.Errorf("upload %s: write: %w", u.ID, err)
	}
	if err := u.keepAlive(ctx); err != nil {
		return 0, fmt.Errorf("upload %s: write: %w", u.ID, err)
	}
	buf := make([]byte, 256<<10)
	var n int64
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			w, werr := u.f.WriteAt(buf[:m], u.size)
			if w > 0 && u.h != nil {
				u.h.Write(buf[:w])
			}
			u.size += int64(w)
			n += int64(w)
			if werr != nil {
				return n, fmt.Errorf("upload %s: write: %w", u.ID, werr)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("upload %s: read the chunk: %w", u.ID, rerr)
		}
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("upload %s: write: %w", u.ID, err)
		}
	}
}

// keepAlive keeps the session alive for at least ttl after this write:
// when less than ttl of its lease is left, the lease is renewed for twice
// ttl, so that a session written to steadily costs one commit per ttl.
func (u *Upload) keepAlive(ctx context.Context) error {
	if u.lease.Expires.Sub(u.s.now()) >= u.ttl {
		return nil
	}
	return u.lease.Renew(ctx, 2*u.ttl)
}

// Commit ends the upload: the bytes must have the digest (and, when
// desc.Size >= 0, the size) of desc. They are synced and renamed into
// blobs/ (a blob already present is kept, its name made durable, and the
// staged copy dropped). The session's lease ends, and the blob is held
// (Hold) for the session's TTL, so that the manifest that references it
// may come later. On ErrDigestMismatch or ErrSizeMismatch the session
// stays as it was.
func (u *Upload) Commit(ctx context.Context, desc v1.Descriptor) (v1.Descriptor, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	d, err := u.commit(ctx, desc)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("upload %s: commit %s: %w", u.ID, desc.Digest, err)
	}
	return d, nil
}

func (u *Upload) commit(ctx context.Context, desc v1.Descriptor) (v1.Descriptor, error) {
	s := u.s
	s.ingests.RLock()
	defer s.ingests.RUnlock()
	if u.f == nil {
		return v1.Descriptor{}, errUploadDone
	}
	if err := s.writable(); err != nil {
		return v1.Descriptor{}, err
	}
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return v1.Descriptor{}, err
	}
	if desc.Size >= 0 && desc.Size != u.size {
		return v1.Descriptor{}, fmt.Errorf("%d bytes uploaded, %d expected: %w", u.size, desc.Size, errdef.ErrSizeMismatch)
	}
	got, err := u.digest(ctx, desc.Digest.Algorithm())
	if err != nil {
		return v1.Descriptor{}, err
	}
	if got != desc.Digest {
		return v1.Descriptor{}, fmt.Errorf("the upload's digest is %s: %w", got, errdef.ErrDigestMismatch)
	}
	out := v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: u.size}
	// In one commit, before anyone can see the blob (as PutBlob puts it in
	// a lease first): the blob into the store's hold lease for the
	// session's TTL (Hold), and the session's lease ended. The staged file
	// is this handle's until it is renamed: GC skips uploads committing.
	s.uploadCommitting(u.ID, 1)
	defer s.uploadCommitting(u.ID, -1)
	now := s.now()
	err = s.journalWrite(ctx, func(tx *journal.Tx) error {
		if _, err := liveLease(tx, u.ID, now); err != nil {
			return err
		}
		if err := s.hold(tx, u.ttl, []digest.Digest{desc.Digest}); err != nil {
			return err
		}
		return tx.DeleteLease(u.ID)
	})
	if err != nil {
		return v1.Descriptor{}, err
	}
	s.leaseMu.Lock()
	delete(s.leaseMu.known, u.ID)
	s.leaseMu.Unlock()
	final := layout.BlobPath(desc.Digest)
	staged := uploadPath(u.ID)
	if fi, err := s.lay.FS.Lstat(final); err == nil && fi.Mode().IsRegular() && fi.Size() == u.size {
		// Its writer may not have synced the directory yet (or died
		// first): the commit is acknowledged by itself (a 201).
		if err := s.durableBlobName(final, fi); err != nil {
			return v1.Descriptor{}, err
		}
		u.close()
		if err := s.lay.FS.Remove(staged); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("cannot remove a committed upload's staged copy; GC will", "path", staged, "err", err)
		}
		return out, nil
	}
	if err := fsio.SyncFileFor(s.lay.FS, fsio.SyncIngestFile, namedRW{u.f, staged}); err != nil {
		return v1.Descriptor{}, s.poison(err)
	}
	crash.Point(crash.IngestWritten)
	algDir := layout.BlobsDir + "/" + desc.Digest.Algorithm().String()
	for _, dir := range []string{layout.BlobsDir, algDir} {
		if _, err := fsio.MkdirDurable(s.lay.FS, dir); err != nil {
			return v1.Descriptor{}, s.check(err)
		}
	}
	if err := s.lay.FS.Rename(staged, final); err != nil {
		if fi, lerr := s.lay.FS.Lstat(final); lerr == nil && fi.Mode().IsRegular() {
			if serr := fsio.SyncDirFor(s.lay.FS, fsio.SyncIngestDir, algDir); serr != nil {
				return v1.Descriptor{}, s.poison(fmt.Errorf("%w (and then %w)", err, serr))
			}
		}
		return v1.Descriptor{}, err
	}
	u.close()
	crash.Point(crash.IngestRenamed)
	if err := s.syncBlobDir(algDir, final); err != nil {
		return v1.Descriptor{}, s.poison(err)
	}
	crash.Point(crash.IngestSynced)
	s.log.Debug("upload committed", "upload", u.ID, attrDigest, desc.Digest, "size", u.size)
	return out, nil
}

// digest hashes the upload with alg: the running sha256 when it has one,
// else every byte of the file.
func (u *Upload) digest(ctx context.Context, alg digest.Algorithm) (digest.Digest, error) {
	if alg == digest.SHA256 && u.h != nil {
		return digest.NewDigestFromBytes(alg, u.h.Sum(nil)), nil
	}
	if !alg.Available() {
		return "", fmt.Errorf("digest algorithm %q: %w", alg, errdef.ErrInvalidDigest)
	}
	d := alg.Digester()
	if _, err := io.Copy(d.Hash(), &ctxReader{ctx: ctx, r: io.NewSectionReader(u.f, 0, u.size)}); err != nil {
		return "", fmt.Errorf("read the staged upload: %w", err)
	}
	return d.Digest(), nil
}

// close closes the staging file.
func (u *Upload) close() {
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
}

// Close releases the session's file without ending it: ResumeUpload
// opens it again.
func (u *Upload) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.close()
	return nil
}

// Cancel ends the upload, removing what it staged and releasing its
// lease (what a commit put in it is then unprotected).
func (u *Upload) Cancel(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.close()
	staged := uploadPath(u.ID)
	if err := u.s.lay.FS.Remove(staged); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("upload %s: cancel: %w", u.ID, err)
	}
	if err := u.lease.Release(ctx); err != nil {
		return fmt.Errorf("upload %s: cancel: %w", u.ID, err)
	}
	return nil
}

// uploadCommitting counts the commits of the upload id running in this
// handle (delta +1 or -1): GC leaves their staging files alone, whatever
// their lease says (a commit ends the lease before it renames the file).
func (s *Store) uploadCommitting(id string, delta int) {
	s.committing.Lock()
	defer s.committing.Unlock()
	if s.committing.m == nil {
		s.committing.m = map[string]int{}
	}
	if s.committing.m[id] += delta; s.committing.m[id] <= 0 {
		delete(s.committing.m, id)
	}
}

// uploadIsCommitting reports whether a commit of the upload id runs in
// this handle.
func (s *Store) uploadIsCommitting(id string) bool {
	s.committing.Lock()
	defer s.committing.Unlock()
	return s.committing.m[id] > 0
}

// namedRW gives an upload's file the name the sync switch reports.
type namedRW struct {
	fsio.RWFile
	name string
}

func (n namedRW) Name() string                { return n.name }
func (n namedRW) Write(p []byte) (int, error) { return 0, errors.ErrUnsupported }
