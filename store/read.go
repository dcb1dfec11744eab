package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// The read path of a server: random access to blobs, the descriptor of
// any blob, any manifest by digest, and the referrers of a subject.

// BlobReader reads one blob at random: an io.ReadSeeker for
// http.ServeContent (Range requests answered with 206) and an io.ReaderAt,
// of a known size. It does not verify the content as it reads (random
// reads cannot): Fetch is the verified sequential reader. Once the context
// of OpenBlob ends, its reads fail with the context's error.
type BlobReader struct {
	ctx  context.Context
	f    fsio.File
	desc v1.Descriptor
	off  int64
}

// Read reads from the current offset.
func (r *BlobReader) Read(p []byte) (int, error) {
	if r.off >= r.desc.Size {
		return 0, io.EOF
	}
	n, err := r.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// ReadAt reads len(p) bytes at off (io.ReaderAt).
func (r *BlobReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("blob %s: read at %d: %w", r.desc.Digest, off, errdef.ErrInvalidArgument)
	}
	if off >= r.desc.Size {
		return 0, io.EOF
	}
	if rest := r.desc.Size - off; int64(len(p)) > rest {
		p = p[:rest]
		n, err := r.f.ReadAt(p, off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return r.f.ReadAt(p, off)
}

// Seek sets the offset of the next Read (io.Seeker).
func (r *BlobReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.desc.Size
	default:
		return 0, fmt.Errorf("blob %s: seek whence %d: %w", r.desc.Digest, whence, errdef.ErrInvalidArgument)
	}
	if offset < 0 {
		return 0, fmt.Errorf("blob %s: seek to %d: %w", r.desc.Digest, offset, errdef.ErrInvalidArgument)
	}
	r.off = offset
	return offset, nil
}

// Size is the blob's size in bytes.
func (r *BlobReader) Size() int64 { return r.desc.Size }

// Descriptor is the blob's descriptor, its size filled in.
func (r *BlobReader) Descriptor() v1.Descriptor { return r.desc }

// File is the blob's open file when the layout is on the operating
// system's file system, else nil: a server may hand it to sendfile (an
// io.Copy of it to a TCP connection does). Reading it moves no offset of
// the BlobReader; closing it is the BlobReader's Close.
func (r *BlobReader) File() *os.File {
	f, _ := r.f.(*os.File)
	return f
}

// Close closes the blob's file.
func (r *BlobReader) Close() error { return r.f.Close() }

// sizeKnown reports whether desc says its blob's size: a positive size, or
// zero for the digest of no bytes (a zero Size is otherwise the zero value
// of a descriptor that says nothing).
func sizeKnown(desc v1.Descriptor) bool {
	if desc.Size != 0 {
		return desc.Size > 0
	}
	return desc.Digest.Validate() == nil && desc.Digest == desc.Digest.Algorithm().FromBytes(nil)
}

// OpenBlob opens the blob of desc for random access. desc's size may be
// unknown (negative, or zero for a digest that is not the empty blob's):
// the reader's Size and Descriptor say it; a known size that differs is
// ErrSizeMismatch. A manifest's last use is recorded, as by Fetch.
func (s *Store) OpenBlob(ctx context.Context, desc v1.Descriptor) (*BlobReader, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return nil, fmt.Errorf("open blob: %w", err)
	}
	p := layout.BlobPath(desc.Digest)
	f, err := s.lay.FS.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open blob %s: %w", desc.Digest, errdef.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open blob %s (%s): %w", desc.Digest, p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open blob %s (%s): %w", desc.Digest, p, err)
	}
	if sizeKnown(desc) && fi.Size() != desc.Size {
		f.Close()
		return nil, fmt.Errorf("open blob %s: %d bytes on disk, descriptor says %d: %w", desc.Digest, fi.Size(), desc.Size, errdef.ErrSizeMismatch)
	}
	desc.Size = fi.Size()
	if layout.IsManifest(desc.MediaType) {
		s.recordUse(desc.Digest)
	}
	return &BlobReader{ctx: ctx, f: f, desc: desc}, nil
}

// Stat returns the descriptor of the blob d: its digest and size, and, for
// a manifest or index, its media type, artifact type and annotations, from
// its content. Any other blob has media type "application/octet-stream".
// Only a blob that starts as JSON does and is small enough to be a
// manifest is read whole. ErrNotFound when the layout does not hold it.
func (s *Store) Stat(ctx context.Context, d digest.Digest) (v1.Descriptor, error) {
	if err := s.reading(ctx); err != nil {
		return v1.Descriptor{}, err
	}
	desc, err := s.stat(d)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("stat %s: %w", d, err)
	}
	return desc, nil
}

func (s *Store) stat(d digest.Digest) (v1.Descriptor, error) {
	if err := layout.ValidateDigest(d); err != nil {
		return v1.Descriptor{}, err
	}
	p := layout.BlobPath(d)
	f, err := s.lay.FS.Open(p) // a regular file only, never followed
	if errors.Is(err, fs.ErrNotExist) {
		return v1.Descriptor{}, errdef.ErrNotFound
	}
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %w", p, err)
	}
	desc := v1.Descriptor{MediaType: mediaTypeOctetStream, Digest: d, Size: fi.Size()}
	if desc.Size > MaxManifestSize || !startsAsObject(f) {
		return desc, nil
	}
	b, err := s.readManifest(desc)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if m, ok := sniffManifest(b); ok {
		desc.MediaType, desc.ArtifactType, desc.Annotations = m.mediaType, m.artifactType(), m.Annotations
	}
	return desc, nil
}

const mediaTypeOctetStream = "application/octet-stream"

// startsAsObject reports whether the first byte of f that is not JSON
// white space opens an object, as a manifest's does: a layer or any other
// binary blob is then described without being read.
func startsAsObject(f io.ReaderAt) bool {
	var head [512]byte
	n, _ := f.ReadAt(head[:], 0)
	for _, c := range head[:n] {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c == '{'
	}
	return false
}

// sniffed is what sniffManifest learns of a blob that is a manifest.
type sniffed struct {
	mediaType    string
	ArtifactType string            `json:"artifactType"`
	Config       *v1.Descriptor    `json:"config"`
	Subject      *v1.Descriptor    `json:"subject"`
	Annotations  map[string]string `json:"annotations"`
}

// artifactType is the artifact type of a manifest as the referrers API
// gives it: its artifactType, else its config's media type.
func (m sniffed) artifactType() string {
	if m.ArtifactType == "" && m.Config != nil && m.mediaType == v1.MediaTypeImageManifest {
		return m.Config.MediaType
	}
	return m.ArtifactType
}

// sniffManifest parses b as encoding/json reads it (as every other tool
// does) and says whether it is a manifest or an index, and which: its
// mediaType when it names one, else an OCI index when it has manifests, an
// OCI image manifest when it has a config and layers.
func sniffManifest(b []byte) (sniffed, bool) {
	var probe struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Layers    json.RawMessage `json:"layers"`
		Blobs     json.RawMessage `json:"blobs"`
	}
	var m sniffed
	if json.Unmarshal(b, &probe) != nil || json.Unmarshal(b, &m) != nil {
		return sniffed{}, false
	}
	switch {
	case layout.IsManifest(probe.MediaType):
		m.mediaType = probe.MediaType
	case probe.MediaType != "":
		return sniffed{}, false
	case probe.Manifests != nil:
		m.mediaType = v1.MediaTypeImageIndex
	case m.Config != nil && probe.Layers != nil:
		m.mediaType = v1.MediaTypeImageManifest
	default:
		return sniffed{}, false
	}
	return m, true
}

// resolveHeld is Resolve's answer for a digest that no entry of index.json
// has: the descriptor of a manifest the layout holds (a platform manifest
// of an index, a referrer pushed without a tag), ErrNotFound for anything
// else.
func (s *Store) resolveHeld(d digest.Digest) (v1.Descriptor, error) {
	desc, err := s.stat(d)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if !layout.IsManifest(desc.MediaType) {
		return v1.Descriptor{}, fmt.Errorf("blob %s is not a manifest: %w", d, errdef.ErrNotFound)
	}
	return desc, nil
}

// Referrers returns the descriptors of the manifests of index.json whose
// subject is the manifest subject (OCI 1.1 referrers), with artifactType
// set to the filter when not empty. The set comes from the journal (no
// scan of the layout); each referrer's manifest is read for its artifact
// type and annotations, as the referrers API gives them. A layout with no
// journal yet has none that ocistore knows of.
func (s *Store) Referrers(ctx context.Context, subject digest.Digest, artifactType string) ([]v1.Descriptor, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	if err := layout.ValidateDigest(subject); err != nil {
		return nil, fmt.Errorf("referrers: %w", err)
	}
	var refs []digest.Digest
	if err := s.journalRead(func(tx *journal.Tx) error {
		refs = tx.Referrers(subject)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", subject, err)
	}
	out := []v1.Descriptor{}
	for _, d := range refs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		desc, err := s.stat(d) // the manifest says its artifact type
		if errors.Is(err, errdef.ErrNotFound) {
			continue // removed since the journal's last commit
		}
		if err != nil {
			return nil, fmt.Errorf("referrers of %s: %s: %w", subject, d, err)
		}
		if artifactType != "" && desc.ArtifactType != artifactType {
			continue
		}
		out = append(out, desc)
	}
	slices.SortFunc(out, func(a, b v1.Descriptor) int { return cmp.Compare(a.Digest, b.Digest) })
	return out, nil
}

// Referenced reports whether the graph of index.json reaches the blob d
// (an entry, or a blob an entry's graph uses), from the journal's counts:
// no scan of the layout. On a layout not adopted yet (a read-only handle)
// it is false for every blob.
func (s *Store) Referenced(ctx context.Context, d digest.Digest) (bool, error) {
	if err := s.reading(ctx); err != nil {
		return false, err
	}
	if err := layout.ValidateDigest(d); err != nil {
		return false, fmt.Errorf("referenced: %w", err)
	}
	var n uint64
	if err := s.journalRead(func(tx *journal.Tx) error {
		r, err := tx.GetRef(d)
		n = r.Count
		return err
	}); err != nil {
		return false, fmt.Errorf("referenced %s: %w", d, err)
	}
	return n > 0, nil
}

// Held reports whether the layout keeps the blob d: an entry of index.json,
// a blob its graph reaches (Referenced), or a blob a live lease holds (an
// upload's, a copy's, what a prune lets linger for the pulls in flight).
// A blob that is none of these is present but not the layout's: GC
// removes it. The blob of a manifest whose transaction a crash stopped,
// written just before it, is one: Resolve finds it by digest, Held does
// not. Where the journal's counts do not describe index.json (a layout not
// adopted yet, or whose index.json another tool changed since the
// journal's last commit), every blob present is held. False when d is not
// present.
func (s *Store) Held(ctx context.Context, d digest.Digest) (bool, error) {
	if err := s.reading(ctx); err != nil {
		return false, err
	}
	if err := layout.ValidateDigest(d); err != nil {
		return false, fmt.Errorf("held: %w", err)
	}
	sn, err := s.current()
	if err != nil {
		return false, fmt.Errorf("held %s: %w", d, err)
	}
	for _, e := range sn.ix.Entries {
		if e.Desc.Digest == d {
			return true, nil
		}
	}
	fi, err := s.lay.FS.Lstat(layout.BlobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("held %s: %w", d, err)
	}
	if !fi.Mode().IsRegular() {
		return false, nil
	}
	held := true // no journal: no counts
	now := s.now()
	err = s.journalRead(func(tx *journal.Tx) error {
		if tx.IndexDigest() != sn.digest {
			return nil // counts of another index.json
		}
		r, err := tx.GetRef(d)
		if err != nil || r.Count > 0 {
			return err
		}
		leased, err := tx.Leased(now)
		held = leased[d]
		return err
	})
	if err != nil {
		return false, fmt.Errorf("held %s: %w", d, err)
	}
	return held, nil
}
