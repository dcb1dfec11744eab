package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
)

// indexNames returns the names of dir's index.json entries ("" untagged),
// read from the file.
func indexNames(t *testing.T, dir string) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ix.Manifests {
		out = append(out, d.Annotations[v1.AnnotationRefName])
	}
	return out
}

// TestTagNameRule: ocistore tag refuses a name that skopeo or umoci would
// refuse, with exit status 2 and the rule, writing nothing; it takes the
// names they accept, REPO:TAG included.
func TestTagNameRule(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	index := func() []byte {
		b, err := os.ReadFile(filepath.Join(f.dir, "index.json"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := index()
	for _, c := range []struct{ name, rule string }{
		{"bad tag!", `tag: "bad tag!": invalid reference name: components joined by /, each letters and digits (A-Z, a-z, 0-9) joined by one of - . _ : @ + or --`},
		{".lead", `tag: ".lead": invalid reference name`},
		{"Repo:v1", `repository "Repo": a name with a colon is REPO:TAG, and REPO must be lowercase letters and digits`},
		{"a:b:c", `repository "a:b"`},
		{"repo:v1+build", `TAG must be 1 to 128 letters, digits, _ . or -`},
	} {
		r := must(t, 2, "-l", f.dir, "tag", "a", "ok-name", c.name)
		wantContains(t, "stderr", r.stderr, "ocistore: tag: ", c.rule)
		if r.stdout != "" {
			t.Errorf("refused tag printed:\n%s", r)
		}
	}
	if !bytes.Equal(before, index()) {
		t.Fatal("a refused tag changed index.json")
	}
	names := []string{"example.com/repo:v1", "localhost:5000/team/app:1.2.3-rc_1", "Upper/Case", "a--b"}
	must(t, 0, append([]string{"-l", f.dir, "tag", "a"}, names...)...)
	got := indexNames(t, f.dir)
	for _, n := range names {
		if !slices.Contains(got, n) {
			t.Errorf("index.json names %v, want %s among them", got, n)
		}
	}
}

// TestForeignNamesCLI: names another tool wrote outside the rule are listed,
// inspected, untagged and removed like any other.
func TestForeignNamesCLI(t *testing.T) {
	t.Parallel()
	blobs := map[digest.Digest][]byte{}
	a := testutil.RawImage(blobs, []byte(`{"architecture":"amd64","os":"linux"}`), []byte("a"))
	b := testutil.RawImage(blobs, []byte(`{"architecture":"arm64","os":"linux"}`), []byte("b"))
	dir := testutil.WriteRawLayout(t, t.TempDir(), blobs, []v1.Descriptor{testutil.Named(a, "bad tag!"), testutil.Named(b, "Repo:v1")})
	r := must(t, 0, "-l", dir, "ls")
	wantContains(t, "ls", r.stdout, "bad tag!", "Repo:v1")
	r = must(t, 0, "-l", dir, "inspect", "bad tag!")
	wantContains(t, "inspect", r.stdout, a.Digest.String())
	must(t, 0, "-l", dir, "untag", "bad tag!")
	must(t, 0, "-l", dir, "rm", "Repo:v1")
	if got := indexNames(t, dir); !slices.Equal(got, []string{""}) {
		t.Errorf("after untag and rm, index.json names %q, want one untagged entry", got)
	}
}
