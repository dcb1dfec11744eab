package powercut

import (
	_ "crypto/sha256" // registers sha256 for go-digest
	_ "crypto/sha512" // registers sha512 for go-digest
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// State is what a layout holds, read from its files with no ocistore code:
// the tests compare it with the baseline and with the expected result of the
// operation, independently of ocistore's own fsck.
type State struct {
	IndexDigest string            // digest of index.json's bytes; "" when missing
	IndexErr    string            // why index.json is missing or does not parse
	Tags        map[string]string // ref name, or "<none>@digest" for an untagged entry -> digest
	Blobs       map[string]int64  // every file blobs/<alg>/<hex> -> its size
	Reach       map[string]int64  // the closure of index.json: digest -> descriptor size
	Problems    []string          // closure problems: missing blob, wrong size or digest, manifest unparseable
	Strays      []string          // files that are not layout files nor the journal (temp files)
}

// Docker media types that hold children, as ocistore follows them.
const (
	dockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

func parsed(mt string) bool {
	switch mt {
	case v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, dockerManifest, dockerManifestList, "":
		return true
	}
	return false
}

// node is the union of the fields of manifests and indexes that point at
// children. A subject is a weak reference: not part of the closure.
type node struct {
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
	Blobs     []v1.Descriptor `json:"blobs"`
	Manifests []v1.Descriptor `json:"manifests"`
}

// ReadState reads the layout in dir.
func ReadState(dir string) (*State, error) {
	st := &State{Tags: map[string]string{}, Blobs: map[string]int64{}, Reach: map[string]int64{}}
	if err := st.readBlobs(dir); err != nil {
		return nil, err
	}
	if err := st.readStrays(dir); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		st.IndexErr = "index.json missing"
		st.Problems = append(st.Problems, st.IndexErr)
		return st, nil
	}
	st.IndexDigest = digest.FromBytes(raw).String()
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil || ix.SchemaVersion != 2 {
		st.IndexErr = fmt.Sprintf("index.json (%d bytes) does not parse as a schemaVersion 2 index: %v", len(raw), err)
		st.Problems = append(st.Problems, st.IndexErr)
		return st, nil
	}
	for _, d := range ix.Manifests {
		name := d.Annotations[v1.AnnotationRefName]
		if name == "" {
			name = "<none>@" + d.Digest.String()
		}
		if old, ok := st.Tags[name]; ok && old != d.Digest.String() {
			st.Problems = append(st.Problems, fmt.Sprintf("tag %s names two manifests, %s and %s", name, old, d.Digest))
		}
		st.Tags[name] = d.Digest.String()
		st.walk(dir, d, 0)
	}
	sort.Strings(st.Problems)
	return st, nil
}

func (st *State) readBlobs(dir string) error {
	algs, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		return err
	}
	for _, a := range algs {
		if !a.IsDir() {
			st.Strays = append(st.Strays, filepath.Join("blobs", a.Name()))
			continue
		}
		ents, err := os.ReadDir(filepath.Join(dir, "blobs", a.Name()))
		if err != nil {
			return err
		}
		for _, e := range ents {
			d := digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), e.Name())
			if d.Validate() != nil || !e.Type().IsRegular() {
				st.Strays = append(st.Strays, filepath.Join("blobs", a.Name(), e.Name()))
				continue
			}
			fi, err := e.Info()
			if err != nil {
				return err
			}
			st.Blobs[d.String()] = fi.Size()
		}
	}
	return nil
}

// readStrays lists the files of the root other than the layout's, and the
// ingest temp files, the trash and the owner files of the journal
// directory.
func (st *State) readStrays(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		switch e.Name() {
		case "oci-layout", "index.json", "blobs", ".ocistore":
			continue
		}
		st.Strays = append(st.Strays, e.Name())
	}
	for _, sub := range []string{"ingest", "trash", "owners"} {
		ents, err := os.ReadDir(filepath.Join(dir, ".ocistore", sub))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		for _, e := range ents {
			st.Strays = append(st.Strays, filepath.Join(".ocistore", sub, e.Name()))
		}
	}
	sort.Strings(st.Strays)
	return nil
}

func (st *State) walk(dir string, d v1.Descriptor, depth int) {
	key := d.Digest.String()
	if _, seen := st.Reach[key]; seen {
		return
	}
	st.Reach[key] = d.Size
	if err := d.Digest.Validate(); err != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("%s: invalid digest: %v", key, err))
		return
	}
	size, ok := st.Blobs[key]
	switch {
	case !ok:
		if len(d.URLs) == 0 {
			st.Problems = append(st.Problems, fmt.Sprintf("%s (%s, %d bytes): reachable but missing", key, d.MediaType, d.Size))
		}
		return
	case size != d.Size:
		st.Problems = append(st.Problems, fmt.Sprintf("%s: %d bytes on disk, descriptor says %d", key, size, d.Size))
		return
	}
	if !parsed(d.MediaType) || depth > 16 {
		return
	}
	raw, err := os.ReadFile(filepath.Join(dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()))
	if err != nil {
		st.Problems = append(st.Problems, fmt.Sprintf("%s: %v", key, err))
		return
	}
	if got := d.Digest.Algorithm().FromBytes(raw); got != d.Digest {
		st.Problems = append(st.Problems, fmt.Sprintf("%s: content hashes to %s", key, got))
		return
	}
	var n node
	if err := json.Unmarshal(raw, &n); err != nil {
		if d.MediaType != "" {
			st.Problems = append(st.Problems, fmt.Sprintf("%s (%s): does not parse: %v", key, d.MediaType, err))
		}
		return
	}
	if n.Config != nil {
		st.walk(dir, *n.Config, depth+1)
	}
	for _, list := range [][]v1.Descriptor{n.Layers, n.Blobs, n.Manifests} {
		for _, c := range list {
			st.walk(dir, c, depth+1)
		}
	}
}

// SameTags reports whether two states have the same tags on the same digests.
func SameTags(a, b *State) bool { return equalMaps(a.Tags, b.Tags) }

// SameBlobs reports whether two states have the same blob files and sizes.
func SameBlobs(a, b *State) bool { return equalMaps(a.Blobs, b.Blobs) }

func equalMaps[V comparable](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// DiffTags describes how got's tags differ from want's.
func DiffTags(got, want *State) string {
	return diffMaps(got.Tags, want.Tags)
}

// DiffBlobs describes how got's blob files differ from want's.
func DiffBlobs(got, want *State) string {
	return diffMaps(got.Blobs, want.Blobs)
}

func diffMaps[V comparable](got, want map[string]V) string {
	var extra, missing, changed []string
	for k, v := range got {
		w, ok := want[k]
		switch {
		case !ok:
			extra = append(extra, k)
		case w != v:
			changed = append(changed, fmt.Sprintf("%s=%v (want %v)", k, v, w))
		}
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	sort.Strings(changed)
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, fmt.Sprintf("missing %d: %s", len(missing), abbrev(missing)))
	}
	if len(extra) > 0 {
		parts = append(parts, fmt.Sprintf("extra %d: %s", len(extra), abbrev(extra)))
	}
	if len(changed) > 0 {
		parts = append(parts, fmt.Sprintf("changed %d: %s", len(changed), abbrev(changed)))
	}
	if len(parts) == 0 {
		return "identical"
	}
	return strings.Join(parts, "; ")
}

func abbrev(s []string) string {
	const max = 6
	if len(s) <= max {
		return strings.Join(s, " ")
	}
	return strings.Join(s[:max], " ") + fmt.Sprintf(" ... (%d more)", len(s)-max)
}
