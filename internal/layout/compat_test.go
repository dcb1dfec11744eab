package layout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
)

// The tools that share a layout read index.json and manifests with
// encoding/json into the image-spec structs. These tests hold ocistore to
// what those structs give: the entries of index.json, and the blobs
// reachable from it through the manifests.

// validDesc reports whether ocistore accepts d in a parsed file.
func validDesc(d v1.Descriptor) bool { return checkDescriptor("", 0, d) == nil }

// wantSentinel fails unless err is one of the errors ParseIndex and
// ParseChildren give.
func wantSentinel(t *testing.T, err error, b []byte) {
	t.Helper()
	if !errors.Is(err, errdef.ErrCorrupt) && !errors.Is(err, errdef.ErrInvalidDigest) {
		t.Fatalf("error without a sentinel: %v\n%q", err, b)
	}
}

// sameAsTools fails unless ParseIndex reads b as encoding/json into a
// v1.Index does: it refuses what encoding/json refuses, or what ocistore
// refuses by its own checks (schemaVersion, mediaType, invalid
// descriptors), and otherwise gives the same entries (descriptors and
// names), whose bytes decode to them; and its rewrites (as it is, every
// entry renamed, every entry untagged) read back, in encoding/json, as the
// same index.
func sameAsTools(t *testing.T, b []byte) {
	t.Helper()
	ix, err := ParseIndex(b)
	var ref v1.Index
	if rerr := json.Unmarshal(b, &ref); rerr != nil {
		if err == nil {
			t.Fatalf("ParseIndex accepted what encoding/json rejects (%v): %q", rerr, b)
		}
		wantSentinel(t, err, b)
		return
	}
	refuse := ref.SchemaVersion != 2 || ref.MediaType != "" && ref.MediaType != v1.MediaTypeImageIndex
	for _, d := range ref.Manifests {
		refuse = refuse || !validDesc(d)
	}
	if refuse {
		if err == nil {
			t.Fatalf("ParseIndex accepted an index ocistore refuses: %q", b)
		}
		wantSentinel(t, err, b)
		return
	}
	if err != nil {
		t.Fatalf("ParseIndex refused what encoding/json reads (%+v): %v\n%q", ref, err, b)
	}
	if len(ix.Entries) != len(ref.Manifests) {
		t.Fatalf("%d entries, encoding/json %d: %q", len(ix.Entries), len(ref.Manifests), b)
	}
	for i, e := range ix.Entries {
		if !reflect.DeepEqual(e.Desc, ref.Manifests[i]) {
			t.Fatalf("entry %d: %+v, encoding/json %+v: %q", i, e.Desc, ref.Manifests[i], b)
		}
		if e.Name() != e.Desc.Annotations[v1.AnnotationRefName] {
			t.Fatalf("entry %d: name %q, annotations %v", i, e.Name(), e.Desc.Annotations)
		}
		var back v1.Descriptor
		if err := json.Unmarshal(e.Raw, &back); err != nil || !reflect.DeepEqual(back, e.Desc) {
			t.Fatalf("entry %d: raw %s reads as %+v (%v), not %+v", i, e.Raw, back, err, e.Desc)
		}
	}
	// The roots every tool sees are ocistore's.
	if got, want := entryDigests(ix.Entries), descDigests(ref.Manifests); !slices.Equal(got, want) {
		t.Fatalf("roots %v, encoding/json %v", got, want)
	}
	rewrite := func(what string, ix *Index, want []v1.Descriptor) {
		t.Helper()
		out := ix.Marshal()
		var again v1.Index
		if err := json.Unmarshal(out, &again); err != nil {
			t.Fatalf("%s: rewritten index does not decode: %v\n%s", what, err, out)
		}
		if (len(again.Manifests) > 0 || len(want) > 0) && !reflect.DeepEqual(again.Manifests, want) {
			t.Fatalf("%s: rewritten entries %+v, want %+v\nfrom %q\nto   %s", what, again.Manifests, want, b, out)
		}
		top, againTop := ref, again
		top.Manifests, againTop.Manifests = nil, nil
		if !reflect.DeepEqual(top, againTop) {
			t.Fatalf("%s: rewritten top level %+v, was %+v\nfrom %q\nto   %s", what, againTop, top, b, out)
		}
		if _, err := ParseIndex(out); err != nil {
			t.Fatalf("%s: rewritten index does not parse: %v\n%s", what, err, out)
		}
	}
	rewrite("as is", ix, ref.Manifests)
	for _, name := range []string{"renamed", ""} {
		es := make([]Entry, len(ix.Entries))
		want := make([]v1.Descriptor, len(ix.Entries))
		for i, e := range ix.Entries {
			es[i] = e.Renamed(name)
			want[i] = e.Desc
			ann := maps.Clone(e.Desc.Annotations)
			if ann == nil {
				ann = map[string]string{}
			}
			if name == "" {
				delete(ann, v1.AnnotationRefName)
			} else {
				ann[v1.AnnotationRefName] = name
			}
			if len(ann) == 0 {
				ann = nil
			}
			want[i].Annotations = ann
			if es[i].Name() != name {
				t.Fatalf("Renamed(%q) named %q", name, es[i].Name())
			}
		}
		rewrite("renamed "+strconv.Quote(name), ix.With(es), want)
	}
}

func entryDigests(es []Entry) []digest.Digest {
	out := make([]digest.Digest, len(es))
	for i, e := range es {
		out[i] = e.Desc.Digest
	}
	return out
}

func descDigests(ds []v1.Descriptor) []digest.Digest {
	out := make([]digest.Digest, len(ds))
	for i, d := range ds {
		out[i] = d.Digest
	}
	return out
}

// toolsChildren is what the tools find in a manifest or index blob b whose
// descriptor has media type mediaType: each of v1.Manifest, v1.Index and
// the artifact manifest decodes it apart; ok is false when none does or
// the one the media type names (the document's, else the descriptor's)
// does not. refs are the config (unless the zero descriptor v1.Manifest
// holds when there is none) and layers, the manifests, the blobs.
func toolsChildren(b []byte, mediaType string) (refs []v1.Descriptor, subject *v1.Descriptor, mt string, ok bool) {
	var man v1.Manifest
	var ix v1.Index
	var art struct {
		MediaType string          `json:"mediaType"`
		Blobs     []v1.Descriptor `json:"blobs"`
		Subject   *v1.Descriptor  `json:"subject"`
	}
	manOK := json.Unmarshal(b, &man) == nil
	ixOK := json.Unmarshal(b, &ix) == nil
	artOK := json.Unmarshal(b, &art) == nil
	switch {
	case manOK:
		mt, subject = man.MediaType, man.Subject
	case ixOK:
		mt, subject = ix.MediaType, ix.Subject
	case artOK:
		mt, subject = art.MediaType, art.Subject
	default:
		return nil, nil, "", false
	}
	named := mt
	if named == "" {
		named = mediaType
	}
	switch named {
	case v1.MediaTypeImageManifest, MediaTypeDockerManifest:
		ok = manOK
	case v1.MediaTypeImageIndex, MediaTypeDockerManifestList:
		ok = ixOK
	case MediaTypeArtifactManifest:
		ok = artOK
	default:
		ok = manOK || ixOK
	}
	if manOK {
		if !reflect.DeepEqual(man.Config, v1.Descriptor{}) {
			refs = append(refs, man.Config)
		}
		refs = append(refs, man.Layers...)
	}
	if ixOK {
		refs = append(refs, ix.Manifests...)
	}
	if artOK {
		refs = append(refs, art.Blobs...)
	}
	return refs, subject, mt, ok
}

// sameChildrenAsTools fails unless parseChildren reads b as the tools do
// (toolsChildren), and returns what it found (nil when it refused b).
func sameChildrenAsTools(t *testing.T, b []byte, mediaType string) *Children {
	t.Helper()
	c, err := ParseChildrenAs("blob X", mediaType, b)
	refs, subject, mt, ok := toolsChildren(b, mediaType)
	if !ok {
		if err == nil {
			t.Fatalf("ParseChildrenAs(%q) accepted what encoding/json rejects: %q", mediaType, b)
		}
		if !errors.Is(err, errdef.ErrCorrupt) {
			t.Fatalf("parseChildren = %v, want ErrCorrupt", err)
		}
		return nil
	}
	valid := subject == nil || validDesc(*subject)
	for _, d := range refs {
		valid = valid && validDesc(d)
	}
	if !valid {
		if err == nil {
			t.Fatalf("parseChildren accepted an invalid descriptor: %q", b)
		}
		wantSentinel(t, err, b)
		return nil
	}
	if err != nil {
		t.Fatalf("ParseChildrenAs(%q) refused what encoding/json reads: %v\n%q", mediaType, err, b)
	}
	if !reflect.DeepEqual(c.Refs, refs) {
		t.Fatalf("children %+v, encoding/json %+v\n%q", c.Refs, refs, b)
	}
	if !reflect.DeepEqual(c.Subject, subject) || c.MediaType != mt {
		t.Fatalf("subject %+v media type %q, encoding/json %+v %q\n%q", c.Subject, c.MediaType, subject, mt, b)
	}
	if c.Config != nil && !reflect.DeepEqual(*c.Config, refs[0]) {
		t.Fatalf("config %+v, encoding/json %+v", *c.Config, refs[0])
	}
	return &c
}

// reachable walks the graph of index.json idx over blobs, loading each
// node with load (a root of unknown media type, sniffed, whose blob does
// not parse is a leaf; a node that fails to load has no children), and
// returns every digest met.
func reachable(roots []v1.Descriptor, blobs map[digest.Digest][]byte, load func(d v1.Descriptor, b []byte) ([]v1.Descriptor, error)) []digest.Digest {
	seen := map[digest.Digest]bool{}
	var walk func(d v1.Descriptor, depth int)
	walk = func(d v1.Descriptor, depth int) {
		if seen[d.Digest] || depth > 4 {
			return
		}
		seen[d.Digest] = true
		b, ok := blobs[d.Digest]
		if !ok || int64(len(b)) != d.Size || !Parsed(d, depth == 0) {
			return
		}
		kids, err := load(d, b)
		if err != nil {
			return
		}
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, d := range roots {
		walk(d, 0)
	}
	out := slices.Collect(maps.Keys(seen))
	slices.Sort(out)
	return out
}

// sameReachable fails unless the blobs reachable from index.json idx,
// which may name the manifest man by "MDIGEST" and "MSIZE", are the same
// for ocistore (ParseIndex, then LoadChildren's parse) and for the tools
// (encoding/json into v1.Index, v1.Manifest, the artifact manifest).
func sameReachable(t *testing.T, idx, man []byte) {
	t.Helper()
	md := digest.FromBytes(man)
	idx = bytes.ReplaceAll(idx, []byte("MDIGEST"), []byte(md))
	idx = bytes.ReplaceAll(idx, []byte("MSIZE"), []byte(strconv.Itoa(len(man))))
	blobs := map[digest.Digest][]byte{md: man}
	sameAsTools(t, idx)
	ix, err := ParseIndex(idx)
	if err != nil {
		return // refused: sameAsTools says whether it must be
	}
	var ref v1.Index
	if err := json.Unmarshal(idx, &ref); err != nil {
		t.Fatalf("encoding/json refuses what ParseIndex accepts: %v", err)
	}
	roots := make([]v1.Descriptor, len(ix.Entries))
	for i, e := range ix.Entries {
		roots[i] = e.Desc
	}
	got := reachable(roots, blobs, func(d v1.Descriptor, b []byte) ([]v1.Descriptor, error) {
		c, err := ParseChildrenAs("blob "+d.Digest.String(), d.MediaType, b)
		if err != nil && Sniffed(d, err) {
			return nil, nil
		}
		return c.Refs, err
	})
	want := reachable(ref.Manifests, blobs, func(d v1.Descriptor, b []byte) ([]v1.Descriptor, error) {
		refs, _, _, ok := toolsChildren(b, d.MediaType)
		if !ok {
			return nil, errors.New("not a manifest")
		}
		for _, k := range refs {
			if !validDesc(k) {
				return nil, errors.New("invalid child")
			}
		}
		return refs, nil
	})
	if !slices.Equal(got, want) {
		t.Fatalf("reachable blobs %v, encoding/json %v\nindex %q\nmanifest %q", got, want, idx, man)
	}
	for _, d := range roots {
		if d.Digest == md && int64(len(man)) == d.Size {
			sameChildrenAsTools(t, man, d.MediaType)
		}
	}
}

// Hostile spellings of index.json and manifests: each is read by the
// tools, and must be by ocistore.
var (
	d1   = "sha256:" + strings.Repeat("1", 64)
	d2   = "sha256:" + strings.Repeat("2", 64)
	d3   = "sha256:" + strings.Repeat("3", 64)
	mani = `"mediaType":"` + v1.MediaTypeImageManifest + `","digest":"MDIGEST","size":MSIZE`
	ref  = `"annotations":{"org.opencontainers.image.ref.name":"app:1"}`
)

var hostileIndexes = []string{
	`{"schemaVersion":2,"manifests":[{` + mani + `,` + ref + `}]}`,
	`{"schemaVersion":2,"Manifests":[{` + mani + `,` + ref + `}]}`,
	`{"schemaVersion":2,"MANIFESTS":[{` + mani + `}]}`,
	`{"schemaVersion":2,"\u006danifests":[{` + mani + `,` + ref + `}]}`,
	`{"schemaVersion":2,"manifest\u0073":[{` + mani + `}],"mediaType":"application/vnd.oci.image.index.v1+json"}`,
	`{"schemaVersion":2,"manifests":[{"digest":"` + d1 + `","size":1}],"manifests":[{` + mani + `}]}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `}],"Manifests":null}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `}],"manifests":[{` + ref + `}]}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `,"Annotations":{"org.opencontainers.image.ref.name":"app:1"}}]}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `,` + ref + `,"annotations":{"a":"b"}}]}`,
	`{"schemaVersion":2,"manifests":[{"MEDIATYPE":"` + v1.MediaTypeImageManifest + `","Digest":"MDIGEST","SIZE":MSIZE}]}`,
	`{"schemaVersion":2,"manifests":[{"mediaType":"` + v1.MediaTypeImageManifest + `","\u0064igest":"MDIGEST","size":MSIZE}]}`,
	`{"schemaVersion":2,"manifests":[{"digest":"` + d1 + `",` + mani + `}]}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `,"digest":null}]}`,
	"{\"schemaVersion\":2,\"manifests\":[{" + mani + ",\"annotationſ\":{\"org.opencontainers.image.ref.name\":\"app:1\"}}]}",
	"{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"" + v1.MediaTypeImageManifest + "\",\"digest\":\"MDIGEST\",\"\u017fize\":MSIZE}]}",
	"{\"schemaVersion\":2,\"manifests\":[{" + mani + ",\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"},\"platform\":{\"OS\":\"windows\"}}]}",
	`{"SchemaVersion":2,"MediaType":"application/vnd.oci.image.index.v1+json","manifests":[{` + mani + `}],"x":1}`,
	`{"schemaVersion":2,"schemaVersion":2,"manifests":[{` + mani + `}],"Annotations":{"k":"v"},"annotations":{"k2":"v2"}}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `}],"subject":{"digest":"` + d3 + `","size":3}}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `}],"annotations":{"k":1}}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `}],"mediaType":null}`,
	`{"schemaVersion":2,"manifests":[{` + mani + `,"annotations":null}]}`,
	`{"schemaVersion":2,"manifests":[{"mediaType":"application/octet-stream","digest":"MDIGEST","size":MSIZE}]}`,
}

// hostileManifests are manifests (and indexes) that name d1, d2 and d3.
var hostileManifests = []string{
	`{"schemaVersion":2,"mediaType":"` + v1.MediaTypeImageManifest + `","config":{"mediaType":"c","digest":"` + d1 + `","size":1},"layers":[{"mediaType":"l","digest":"` + d2 + `","size":2}]}`,
	`{"schemaVersion":2,"mediaType":"` + v1.MediaTypeImageManifest + `","Config":{"mediaType":"c","digest":"` + d1 + `","size":1},"Layers":[{"mediaType":"l","digest":"` + d2 + `","size":2}]}`,
	`{"schemaVersion":2,"MEDIATYPE":"` + v1.MediaTypeImageManifest + `","CONFIG":{"mediaType":"c","digest":"` + d1 + `","size":1},"LAYERS":[{"mediaType":"l","digest":"` + d2 + `","size":2}]}`,
	`{"schemaVersion":2,"\u0063onfig":{"mediaType":"c","\u0064igest":"` + d1 + `","size":1},"layer\u0073":[{"digest":"` + d2 + `","size":2}]}`,
	`{"schemaVersion":2,"config":{"digest":"` + d3 + `","size":3},"config":{"mediaType":"c","digest":"` + d1 + `","size":1},"layers":[]}`,
	`{"schemaVersion":2,"config":{"mediaType":"c","digest":"` + d1 + `","size":1},"config":null,"layers":[]}`,
	`{"schemaVersion":2,"config":{"mediaType":"c","digest":"` + d1 + `","size":1},"config":{"mediaType":"c2"}}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d3 + `","size":3},{"digest":"` + d2 + `","size":2}],"layers":[{"digest":"` + d1 + `","size":1}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":1}],"Layers":null}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":1}],"manifests":[{"mediaType":"` + v1.MediaTypeImageManifest + `","digest":"` + d2 + `","size":2}]}`,
	`{"schemaVersion":2,"mediaType":"` + v1.MediaTypeImageIndex + `","Manifests":[{"mediaType":"` + v1.MediaTypeImageManifest + `","digest":"` + d2 + `","size":2}]}`,
	`{"schemaVersion":2,"mediaType":"` + v1.MediaTypeImageIndex + `","manifests":[{"digest":"` + d2 + `","size":2}],"layers":"not a list"}`,
	`{"schemaVersion":2,"mediaType":"` + v1.MediaTypeImageManifest + `","layers":[{"digest":"` + d2 + `","size":2}],"manifests":7}`,
	`{"schemaVersion":2,"mediaType":"` + v1.MediaTypeImageManifest + `","layers":[{"digest":"` + d2 + `","size":2},{"digest":5}]}`,
	`{"schemaVersion":2,"subject":{"mediaType":"m","digest":"` + d3 + `","size":3},"Subject":{"size":4},"layers":[]}`,
	`{"mediaType":"` + MediaTypeArtifactManifest + `","Blobs":[{"digest":"` + d1 + `","size":1}]}`,
	"{\"schemaVersion\":2,\"\u212aey\":1,\"config\":{\"mediaType\":\"c\",\"digest\":\"" + d1 + "\",\"\u017fize\":1},\"layer\u017f\":[{\"digest\":\"" + d2 + "\",\"size\":2}]}",
	`{"schemaVersion":2,"config":{},"layers":[{"digest":"` + d1 + `","size":1}]}`,
	`{"schemaVersion":2,"config":{"mediaType":"c"},"layers":[]}`,
	`{"schemaVersion":2,"layers":[null,{"digest":"` + d1 + `","size":1}]}`,
	`{"architecture":"amd64","os":"linux","config":{"Env":["A=b"],"Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":[]}}`,
	`null`,
	`[]`,
}

func FuzzReachable(f *testing.F) {
	for _, idx := range hostileIndexes {
		for _, man := range hostileManifests {
			f.Add([]byte(idx), []byte(man))
		}
	}
	f.Fuzz(func(t *testing.T, idx, man []byte) {
		sameReachable(t, idx, man)
	})
}

func FuzzChildren(f *testing.F) {
	for _, man := range hostileManifests {
		for _, mt := range []string{"", v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, "application/octet-stream"} {
			f.Add([]byte(man), mt)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, mt string) {
		sameChildrenAsTools(t, b, mt)
	})
}

// TestHostileSpellings: every index.json and manifest of the hostile
// corpus, in every pairing, is read as encoding/json reads it.
func TestHostileSpellings(t *testing.T) {
	for i, idx := range hostileIndexes {
		for j, man := range hostileManifests {
			t.Run(fmt.Sprintf("index%d/manifest%d", i, j), func(t *testing.T) {
				sameReachable(t, []byte(idx), []byte(man))
			})
		}
	}
}

// TestKeyFolding: fieldOf names a field exactly when encoding/json decodes
// the key into it, Unicode folding included: the Kelvin sign (U+212A) is a
// k, the long s (U+017F) an s, the dotless and dotted i are not i.
func TestKeyFolding(t *testing.T) {
	keys := []string{"\u212aey", "\u212aEY", "ke\u212a", "key", "KEY", "keys", "ke", "\u017fize", "SIZE", "si\u017fe", "\u0131d", "\u0130D", "ID"}
	names := []string{"key", "size", "id"}
	for _, key := range keys {
		for _, name := range names {
			typ := reflect.StructOf([]reflect.StructField{{Name: "F", Type: reflect.TypeFor[int](), Tag: reflect.StructTag(`json:"` + name + `"`)}})
			v := reflect.New(typ)
			doc, _ := json.Marshal(map[string]int{key: 1})
			if err := json.Unmarshal(doc, v.Interface()); err != nil {
				t.Fatal(err)
			}
			want := v.Elem().Field(0).Int() == 1
			got, ok := fieldOf(key, []string{name})
			if ok != want || ok && got != name {
				t.Errorf("key %q names %q: %v, encoding/json %v", key, name, ok, want)
			}
		}
	}
}
