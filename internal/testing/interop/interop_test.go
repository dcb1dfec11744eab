// Package interop tests ocistore against the real tools that write and read
// OCI layouts, as Debian ships them: umoci 0.4.7 builds layouts, skopeo
// 1.9.3 reads them, copies out of them and writes into them. The CLI is
// built once from this checkout and driven as a user would.
//
// The tools are required: a missing one fails the suite ("make tools"
// installs them), it never skips. Digests are read from the layouts, never
// hardcoded: umoci's manifests and configs carry timestamps. Layers are
// reproducible, though: the same file inserted into two layouts gives the
// same layer blob.
package interop

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestUmociLayoutAdoptedAndEdited: a layout written by umoci is adopted by
// ocistore (first contact: fsck, then `ocistore recover` builds the journal) and
// edited (rm, tag, untag); afterwards skopeo reads and copies every remaining
// tag, umoci ls lists exactly them, and umoci gc finds nothing to collect.
func TestUmociLayoutAdoptedAndEdited(t *testing.T) {
	tmp, u := baseTest(t)
	l := u.dir
	u.insert("base", "app3", "three.txt") // a third image on the base layer
	u.tag("app3", "v3")                   // and a second manifest with two tags
	u.insert("base", "solo", "solo.txt")  // an image with a single tag, to untag
	u.gc()

	tg := tags(t, l)
	if got, want := sortedKeys(tg), []string{"app1", "app2", "app3", "base", "latest", "solo", "v3"}; !slices.Equal(got, want) {
		t.Fatalf("umoci wrote tags %v, want %v", got, want)
	}
	baseLayer := fixtureBaseLayer(t, l, tg, "app1", "app2", "app3", "solo")
	if tg["latest"] != tg["app1"] || tg["v3"] != tg["app3"] {
		t.Fatalf("umoci tag: latest/app1 and v3/app3 should share a manifest: %v", tg)
	}
	app2Blobs := closure(t, l, tg["app2"], nil)
	soloBlobs := closure(t, l, tg["solo"], nil)

	adopt(t, l)

	freed := rm(t, l, "app2")
	if len(freed) != 3 || slices.Contains(freed, baseLayer) {
		t.Fatalf("ocistore rm app2 freed %v: want app2's manifest, config and own layer, never the shared base layer %s", freed, baseLayer)
	}
	edits := []result{
		mustOcistore(t, l, "tag", "app1", "app1-copy"),
		mustOcistore(t, l, "untag", "latest"),
		mustOcistore(t, l, "untag", "solo"), // solo's manifest stays as an untagged entry
	}
	fsckClean(t, l, "after ocistore rm app2; tag app1 app1-copy; untag latest; untag solo")

	remaining := map[string]string{
		"base": tg["base"], "app1": tg["app1"], "app1-copy": tg["app1"], "app3": tg["app3"], "v3": tg["app3"],
	}
	if got := tags(t, l); !maps.Equal(got, remaining) {
		t.Fatalf("index.json tags after the edits: %v, want %v, after:\n%s", got, remaining, show(edits...))
	}
	if got := untagged(t, l); !slices.Equal(got, []string{tg["solo"]}) {
		t.Fatalf("untagged entries after untag solo: %v, want solo's manifest %s, after:\n%s", got, tg["solo"], show(edits...))
	}
	have := blobFiles(t, l)
	for d := range app2Blobs {
		_, ok := have[d]
		switch {
		case d == baseLayer && !ok:
			t.Fatalf("the base layer %s that app1, app3 and solo share was freed with app2", d)
		case d != baseLayer && ok:
			t.Fatalf("blob %s that only app2 used is still in blobs/", d)
		}
	}
	requireBlobs(t, l, soloBlobs, "ocistore untag solo")

	// skopeo reads and copies every remaining tag, and no longer finds the
	// removed ones.
	other := filepath.Join(tmp, "other")
	var copies []result
	for _, tag := range sortedKeys(remaining) {
		skopeoInspect(t, l, tag, remaining[tag])
		copies = append(copies, skopeoCopy(t, l, tag, other, tag))
	}
	for _, tag := range []string{"app2", "latest", "solo"} {
		if r := skopeo(t, "inspect", ociRef(l, tag)); r.code == 0 {
			t.Fatalf("skopeo still finds %s after ocistore removed it:\n%v", tag, r)
		}
	}
	if got := tags(t, other); !maps.Equal(got, remaining) {
		t.Fatalf("skopeo's copy has tags %v, want %v (same digests), after:\n%s", got, remaining, show(copies...))
	}
	adopt(t, other)

	// umoci ls: exactly the remaining tags (it hides untagged entries).
	r := mustUmoci(t, "ls", "--layout", l)
	if got := sorted(lines(r.stdout)); !slices.Equal(got, sortedKeys(remaining)) {
		t.Fatalf("umoci ls lists %v, want %v:\n%v", got, sortedKeys(remaining), r)
	}

	// umoci gc: ocistore left no orphan, and its untagged entry is a root
	// for umoci too, so nothing is collected.
	need := reachable(t, l, all)
	before := blobFiles(t, l)
	index := readFile(t, l, "index.json")
	r = mustUmoci(t, "gc", "--layout", l)
	removed := minus(before, blobFiles(t, l))
	for _, d := range removed {
		if need[d] {
			t.Errorf("umoci gc removed %s, which index.json reaches", d)
		}
	}
	if len(removed) > 0 {
		t.Errorf("umoci gc removed %d blobs after ocistore's edits, want none (no orphans; untagged entries are roots): %v\n%v", len(removed), removed, r)
	}
	if got := readFile(t, l, "index.json"); got != index {
		t.Errorf("umoci gc rewrote index.json:\nbefore %s\nafter  %s\n%v", index, got, r)
	}
	for _, tag := range sortedKeys(remaining) {
		skopeoInspect(t, l, tag, remaining[tag])
	}
	requireBlobs(t, l, soloBlobs, "umoci gc")
	fsckClean(t, l, "after umoci gc")
}

// TestSkopeoTagSurvivesOcistoreRm: tags that skopeo adds to a layout ocistore
// manages, one on a manifest ocistore knows and one on new blobs, are counted
// by the next ocistore transaction: removing the other tag of the same
// manifest frees nothing, and the skopeo tags keep every blob.
func TestSkopeoTagSurvivesOcistoreRm(t *testing.T) {
	tmp, l, x := baseAndExtraTest(t)
	tg := tags(t, l)
	baseLayer := fixtureBaseLayer(t, l, tg, "app1", "app2")

	adopt(t, l)
	// From now on app1's manifest has one tag that ocistore wrote.
	mustOcistore(t, l, "untag", "latest")
	fsckClean(t, l, "after ocistore untag latest")

	// skopeo writes behind ocistore's back: the same manifest as app1, and an
	// image from another layout.
	c1 := skopeoCopy(t, l, "app1", l, "from-skopeo")
	c2 := skopeoCopy(t, x, "x", l, "extra")
	tg = tags(t, l)
	if tg["from-skopeo"] != tg["app1"] {
		t.Fatalf("from-skopeo is %s, app1 is %s, after:\n%v", tg["from-skopeo"], tg["app1"], c1)
	}
	if want := tags(t, x)["x"]; tg["extra"] != want {
		t.Fatalf("extra is %s, want %s (skopeo keeps digests), after:\n%v", tg["extra"], want, c2)
	}
	sharesBase := slices.Contains(layers(t, l, tg["extra"]), baseLayer)
	t.Logf("extra shares the base layer %s with L's images: %v", baseLayer, sharesBase)

	// fsck, which runs no recovery, notices that index.json changed.
	rep, r := fsck(t, l)
	if !slices.Equal(rep.kinds(), []string{"external-change"}) {
		t.Fatalf("fsck after skopeo wrote into L: want only external-change, got %v:\n%v", rep.kinds(), r)
	}

	fromSkopeo := closure(t, l, tg["from-skopeo"], nil)
	extra := closure(t, l, tg["extra"], nil)
	if freed := rm(t, l, "app1"); len(freed) != 0 {
		t.Fatalf("ocistore rm app1 freed %v although from-skopeo (written by skopeo) names the same manifest", freed)
	}
	requireBlobs(t, l, fromSkopeo, "from-skopeo after ocistore rm app1")
	requireBlobs(t, l, extra, "extra after ocistore rm app1")
	other := filepath.Join(tmp, "other")
	for _, tag := range []string{"from-skopeo", "extra"} {
		skopeoInspect(t, l, tag, tg[tag])
		skopeoCopy(t, l, tag, other, tag)
	}
	fsckClean(t, l, "after ocistore rm app1")
	adopt(t, other)

	// The recount keeps counting skopeo's tags in later transactions: each
	// rm frees exactly what only its images used (rm checks that), and the
	// base layer stays as long as extra uses it.
	rm(t, l, "app2")
	rm(t, l, "from-skopeo", "base")
	if got, want := sortedKeys(blobFiles(t, l)), sortedKeys(extra); !slices.Equal(got, want) {
		t.Fatalf("after removing every image but extra, blobs/ holds %v, want extra's blobs %v", got, want)
	}
	if _, err := os.Stat(blobPath(l, baseLayer)); (err == nil) != sharesBase {
		t.Fatalf("base layer %s: stat %v, extra uses it: %v", baseLayer, err, sharesBase)
	}
	skopeoInspect(t, l, "extra", tg["extra"])
	fsckClean(t, l, "after ocistore rm of every image but extra")
	if got := lines(mustUmoci(t, "ls", "--layout", l).stdout); !slices.Equal(got, []string{"extra"}) {
		t.Fatalf("umoci ls lists %v, want [extra]", got)
	}
}

// TestSkopeoRetagLeavesUntaggedEntry: skopeo copy onto an existing tag of a
// layout ocistore manages keeps the old entry without its name (skopeo
// 1.9.3); ocistore lists it as untagged and rm by digest frees what only it
// used, not the layer it shares.
func TestSkopeoRetagLeavesUntaggedEntry(t *testing.T) {
	_, l, x := baseAndExtraTest(t)
	tg := tags(t, l)
	baseLayer := fixtureBaseLayer(t, l, tg, "app1", "app2")
	adopt(t, l)

	c := skopeoCopy(t, x, "x", l, "app2")
	old, moved := tg["app2"], tags(t, x)["x"]
	if got := untagged(t, l); !slices.Equal(got, []string{old}) {
		t.Fatalf("untagged entries %v, want the old app2 manifest %s (skopeo 1.9.3 keeps it without a name), after:\n%v", got, old, c)
	}
	rows, r := ls(t, l)
	if !slices.Contains(rows, lsRow{Name: "", Digest: old}) || !slices.Contains(rows, lsRow{Name: "app2", Digest: moved}) {
		t.Fatalf("ocistore ls after skopeo moved app2: want an untagged row %s and app2 %s:\n%v", old, moved, r)
	}
	freed := rm(t, l, old)
	if len(freed) != 3 || slices.Contains(freed, baseLayer) {
		t.Fatalf("ocistore rm %s freed %v: want the old app2's manifest, config and own layer, not the base layer", old, freed)
	}
	skopeoInspect(t, l, "app2", moved)
	fsckClean(t, l, "after ocistore rm of the untagged entry")
	want := []string{"app1", "app2", "base", "latest"}
	if got := sorted(lines(mustUmoci(t, "ls", "--layout", l).stdout)); !slices.Equal(got, want) {
		t.Fatalf("umoci ls lists %v, want %v", got, want)
	}
}

// TestUmociWritesIntoManagedLayout: umoci, which replaces index.json by
// rename rather than in place as skopeo does, tags and adds images in a
// layout ocistore manages; the next ocistore rm counts them. umoci rm leaves
// orphans that fsck reports and umoci gc collects.
func TestUmociWritesIntoManagedLayout(t *testing.T) {
	_, u := baseTest(t)
	l := u.dir
	adopt(t, l)
	rm(t, l, "app2")

	u.tag("app1", "from-umoci")
	u.insert("base", "app4", "four.txt")
	if rep, r := fsck(t, l); !slices.Equal(rep.kinds(), []string{"external-change"}) {
		t.Fatalf("fsck after umoci wrote into L: want only external-change, got %v:\n%v", rep.kinds(), r)
	}
	tg := tags(t, l)
	if freed := rm(t, l, "app1", "latest"); len(freed) != 0 {
		t.Fatalf("ocistore rm app1 latest freed %v although from-umoci (written by umoci) names the same manifest", freed)
	}
	skopeoInspect(t, l, "from-umoci", tg["from-umoci"])
	skopeoInspect(t, l, "app4", tg["app4"])
	fsckClean(t, l, "after ocistore rm app1 latest")

	// umoci rm removes the entry only: its blobs are orphans until umoci gc.
	app4Only := minus(closure(t, l, tg["app4"], nil), reachable(t, l, func(d v1.Descriptor) bool { return refName(d) != "app4" }))
	r := mustUmoci(t, "rm", "--image", l+":app4")
	rep, fr := fsck(t, l)
	var orphans, other []string
	for _, p := range rep.Problems {
		switch p.Kind {
		case "orphan":
			orphans = append(orphans, p.Digest)
		case "external-change":
		default:
			other = append(other, p.Kind)
		}
	}
	sort.Strings(orphans)
	if !slices.Equal(orphans, app4Only) || len(other) > 0 {
		t.Fatalf("fsck after umoci rm app4: want orphans %v and external-change, got:\n%s", app4Only, show(r, fr))
	}
	r = mustUmoci(t, "gc", "--layout", l)
	if left := setOf(blobFiles(t, l)); slices.ContainsFunc(app4Only, func(d string) bool { return left[d] }) {
		t.Fatalf("umoci gc left some of %v:\n%v", app4Only, r)
	}
	out, r := recoverLayout(t, l)
	if len(out.Actions) != 1 || out.Actions[0].Kind != "recount" {
		t.Fatalf("ocistore recover after umoci changed index.json: want one recount:\n%v", r)
	}
	fsckClean(t, l, "after umoci rm, umoci gc and ocistore recover")
	if got := sorted(lines(mustUmoci(t, "ls", "--layout", l).stdout)); !slices.Equal(got, []string{"base", "from-umoci"}) {
		t.Fatalf("umoci ls lists %v, want [base from-umoci]", got)
	}
}

// importOutput is `ocistore import --format json`.
type importOutput struct {
	Images []struct {
		Name   string `json:"ref"` // null (here "") when untagged
		Digest string `json:"digest"`
	} `json:"images"`
	BlobsCopied int `json:"blobsCopied"`
}

// importLayout runs ocistore -l dst import src refs and returns its report.
func importLayout(t *testing.T, dst, src string, refs ...string) (map[string]string, int, result) {
	t.Helper()
	r := mustOcistore(t, dst, append([]string{"import", "--format", "json", src}, refs...)...)
	var out importOutput
	decodeJSON(t, r, &out)
	imported := map[string]string{}
	for _, im := range out.Images {
		imported[im.Name] = im.Digest
	}
	return imported, out.BlobsCopied, r
}

// TestImportSkopeoLayout: a layout written only by skopeo is imported by
// ocistore, whole and one reference at a time; skopeo reads the result, and
// the source is left untouched.
func TestImportSkopeoLayout(t *testing.T) {
	tmp, umoci := baseTest(t)
	u := umoci.dir
	s := filepath.Join(tmp, "S") // written by skopeo only
	c1 := skopeoCopy(t, u, "app1", s, "app1")
	c2 := skopeoCopy(t, u, "app2", s, "app2")
	st := tags(t, s)
	if got := sortedKeys(st); !slices.Equal(got, []string{"app1", "app2"}) {
		t.Fatalf("skopeo wrote tags %v, want [app1 app2], after:\n%s", got, show(c1, c2))
	}
	srcTree := treeSnapshot(t, s)

	// Every tag. ocistore import needs an existing layout: init creates it.
	n := filepath.Join(tmp, "new")
	mustOcistore(t, n, "init")
	imported, copied, r := importLayout(t, n, s)
	if !maps.Equal(imported, st) {
		t.Fatalf("imported %v, want %v:\n%v", imported, st, r)
	}
	if copied != len(blobFiles(t, s)) {
		t.Fatalf("copied %d blobs into an empty layout, the source has %d:\n%v", copied, len(blobFiles(t, s)), r)
	}
	if got := tags(t, n); !maps.Equal(got, st) {
		t.Fatalf("index.json tags %v, want %v, after:\n%v", got, st, r)
	}
	if got, want := blobFiles(t, n), blobFiles(t, s); !maps.Equal(got, want) {
		t.Fatalf("blobs %v, want the source's %v, after:\n%v", got, want, r)
	}
	for _, tag := range sortedKeys(st) {
		skopeoInspect(t, n, tag, st[tag])
	}
	fsckClean(t, n, "after ocistore import of every tag")

	// One reference, then another sharing the base layer.
	n2 := filepath.Join(tmp, "new2")
	mustOcistore(t, n2, "init")
	imported, copied, r = importLayout(t, n2, s, "app1")
	app1 := closure(t, s, st["app1"], nil)
	if want := map[string]string{"app1": st["app1"]}; !maps.Equal(imported, want) || !maps.Equal(tags(t, n2), want) {
		t.Fatalf("imported %v, index.json tags %v, want %v:\n%v", imported, tags(t, n2), want, r)
	}
	if got := setOf(blobFiles(t, n2)); copied != len(app1) || !maps.Equal(got, app1) {
		t.Fatalf("copied %d blobs, blobs/ has %v, want app1's %v:\n%v", copied, sortedKeys(got), sortedKeys(app1), r)
	}
	skopeoInspect(t, n2, "app1", st["app1"])
	if r := skopeo(t, "inspect", ociRef(n2, "app2")); r.code == 0 {
		t.Fatalf("skopeo finds app2, which was not imported:\n%v", r)
	}
	fsckClean(t, n2, "after ocistore import of app1")

	if r := ocistore(t, n2, "import", s, "nosuch"); r.code != 2 || len(tags(t, n2)) != 1 {
		t.Fatalf("import of a missing reference: want exit status 2 and no change, tags now %v:\n%v", tags(t, n2), r)
	}

	_, copied, r = importLayout(t, n2, s, "app2")
	if want := len(minus(closure(t, s, st["app2"], nil), app1)); copied != want {
		t.Fatalf("copied %d blobs, want %d (the base layer is already there):\n%v", copied, want, r)
	}
	if got := tags(t, n2); !maps.Equal(got, st) {
		t.Fatalf("after importing app1 then app2: tags %v, want %v:\n%v", got, st, r)
	}
	skopeoInspect(t, n2, "app2", st["app2"])
	fsckClean(t, n2, "after ocistore import of app2")

	// The source is read, never written.
	if got := treeSnapshot(t, s); !maps.Equal(got, srcTree) {
		t.Fatalf("ocistore import changed its source %s: %v", s, changed(srcTree, got))
	}
	// And ocistore adopts skopeo's layout as it is.
	adopt(t, s)
}

// TestSkopeoTempFilesLeftAlone: a copy into the layout that skopeo did not
// finish leaves oci-put-blob* temp files at the layout root. They are
// skopeo's: ocistore's fsck does not report them, and its recover and rm
// leave them untouched, while ocistore's own leftover temp file is found and
// removed.
func TestSkopeoTempFilesLeftAlone(t *testing.T) {
	_, u := baseTest(t)
	l := u.dir
	adopt(t, l)

	leftovers := []string{"oci-put-blob123", "oci-put-blob2881705384"}
	for _, name := range leftovers {
		if err := os.WriteFile(filepath.Join(l, name), []byte("\x1f\x8b partial layer"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := func() map[string]string {
		all := treeSnapshot(t, l)
		m := map[string]string{}
		for _, name := range leftovers {
			m[name] = all[name]
		}
		return m
	}
	want := snapshot()
	untouched := func(when string) {
		t.Helper()
		if got := snapshot(); !maps.Equal(got, want) {
			t.Fatalf("%s: skopeo's temp files changed or were removed: %v, were %v", when, got, want)
		}
	}
	mentions := func(r result) bool { return strings.Contains(r.stdout, "oci-put-blob") }

	if rep, r := fsck(t, l); len(rep.Problems) != 0 || mentions(r) {
		t.Fatalf("fsck with skopeo's temp files at the root: want no problem (they are not ocistore's):\n%v", r)
	}
	if _, r := recoverLayout(t, l); mentions(r) {
		t.Fatalf("ocistore recover acted on skopeo's temp files:\n%v", r)
	}
	untouched("after ocistore recover")
	rm(t, l, "app2")
	untouched("after ocistore rm app2")
	fsckClean(t, l, "after ocistore rm app2, with skopeo's temp files at the root")

	// Control: ocistore's own leftover (renameio's temp file of index.json)
	// is reported and removed, so the checks above do look at the root.
	own := ".index.json123456"
	if err := os.WriteFile(filepath.Join(l, own), []byte(`{"schemaVersion":2,"manif`), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, r := fsck(t, l)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != "temp-file" || rep.Problems[0].Path != own {
		t.Fatalf("fsck with ocistore's own temp file %s: want exactly one temp-file problem for it:\n%v", own, r)
	}
	out, r := recoverLayout(t, l)
	if len(out.Actions) != 1 || out.Actions[0].Kind != "temp-removed" || out.Actions[0].Detail != own || mentions(r) {
		t.Fatalf("ocistore recover: want exactly temp-removed %s:\n%v", own, r)
	}
	if _, err := os.Stat(filepath.Join(l, own)); !os.IsNotExist(err) {
		t.Fatalf("ocistore recover left its own temp file %s: %v", own, err)
	}
	untouched("after ocistore recover removed its own temp file")
	fsckClean(t, l, "after ocistore recover")
}

// Fixtures ----------------------------------------------------------------------

// baseTest starts a test on buildBase's layout: the tools are required and
// the test runs in parallel. It returns the test's temp dir and umoci on
// the layout, tmp/L (its files in tmp/src).
func baseTest(t *testing.T) (tmp string, u *umociLayout) {
	t.Helper()
	requireTools(t)
	t.Parallel()
	tmp = t.TempDir()
	return tmp, buildBase(t, filepath.Join(tmp, "L"), mkdir(t, tmp, "src"))
}

// baseAndExtraTest is baseTest that also builds buildExtra's layout, in
// tmp/X, from the same files. It returns tmp and both layouts.
func baseAndExtraTest(t *testing.T) (tmp, l, x string) {
	t.Helper()
	tmp, u := baseTest(t)
	return tmp, u.dir, buildExtra(t, filepath.Join(tmp, "X"), u.src)
}

// buildExtra builds a second umoci layout with one image, x: the same
// base.txt layer as buildBase's (same file, so the same blob), then its own
// layer.
func buildExtra(t *testing.T, dir, src string) string {
	t.Helper()
	u := newUmociLayout(t, dir, src)
	u.newImage("x")
	u.insert("x", "", "base.txt")
	u.insert("x", "", "extra.txt")
	u.gc()
	return dir
}

// fixtureBaseLayer checks that base has one layer and every image of apps is
// that layer plus one of its own, and returns the base layer.
func fixtureBaseLayer(t *testing.T, dir string, tg map[string]string, apps ...string) string {
	t.Helper()
	bl := layers(t, dir, tg["base"])
	if len(bl) != 1 {
		t.Fatalf("umoci fixture: base has layers %v, want one", bl)
	}
	for _, a := range apps {
		if ls := layers(t, dir, tg[a]); len(ls) != 2 || ls[0] != bl[0] {
			t.Fatalf("umoci fixture: %s has layers %v, want the base layer %s and one more", a, ls, bl[0])
		}
	}
	return bl[0]
}

func mkdir(t *testing.T, parent, name string) string {
	t.Helper()
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// TestSkopeoSharedBlobDir: skopeo copies two images into two layouts with
// --dest-shared-blob-dir (their common base layer stored once); ocistore
// adopts both with --shared-blob-dir; rm in one layout keeps the base
// layer the other still uses, and skopeo still copies the other image out
// of the shared directory, whole; the last rm frees the base layer.
func TestSkopeoSharedBlobDir(t *testing.T) {
	tmp, u := baseTest(t)
	l := u.dir
	tg := tags(t, l)
	baseLayer := fixtureBaseLayer(t, l, tg, "app1", "app2")
	shared := filepath.Join(tmp, "shared")
	x, y := filepath.Join(tmp, "X"), filepath.Join(tmp, "Y")
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(l, "app1"), ociRef(x, "app1"))
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(l, "app2"), ociRef(y, "app2"))
	blob := func(d string) string { return filepath.Join(shared, "sha256", strings.TrimPrefix(d, "sha256:")) }
	if _, err := os.Stat(blob(baseLayer)); err != nil {
		t.Fatalf("skopeo did not store the base layer in the shared directory: %v", err)
	}
	for _, dir := range []string{x, y} {
		mustOcistore(t, dir, "--shared-blob-dir", shared, "recover") // adoption
	}
	for _, dir := range []string{x, y} {
		if r := ocistore(t, dir, "fsck"); r.code != 0 {
			t.Fatalf("fsck of %s after adoption:\n%v", dir, r)
		}
	}
	mustOcistore(t, x, "rm", "app1")
	if _, err := os.Stat(blob(baseLayer)); err != nil {
		t.Fatalf("rm app1 in X freed the base layer app2 in Y still uses: %v", err)
	}
	out := filepath.Join(tmp, "out")
	mustSkopeo(t, "copy", "-q", "--src-shared-blob-dir", shared, ociRef(y, "app2"), ociRef(out, "app2"))
	skopeoInspect(t, out, "app2", tags(t, y)["app2"])
	mustOcistore(t, y, "rm", "app2")
	if _, err := os.Stat(blob(baseLayer)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the base layer outlived its last user: %v", err)
	}
	for _, dir := range []string{x, y} {
		if r := ocistore(t, dir, "fsck"); r.code != 0 {
			t.Errorf("fsck of %s at the end:\n%v", dir, r)
		}
	}
}

// TestSkopeoSharedBlobDirRepairBeforeAdoption is the reproduction of issue
// 12: skopeo copies images into layouts with --dest-shared-blob-dir, and
// ocistore's first contact with them is fsck --repair --drop-broken.
// Without the directory, fsck says where the blobs likely are (one
// blobs-elsewhere problem, first) and the repair refuses, changing
// nothing (once every image would go, it used to leave
// {"manifests":[]}); with --shared-blob-dir (X) or
// OCISTORE_SHARED_BLOB_DIR (Y) the repair adopts the layout into the
// directory and keeps every image and every blob (the first, of X, keeps
// Y's blobs, which look unreferenced while Y is unknown, and says so),
// both check clean once both are adopted, and skopeo still copies the
// images out of the directory.
func TestSkopeoSharedBlobDirRepairBeforeAdoption(t *testing.T) {
	tmp, u := baseTest(t)
	l := u.dir
	shared := filepath.Join(tmp, "shared")
	x, y := filepath.Join(tmp, "X"), filepath.Join(tmp, "Y")
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(l, "app1"), ociRef(x, "app1"))
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(l, "base"), ociRef(x, "base"))
	mustSkopeo(t, "copy", "-q", "--dest-shared-blob-dir", shared, ociRef(l, "app2"), ociRef(y, "app2"))
	want := map[string]map[string]string{x: tags(t, x), y: tags(t, y)}
	if len(want[x]) != 2 || len(want[y]) != 1 {
		t.Fatalf("skopeo wrote tags %v and %v", want[x], want[y])
	}

	for _, dir := range []string{x, y} {
		rep, r := fsck(t, dir)
		if k := rep.kinds(); len(k) == 0 || k[0] != "blobs-elsewhere" || slices.Contains(k, "dangling") {
			t.Fatalf("fsck of %s without the shared directory: want blobs-elsewhere first and no dangling, got %v:\n%v", dir, k, r)
		}
		if !strings.HasPrefix(rep.Problems[0].Detail, "blobs live elsewhere? pass --shared-blob-dir") {
			t.Fatalf("the blobs-elsewhere problem does not give the hint:\n%v", r)
		}
	}
	before := treeSnapshot(t, tmp)
	for _, args := range [][]string{{"fsck", "--repair", "--drop-broken"}, {"fsck", "--repair"}} {
		r := ocistore(t, x, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "pass --shared-blob-dir") || !strings.Contains(r.stderr, "--force") {
			t.Fatalf("ocistore %v of a layout whose blobs are elsewhere: want a refusal (exit 1) with the hint:\n%v", args, r)
		}
	}
	if c := changed(before, treeSnapshot(t, tmp)); len(c) > 0 {
		t.Fatalf("a refused repair changed files: %v", c)
	}

	// Before adoption, with the directory: fsck finds every blob of X (Y's
	// own blobs, which ocistore cannot know Y uses, are orphans for now).
	r := ocistore(t, x, "--shared-blob-dir", shared, "fsck", "--format", "json")
	var withDir fsckReport
	decodeJSON(t, r, &withDir)
	if k := withDir.kinds(); !slices.Contains(k, "journal-missing") || slices.ContainsFunc(k, func(k string) bool { return k != "journal-missing" && k != "orphan" }) {
		t.Fatalf("fsck --shared-blob-dir before adoption: want journal-missing and Y's blobs as orphans, got %v:\n%v", k, r)
	}

	// The repair of X adopts it: it keeps what looks unreferenced (Y's
	// blobs: Y is unknown to ocistore yet) and says so.
	index := map[string]string{x: readFile(t, x, "index.json"), y: readFile(t, y, "index.json")}
	blobsBefore := treeSnapshot(t, shared)
	r = ocistore(t, x, "--shared-blob-dir", shared, "fsck", "--repair", "--drop-broken")
	if r.code != 0 || !strings.Contains(r.stdout, "orphans-kept: ") || !strings.Contains(r.stdout, "notice: orphan ") {
		t.Fatalf("fsck --repair of X while Y is not adopted: want its blobs kept and reported as orphan notices (exit 0):\n%v", r)
	}
	r = runEnv(t, append([]string{"OCISTORE_SHARED_BLOB_DIR=" + shared}, ocistoreEnv...), ocistoreBin, "-l", y, "fsck", "--repair", "--drop-broken")
	if r.code != 0 {
		t.Fatalf("fsck --repair --drop-broken with OCISTORE_SHARED_BLOB_DIR:\n%v", r)
	}
	for _, dir := range []string{x, y} {
		if got := readFile(t, dir, "index.json"); got != index[dir] {
			t.Errorf("the repair rewrote %s/index.json:\n%s\nwas\n%s", dir, got, index[dir])
		}
		if got := tags(t, dir); !maps.Equal(got, want[dir]) {
			t.Errorf("%s has tags %v after the repair, want %v", dir, got, want[dir])
		}
		fsckClean(t, dir, "after fsck --repair with the shared directory (the layout names it now)")
	}
	var lost []string
	for _, c := range changed(blobsBefore, treeSnapshot(t, shared)) {
		if !strings.HasPrefix(c, ".ocistore/") {
			lost = append(lost, c)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("the repairs changed blobs of the shared directory: %v", lost)
	}
	for _, dir := range []string{x, y} {
		for tag, d := range want[dir] {
			out := filepath.Join(tmp, "out-"+filepath.Base(dir)+"-"+tag)
			mustSkopeo(t, "copy", "-q", "--src-shared-blob-dir", shared, ociRef(dir, tag), ociRef(out, tag))
			skopeoInspect(t, out, tag, d)
		}
	}
}
