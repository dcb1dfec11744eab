package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// sharedSet is several layouts opened on one shared blob directory.
type sharedSet struct {
	t      *testing.T
	ctx    context.Context
	shared string
	dirs   []string
	s      []*store.Store
	b      []*testutil.Builder
}

func newSharedSet(t *testing.T, n int) *sharedSet {
	t.Helper()
	root := t.TempDir()
	ss := &sharedSet{t: t, ctx: context.Background(), shared: filepath.Join(root, "blobs-shared")}
	for i := range n {
		dir := filepath.Join(root, string(rune('a'+i)))
		ss.dirs = append(ss.dirs, dir)
		ss.s = append(ss.s, nil)
		ss.b = append(ss.b, nil)
		ss.open(i)
	}
	t.Cleanup(func() {
		for _, s := range ss.s {
			if s != nil {
				s.Close()
			}
		}
	})
	return ss
}

func (ss *sharedSet) open(i int) {
	ss.t.Helper()
	s, err := store.Open(ss.ctx, ss.dirs[i], &store.Options{SharedBlobDir: ss.shared})
	if err != nil {
		ss.t.Fatalf("open %s: %v", ss.dirs[i], err)
	}
	ss.s[i], ss.b[i] = s, testutil.NewBuilder(ss.t, s, uint64(i+1))
}

// blob reports whether d is in the shared directory.
func (ss *sharedSet) blob(d digest.Digest) bool {
	_, err := os.Lstat(filepath.Join(ss.shared, d.Algorithm().String(), d.Encoded()))
	return err == nil
}

func (ss *sharedSet) want(present bool, ds ...digest.Digest) {
	ss.t.Helper()
	for _, d := range ds {
		if got := ss.blob(d); got != present {
			ss.t.Errorf("blob %s present=%v, want %v", d, got, present)
		}
	}
}

// clean fails unless fsck of every layout (from the library and as the CLI
// does it, read-only from the directory) finds nothing.
func (ss *sharedSet) clean() {
	ss.t.Helper()
	for i, s := range ss.s {
		for _, p := range testutil.Problems(ss.t, s) {
			ss.t.Errorf("layout %s: fsck: %s", ss.dirs[i], p)
		}
		rep, err := store.CheckDir(ss.ctx, ss.dirs[i], nil)
		if err != nil {
			ss.t.Fatal(err)
		}
		for _, p := range rep.Problems {
			ss.t.Errorf("layout %s: fsck from the directory: %s", ss.dirs[i], p)
		}
	}
}

func (ss *sharedSet) graph(d v1.Descriptor) []digest.Digest {
	ss.t.Helper()
	// testutil.Graph reads blobs under dir/blobs: give it the shared
	// directory's parent view through a symlink-free copy of the walk.
	var out []digest.Digest
	var walk func(d v1.Descriptor)
	walk = func(d v1.Descriptor) {
		out = append(out, d.Digest)
		if d.MediaType != v1.MediaTypeImageManifest {
			return
		}
		b, err := os.ReadFile(filepath.Join(ss.shared, d.Digest.Algorithm().String(), d.Digest.Encoded()))
		if err != nil {
			ss.t.Fatal(err)
		}
		var m v1.Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			ss.t.Fatal(err)
		}
		walk(m.Config)
		for _, l := range m.Layers {
			walk(l)
		}
	}
	walk(d)
	slices.Sort(out)
	return slices.Compact(out)
}

// TestSharedBlobDirThreeLayouts: three layouts share one blob directory,
// base layers used by all three and one manifest tagged in two layouts; a
// blob is freed when, and only when, no layout uses it any more; every
// layout stays consistent at every step, and its blobs are in the shared
// directory only.
func TestSharedBlobDirThreeLayouts(t *testing.T) {
	ss := newSharedSet(t, 3)
	a, b, c := ss.s[0], ss.s[1], ss.s[2]
	base := []v1.Descriptor{ss.b[0].Random(300), ss.b[0].Random(400)}
	m1 := ss.b[0].Manifest(base, 2) // tagged in a and b
	m2 := ss.b[1].Manifest(base, 1) // b only
	m3 := ss.b[2].Manifest(base, 1) // c only
	for _, tg := range []struct {
		s    *store.Store
		d    v1.Descriptor
		name string
	}{{a, m1, "one"}, {b, m1, "one"}, {b, m2, "two"}, {c, m3, "three"}} {
		if err := tg.s.Tag(ss.ctx, tg.d, tg.name); err != nil {
			t.Fatal(err)
		}
	}
	ss.clean()
	// A fourth layout joins once the others have content: its adoption
	// counts every layout, not only its own (empty) index.
	late, err := store.Open(ss.ctx, filepath.Join(filepath.Dir(ss.shared), "late"), &store.Options{SharedBlobDir: ss.shared})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range testutil.Problems(t, late) {
		t.Errorf("late layout: fsck: %s", p)
	}
	late.Close()
	for _, dir := range ss.dirs {
		if _, err := os.Lstat(filepath.Join(dir, "blobs")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s has a blobs directory (%v); its blobs belong in the shared one", dir, err)
		}
	}
	baseD := []digest.Digest{base[0].Digest, base[1].Digest}
	own := func(m v1.Descriptor) []digest.Digest { return libMinus(ss.graph(m), baseD) }
	own1, own2, own3 := own(m1), own(m2), own(m3)

	del := func(s *store.Store, ref string) *store.Result {
		t.Helper()
		res, err := s.Delete(ss.ctx, ref)
		if err != nil {
			t.Fatalf("delete %s: %v", ref, err)
		}
		return res
	}
	if res := del(a, "one"); len(res.Freed) != 0 {
		t.Errorf("deleting a:one freed %v although b still tags that manifest", res.Freed)
	}
	ss.want(true, own1...)
	ss.clean()

	if res := del(b, "one"); len(res.Freed) != len(own1) {
		t.Errorf("deleting the last tag of m1 freed %d blobs, want %d", len(res.Freed), len(own1))
	}
	ss.want(false, own1...)
	ss.want(true, baseD...)
	ss.clean()

	del(b, "two")
	ss.want(false, own2...)
	ss.want(true, baseD...)
	ss.clean()

	// Reopened, the third layout still counts the base layers; its delete
	// is the last use.
	c.Close()
	ss.open(2)
	c = ss.s[2]
	del(c, "three")
	ss.want(false, own3...)
	ss.want(false, baseD...)
	ss.clean()
}

// TestSharedBlobDirPeerChangedOutside: another tool adds an image to one
// layout (its blobs into the shared directory, its entry into that
// layout's index.json) without ocistore; a GC and a delete from another
// layout never free those blobs, and the change is counted once.
func TestSharedBlobDirPeerChangedOutside(t *testing.T) {
	ss := newSharedSet(t, 2)
	a := ss.s[0]
	keep := ss.b[0].Manifest(nil, 1)
	if err := a.Tag(ss.ctx, keep, "keep"); err != nil {
		t.Fatal(err)
	}
	// The other layout is closed; a tool writes an image into it.
	ss.s[1].Close()
	ss.s[1] = nil
	outside := ss.b[0].Manifest(nil, 2) // blobs written into the shared directory (not tagged: orphans to a)
	idx := filepath.Join(ss.dirs[1], "index.json")
	raw, err := os.ReadFile(idx)
	if err != nil {
		t.Fatal(err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	d := outside
	d.Annotations = map[string]string{v1.AnnotationRefName: "outside"}
	ix.Manifests = append(ix.Manifests, d)
	nb, _ := json.Marshal(ix)
	if err := os.WriteFile(idx, nb, 0o644); err != nil {
		t.Fatal(err)
	}

	res, err := a.GC(ss.ctx, store.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Freed {
		if slices.Contains(ss.graph(outside), digest.Digest(f.Digest)) {
			t.Errorf("gc from layout a freed %s, which layout b's index.json reaches", f.Digest)
		}
	}
	ss.want(true, ss.graph(outside)...)
	if _, err := a.Delete(ss.ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	ss.want(true, ss.graph(outside)...)
	ss.open(1)
	imgs, err := ss.s[1].List(ss.ctx)
	if err != nil || len(imgs) != 1 || imgs[0].Name != "outside" {
		t.Fatalf("layout b lists %v (%v), want the image added outside", imgs, err)
	}
	ss.clean()
	if rep := testutil.Problems(t, ss.s[1], recovery.KindOrphan); len(rep) != 0 {
		t.Errorf("after the change was counted: %v", rep)
	}
}

// TestSharedBlobDirRemembered: a layout opened once with a shared blob
// directory opens with it again without being told (its marker), and
// repair, which does not handle shared directories yet, refuses it
// instead of seeing its blobs missing.
func TestSharedBlobDirRemembered(t *testing.T) {
	ss := newSharedSet(t, 1)
	m := ss.b[0].Manifest(nil, 1)
	if err := ss.s[0].Tag(ss.ctx, m, "x"); err != nil {
		t.Fatal(err)
	}
	ss.s[0].Close()
	ss.s[0] = nil
	s, err := store.Open(ss.ctx, ss.dirs[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Resolve(ss.ctx, "x"); err != nil {
		t.Fatal(err)
	}
	for _, p := range testutil.Problems(t, s) {
		t.Errorf("fsck: %s", p)
	}
	// Repair finds the directory by the marker too, and has nothing to do.
	res, err := store.Repair(ss.ctx, ss.dirs[0], nil)
	if err != nil {
		t.Fatalf("repair of a layout with a shared blob directory: %v", err)
	}
	if !res.OK() || len(res.Actions) != 0 {
		t.Errorf("repair of a clean shared layout: actions %v, problems %v", res.Actions, res.Report.Problems)
	}
	if _, err := store.Repair(ss.ctx, ss.dirs[0], &store.RepairOptions{SharedBlobDir: t.TempDir()}); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("repair with a shared blob directory other than the one the layout names: %v, want ErrInvalidArgument", err)
	}
}

// sharedTags is a layout's tags (name -> digest) read from its index.json.
func sharedTags(t *testing.T, dir string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	out := map[string]string{}
	for _, m := range ix.Manifests {
		out[m.Annotations[v1.AnnotationRefName]] = m.Digest.String()
	}
	return out
}
