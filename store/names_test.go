package store_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// nameCases are the names of TestTagNames. Valid names are those the
// image-spec grammar of org.opencontainers.image.ref.name accepts (as
// skopeo's oci transport and umoci check it) and, when they have a colon,
// whose REPO:TAG parts are a distribution-spec repository (after an optional
// HOST:PORT) and tag. want is a part of the error message: the rule broken.
var nameCases = []struct {
	name string
	want string // "" for a valid name
}{
	{"v1", ""},
	{"latest", ""},
	{"1.0", ""},
	{"UPPER-case_Tag", ""},
	{"a--b", ""},
	{"a+b", ""},
	{"a@b", ""},
	{"a.b_c-d", ""},
	{"a:b", ""},
	{"foo/bar", ""},
	{"Foo/Bar", ""}, // no colon: a plain reference name, case is free
	{"repo:V1", ""},
	{"example.com/repo:v1", ""},
	{"example.com/org/app:1.2.3-rc_1", ""},
	{"my-registry:5000/team/app:v2", ""},
	{"localhost:5000/repo:v1", ""},
	{"localhost:5000/repo", ""}, // HOST:PORT/REPO without a tag
	{"reg.io/app:" + strings.Repeat("t", 128), ""},
	{strings.Repeat("p", 300), ""}, // the reference name grammar has no length limit

	{"", "empty tag"},
	{"bad tag!", "invalid reference name: components joined by /, each letters and digits (A-Z, a-z, 0-9) joined by one of - . _ : @ + or --"},
	{"-lead", "invalid reference name"},
	{".lead", "invalid reference name"},
	{":lead", "invalid reference name"},
	{"_lead", "invalid reference name"},
	{"trail-", "invalid reference name"},
	{"trail:", "invalid reference name"},
	{"--", "invalid reference name"},
	{"a---b", "invalid reference name"},
	{"a__b:c", "invalid reference name"}, // __ joins repository components, not reference names
	{"a//b", "invalid reference name"},
	{"/a", "invalid reference name"},
	{"a/", "invalid reference name"},
	{"ünïcode", "invalid reference name"},
	{"tag\x00", "invalid reference name"},
	{"tab\tx", "invalid reference name"},
	{"sha256:" + strings.Repeat("0", 64), "looks like a digest"},
	{"Repo:v1", `repository "Repo": a name with a colon is REPO:TAG, and REPO must be lowercase`},
	{"example.com/Repo:v1", `repository "example.com/Repo"`},
	{"a:b:c", `repository "a:b"`},
	{"localhost:5000:v1", `repository "localhost:5000"`},
	{"localhost:abc/repo:v1", `repository "localhost:abc/repo"`},
	{"repo@x:v1", `repository "repo@x"`},
	{"repo:v1+build", `tag part "v1+build": a name with a colon is REPO:TAG, and TAG must be 1 to 128 letters, digits, _ . or -`},
	{"reg.io/app:" + strings.Repeat("t", 129), "TAG must be 1 to 128"},
}

// TestTagNames: Tag, PutManifest and Import write only names the other tools
// accept, and refuse the rest with ErrInvalidArgument and the rule, changing
// nothing.
func TestTagNames(t *testing.T) {
	l := newLib(t)
	a := l.image(nil, 1)
	raw, err := l.s.FetchManifest(l.ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range nameCases {
		before := l.indexFile()
		err := l.s.Tag(l.ctx, a, c.name)
		if c.want == "" {
			if err != nil {
				t.Errorf("Tag %q = %v, want success", c.name, err)
			} else if d, err := l.s.Resolve(l.ctx, c.name); err != nil || d.Digest != a.Digest {
				t.Errorf("Resolve %q after Tag = %v, %v", c.name, d.Digest, err)
			}
			continue
		}
		if !errors.Is(err, store.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Tag %q = %v, want ErrInvalidArgument saying %q", c.name, err, c.want)
		}
		if _, err := l.s.PutManifest(l.ctx, a.MediaType, raw, c.name); !errors.Is(err, store.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PutManifest %q = %v, want ErrInvalidArgument saying %q", c.name, err, c.want)
		}
		// Among valid names, in one call: nothing is written.
		if err := l.s.Tag(l.ctx, a, "fine-1", c.name, "fine-2"); !errors.Is(err, store.ErrInvalidArgument) {
			t.Errorf("Tag fine-1 %q fine-2 = %v, want ErrInvalidArgument", c.name, err)
		}
		if !bytes.Equal(before, l.indexFile()) {
			t.Fatalf("a refused name %q changed index.json", c.name)
		}
	}
	l.clean()
}

// TestForeignNames: a name another tool wrote that ocistore would not write
// can still be listed, resolved, untagged and removed; Import refuses to
// copy it (naming it and the rule), before it copies anything.
func TestForeignNames(t *testing.T) {
	blobs := map[digest.Digest][]byte{}
	imgs := make([]v1.Descriptor, 4)
	for i := range imgs {
		imgs[i] = testutil.RawImage(blobs, []byte(`{"architecture":"amd64","os":"linux","n":`+string(rune('0'+i))+`}`), []byte{byte(i)})
	}
	bad := []string{"bad tag!", "Repo:v1", "-lead", "ünï"}
	var entries []v1.Descriptor
	for i, n := range bad {
		entries = append(entries, testutil.Named(imgs[i], n))
	}
	src := testutil.WriteRawLayout(t, filepath.Join(t.TempDir(), "src"), blobs, entries)

	// Import refuses every bad name, also when picked by digest.
	l := newLib(t)
	for _, refs := range [][]string{nil, {"bad tag!"}, {imgs[1].Digest.String()}} {
		_, err := l.s.Import(l.ctx, src, refs...)
		if !errors.Is(err, store.ErrInvalidArgument) || !strings.Contains(err.Error(), "invalid reference name") && !strings.Contains(err.Error(), "REPO:TAG") {
			t.Errorf("Import %v = %v, want ErrInvalidArgument with the rule", refs, err)
		}
	}
	if got := l.index(); len(got) != 0 {
		t.Errorf("refused imports wrote %v", got)
	}
	for _, d := range imgs {
		l.wantBlobs(false, d.Digest)
	}

	// The layout itself, adopted: every read and removal works.
	fl := libOpen(t, src, 2)
	got := fl.index()
	want := []string{}
	for i, n := range bad {
		want = append(want, n+"="+imgs[i].Digest.String())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	for i, n := range bad {
		if d, err := fl.s.Resolve(fl.ctx, n); err != nil || d.Digest != imgs[i].Digest {
			t.Errorf("Resolve %q = %v, %v", n, d.Digest, err)
		}
	}
	if err := fl.s.Untag(fl.ctx, "bad tag!", "ünï"); err != nil {
		t.Errorf("Untag = %v", err)
	}
	fl.del("Repo:v1", "-lead")
	want = []string{"=" + imgs[0].Digest.String(), "=" + imgs[3].Digest.String()}
	if got := fl.index(); !slices.Equal(got, want) {
		t.Errorf("after untag and delete: %v, want %v", got, want)
	}
	fl.wantBlobs(false, imgs[1].Digest, imgs[2].Digest)
}
