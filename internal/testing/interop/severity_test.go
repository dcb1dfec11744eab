package interop

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// fsck's exit status means damage (issue 14, item 5): what skopeo and umoci
// leave in a healthy layout (a layout ocistore has not adopted, an
// index.json they wrote since ocistore's last commit, blobs umoci rm left
// for umoci gc) are notices, printed, with exit status 0; a cron job that
// alarms on exit status 3 never alarms on them. Damage still exits 3.

// wantNotices fails unless fsck of dir exits 0 and reports exactly the
// kinds want (in order, each once per finding), every one a notice; the
// text output marks each as a notice and counts them.
func wantNotices(t *testing.T, dir, when string, want ...string) *fsckReport {
	t.Helper()
	rep, r := fsck(t, dir)
	if k := rep.kinds(); r.code != 0 || !slices.Equal(k, want) {
		t.Fatalf("%s: want exit 0 and the notices %v, got %v:\n%v", when, want, k, r)
	}
	for _, p := range rep.Problems {
		if p.Severity != "notice" {
			t.Fatalf("%s: %s has severity %q, want notice:\n%v", when, p.Kind, p.Severity, r)
		}
	}
	text := ocistore(t, dir, "fsck")
	if text.code != 0 {
		t.Fatalf("%s: fsck (text): want exit 0:\n%v", when, text)
	}
	for _, k := range want {
		if !strings.Contains(text.stdout, "notice: "+k+" ") {
			t.Fatalf("%s: the text output does not mark %s as a notice:\n%v", when, k, text)
		}
	}
	notices := "notices"
	if len(want) == 1 {
		notices = "notice"
	}
	if !strings.Contains(text.stdout, ", 0 problems, "+strconv.Itoa(len(want))+" "+notices+"\n") {
		t.Fatalf("%s: the summary does not count the notices:\n%v", when, text)
	}
	return rep
}

// repeat returns n copies of s.
func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// TestFsckSeverityOfToolLayouts: fsck of layouts as umoci and skopeo
// write them, before and after ocistore adopted them.
func TestFsckSeverityOfToolLayouts(t *testing.T) {
	requireTools(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}

	// umoci init && umoci new: not adopted yet.
	fresh := newUmociLayout(t, filepath.Join(tmp, "fresh"), src)
	fresh.newImage("empty")
	wantNotices(t, fresh.dir, "fsck of umoci init && umoci new", "journal-missing")

	// skopeo copy into a new layout: not adopted yet.
	u := buildBase(t, filepath.Join(tmp, "umoci"), src)
	sk := filepath.Join(tmp, "skopeo")
	skopeoCopy(t, u.dir, "app1", sk, "app1")
	wantNotices(t, sk, "fsck of a layout skopeo copied into", "journal-missing")

	// Adopted, then skopeo writes into it.
	adopt(t, sk)
	skopeoCopy(t, u.dir, "app2", sk, "app2")
	wantNotices(t, sk, "fsck after skopeo copied into an adopted layout", "external-change")
	mustOcistore(t, sk, "recover")
	fsckClean(t, sk, "after ocistore recover counted skopeo's write")

	// Adopted, then umoci writes into it; then umoci rm without umoci gc
	// leaves the removed image's own blobs: orphans.
	adopt(t, u.dir)
	u.insert("base", "app3", "three.txt")
	wantNotices(t, u.dir, "fsck after umoci wrote into an adopted layout", "external-change")
	mustOcistore(t, u.dir, "recover")
	fsckClean(t, u.dir, "after ocistore recover counted umoci's write")
	app3Only := minus(closure(t, u.dir, tags(t, u.dir)["app3"], nil), reachable(t, u.dir, func(d v1.Descriptor) bool { return refName(d) != "app3" }))
	mustUmoci(t, "rm", "--image", u.image("app3"))
	want := append(repeat("orphan", len(app3Only)), "external-change")
	wantNotices(t, u.dir, "fsck after umoci rm (before umoci gc)", want...)

	// The same on a layout ocistore never adopted: umoci rm before gc.
	fresh.insert("empty", "one", "one.txt")
	fresh.insert("empty", "two", "two.txt")
	mustUmoci(t, "rm", "--image", fresh.image("two"))
	rep, r := fsck(t, fresh.dir)
	if k := rep.kinds(); r.code != 0 || !slices.Contains(k, "orphan") || slices.ContainsFunc(k, func(k string) bool { return k != "orphan" && k != "journal-missing" }) {
		t.Fatalf("fsck after umoci rm of a layout ocistore never adopted: want exit 0, orphans and journal-missing, got %v:\n%v", k, r)
	}

	// Damage still exits 3: a blob an image needs is gone.
	layer := layers(t, sk, tags(t, sk)["app2"])
	if err := os.Remove(blobPath(sk, layer[len(layer)-1])); err != nil {
		t.Fatal(err)
	}
	rep, r = fsck(t, sk)
	if r.code != 3 || !slices.Equal(rep.kinds(), []string{"dangling"}) || rep.Problems[0].Severity != "problem" {
		t.Fatalf("fsck with a missing layer: want exit 3 and one dangling problem:\n%v", r)
	}
	text := ocistore(t, sk, "fsck")
	if text.code != 3 || !strings.Contains(text.stdout, "\ndangling ") && !strings.HasPrefix(text.stdout, "dangling ") || !strings.Contains(text.stdout, ", 1 problem\n") {
		t.Fatalf("fsck (text) with a missing layer: want exit 3, the dangling line and 1 problem:\n%v", text)
	}
}

// TestFsckSeveritySharedBlobDir: two layouts share a blob directory
// (skopeo --dest-shared-blob-dir), both adopted. skopeo copies into one:
// fsck of the other exits 0 with an external-change notice naming the
// layout that changed, not refcount problems (the counts of the shared
// journal cannot match before the next write recounts), and fsck of the
// one skopeo wrote exits 0 with its own external-change notice.
func TestFsckSeveritySharedBlobDir(t *testing.T) {
	requireTools(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	u := buildBase(t, filepath.Join(tmp, "umoci"), src)
	shared := filepath.Join(tmp, "shared")
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(u.dir, "base"), ociRef(a, "base"))
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(u.dir, "app1"), ociRef(b, "app1"))
	for _, dir := range []string{a, b} {
		mustOcistore(t, dir, "--shared-blob-dir", shared, "recover")
	}
	for _, dir := range []string{a, b} {
		fsckClean(t, dir, "after both layouts were adopted")
	}

	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(u.dir, "app2"), ociRef(b, "app2"))
	rep := wantNotices(t, a, "fsck of A after skopeo copied into B", "external-change")
	if p := rep.Problems[0]; p.Path != filepath.Join(b, "index.json") || !strings.Contains(p.Detail, b) {
		t.Fatalf("the external-change notice of A does not name B's index.json: %+v", p)
	}
	wantNotices(t, b, "fsck of B after skopeo copied into it", "external-change")

	mustOcistore(t, b, "recover")
	for _, dir := range []string{a, b} {
		fsckClean(t, dir, "after ocistore recover of B counted skopeo's write")
	}
}
