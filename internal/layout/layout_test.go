package layout_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
)

var (
	hex256 = strings.Repeat("a", 64)
	hex384 = strings.Repeat("b", 96)
	hex512 = strings.Repeat("c", 128)
)

func TestValidateDigest(t *testing.T) {
	cases := []struct {
		d  string
		ok bool
	}{
		{"sha256:" + hex256, true},
		{"sha384:" + hex384, true},
		{"sha512:" + hex512, true},
		{digest.FromString("x").String(), true},
		{"", false},
		{"sha256", false},
		{"sha256:", false},
		{":" + hex256, false},
		{"sha256:" + hex256[:63], false},
		{"sha256:" + hex256 + "a", false},
		{"sha256:" + strings.ToUpper(hex256), false},
		{"sha256:" + strings.Repeat("g", 64), false},
		{"sha512:" + hex256, false},
		{"sha256:../../x", false},
		{"sha256:../../" + hex256[:58], false},
		{"sha256:" + hex256[:63] + "/", false},
		{"sha256:" + hex256[:62] + "\x00a", false},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", false},
		{"SHA256:" + hex256, false},
		{"sha256+b64:" + hex256, false},
		{"sha256: " + hex256[1:], false},
	}
	for _, c := range cases {
		err := layout.ValidateDigest(digest.Digest(c.d))
		if c.ok && err != nil {
			t.Errorf("ValidateDigest(%q) = %v", c.d, err)
		}
		if !c.ok {
			if !errors.Is(err, errdef.ErrInvalidDigest) {
				t.Errorf("ValidateDigest(%q) = %v, want ErrInvalidDigest", c.d, err)
			} else if !strings.Contains(err.Error(), c.d) && !strings.Contains(err.Error(), strconv.Quote(c.d)) {
				t.Errorf("ValidateDigest(%q): message %q does not quote the digest", c.d, err)
			}
		}
		if err == nil {
			p := layout.BlobPath(digest.Digest(c.d))
			if strings.Contains(p, "..") || strings.Count(p, "/") != 2 || !strings.HasPrefix(p, "blobs/") {
				t.Errorf("BlobPath(%q) = %q", c.d, p)
			}
		}
	}
}

func TestBlobPath(t *testing.T) {
	for _, c := range []struct{ d, p string }{
		{"sha256:" + hex256, "blobs/sha256/" + hex256},
		{"sha512:" + hex512, "blobs/sha512/" + hex512},
	} {
		if got := layout.BlobPath(digest.Digest(c.d)); got != c.p {
			t.Errorf("BlobPath(%s) = %s", c.d, got)
		}
		alg, name, _ := strings.Cut(strings.TrimPrefix(c.p, "blobs/"), "/")
		if d, ok := layout.ParseBlobPath(alg, name); !ok || d.String() != c.d {
			t.Errorf("ParseBlobPath(%s, %s) = %s, %v", alg, name, d, ok)
		}
	}
	for _, c := range [][2]string{{"sha256", "x"}, {"sha256", hex256 + ".tmp"}, {"md5", hex256}, {"sha512", hex256}, {"sha256", ".." + hex256[2:]}} {
		if _, ok := layout.ParseBlobPath(c[0], c[1]); ok {
			t.Errorf("ParseBlobPath(%s, %s) accepted", c[0], c[1])
		}
	}
}

func TestIsManifest(t *testing.T) {
	cases := []struct {
		mt              string
		manifest, index bool
	}{
		{v1.MediaTypeImageManifest, true, false},
		{v1.MediaTypeImageIndex, true, true},
		{layout.MediaTypeDockerManifest, true, false},
		{layout.MediaTypeDockerManifestList, true, true},
		{v1.MediaTypeImageLayerGzip, false, false},
		{v1.MediaTypeImageConfig, false, false},
		{"application/vnd.example.unknown", false, false},
		{"", false, false},
	}
	for _, c := range cases {
		if got := layout.IsManifest(c.mt); got != c.manifest {
			t.Errorf("IsManifest(%q) = %v", c.mt, got)
		}
		if got := layout.IsIndex(c.mt); got != c.index {
			t.Errorf("IsIndex(%q) = %v", c.mt, got)
		}
	}
}

func TestParseIndex(t *testing.T) {
	good := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hex256 + `","size":3}`
	cases := []struct {
		name    string
		in      string
		entries int
		err     error
		names   string // must appear in the error message
	}{
		{"empty index", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, 0, nil, ""},
		{"no media type", `{"schemaVersion":2,"manifests":[` + good + `]}`, 1, nil, ""},
		{"manifests null", `{"schemaVersion":2,"manifests":null}`, 0, nil, ""},
		{"manifests absent", `{"schemaVersion":2}`, 0, nil, ""},
		{"two entries", `{"schemaVersion":2,"manifests":[` + good + `,` + good + `]}`, 2, nil, ""},
		{"empty", ``, 0, errdef.ErrCorrupt, "index.json"},
		{"whitespace", " \n\t", 0, errdef.ErrCorrupt, "index.json"},
		{"truncated", `{"schemaVersion":2,"manifests":[` + good[:20], 0, errdef.ErrCorrupt, "index.json"},
		{"garbage", "\x00\xff\xfe", 0, errdef.ErrCorrupt, "index.json"},
		{"array", `[]`, 0, errdef.ErrCorrupt, "index.json"},
		{"null", `null`, 0, errdef.ErrCorrupt, "index.json"},
		{"schemaVersion 1", `{"schemaVersion":1,"manifests":[]}`, 0, errdef.ErrCorrupt, "index.json"},
		{"schemaVersion string", `{"schemaVersion":"2","manifests":[]}`, 0, errdef.ErrCorrupt, "index.json"},
		{"no schemaVersion", `{"manifests":[]}`, 0, errdef.ErrCorrupt, "index.json"},
		{"manifest media type", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`, 0, errdef.ErrCorrupt, "index.json"},
		{"media type not a string", `{"schemaVersion":2,"mediaType":7}`, 0, errdef.ErrCorrupt, "index.json"},
		{"manifests object", `{"schemaVersion":2,"manifests":{}}`, 0, errdef.ErrCorrupt, "index.json"},
		{"entry not an object", `{"schemaVersion":2,"manifests":[7]}`, 0, errdef.ErrCorrupt, "index.json"},
		{"bad digest", `{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]}`, 0, errdef.ErrInvalidDigest, "sha256:zz"},
		{"escaping digest", `{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../../x","size":1}]}`, 0, errdef.ErrInvalidDigest, "sha256:../../x"},
		{"no digest", `{"schemaVersion":2,"manifests":[{"mediaType":"x","size":1}]}`, 0, errdef.ErrInvalidDigest, "index.json"},
		{"negative size", `{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:` + hex256 + `","size":-1}]}`, 0, errdef.ErrCorrupt, hex256},
		{"size not a number", `{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:` + hex256 + `","size":"1"}]}`, 0, errdef.ErrCorrupt, "index.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ix, err := layout.ParseIndex([]byte(c.in))
			if c.err == nil {
				if err != nil {
					t.Fatalf("ParseIndex = %v", err)
				}
				if len(ix.Entries) != c.entries {
					t.Fatalf("%d entries, want %d", len(ix.Entries), c.entries)
				}
				// Marshal gives an index that parses to the same entries.
				again, err := layout.ParseIndex(ix.Marshal())
				if err != nil || len(again.Entries) != c.entries {
					t.Fatalf("re-parse of Marshal: %v", err)
				}
				return
			}
			if !errors.Is(err, c.err) {
				t.Fatalf("ParseIndex = %v, want %v", err, c.err)
			}
			if !strings.Contains(err.Error(), c.names) {
				t.Errorf("message %q does not name %q", err, c.names)
			}
		})
	}
}

// TestMarshalKeepsUnknownFields: fields ocistore does not know, at the top
// level and in entries, survive a parse and a rewrite.
func TestMarshalKeepsUnknownFields(t *testing.T) {
	in := `{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hex256 + `","size":3,
     "platform":{"architecture":"arm64","os":"linux"},"x-vendor":{"k":[1,2]},
     "annotations":{"org.opencontainers.image.ref.name":"v1","org.example.note":"hi"}}
  ],
  "annotations": {"org.example.layout":"yes"},
  "x-top": [true]
}`
	ix, err := layout.ParseIndex([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if ix.Entries[0].Name() != "v1" {
		t.Errorf("Name = %q", ix.Entries[0].Name())
	}
	out := ix.Marshal()
	var got, want map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("Marshal output does not parse: %v\n%s", err, out)
	}
	json.Unmarshal([]byte(in), &want)
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if !bytes.Equal(gb, wb) {
		t.Errorf("rewrite lost data:\n got %s\nwant %s", gb, wb)
	}
	// The input ends without a newline: so does the output (a file that
	// ends with one keeps it: TestMarshalKeepsFinalNewline).
	if !bytes.HasPrefix(out, []byte(`{"schemaVersion":2,"mediaType":`)) || !bytes.HasSuffix(out, []byte("}")) {
		t.Errorf("Marshal layout: %s", out)
	}
	// Deterministic.
	if !bytes.Equal(out, ix.Marshal()) {
		t.Error("Marshal is not deterministic")
	}
	// With keeps the top-level fields and replaces the entries.
	e := layout.NewEntry(ix.Entries[0].Desc, "v2")
	out2 := ix.With([]layout.Entry{e}).Marshal()
	if !bytes.Contains(out2, []byte(`"x-top":[true]`)) || !bytes.Contains(out2, []byte(`"v2"`)) || bytes.Contains(out2, []byte(`"v1"`)) {
		t.Errorf("With: %s", out2)
	}
	if len(ix.Entries) != 1 || ix.Entries[0].Name() != "v1" {
		t.Error("With modified the original index")
	}
}

func TestNewEntry(t *testing.T) {
	d := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.Digest("sha256:" + hex256), Size: 3,
		Annotations: map[string]string{v1.AnnotationRefName: "old", "org.example.note": "kept"}}
	cases := []struct {
		name  string
		tag   string
		annos map[string]string
	}{
		{"rename", "new", map[string]string{v1.AnnotationRefName: "new", "org.example.note": "kept"}},
		{"untag", "", map[string]string{"org.example.note": "kept"}},
	}
	for _, c := range cases {
		e := layout.NewEntry(d, c.tag)
		if e.Name() != c.tag || len(e.Desc.Annotations) != len(c.annos) {
			t.Errorf("%s: entry %+v", c.name, e.Desc)
		}
		for k, v := range c.annos {
			if e.Desc.Annotations[k] != v {
				t.Errorf("%s: annotation %s = %q", c.name, k, e.Desc.Annotations[k])
			}
		}
		var back v1.Descriptor
		if err := json.Unmarshal(e.Raw, &back); err != nil || back.Digest != d.Digest || back.Annotations[v1.AnnotationRefName] != c.tag {
			t.Errorf("%s: Raw %s", c.name, e.Raw)
		}
	}
	if d.Annotations[v1.AnnotationRefName] != "old" {
		t.Error("NewEntry modified its argument")
	}
	// No annotations at all for an untagged entry of a bare descriptor.
	bare := layout.NewEntry(v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: 3}, "")
	if bare.Desc.Annotations != nil || bytes.Contains(bare.Raw, []byte("annotations")) {
		t.Errorf("bare entry %s", bare.Raw)
	}
}

func TestFind(t *testing.T) {
	d := func(c byte) v1.Descriptor {
		return v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.Digest("sha256:" + strings.Repeat(string(c), 64)), Size: 1}
	}
	ix := (&layout.Index{}).With([]layout.Entry{layout.NewEntry(d('a'), "x"), layout.NewEntry(d('b'), ""), layout.NewEntry(d('c'), "x"), layout.NewEntry(d('a'), "y")})
	for name, want := range map[string][]int{"x": {0, 2}, "y": {3}, "z": nil, "": {1}} {
		got := ix.Find(name)
		if len(got) != len(want) {
			t.Errorf("Find(%q) = %v, want %v", name, got, want)
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("Find(%q) = %v, want %v", name, got, want)
			}
		}
	}
}

func TestParseChildren(t *testing.T) {
	desc := func(c byte, mt string) string {
		return `{"mediaType":"` + mt + `","digest":"sha256:` + strings.Repeat(string(c), 64) + `","size":5}`
	}
	cases := []struct {
		name    string
		in      string
		refs    int
		subject bool
		mt      string
		err     error
	}{
		{"oci manifest", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + desc('a', "c") + `,"layers":[` + desc('b', "l") + `,` + desc('c', "l") + `]}`, 3, false, v1.MediaTypeImageManifest, nil},
		{"oci index", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + desc('a', v1.MediaTypeImageManifest) + `]}`, 1, false, v1.MediaTypeImageIndex, nil},
		{"docker manifest", `{"schemaVersion":2,"mediaType":"` + layout.MediaTypeDockerManifest + `","config":` + desc('a', "c") + `,"layers":[` + desc('b', "l") + `]}`, 2, false, layout.MediaTypeDockerManifest, nil},
		{"docker list", `{"schemaVersion":2,"mediaType":"` + layout.MediaTypeDockerManifestList + `","manifests":[` + desc('a', layout.MediaTypeDockerManifest) + `,` + desc('b', layout.MediaTypeDockerManifest) + `]}`, 2, false, layout.MediaTypeDockerManifestList, nil},
		{"artifact blobs", `{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","blobs":[` + desc('a', "x") + `]}`, 1, false, "application/vnd.oci.artifact.manifest.v1+json", nil},
		{"subject apart", `{"schemaVersion":2,"config":` + desc('a', "c") + `,"layers":[],"subject":` + desc('d', v1.MediaTypeImageManifest) + `}`, 1, true, "", nil},
		{"no media type", `{"schemaVersion":2,"layers":[` + desc('a', "l") + `]}`, 1, false, "", nil},
		{"empty object", `{}`, 0, false, "", nil},
		{"garbage", `{"schemaVersion":`, 0, false, "", errdef.ErrCorrupt},
		{"layers not a list", `{"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":{}}`, 0, false, "", errdef.ErrCorrupt},
		// v1.Index decodes it (it has no layers): the tools that read it
		// as an index find no children, nor does ocistore.
		{"layers not a list, no media type", `{"layers":{}}`, 0, false, "", nil},
		{"index with a bad layers", `{"mediaType":"application/vnd.oci.image.index.v1+json","layers":7,"manifests":[` + desc('a', v1.MediaTypeImageManifest) + `]}`, 1, false, v1.MediaTypeImageIndex, nil},
		{"manifests not a list in an index", `{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":{}}`, 0, false, "", errdef.ErrCorrupt},
		{"neither", `{"layers":{},"manifests":7}`, 0, false, "", errdef.ErrCorrupt},
		{"bad child digest", `{"layers":[{"mediaType":"l","digest":"sha256:../../etc","size":1}]}`, 0, false, "", errdef.ErrInvalidDigest},
		{"negative child size", `{"layers":[{"mediaType":"l","digest":"sha256:` + hex256 + `","size":-5}]}`, 0, false, "", errdef.ErrCorrupt},
		{"bad subject digest", `{"subject":{"mediaType":"m","digest":"sha256:1","size":1}}`, 0, false, "", errdef.ErrInvalidDigest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			kids, err := layout.ParseChildren("blob X", []byte(c.in))
			if c.err != nil {
				if !errors.Is(err, c.err) || !strings.Contains(err.Error(), "blob X") {
					t.Fatalf("ParseChildren = %v, want %v naming the blob", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(kids.Refs) != c.refs || (kids.Subject != nil) != c.subject || kids.MediaType != c.mt {
				t.Errorf("children %+v", kids)
			}
		})
	}
}

func writeBlob(t *testing.T, root string, d digest.Digest, b []byte) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(layout.BlobPath(d)))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadBlob(t *testing.T) {
	root := t.TempDir()
	fsys, err := fsio.OpenOS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	content := []byte(`{"schemaVersion":2,"layers":[]}`)
	d := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(content), Size: int64(len(content))}
	writeBlob(t, root, d.Digest, content)
	other := bytes.Clone(content)
	other[3] ^= 1
	forged := v1.Descriptor{Digest: digest.FromBytes(other), Size: int64(len(other))}
	writeBlob(t, root, forged.Digest, content) // right size, wrong bytes
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "blobs", "sha256", strings.Repeat("e", 64))); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name  string
		d     v1.Descriptor
		limit int64
		err   error
	}{
		{"ok", d, 1 << 20, nil},
		{"missing", v1.Descriptor{Digest: digest.FromString("none"), Size: 4}, 1 << 20, errdef.ErrNotFound},
		{"too large", v1.Descriptor{Digest: d.Digest, Size: 1 << 62}, 1 << 20, errdef.ErrTooLarge},
		{"over a small limit", d, 4, errdef.ErrTooLarge},
		{"size disagrees", v1.Descriptor{Digest: d.Digest, Size: d.Size - 1}, 1 << 20, errdef.ErrSizeMismatch},
		{"content forged", forged, 1 << 20, errdef.ErrDigestMismatch},
		{"bad digest", v1.Descriptor{Digest: "sha256:../../../etc/passwd", Size: 1}, 1 << 20, errdef.ErrInvalidDigest},
		{"directory", v1.Descriptor{Digest: digest.Digest("sha256:" + strings.Repeat("f", 64)), Size: 1}, 1 << 20, fsio.ErrNotRegular},
	}
	if err := os.Mkdir(filepath.Join(root, "blobs", "sha256", strings.Repeat("f", 64)), 0o755); err != nil {
		t.Fatal(err)
	}
	// Symlinks are never followed, inside the layout or out of it.
	inside := strings.Repeat("9", 64)
	if err := os.Symlink(d.Digest.Encoded(), filepath.Join(root, "blobs", "sha256", inside)); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{strings.Repeat("e", 64), inside} {
		if b, err := layout.ReadBlob(fsys, v1.Descriptor{Digest: digest.Digest("sha256:" + h), Size: d.Size}, 1<<20); err == nil {
			t.Errorf("ReadBlob through a symlink read %q", b)
		}
	}
	for _, c := range cases {
		b, err := layout.ReadBlob(fsys, c.d, c.limit)
		if c.err == nil {
			if err != nil || !bytes.Equal(b, content) {
				t.Errorf("%s: ReadBlob = %q, %v", c.name, b, err)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%s: ReadBlob = %v, want %v", c.name, err, c.err)
		} else if c.d.Digest.Validate() == nil && !strings.Contains(err.Error(), c.d.Digest.String()) {
			t.Errorf("%s: %q does not name the digest", c.name, err)
		}
	}
	kids, err := layout.LoadChildren(fsys)(d)
	if err != nil || len(kids.Refs) != 0 {
		t.Errorf("LoadChildren = %+v, %v", kids, err)
	}
}

func TestVerifyReader(t *testing.T) {
	content := []byte("hello, layer")
	d := v1.Descriptor{Digest: digest.FromBytes(content), Size: int64(len(content))}
	cases := []struct {
		name string
		want v1.Descriptor
		r    io.Reader
		err  error // from reading or Verify
	}{
		{"ok", d, bytes.NewReader(content), nil},
		{"ok one byte at a time", d, iotest.OneByteReader(bytes.NewReader(content)), nil},
		{"ok unknown size", v1.Descriptor{Digest: d.Digest, Size: -1}, bytes.NewReader(content), nil},
		{"short", v1.Descriptor{Digest: d.Digest, Size: d.Size + 1}, bytes.NewReader(content), errdef.ErrSizeMismatch},
		{"long", v1.Descriptor{Digest: d.Digest, Size: d.Size - 1}, bytes.NewReader(content), errdef.ErrSizeMismatch},
		{"other content", d, bytes.NewReader([]byte("hello, LAYER")), errdef.ErrDigestMismatch},
		{"sha512", v1.Descriptor{Digest: digest.SHA512.FromBytes(content), Size: d.Size}, bytes.NewReader(content), nil},
		{"huge size", v1.Descriptor{Digest: d.Digest, Size: 1 << 62}, bytes.NewReader(content), errdef.ErrSizeMismatch},
	}
	for _, c := range cases {
		vr := layout.NewVerifyReader(c.r, c.want)
		got, err := io.ReadAll(vr)
		if err == nil {
			err = vr.Verify()
		}
		if !errors.Is(err, c.err) || (c.err == nil && err != nil) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
		}
		if c.err == nil && (!bytes.Equal(got, content) || vr.N() != int64(len(content))) {
			t.Errorf("%s: read %q (N=%d)", c.name, got, vr.N())
		}
	}
}

func TestLayoutFile(t *testing.T) {
	if err := layout.CheckLayoutFile(layout.LayoutFileContent()); err != nil {
		t.Fatal(err)
	}
	var l v1.ImageLayout
	if err := json.Unmarshal(layout.LayoutFileContent(), &l); err != nil || l.Version != "1.0.0" {
		t.Errorf("oci-layout content %s", layout.LayoutFileContent())
	}
	for _, bad := range []string{"", "{", "{}", `{"imageLayoutVersion":""}`, `[]`} {
		if err := layout.CheckLayoutFile([]byte(bad)); !errors.Is(err, errdef.ErrCorrupt) {
			t.Errorf("CheckLayoutFile(%q) = %v", bad, err)
		}
	}
	ix, err := layout.ParseIndex(layout.EmptyIndex())
	if err != nil || len(ix.Entries) != 0 {
		t.Errorf("EmptyIndex does not parse: %v", err)
	}
	if !bytes.Contains(layout.EmptyIndex(), []byte(`"manifests":[]`)) {
		t.Errorf("EmptyIndex %s: manifests must be [], not null", layout.EmptyIndex())
	}
	if layout.Sum([]byte("x")) != digest.FromString("x") {
		t.Error("Sum is not sha256")
	}
}

// FuzzParseIndex: any bytes parse or fail with ErrCorrupt/ErrInvalidDigest;
// what parses marshals to something that parses to the same entries.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:` + hex256 + `","size":3,"annotations":{"org.opencontainers.image.ref.name":"x"}}]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":null,"x":{"y":[1]}}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:../../x"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := layout.ParseIndex(b)
		if err != nil {
			if !errors.Is(err, errdef.ErrCorrupt) && !errors.Is(err, errdef.ErrInvalidDigest) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		again, err := layout.ParseIndex(ix.Marshal())
		if err != nil {
			t.Fatalf("Marshal of a parsed index does not parse: %v\n%s", err, ix.Marshal())
		}
		if len(again.Entries) != len(ix.Entries) {
			t.Fatalf("%d entries, then %d", len(ix.Entries), len(again.Entries))
		}
		for i := range ix.Entries {
			if again.Entries[i].Desc.Digest != ix.Entries[i].Desc.Digest || again.Entries[i].Name() != ix.Entries[i].Name() {
				t.Fatalf("entry %d changed", i)
			}
		}
	})
}

// TestValidateDigestFastPath: the fast path accepts exactly what
// go-digest's Validate accepts.
func TestValidateDigestFastPath(t *testing.T) {
	h := strings.Repeat("0123456789abcdef", 8)
	cases := []string{
		"sha256:" + h[:64], "sha512:" + h, "sha384:" + h[:96],
		"sha256:" + h[:63], "sha256:" + h[:65], "sha256:" + strings.ToUpper(h[:64]), "sha256:" + h[:63] + "g",
		"sha512:" + h[:64], "sha384:" + h[:64], "sha1:" + h[:40], "md5:" + h[:32], "sha256", "sha256:", ":" + h[:64],
		"sha256:../../" + h[:58], "SHA256:" + h[:64], "sha256+b64:" + h[:64], "",
	}
	for _, c := range cases {
		want := digest.Digest(c).Validate() == nil
		if got := layout.ValidateDigest(digest.Digest(c)) == nil; got != want {
			t.Errorf("ValidateDigest(%q) ok=%v, go-digest says %v", c, got, want)
		}
	}
}

// TestMarshalKeepsFinalNewline: Marshal ends the file as the file parsed
// ended, with or without a newline; an index not parsed from a file (init)
// ends with one.
func TestMarshalKeepsFinalNewline(t *testing.T) {
	for _, in := range []string{`{"schemaVersion":2,"manifests":[]}`, "{\"schemaVersion\":2,\"manifests\":[]}\n", "{\"schemaVersion\":2,\"manifests\":[]}\n\n", `{"schemaVersion":2,"manifests":[],"x":{ "a" : 1 }}`} {
		ix, err := layout.ParseIndex([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		out := ix.With(ix.Entries).Marshal()
		if got, want := bytes.HasSuffix(out, []byte("\n")), strings.HasSuffix(in, "\n"); got != want {
			t.Errorf("%q: Marshal gives %q", in, out)
		}
	}
	if out := (&layout.Index{}).Marshal(); !bytes.HasSuffix(out, []byte("}\n")) {
		t.Errorf("a new index: %q", out)
	}
}
