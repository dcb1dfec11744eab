package testutil

import (
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha512 for go-digest
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
)

// The invariant for foreign readers: skopeo, umoci and the other tools that
// read an OCI layout run none of ocistore's recovery. Whatever a crash
// leaves, before any recovery, index.json must parse (encoding/json into
// v1.Index, as skopeo reads it) and every blob it reaches must be there,
// whole. Every crash tier checks it on the state a crash left, with this one
// checker, which uses nothing of ocistore's parsers.

// ReadFunc returns the bytes of a file by its slash-separated path, an error
// wrapping fs.ErrNotExist when there is none.
type ReadFunc func(name string) ([]byte, error)

// Docker schema 2 media types that list children.
const (
	foreignDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	foreignDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// ForeignReadable checks the invariant for foreign readers on a layout whose
// files readLayout reads (index.json) and whose blobs readBlob reads as
// "<alg>/<hex>" (blobs/ of the layout, or a shared blob directory). The
// closure is walked as a foreign reader walks it: index.json into v1.Index;
// an image index or Docker manifest list into v1.Index, its manifests
// followed; an image or Docker manifest into v1.Manifest, its config and
// layers followed; a root descriptor without a media type by the mediaType
// its blob declares; a subject is not followed (a weak reference); other
// media types are leaves. A blob must exist with its descriptor's size and
// digest, unless the descriptor has urls (a foreign layer, fetched from
// them) and the blob is absent. It returns every problem, joined.
func ForeignReadable(readLayout, readBlob ReadFunc) error {
	raw, err := readLayout("index.json")
	if err != nil {
		return fmt.Errorf("index.json: %w", err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		return fmt.Errorf("index.json (%d bytes) does not parse: %w", len(raw), err)
	}
	if ix.SchemaVersion != 2 {
		return fmt.Errorf("index.json: schemaVersion %d, want 2", ix.SchemaVersion)
	}
	var probs []error
	fail := func(format string, args ...any) {
		if len(probs) < 10 {
			probs = append(probs, fmt.Errorf(format, args...))
		}
	}
	seen := map[digest.Digest]bool{}
	var walk func(d v1.Descriptor, from string, depth int)
	walk = func(d v1.Descriptor, from string, depth int) {
		if err := d.Digest.Validate(); err != nil {
			fail("%s: descriptor with digest %q: %v", from, d.Digest, err)
			return
		}
		if seen[d.Digest] {
			return
		}
		seen[d.Digest] = true
		if depth > 32 {
			fail("%s: %s nested deeper than 32", from, d.Digest)
			return
		}
		b, err := readBlob(path.Join(d.Digest.Algorithm().String(), d.Digest.Encoded()))
		switch {
		case errors.Is(err, fs.ErrNotExist) && len(d.URLs) > 0:
			return // a foreign layer: fetched from its urls
		case err != nil:
			fail("%s reaches blob %s (%s), which a foreign reader cannot read: %v", from, d.Digest, d.MediaType, err)
			return
		case int64(len(b)) != d.Size:
			fail("%s reaches blob %s (%s): %d bytes, its descriptor says %d", from, d.Digest, d.MediaType, len(b), d.Size)
			return
		case d.Digest.Algorithm().FromBytes(b) != d.Digest:
			fail("%s reaches blob %s (%s), whose content hashes to %s", from, d.Digest, d.MediaType, d.Digest.Algorithm().FromBytes(b))
			return
		}
		mt := d.MediaType
		if mt == "" && depth == 0 {
			var sniff struct {
				MediaType string `json:"mediaType"`
			}
			if err := json.Unmarshal(b, &sniff); err != nil {
				fail("%s: root %s without a media type does not parse: %v", from, d.Digest, err)
				return
			}
			mt = sniff.MediaType
		}
		var kids []v1.Descriptor
		switch mt {
		case v1.MediaTypeImageIndex, foreignDockerList:
			var sub v1.Index
			if err := json.Unmarshal(b, &sub); err != nil {
				fail("%s: index %s does not parse: %v", from, d.Digest, err)
				return
			}
			kids = sub.Manifests
		case v1.MediaTypeImageManifest, foreignDockerManifest:
			var m v1.Manifest
			if err := json.Unmarshal(b, &m); err != nil {
				fail("%s: manifest %s does not parse: %v", from, d.Digest, err)
				return
			}
			kids = append([]v1.Descriptor{m.Config}, m.Layers...)
		default:
			return // a leaf
		}
		for _, k := range kids {
			walk(k, d.Digest.String(), depth+1)
		}
	}
	for _, m := range ix.Manifests {
		name := m.Annotations[v1.AnnotationRefName]
		if name == "" {
			name = "<none>"
		}
		walk(m, "index.json entry "+name, 0)
	}
	return errors.Join(probs...)
}

// Listed decodes the descriptors that b, a manifest, an index or an
// artifact manifest (whatever its media type), lists: its config, layers,
// manifests and blobs. It uses encoding/json alone, none of ocistore's
// parsers, for the checks that read a layout without trusting the engine.
func Listed(b []byte) ([]v1.Descriptor, error) {
	var m struct {
		Config    *v1.Descriptor  `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
		Manifests []v1.Descriptor `json:"manifests"`
		Blobs     []v1.Descriptor `json:"blobs"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	var kids []v1.Descriptor
	if m.Config != nil {
		kids = append(kids, *m.Config)
	}
	return slices.Concat(kids, m.Layers, m.Manifests, m.Blobs), nil
}

// ForeignReadableDir is ForeignReadable on the layout in dir, its blobs in
// dir/blobs or, when sharedBlobDir is not empty, in that directory.
func ForeignReadableDir(dir, sharedBlobDir string) error {
	blobs := filepath.Join(dir, "blobs")
	if sharedBlobDir != "" {
		blobs = sharedBlobDir
	}
	return ForeignReadable(osRead(dir), osRead(blobs))
}

func osRead(dir string) ReadFunc {
	return func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, filepath.FromSlash(name))) }
}

// ForeignReadableFS is ForeignReadable on a layout in fsys (memfs in the
// crash enumeration), its blobs under blobs/ of fsys or, when blobs is not
// nil, in blobs.
func ForeignReadableFS(fsys, blobs fsio.FS) error {
	readBlob := fsRead(fsys, "blobs")
	if blobs != nil {
		readBlob = fsRead(blobs, "")
	}
	return ForeignReadable(fsRead(fsys, ""), readBlob)
}

func fsRead(fsys fsio.FS, dir string) ReadFunc {
	return func(name string) ([]byte, error) {
		f, err := fsys.Open(path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return io.ReadAll(f)
	}
}
