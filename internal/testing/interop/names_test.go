package interop

import (
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
)

// sampleNames returns the names TestTagNamesAgreeWithTools tries: edge
// cases, then n names built at random (fixed seed) from components of
// letters and digits joined by separators, some of which the grammar of
// org.opencontainers.image.ref.name allows and some not.
func sampleNames(n int) []string {
	names := []string{
		"v1", "latest", "UPPER", "1.0", "a--b", "a+b", "a@b", "a:b", "foo/bar", "Foo/Bar",
		"example.com/repo:v1", "example.com/org/app:1.2.3-rc_1", "localhost:5000/repo:v1",
		"localhost:5000/repo", "my-registry:5000/team/app:v2", "reg.io/app:" + strings.Repeat("t", 128),
		strings.Repeat("p", 300),
		// Refused by ocistore.
		"bad tag!", ".lead", "trail-", "a---b", "a__b:c", "a//b", "ünï", "Repo:v1", "a:b:c",
		"repo:v1+build", "reg.io/app:" + strings.Repeat("t", 129), "localhost:5000:v1",
	}
	r := rand.New(rand.NewPCG(14, 7))
	alnum := "abcXYZ019"
	seps := []string{"-", ".", "_", ":", "@", "+", "--", "/", "__", "---", "::", "!", " ", "é"}
	for range n {
		var b strings.Builder
		for c := range 1 + r.IntN(4) {
			if c > 0 || r.IntN(8) == 0 {
				b.WriteString(seps[r.IntN(len(seps))])
			}
			for range 1 + r.IntN(3) {
				b.WriteByte(alnum[r.IntN(len(alnum))])
			}
		}
		if r.IntN(8) == 0 {
			b.WriteString(seps[r.IntN(len(seps))])
		}
		names = append(names, b.String())
	}
	return names
}

// TestTagNamesAgreeWithTools: every name ocistore tag accepts, skopeo
// (skopeo inspect oci:DIR:NAME) and umoci (umoci stat --image DIR:NAME)
// accept and resolve; every name it refuses as breaking the reference name
// grammar, both refuse too ("Invalid image", "invalid characters"). A name
// ocistore refuses for its REPO:TAG form only (uppercase repository, a
// 129-character tag) is one that registries refuse.
func TestTagNamesAgreeWithTools(t *testing.T) {
	requireTools(t)
	t.Parallel()
	tmp := t.TempDir()
	u := newUmociLayout(t, filepath.Join(tmp, "L"), mkdir(t, tmp, "src"))
	u.newImage("base")
	u.insert("base", "", "base.txt")
	want := tags(t, u.dir)["base"]
	accepted, refused := 0, 0
	for _, name := range sampleNames(60) {
		r := ocistore(t, u.dir, "tag", "base", name)
		switch r.code {
		case 0:
			accepted++
			if got := tags(t, u.dir)[name]; got != want {
				t.Errorf("after ocistore tag base %q, index.json has it at %q, want %s", name, got, want)
			}
			skopeoInspect(t, u.dir, name, want)
			if s := run(t, "umoci", "stat", "--image", u.dir+":"+name); s.code != 0 {
				t.Errorf("umoci refuses a name ocistore wrote:\n%v", show(r, s))
			}
		case 2:
			refused++
			if !strings.Contains(r.stderr, "invalid reference name") {
				continue // the REPO:TAG rule: stricter than the tools, by design
			}
			if s := skopeo(t, "inspect", ociRef(u.dir, name)); s.code == 0 || !strings.Contains(s.stderr, "Invalid image") {
				t.Errorf("ocistore refuses %q as an invalid reference name, skopeo does not:\n%v", name, show(r, s))
			}
			if s := run(t, "umoci", "stat", "--image", u.dir+":"+name); s.code == 0 || !strings.Contains(s.stderr, "invalid characters") {
				t.Errorf("ocistore refuses %q as an invalid reference name, umoci does not:\n%v", name, show(r, s))
			}
		default:
			t.Errorf("ocistore tag base %q: want exit 0 or 2:\n%v", name, r)
		}
	}
	t.Logf("%d names accepted, %d refused", accepted, refused)
	if accepted < 20 || refused < 20 {
		t.Errorf("the sample is lopsided: %d names accepted, %d refused", accepted, refused)
	}
	mustUmoci(t, "ls", "--layout", u.dir)
}
