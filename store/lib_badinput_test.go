package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// libBadLayout makes a layout of two images through the store, closes it, and
// returns its directory and the images' descriptors.
func libBadLayout(t *testing.T) (dir string, a, b v1.Descriptor) {
	t.Helper()
	l := newLib(t)
	shared := l.b.Random(200)
	a, b = l.image([]v1.Descriptor{shared}, 2), l.image([]v1.Descriptor{shared}, 1)
	l.tag(a, "a")
	l.tag(b, "b")
	l.s.Close()
	return l.dir, a, b
}

// TestOpenBadIndex: index.json truncated, empty, garbage or not an index:
// Open fails with ErrCorrupt naming index.json, and no file is deleted.
func TestOpenBadIndex(t *testing.T) {
	cases := []struct {
		name string
		edit func(raw []byte) []byte
	}{
		{"truncated", func(raw []byte) []byte { return raw[:len(raw)/2] }},
		{"empty", func([]byte) []byte { return nil }},
		{"whitespace", func([]byte) []byte { return []byte(" \n\t ") }},
		{"garbage", func([]byte) []byte { return []byte("\x00\x01\xffnot json at all") }},
		{"json array", func([]byte) []byte { return []byte(`[1,2,3]`) }},
		{"schemaVersion 1", func([]byte) []byte { return []byte(`{"schemaVersion":1,"manifests":[]}`) }},
		{"no schemaVersion", func([]byte) []byte { return []byte(`{"manifests":[]}`) }},
		{"manifest media type", func([]byte) []byte {
			return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`)
		}},
		{"manifests not a list", func([]byte) []byte { return []byte(`{"schemaVersion":2,"manifests":{"a":1}}`) }},
		{"negative size", func(raw []byte) []byte {
			return []byte(strings.Replace(string(raw), `"size":`, `"size":-`, 1))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, _, _ := libBadLayout(t)
			ixPath := filepath.Join(dir, "index.json")
			raw, err := os.ReadFile(ixPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(ixPath, c.edit(raw), 0o644); err != nil {
				t.Fatal(err)
			}
			before := testutil.Snapshot(t, dir, ".ocistore")
			for i := 0; i < 2; i++ { // and again: the failed open left nothing behind that changes the answer
				s, err := store.Open(context.Background(), dir, nil)
				if err == nil {
					s.Close()
					t.Fatal("Open succeeded")
				}
				if !errors.Is(err, store.ErrCorrupt) {
					t.Errorf("Open = %v, want ErrCorrupt", err)
				}
				if !strings.Contains(err.Error(), "index.json") {
					t.Errorf("error %q does not name index.json", err)
				}
			}
			after := testutil.Snapshot(t, dir, ".ocistore")
			testutil.AssertNothingRemoved(t, before, after)
			if len(after) != len(before) {
				t.Errorf("files added: %d -> %d", len(before), len(after))
			}
			// CheckDir reports it without opening.
			rep, err := store.CheckDir(context.Background(), dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(libProblems(rep.Problems, recovery.KindIndexCorrupt)) != 1 {
				t.Errorf("CheckDir problems: %v", rep.Problems)
			}
		})
	}
}

// TestOpenHostileDigest: a descriptor in index.json with a malformed digest,
// or one that tries to leave the blob directory: Open fails naming the
// digest, nothing is deleted, nothing outside the layout is touched.
func TestOpenHostileDigest(t *testing.T) {
	cases := []string{
		"sha256:../../x",
		"sha256:../../../../etc/passwd",
		"sha256:" + strings.Repeat("g", 64),
		"sha256:" + strings.Repeat("A", 64),
		"sha256:abc",
		"sha256:",
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"no-colon",
		"sha256:" + strings.Repeat("a", 63) + "/",
	}
	for _, bad := range cases {
		t.Run(bad, func(t *testing.T) {
			parent := t.TempDir()
			victim := filepath.Join(parent, "x")
			if err := os.WriteFile(victim, []byte("outside"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir, a, _ := libBadLayout(t)
			ixPath := filepath.Join(dir, "index.json")
			raw, _ := os.ReadFile(ixPath)
			var ix v1.Index
			if err := json.Unmarshal(raw, &ix); err != nil {
				t.Fatal(err)
			}
			ix.Manifests = append(ix.Manifests, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.Digest(bad), Size: a.Size,
				Annotations: map[string]string{v1.AnnotationRefName: "evil"}})
			raw, _ = json.Marshal(ix)
			if err := os.WriteFile(ixPath, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			before := testutil.Snapshot(t, dir, ".ocistore")
			s, err := store.Open(context.Background(), dir, nil)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, store.ErrInvalidDigest) && !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("Open = %v, want ErrInvalidDigest or ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), bad) {
				t.Errorf("error %q does not name the digest %q", err, bad)
			}
			testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, dir, ".ocistore"))
			if b, err := os.ReadFile(victim); err != nil || string(b) != "outside" {
				t.Errorf("file outside the layout touched: %q, %v", b, err)
			}
		})
	}
}

// TestHostileManifestDigest: a manifest (stored raw by another tool) whose
// layer has a path-escaping digest: adopting counts around it, tagging it
// fails naming the digest, fsck reports it, nothing outside is touched.
func TestHostileManifestDigest(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "layout")
	victim := filepath.Join(parent, "x")
	if err := os.WriteFile(victim, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	blobs := map[digest.Digest][]byte{}
	good := testutil.RawImage(blobs, []byte(`{}`), []byte("fine"))
	bad := "sha256:../../x"
	mraw := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":7},"layers":[]}`, v1.MediaTypeImageManifest, v1.MediaTypeImageConfig, bad))
	m := testutil.Blob(mraw, v1.MediaTypeImageManifest)
	blobs[m.Digest] = mraw
	testutil.WriteRawLayout(t, dir, blobs, []v1.Descriptor{testutil.Named(good, "good"), testutil.Named(m, "evil")})
	l := libOpen(t, dir, 1)
	ps := testutil.Problems(t, l.s)
	found := false
	for _, p := range ps {
		if p.Digest == m.Digest.String() && strings.Contains(p.Detail, bad) {
			found = true
		}
	}
	if !found {
		t.Errorf("fsck does not report the hostile manifest %s: %v", m.Digest, ps)
	}
	// Another hostile manifest, not in index.json yet, cannot be tagged.
	m2raw := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":%s,"layers":[{"mediaType":%q,"digest":%q,"size":7}]}`,
		v1.MediaTypeImageManifest, mustJSON(t, good), v1.MediaTypeImageLayer, bad))
	m2 := testutil.Blob(m2raw, v1.MediaTypeImageManifest)
	if err := os.WriteFile(testutil.BlobFile(dir, m2.Digest), m2raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Tag(l.ctx, m2, "evil2"); !errors.Is(err, store.ErrInvalidDigest) || !strings.Contains(err.Error(), bad) {
		t.Errorf("Tag = %v", err)
	}
	// The adopted hostile manifest cannot be followed (its closure is
	// unknown): deleting it still works, reads nothing and releases only
	// its own blob.
	res, err := l.s.Delete(l.ctx, "evil")
	if err != nil {
		t.Fatalf("Delete(evil) = %v", err)
	}
	if len(res.Freed) != 1 || res.Freed[0].Digest != m.Digest.String() {
		t.Errorf("Delete(evil) freed %v, want only its manifest", res.Freed)
	}
	if _, err := l.s.Delete(l.ctx, "good"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "outside" {
		t.Errorf("file outside the layout touched: %q, %v", b, err)
	}
}

// TestCheckFindsDamage: a blob of an image removed, another truncated:
// fsck names both; the images whose manifests are damaged still delete
// (by the children the store recorded when it counted them).
func TestCheckFindsDamage(t *testing.T) {
	ctx := context.Background()
	dir, a, b := libBadLayout(t)
	ag := testutil.Graph(t, dir, a)
	bg := testutil.Graph(t, dir, b)
	own := libMinus(ag, bg)
	var layer digest.Digest
	for _, d := range own {
		if d != a.Digest {
			layer = d
			break
		}
	}
	if err := os.Remove(testutil.BlobFile(dir, layer)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(testutil.BlobFile(dir, b.Digest), b.Size-1); err != nil {
		t.Fatal(err)
	}
	l := libOpen(t, dir, 1)
	ps := testutil.Problems(t, l.s)
	if d := libProblems(ps, recovery.KindDangling); len(d) != 1 || d[0].Digest != layer.String() || !strings.Contains(d[0].String(), layer.String()) {
		t.Errorf("dangling: %v", d)
	}
	if d := libProblems(ps, recovery.KindSizeMismatch); len(d) != 1 || d[0].Digest != b.Digest.String() {
		t.Errorf("size-mismatch: %v", d)
	}
	rep, err := store.CheckDir(ctx, dir, nil)
	if err != nil || len(rep.Problems) != len(ps) {
		t.Errorf("CheckDir: %v, %v; Check: %v", rep, err, ps)
	}

	// b's manifest is truncated, a's rewritten (same size, other bytes).
	// Each still deletes: the store released what it recorded of their
	// children when it counted them, never what the damaged bytes say, and
	// nothing the other image uses goes with them.
	raw, _ := os.ReadFile(testutil.BlobFile(dir, a.Digest))
	raw[len(raw)-2] ^= 0x20
	if err := os.WriteFile(testutil.BlobFile(dir, a.Digest), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if d := libProblems(testutil.Problems(t, l.s), recovery.KindDigestMismatch); len(d) != 1 || d[0].Digest != a.Digest.String() {
		t.Errorf("digest-mismatch: %v", d)
	}
	res, err := l.s.Delete(ctx, b.Digest.String())
	if err != nil {
		t.Fatalf("Delete(b) with a truncated manifest: %v", err)
	}
	if got := freedSet(*res); got[b.Digest] == 0 || len(got) != len(libMinus(bg, ag)) {
		t.Errorf("Delete(b) freed %v, want b's own blobs %v", res.Freed, libMinus(bg, ag))
	}
	l.wantBlobs(true, libMinus(ag, []digest.Digest{a.Digest, layer})...)
	if _, err := l.s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete(a) with a rewritten manifest: %v", err)
	}
	l.wantBlobs(false, append(ag, bg...)...)
	if ps := testutil.Problems(t, l.s); len(ps) != 0 {
		t.Errorf("fsck after deleting both: %v", ps)
	}
}

// TestDeleteMissingManifest: the manifest blob of an image is gone. When
// the store counted the image itself, it recorded the manifest's children:
// Delete releases them, and frees what only that image used. When the store
// adopted the image already broken, what it references is unknown: Delete
// fails naming the manifest and deletes nothing.
func TestDeleteMissingManifest(t *testing.T) {
	ctx := context.Background()
	t.Run("counted by the store", func(t *testing.T) {
		dir, a, b := libBadLayout(t)
		ag, bg := testutil.Graph(t, dir, a), testutil.Graph(t, dir, b)
		if err := os.Remove(testutil.BlobFile(dir, a.Digest)); err != nil {
			t.Fatal(err)
		}
		l := libOpen(t, dir, 1)
		res, err := l.s.Delete(ctx, "a")
		if err != nil {
			t.Fatalf("Delete: %v", err)
		}
		own := libMinus(ag, bg)
		if _, gone := freedSet(*res)[a.Digest]; gone || len(res.Freed) != len(own)-1 {
			t.Errorf("freed %v, want %v less the missing manifest", res.Freed, own)
		}
		l.wantBlobs(false, own...)
		l.wantBlobs(true, bg...)
		if ps := testutil.Problems(t, l.s); len(ps) != 0 {
			t.Errorf("fsck after the delete: %v", ps)
		}
	})
	t.Run("adopted broken", func(t *testing.T) {
		dir := t.TempDir()
		blobs := map[digest.Digest][]byte{}
		shared := []byte("shared layer")
		a := testutil.RawImage(blobs, []byte(`{"a":1}`), shared, []byte("a own"))
		b := testutil.RawImage(blobs, []byte(`{"b":1}`), shared)
		delete(blobs, a.Digest)
		testutil.WriteRawLayout(t, dir, blobs, []v1.Descriptor{testutil.Named(a, "a"), testutil.Named(b, "b")})
		l := libOpen(t, dir, 1)
		if d := libProblems(testutil.Problems(t, l.s), recovery.KindDangling); len(d) != 1 || d[0].Digest != a.Digest.String() {
			t.Errorf("dangling: %v", d)
		}
		// Its closure is unknown: removing it works, and frees nothing
		// (what it used was never counted; another closure could not be
		// told apart from it).
		before := testutil.Snapshot(t, dir, ".ocistore")
		res := l.del("a")
		if len(res.Freed) != 0 {
			t.Errorf("Delete of the broken image freed %v", res.Freed)
		}
		after := testutil.Snapshot(t, dir, ".ocistore")
		delete(before, "index.json")
		delete(after, "index.json")
		testutil.AssertNothingRemoved(t, before, after)
		// Every closure is known now: GC takes a's own blobs, not the
		// shared layer, which b still uses.
		gc, err := l.s.GC(ctx, store.GCOptions{})
		if err != nil || gc.Pinned != "" || len(gc.Freed) != 2 {
			t.Fatalf("gc: %v, freed %v, pinned %q", err, gc.Freed, gc.Pinned)
		}
		l.wantBlobs(true, testutil.Graph(t, dir, b)...)
		l.del("b")
		l.wantBlobs(false, b.Digest)
	})
}

// TestHugeSizes: descriptors announcing absurd sizes are never allocated.
func TestHugeSizes(t *testing.T) {
	const huge = int64(1) << 60
	ctx := context.Background()
	dir, a, _ := libBadLayout(t)
	// index.json: a second entry for a's manifest with a huge size, and an entry
	// for a blob that does not exist with a huge size.
	ixPath := filepath.Join(dir, "index.json")
	raw, _ := os.ReadFile(ixPath)
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	ghost := digest.FromString("ghost")
	ix.Manifests = append(ix.Manifests,
		v1.Descriptor{MediaType: v1.MediaTypeImageIndex, Digest: ghost, Size: huge, Annotations: map[string]string{v1.AnnotationRefName: "ghost"}})
	raw, _ = json.Marshal(ix)
	if err := os.WriteFile(ixPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	alloc0 := ms.TotalAlloc

	l := libOpen(t, dir, 1)
	ps := testutil.Problems(t, l.s)
	if d := libProblems(ps, recovery.KindDangling); len(d) != 1 || d[0].Digest != ghost.String() {
		t.Errorf("fsck: %v", ps)
	}
	if ok, err := l.s.Exists(ctx, v1.Descriptor{Digest: a.Digest, Size: huge}); ok || err != nil {
		t.Errorf("Exists with a huge size = %v, %v", ok, err)
	}
	if _, err := libFetchAll(ctx, l.s, v1.Descriptor{Digest: a.Digest, Size: huge}); !errors.Is(err, store.ErrSizeMismatch) {
		t.Errorf("Fetch with a huge size = %v", err)
	}
	if err := l.s.Tag(ctx, v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: a.Digest, Size: huge}, "huge"); err == nil {
		t.Error("Tag with a huge size succeeded")
	}
	layer := l.b.Random(10)
	layer.Size = huge
	mraw, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: l.b.Random(5), Layers: []v1.Descriptor{layer}})
	if _, err := l.s.PutManifest(ctx, v1.MediaTypeImageManifest, mraw, "huge-layer"); !errors.Is(err, store.ErrMissingDependency) {
		t.Errorf("PutManifest with a huge layer = %v", err)
	}
	// A manifest blob that says it is huge: its graph is not read into memory.
	m := testutil.Blob(mraw, v1.MediaTypeImageManifest)
	if err := l.s.PutBlob(ctx, m, strings.NewReader(string(mraw))); err != nil {
		t.Fatal(err)
	}
	m.Size = huge
	if err := l.s.Tag(ctx, m, "huge-manifest"); err == nil {
		t.Error("Tag of a manifest with a huge size succeeded")
	}
	// The ghost's manifest cannot be read (its closure is unknown):
	// deleting it reads nothing, allocates nothing and frees nothing.
	if res, err := l.s.Delete(ctx, "ghost"); err != nil || len(res.Freed) != 0 {
		t.Errorf("Delete of the huge ghost entry = %v, %v", res, err)
	}

	runtime.ReadMemStats(&ms)
	if got := ms.TotalAlloc - alloc0; got > 256<<20 {
		t.Errorf("allocated %d MiB for descriptors of huge sizes", got>>20)
	}
}

// TestCheckDuplicateDescriptorSize: two descriptors of one blob disagree on
// its size (another tool wrote the second): fsck reports the wrong one.
func TestCheckDuplicateDescriptorSize(t *testing.T) {
	dir, a, _ := libBadLayout(t)
	ixPath := filepath.Join(dir, "index.json")
	raw, _ := os.ReadFile(ixPath)
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	wrong := a
	wrong.Size = a.Size + 10
	ix.Manifests = append(ix.Manifests, testutil.Named(wrong, "a-wrong"))
	raw, _ = json.Marshal(ix)
	if err := os.WriteFile(ixPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	l := libOpen(t, dir, 1)
	if d := libProblems(testutil.Problems(t, l.s), recovery.KindSizeMismatch); len(d) != 1 || d[0].Digest != a.Digest.String() {
		t.Errorf("size-mismatch: %v", testutil.Problems(t, l.s))
	}
}
