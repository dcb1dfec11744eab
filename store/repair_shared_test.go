package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// elsewhereLayout writes what skopeo copy --dest-shared-blob-dir SHARED
// leaves: a layout in dir with oci-layout, index.json naming images and an
// empty blobs/, its blobs in shared/<alg>/<hex>; no ocistore state. It
// returns the entries, and every blob.
func elsewhereLayout(t *testing.T, dir, shared string, images int) ([]v1.Descriptor, map[digest.Digest][]byte) {
	t.Helper()
	blobs := map[digest.Digest][]byte{}
	var entries []v1.Descriptor
	common := []byte("a base layer every image shares\n")
	for i := range images {
		m := testutil.RawImage(blobs, []byte(`{"architecture":"amd64","os":"linux","n":`+string(rune('0'+i))+`}`), common, []byte("own layer "+string(rune('a'+i))))
		entries = append(entries, testutil.Named(m, "app:"+string(rune('1'+i))))
	}
	testutil.WriteRawLayout(t, dir, nil, entries)
	for d, b := range blobs {
		p := filepath.Join(shared, d.Algorithm().String(), d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return entries, blobs
}

// kinds lists the kinds of problems, in order.
func kinds(ps []recovery.Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Kind)
	}
	return out
}

// TestBlobsElsewhere: a layout whose blobs skopeo wrote to a shared blob
// directory, checked and repaired before ocistore adopted it. Without the
// directory, the check reports one blobs-elsewhere problem, first, with
// the hint, in place of a dangling problem per blob, and Repair (with
// DropBroken or not) refuses with ErrRefused, changing nothing. With the
// directory (CheckOptions.SharedBlobDir, RepairOptions.SharedBlobDir),
// the check finds the blobs and Repair adopts the layout into the shared
// directory's journal, keeping every image; later checks need no option.
func TestBlobsElsewhere(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dir, shared := filepath.Join(root, "x"), filepath.Join(root, "shared")
	entries, blobs := elsewhereLayout(t, dir, shared, 3)

	rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := kinds(rep.Problems), []string{recovery.KindBlobsElsewhere, recovery.KindJournalMissing}; !slices.Equal(got, want) {
		t.Fatalf("check without the shared directory: problems %v, want %v:\n%v", got, want, rep.Problems)
	}
	if d := rep.Problems[0].Detail; !strings.HasPrefix(d, recovery.BlobsElsewhereHint) || !strings.Contains(d, "3 of 3 entries") {
		t.Errorf("blobs-elsewhere detail: %q", d)
	}

	before := testutil.Snapshot(t, root)
	for _, drop := range []bool{false, true} {
		_, err := store.Repair(ctx, dir, &store.RepairOptions{DropBroken: drop})
		if !errors.Is(err, store.ErrRefused) {
			t.Fatalf("repair (drop broken: %v) without the shared directory: %v, want ErrRefused", drop, err)
		}
		if !strings.Contains(err.Error(), "pass --shared-blob-dir") {
			t.Errorf("the refusal does not say what to do: %v", err)
		}
	}
	if after := testutil.Snapshot(t, root); !maps.Equal(before, after) {
		t.Fatalf("a refused repair changed files:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Lstat(filepath.Join(dir, layout.StateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused repair made %s: %v", layout.StateDir, err)
	}

	rep, err = store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: 10 * time.Second, SharedBlobDir: shared})
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(rep.Problems); !slices.Equal(got, []string{recovery.KindJournalMissing}) || rep.Blobs != len(blobs) {
		t.Fatalf("check with the shared directory before adoption: %d blobs, problems %v", rep.Blobs, rep.Problems)
	}

	index := readFileT(t, filepath.Join(dir, layout.IndexFile))
	res, err := store.Repair(ctx, dir, &store.RepairOptions{SharedBlobDir: shared, DropBroken: true})
	if err != nil {
		t.Fatalf("repair with the shared directory: %v", err)
	}
	if !res.OK() || len(res.Broken) != 0 {
		t.Fatalf("repair with the shared directory: broken %v, problems %v", res.Broken, res.Report.Problems)
	}
	if got := readFileT(t, filepath.Join(dir, layout.IndexFile)); got != index {
		t.Errorf("repair rewrote index.json:\n%s\nwas\n%s", got, index)
	}
	for d := range blobs {
		if _, err := os.Stat(filepath.Join(shared, d.Algorithm().String(), d.Encoded())); err != nil {
			t.Errorf("blob %s: %v", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(shared, protocol.JournalFile)); err != nil {
		t.Errorf("the journal is not in the shared directory: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, protocol.JournalFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("repair made a journal in the layout: %v", err)
	}
	if got, err := protocol.SharedBlobDirOf(dir); err != nil || got != shared {
		t.Errorf("the layout names the shared directory %q (%v), want %q", got, err, shared)
	}
	rep, err = store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Images != len(entries) {
		t.Errorf("check after adoption: %d images, problems %v", rep.Images, rep.Problems)
	}
}

// TestBlobsElsewhereRule: the hint needs blobs/ to hold no blob and more
// than half of the entries to dangle; otherwise the entries that dangle
// are reported one by one.
func TestBlobsElsewhereRule(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name      string
		keep      int  // entries whose blobs stay in blobs/ (0 or 1)
		noBlobs   bool // remove blobs/ itself
		elsewhere bool
	}{
		{"all-missing-empty-dir", 0, false, true},
		{"all-missing-no-dir", 0, true, true},
		{"one-of-three-present", 1, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "x")
			entries, blobs := elsewhereLayout(t, dir, filepath.Join(root, "elsewhere"), 3)
			if c.keep > 0 {
				// The first image whole in blobs/: manifest, config, layers.
				testutil.WriteRawLayout(t, dir, imageBlobs(t, blobs, entries[0]), entries)
			}
			if c.noBlobs {
				if err := os.RemoveAll(filepath.Join(dir, layout.BlobsDir)); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			got := kinds(rep.Problems)
			if c.elsewhere {
				if want := []string{recovery.KindBlobsElsewhere, recovery.KindJournalMissing}; !slices.Equal(got, want) {
					t.Fatalf("problems %v, want %v", got, want)
				}
				if c.noBlobs && !strings.Contains(rep.Problems[0].Detail, "blobs/ does not exist") {
					t.Errorf("detail: %s", rep.Problems[0].Detail)
				}
				return
			}
			if slices.Contains(got, recovery.KindBlobsElsewhere) || !slices.Contains(got, recovery.KindDangling) {
				t.Fatalf("blobs/ holds an image: want dangling problems, no hint; got %v", rep.Problems)
			}
		})
	}
}

// imageBlobs returns the blobs of the image m (manifest, config, layers).
func imageBlobs(t *testing.T, blobs map[digest.Digest][]byte, m v1.Descriptor) map[digest.Digest][]byte {
	t.Helper()
	out := map[digest.Digest][]byte{m.Digest: blobs[m.Digest]}
	var man v1.Manifest
	if err := json.Unmarshal(blobs[m.Digest], &man); err != nil {
		t.Fatal(err)
	}
	out[man.Config.Digest] = blobs[man.Config.Digest]
	for _, l := range man.Layers {
		out[l.Digest] = blobs[l.Digest]
	}
	return out
}

func readFileT(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRepairDropBrokenRefusesAll: when every image of a layout is broken,
// DropBroken refuses (ErrRefused, naming the layout and how many images
// would go) and changes nothing, byte for byte; with Force it removes them.
// The refusal holds also when it can only be seen after index.json was
// restored from the journal (the check before the repair cannot read it).
func TestRepairDropBrokenRefusesAll(t *testing.T) {
	ctx := context.Background()
	build := func(t *testing.T) (string, []v1.Descriptor) {
		l := newLib(t)
		base := l.b.Random(300)
		a, b := l.image([]v1.Descriptor{base}, 1), l.image([]v1.Descriptor{base}, 1)
		l.tag(a, "a:1")
		l.tag(b, "b:1")
		if err := l.s.Close(); err != nil {
			t.Fatal(err)
		}
		// Every image loses its base layer.
		if err := os.Remove(testutil.BlobFile(l.dir, base.Digest)); err != nil {
			t.Fatal(err)
		}
		return l.dir, []v1.Descriptor{a, b}
	}
	t.Run("refused", func(t *testing.T) {
		dir, _ := build(t)
		before := testutil.Snapshot(t, dir)
		_, err := store.Repair(ctx, dir, &store.RepairOptions{DropBroken: true})
		if !errors.Is(err, store.ErrRefused) {
			t.Fatalf("repair --drop-broken of a layout whose every image is broken: %v, want ErrRefused", err)
		}
		for _, want := range []string{dir, "2 images", "--force"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("the refusal does not say %q: %v", want, err)
			}
		}
		if after := testutil.Snapshot(t, dir); !maps.Equal(before, after) {
			t.Fatalf("a refused repair changed files:\nbefore %v\nafter  %v", before, after)
		}
	})
	t.Run("forced", func(t *testing.T) {
		dir, imgs := build(t)
		res, err := store.Repair(ctx, dir, &store.RepairOptions{DropBroken: true, Force: true})
		if err != nil {
			t.Fatal(err)
		}
		if !res.OK() {
			t.Fatalf("problems left: %v", res.Report.Problems)
		}
		if rep, _ := store.CheckDir(ctx, dir, nil); rep.Images != 0 {
			t.Errorf("%d images left", rep.Images)
		}
		for _, m := range imgs {
			if testutil.HasBlob(t, dir, m.Digest) {
				t.Errorf("manifest %s of a dropped image is still there", m.Digest)
			}
		}
	})
	t.Run("index-restored-first", func(t *testing.T) {
		dir, imgs := build(t)
		if err := os.WriteFile(filepath.Join(dir, layout.IndexFile), []byte(`{"schemaVersion":2,"manif`), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := store.Repair(ctx, dir, &store.RepairOptions{DropBroken: true})
		if !errors.Is(err, store.ErrRefused) {
			t.Fatalf("repair --drop-broken: %v, want ErrRefused", err)
		}
		rep, err := store.CheckDir(ctx, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Images != 2 {
			t.Errorf("index.json has %d images after a refused drop, want both", rep.Images)
		}
		for _, m := range imgs {
			if !testutil.HasBlob(t, dir, m.Digest) {
				t.Errorf("manifest %s was removed", m.Digest)
			}
		}
	})
}

// TestRepairSharedBlobDir: two layouts share a blob directory; x is
// damaged (a leftover ingest temp file, a wrong reference count, an
// orphan, an image whose own layer is gone) and repaired with DropBroken.
// The broken image leaves x and the blobs only it used are freed, the
// orphan is removed, but every blob of y (including a layer y shares with
// the dropped image and one y's lease holds, referenced by nothing) stays,
// and both layouts check clean.
func TestRepairSharedBlobDir(t *testing.T) {
	ss := newSharedSet(t, 2)
	x, y := ss.s[0], ss.s[1]
	common := ss.b[0].Random(400)     // x's good image and y's image
	withBroken := ss.b[0].Random(410) // x's broken image and y's image
	good := ss.b[0].Manifest([]v1.Descriptor{common}, 1)
	brokenLayer := ss.b[0].Random(420)
	broken := ss.b[0].Manifest([]v1.Descriptor{withBroken, brokenLayer}, 1)
	for _, tg := range []struct {
		d    v1.Descriptor
		name string
	}{{good, "good:1"}, {broken, "broken:1"}} {
		if err := x.Tag(ss.ctx, tg.d, tg.name); err != nil {
			t.Fatal(err)
		}
	}
	ym := ss.b[1].Manifest([]v1.Descriptor{common, withBroken}, 1)
	if err := y.Tag(ss.ctx, ym, "y:1"); err != nil {
		t.Fatal(err)
	}
	lease, err := y.Lease(ss.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leased := ss.b[1].Random(430)
	if err := lease.Add(ss.ctx, leased); err != nil {
		t.Fatal(err)
	}
	yBlobs := append(ss.graph(ym), leased.Digest)
	brokenOwn := libMinus(ss.graph(broken), append(ss.graph(good), ss.graph(ym)...))
	for i := range ss.s {
		ss.s[i].Close()
		ss.s[i] = nil
	}

	// The damage, all in x (and in the shared state x uses).
	blobFile := func(d digest.Digest) string { return filepath.Join(ss.shared, d.Algorithm().String(), d.Encoded()) }
	if err := os.Remove(blobFile(brokenLayer.Digest)); err != nil {
		t.Fatal(err)
	}
	orphan := testutil.Blob([]byte("nothing references this blob\n"), v1.MediaTypeImageLayer)
	if err := os.WriteFile(blobFile(orphan.Digest), []byte("nothing references this blob\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(ss.shared, filepath.FromSlash(protocol.IngestDir)), 0o755); err != nil {
		t.Fatal(err)
	}
	// A temp file named the old way (by a pid), older than LegacyAge: a
	// leftover recovery removes.
	leftover := filepath.Join(ss.shared, filepath.FromSlash(protocol.IngestDir), "999999999-x1")
	if err := os.WriteFile(leftover, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-protocol.LegacyAge - time.Hour)
	if err := os.Chtimes(leftover, old, old); err != nil {
		t.Fatal(err)
	}
	db, err := journal.Open(filepath.Join(ss.shared, protocol.JournalFile), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *journal.Tx) error {
		r, err := tx.GetRef(common.Digest)
		if err != nil {
			return err
		}
		r.Count = 1 // both layouts use it: 2
		return tx.PutRef(common.Digest, r)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	rep, err := store.CheckDir(ss.ctx, ss.dirs[0], &recovery.CheckOptions{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{recovery.KindDangling, recovery.KindOrphan, recovery.KindTempFile, recovery.KindRefcount} {
		if !slices.Contains(kinds(rep.Problems), k) {
			t.Errorf("the check of x before the repair does not report %s: %v", k, rep.Problems)
		}
	}

	res, err := store.Repair(ss.ctx, ss.dirs[0], &store.RepairOptions{DropBroken: true, Grace: -1})
	if err != nil {
		t.Fatalf("repair of x: %v", err)
	}
	if !res.OK() {
		t.Fatalf("problems left after the repair of x: %v", res.Report.Problems)
	}
	if got := sharedTags(t, ss.dirs[0]); !maps.Equal(got, map[string]string{"good:1": good.Digest.String()}) {
		t.Errorf("x's tags after the repair: %v", got)
	}
	ss.want(true, yBlobs...)
	ss.want(true, ss.graph(good)...)
	ss.want(false, orphan.Digest)
	ss.want(false, brokenOwn...)
	if ents, err := os.ReadDir(filepath.Join(ss.shared, filepath.FromSlash(protocol.IngestDir))); err != nil || len(ents) != 0 {
		t.Errorf("ingest directory after the repair: %v %v", ents, err)
	}
	for i := range ss.s {
		ss.open(i)
	}
	ss.clean()
	if _, err := ss.s[1].Resolve(ss.ctx, "y:1"); err != nil {
		t.Error(err)
	}
	if ls, err := ss.s[1].Leases(ss.ctx); err != nil || len(ls) != 1 {
		t.Errorf("y's lease after the repair of x: %v %v", ls, err)
	}
}

// TestRepairAdoptionKeepsSharedOrphans: the repair that adopts a layout
// into a shared blob directory removes no unreferenced blob of the
// directory (another layout ocistore does not know yet may use it: skopeo
// records none), and says so; once the layout is adopted, a repair removes
// orphans as a GC does, counting every adopted layout.
func TestRepairAdoptionKeepsSharedOrphans(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dir, shared := filepath.Join(root, "x"), filepath.Join(root, "shared")
	elsewhereLayout(t, dir, shared, 2)
	other := []byte("a layer of a layout ocistore has not seen\n")
	otherPath := filepath.Join(shared, "sha256", digest.FromBytes(other).Encoded())
	if err := os.WriteFile(otherPath, other, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := store.Repair(ctx, dir, &store.RepairOptions{SharedBlobDir: shared, DropBroken: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(otherPath); err != nil {
		t.Fatalf("the repair that adopted the layout removed a blob of the shared directory: %v", err)
	}
	if !slices.ContainsFunc(res.Actions, func(a recovery.Action) bool { return a.Kind == recovery.ActionOrphansKept }) {
		t.Errorf("the kept orphan is not said: %v", res.Actions)
	}
	if got := kinds(res.Report.Problems); !slices.Equal(got, []string{recovery.KindOrphan}) {
		t.Errorf("after the adopting repair: %v, want the orphan", res.Report.Problems)
	}
	res, err = store.Repair(ctx, dir, &store.RepairOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(otherPath); !errors.Is(err, os.ErrNotExist) || !res.OK() {
		t.Errorf("a repair of the adopted layout left the orphan (%v): %v", err, res.Report.Problems)
	}
}
