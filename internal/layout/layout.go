// Package layout knows the OCI image layout format: file names, digest
// validation, index.json and manifest parsing, and the reference graph.
// It reads through fsio and never mutates anything. DESIGN.md §1.1 says
// what of the format ocistore follows and which limits it applies; §2 lists
// the files of a layout and of its state directory.
package layout

import (
	"crypto/sha256"
	_ "crypto/sha512" // registers sha384 and sha512 for go-digest
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"reflect"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
)

// File names of the layout, relative to its root.
const (
	IndexFile     = "index.json"
	LayoutFile    = "oci-layout"
	BlobsDir      = "blobs"
	StateDir      = ".ocistore" // ours: the journal and the other state of DESIGN.md §2.2; other tools ignore it
	LayoutVersion = "1.0.0"
)

// Size limits for files that are parsed in memory. Reaching one never frees
// anything: what lies beyond is an unknown closure (DESIGN.md §8.2).
const (
	MaxIndexSize    = 256 << 20 // index.json
	MaxManifestSize = 8 << 20   // one manifest or nested index blob
	MaxDepth        = 32        // nesting of indexes
)

// Media types of the graph's inner nodes.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	// The artifact manifest of the image-spec 1.1 release candidates, which
	// oras-go 2.0 wrote: its "blobs" are children.
	MediaTypeArtifactManifest = "application/vnd.oci.artifact.manifest.v1+json"
)

// IsManifest reports whether mt is a media type whose blob lists children.
func IsManifest(mt string) bool {
	switch mt {
	case v1.MediaTypeImageManifest, v1.MediaTypeImageIndex,
		MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeArtifactManifest:
		return true
	}
	return false
}

// Parsed reports whether d's blob is read for children: always for a
// manifest or index media type; for an index.json entry (root) with an empty
// or unknown media type too, when it is small enough to be a manifest, since
// some tools omit the media type and a root is a manifest of some kind. A
// sniffed blob that does not parse (ErrCorrupt from LoadChildren) is a leaf:
// see Sniffed. Blobs below the roots with unknown media types are leaves.
func Parsed(d v1.Descriptor, root bool) bool {
	return IsManifest(d.MediaType) || root && d.Size <= MaxManifestSize
}

// TooLargeToSniff reports whether an index.json entry (a root) is not
// read because it is too large, though it may be a manifest: its media
// type does not say it is one, and it is over the manifest size limit.
// What such a root references is unknown.
func TooLargeToSniff(d v1.Descriptor) bool {
	return !IsManifest(d.MediaType) && d.Size > MaxManifestSize
}

// Sniffed reports whether a load error of a blob that Parsed chose to read
// means "not a manifest, a leaf" rather than a broken manifest.
func Sniffed(d v1.Descriptor, loadErr error) bool {
	return !IsManifest(d.MediaType) && errors.Is(loadErr, errdef.ErrCorrupt)
}

// IsIndex reports whether mt is an image index or Docker manifest list.
func IsIndex(mt string) bool {
	return mt == v1.MediaTypeImageIndex || mt == MediaTypeDockerManifestList
}

// ValidateDigest checks that d is well formed, of a supported algorithm
// (sha256, sha384, sha512) with the right hex length, so that BlobPath can
// never leave the blob directory.
func ValidateDigest(d digest.Digest) error {
	if wellFormed(d) {
		return nil // the common case, without go-digest's regexp
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%q: %w: %v", string(d), errdef.ErrInvalidDigest, err)
	}
	return nil
}

// wellFormed reports whether d is a sha256, sha384 or sha512 digest with an
// encoded part of the right length in lowercase hex: exactly what
// digest.Validate accepts for those algorithms.
func wellFormed(d digest.Digest) bool {
	s := string(d)
	var n int
	switch {
	case strings.HasPrefix(s, "sha256:"):
		s, n = s[7:], 64
	case strings.HasPrefix(s, "sha512:"):
		s, n = s[7:], 128
	case strings.HasPrefix(s, "sha384:"):
		s, n = s[7:], 96
	default:
		return false
	}
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// BlobPath is the path of a blob relative to the layout root. d must be valid.
func BlobPath(d digest.Digest) string {
	return BlobsDir + "/" + d.Algorithm().String() + "/" + d.Encoded()
}

// ParseBlobPath is the inverse of BlobPath for names found on disk.
func ParseBlobPath(alg, name string) (digest.Digest, bool) {
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), name)
	return d, d.Validate() == nil
}

// Descriptor validation shared by every parsed file.
func checkDescriptor(where string, i int, d v1.Descriptor) error {
	if err := ValidateDigest(d.Digest); err != nil {
		return fmt.Errorf("%s: descriptor %d: %w", where, i, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("%s: descriptor %d (%s): negative size %d: %w", where, i, d.Digest, d.Size, errdef.ErrCorrupt)
	}
	return nil
}

// Children is the parsed form of a manifest or index blob: the descriptors it
// references. The subject of an OCI 1.1 manifest is a weak reference (it
// points at the image the manifest is about) and is kept apart.
type Children struct {
	MediaType string
	Refs      []v1.Descriptor
	Subject   *v1.Descriptor
	// Config is the config descriptor of an image manifest (also in Refs).
	Config *v1.Descriptor
	// Created is the org.opencontainers.image.created annotation, "" if none.
	Created string
}

// anyManifest holds the fields of every kind of manifest, with the types
// the image-spec structs give them: v1.Manifest (config, layers), v1.Index
// (manifests), the artifact manifest (blobs), and the fields they share.
// Decoding into it is decoding into each of them at once: a key goes to
// the same field (no two names fold to one another) and decodes the same.
type anyManifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        v1.Descriptor     `json:"config"` // a value, as in v1.Manifest: a later null keeps it
	Layers        []v1.Descriptor   `json:"layers"`
	Manifests     []v1.Descriptor   `json:"manifests"`
	Blobs         []v1.Descriptor   `json:"blobs"`
	Subject       *v1.Descriptor    `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
}

// artifactManifest is the artifact manifest of the image-spec 1.1 release
// candidates, as oras-go 2.0 decodes it.
type artifactManifest struct {
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType"`
	Blobs        []v1.Descriptor   `json:"blobs"`
	Subject      *v1.Descriptor    `json:"subject"`
	Annotations  map[string]string `json:"annotations"`
}

// ParseChildren parses a manifest, index, Docker manifest or manifest list,
// whatever its media type says, and returns the descriptors it references
// (ParseChildrenAs with no media type).
func ParseChildren(where string, b []byte) (Children, error) {
	return ParseChildrenAs(where, "", b)
}

// ParseChildrenAs reads b, a blob whose descriptor has media type
// mediaType, as the tools that share the layout read it, with encoding/json
// into v1.Manifest, v1.Index or the artifact manifest, and returns what any
// of them finds: its config and layers, its manifests, its blobs (a
// document that has layers and manifests has both as children). A document
// that one of them cannot decode (a field of the wrong type) is read by the
// others: it is corrupt when the one its media type names (the
// document's, else mediaType) does not decode it, or, for another media
// type, when neither v1.Manifest nor v1.Index does. A config is a child
// when it is not the zero descriptor (what v1.Manifest holds when there is
// none).
func ParseChildrenAs(where, mediaType string, b []byte) (Children, error) {
	m, ok := parseChildrenFast(b)
	if !ok {
		var err error
		if m, err = decodeManifest(where, mediaType, b); err != nil {
			return Children{}, err
		}
	}
	return childrenOf(where, m)
}

// childrenOf returns the children of m, a decoded manifest, and checks
// their descriptors.
func childrenOf(where string, m anyManifest) (Children, error) {
	c := Children{MediaType: m.MediaType, Subject: m.Subject, Created: m.Annotations[v1.AnnotationCreated]}
	n := len(m.Layers) + len(m.Manifests) + len(m.Blobs)
	cfg := m.Config
	hasConfig := !reflect.ValueOf(&cfg).Elem().IsZero()
	if hasConfig {
		n++
	}
	if n > 0 { // nil when there are none, as append leaves it
		c.Refs = make([]v1.Descriptor, 0, n)
	}
	if hasConfig {
		c.Config = &cfg
		c.Refs = append(c.Refs, cfg)
	}
	c.Refs = append(c.Refs, m.Layers...)
	c.Refs = append(c.Refs, m.Manifests...)
	c.Refs = append(c.Refs, m.Blobs...)
	for i, d := range c.Refs {
		if err := checkDescriptor(where, i, d); err != nil {
			return Children{}, err
		}
	}
	if c.Subject != nil {
		if err := checkDescriptor(where, -1, *c.Subject); err != nil {
			return Children{}, err
		}
	}
	return c, nil
}

// decodeManifest is the slow way of ParseChildrenAs: encoding/json into an
// anyManifest, and into each kind apart when a field has the wrong type.
func decodeManifest(where, mediaType string, b []byte) (anyManifest, error) {
	var m anyManifest
	if err := json.Unmarshal(b, &m); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) {
			return m, fmt.Errorf("%s: %w: %v", where, errdef.ErrCorrupt, err)
		}
		var ok bool
		if m, ok = eachKind(b, mediaType); !ok {
			return m, fmt.Errorf("%s: %w: %v", where, errdef.ErrCorrupt, err)
		}
	}
	return m, nil
}

// eachKind decodes b as a manifest, an index and an artifact manifest apart
// and merges what those that decode give; ok is false when none does, or
// the kind the media type names does not.
func eachKind(b []byte, mediaType string) (m anyManifest, ok bool) {
	var man v1.Manifest
	var ix v1.Index
	var art artifactManifest
	manOK := json.Unmarshal(b, &man) == nil
	ixOK := json.Unmarshal(b, &ix) == nil
	artOK := json.Unmarshal(b, &art) == nil
	switch {
	case manOK:
		m.SchemaVersion, m.MediaType, m.ArtifactType, m.Subject, m.Annotations = man.SchemaVersion, man.MediaType, man.ArtifactType, man.Subject, man.Annotations
	case ixOK:
		m.SchemaVersion, m.MediaType, m.ArtifactType, m.Subject, m.Annotations = ix.SchemaVersion, ix.MediaType, ix.ArtifactType, ix.Subject, ix.Annotations
	case artOK:
		m.MediaType, m.ArtifactType, m.Subject, m.Annotations = art.MediaType, art.ArtifactType, art.Subject, art.Annotations
	default:
		return m, false
	}
	if m.MediaType != "" {
		mediaType = m.MediaType
	}
	switch mediaType {
	case v1.MediaTypeImageManifest, MediaTypeDockerManifest:
		ok = manOK
	case v1.MediaTypeImageIndex, MediaTypeDockerManifestList:
		ok = ixOK
	case MediaTypeArtifactManifest:
		ok = artOK
	default:
		ok = manOK || ixOK // the artifact manifest only by its media type
	}
	if manOK {
		m.Config, m.Layers = man.Config, man.Layers
	}
	if ixOK {
		m.Manifests = ix.Manifests
	}
	if artOK {
		m.Blobs = art.Blobs
	}
	return m, ok
}

// ReadBlob reads a whole blob that must have descriptor d (size and digest are
// verified). It is for manifests and configs: limit bounds the memory used.
func ReadBlob(fsys fsio.FS, d v1.Descriptor, limit int64) ([]byte, error) {
	if err := ValidateDigest(d.Digest); err != nil {
		return nil, err
	}
	if d.Size > limit {
		return nil, fmt.Errorf("blob %s: size %d over limit %d: %w", d.Digest, d.Size, limit, errdef.ErrTooLarge)
	}
	p := BlobPath(d.Digest)
	b, err := fsio.ReadFile(fsys, p, limit)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s (%s): %w", d.Digest, p, errdef.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if int64(len(b)) != d.Size {
		return nil, fmt.Errorf("blob %s (%s): %d bytes, descriptor says %d: %w", d.Digest, p, len(b), d.Size, errdef.ErrSizeMismatch)
	}
	if got := d.Digest.Algorithm().FromBytes(b); got != d.Digest {
		return nil, fmt.Errorf("blob %s (%s): content hashes to %s: %w", d.Digest, p, got, errdef.ErrDigestMismatch)
	}
	return b, nil
}

// WriteLayoutFile is the content of oci-layout.
func LayoutFileContent() []byte {
	b, _ := json.Marshal(v1.ImageLayout{Version: LayoutVersion})
	return b
}

// CheckLayoutFile parses oci-layout.
func CheckLayoutFile(b []byte) error {
	var l v1.ImageLayout
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("%s: %w: %v", LayoutFile, errdef.ErrCorrupt, err)
	}
	if l.Version == "" {
		return fmt.Errorf("%s: no imageLayoutVersion: %w", LayoutFile, errdef.ErrCorrupt)
	}
	return nil
}

// EmptyIndex is the index.json of a new layout.
func EmptyIndex() []byte {
	b, _ := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}})
	return append(b, '\n')
}

// Sum is the digest used for index.json itself (always sha256).
func Sum(b []byte) digest.Digest {
	h := sha256.Sum256(b)
	return digest.NewDigestFromBytes(digest.SHA256, h[:])
}

// hashing readers ----------------------------------------------------------

// VerifyReader hashes r while it is read and checks digest and size at EOF.
type VerifyReader struct {
	r    io.Reader
	want v1.Descriptor
	dg   digest.Digester
	n    int64
}

// NewVerifyReader wraps r; Verify must be called after r is drained.
func NewVerifyReader(r io.Reader, want v1.Descriptor) *VerifyReader {
	return &VerifyReader{r: r, want: want, dg: want.Digest.Algorithm().Digester()}
}

func (v *VerifyReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	if n > 0 {
		v.n += int64(n)
		v.dg.Hash().Write(p[:n])
		if v.want.Size >= 0 && v.n > v.want.Size {
			return n, fmt.Errorf("blob %s: more than %d bytes: %w", v.want.Digest, v.want.Size, errdef.ErrSizeMismatch)
		}
	}
	return n, err
}

// Verify checks size and digest of what was read.
func (v *VerifyReader) Verify() error {
	if v.want.Size >= 0 && v.n != v.want.Size {
		return fmt.Errorf("blob %s: got %d bytes, want %d: %w", v.want.Digest, v.n, v.want.Size, errdef.ErrSizeMismatch)
	}
	if got := v.dg.Digest(); got != v.want.Digest {
		return fmt.Errorf("blob %s: content hashes to %s: %w", v.want.Digest, got, errdef.ErrDigestMismatch)
	}
	return nil
}

// N is the number of bytes read so far.
func (v *VerifyReader) N() int64 { return v.n }

// LoadChildren returns a loader that reads a manifest or index blob from
// fsys, verifies its size and digest, and parses its children.
func LoadChildren(fsys fsio.FS) func(v1.Descriptor) (Children, error) {
	return func(d v1.Descriptor) (Children, error) {
		b, err := ReadBlob(fsys, d, MaxManifestSize)
		if err != nil {
			return Children{}, err
		}
		return ParseChildrenAs("blob "+d.Digest.String(), d.MediaType, b)
	}
}
