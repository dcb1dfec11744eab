package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

func TestOpenCreatesEmptyLayout(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"missing", func(t *testing.T) string { return filepath.Join(t.TempDir(), "a", "b") }},
		{"empty", func(t *testing.T) string { return t.TempDir() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := c.dir(t)
			s, err := store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var lf v1.ImageLayout
			readJSON(t, filepath.Join(dir, "oci-layout"), &lf)
			if lf.Version != "1.0.0" {
				t.Errorf("oci-layout version %q", lf.Version)
			}
			var ix v1.Index
			readJSON(t, filepath.Join(dir, "index.json"), &ix)
			if ix.SchemaVersion != 2 || ix.MediaType != v1.MediaTypeImageIndex || ix.Manifests == nil || len(ix.Manifests) != 0 {
				t.Errorf("index.json = %+v, want an empty schemaVersion 2 image index with manifests []", ix)
			}
			if fi, err := os.Stat(filepath.Join(dir, "blobs", "sha256")); err != nil || !fi.IsDir() {
				t.Errorf("blobs/sha256: %v", err)
			}
			imgs, err := s.List(ctx)
			if err != nil || len(imgs) != 0 {
				t.Errorf("List = %v, %v", imgs, err)
			}
			if s.Dir() != dir && !filepath.IsAbs(s.Dir()) {
				t.Errorf("Dir() = %q", s.Dir())
			}
			testutil.MustCheck(t, s)
			// Opening again adopts nothing new and changes no file.
			before := testutil.Snapshot(t, dir, ".ocistore")
			s2, err := store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			s2.Close()
			if after := testutil.Snapshot(t, dir, ".ocistore"); len(after) != len(before) {
				t.Errorf("reopen changed the file set: %v -> %v", before, after)
			}
			testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, dir, ".ocistore"))
		})
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestOpenNotLayout(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		files map[string]string
	}{
		{"plain file", map[string]string{"notes.txt": "hello"}},
		{"index without oci-layout", map[string]string{"index.json": `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hex64('a') + `","size":3}]}`}},
		{"blobs without oci-layout", map[string]string{"blobs/sha256/" + hex64('b'): "xyz"}},
		{"subdirectory", map[string]string{"src/main.go": "package main"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for p, content := range c.files {
				p = filepath.Join(dir, filepath.FromSlash(p))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before := testutil.Snapshot(t, dir)
			s, err := store.Open(ctx, dir, nil)
			if !errors.Is(err, store.ErrNotLayout) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Open = %v, want ErrNotLayout", err)
			}
			after := testutil.Snapshot(t, dir)
			testutil.AssertNothingRemoved(t, before, after)
			if len(after) != len(before) {
				t.Errorf("Open of a non-layout created files: %v", after)
			}
			if _, err := os.Stat(filepath.Join(dir, ".ocistore")); err == nil {
				t.Errorf("Open of a non-layout created .ocistore")
			}
		})
	}
}

func hex64(c byte) string { return string(bytes.Repeat([]byte{c}, 64)) }

func TestOpenNoCreate(t *testing.T) {
	ctx := context.Background()
	for _, dir := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
		_, err := store.Open(ctx, dir, &store.Options{NoCreate: true})
		if !errors.Is(err, store.ErrNotLayout) {
			t.Errorf("Open(%s, NoCreate) = %v, want ErrNotLayout", dir, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
			t.Errorf("NoCreate wrote index.json in %s", dir)
		}
	}
	// An existing layout opens with NoCreate.
	l := newLib(t)
	l.tag(l.image(nil, 1), "x")
	l.s.Close()
	s, err := store.Open(ctx, l.dir, &store.Options{NoCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Resolve(ctx, "x"); err != nil {
		t.Fatal(err)
	}
}

func TestOpenOnFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := store.Open(context.Background(), p, nil); err == nil {
		s.Close()
		t.Fatal("Open on a regular file succeeded")
	}
}

// TestOpenAdopt opens a layout written by another tool (no journal): images
// sharing layers, a nested index and a tag on a shared manifest. The journal is
// built from the files: fsck is clean and every count is what the graph says.
func TestOpenAdopt(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	blobs := map[digest.Digest][]byte{}
	base1, base2 := []byte("shared base layer 1"), []byte("shared base layer 2")
	a := testutil.RawImage(blobs, []byte(`{"a":1}`), base1, base2, []byte("a own"))
	b := testutil.RawImage(blobs, []byte(`{"b":1}`), base1, base2, []byte("b own"))
	c := testutil.RawImage(blobs, []byte(`{"c":1}`), base1, []byte("c own"))
	ixRaw, _ := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{b, c}})
	ixDesc := testutil.Blob(ixRaw, v1.MediaTypeImageIndex)
	blobs[ixDesc.Digest] = ixRaw
	testutil.WriteRawLayout(t, dir, blobs, []v1.Descriptor{
		testutil.Named(a, "a"), testutil.Named(b, "b"), testutil.Named(ixDesc, "multi"),
		c, // untagged entry
	})
	before := testutil.Snapshot(t, dir)

	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, dir, ".ocistore"))
	testutil.MustCheck(t, s)

	d := func(b []byte) digest.Digest { return digest.FromBytes(b) }
	want := map[digest.Digest]uint64{
		a.Digest: 1, b.Digest: 2, c.Digest: 2, ixDesc.Digest: 1,
		d(base1): 3, d(base2): 2,
		d([]byte(`{"a":1}`)): 1, d([]byte(`{"b":1}`)): 1, d([]byte(`{"c":1}`)): 1,
		d([]byte("a own")): 1, d([]byte("b own")): 1, d([]byte("c own")): 1,
	}
	got := testutil.Refcounts(t, dir)
	if len(got) != len(want) {
		t.Errorf("%d refcounts, want %d: %v", len(got), len(want), got)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("refcount %s = %d, want %d", k, got[k], w)
		}
	}
	// The adopted state is used: deleting a frees only a's own blobs.
	res, err := s.Delete(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	freed := map[string]bool{}
	for _, f := range res.Freed {
		freed[f.Digest] = true
	}
	for _, x := range []digest.Digest{a.Digest, d([]byte(`{"a":1}`)), d([]byte("a own"))} {
		if !freed[x.String()] || testutil.HasBlob(t, dir, x) {
			t.Errorf("%s not freed", x)
		}
	}
	if len(res.Freed) != 3 {
		t.Errorf("freed %v, want a's manifest, config and own layer", res.Freed)
	}
	for _, x := range []digest.Digest{d(base1), d(base2), b.Digest, c.Digest} {
		if !testutil.HasBlob(t, dir, x) {
			t.Errorf("shared blob %s was unlinked", x)
		}
	}
	testutil.MustCheck(t, s)
}

// TestOpenAdoptSHA512 adopts a layout whose blobs are sha512.
func TestOpenAdoptSHA512(t *testing.T) {
	dir := t.TempDir()
	blobs := map[digest.Digest][]byte{}
	put := func(b []byte, mt string) v1.Descriptor {
		dd := digest.SHA512.FromBytes(b)
		blobs[dd] = b
		return v1.Descriptor{MediaType: mt, Digest: dd, Size: int64(len(b))}
	}
	cfg := put([]byte(`{}`), v1.MediaTypeImageConfig)
	layer := put([]byte("layer"), v1.MediaTypeImageLayer)
	mraw, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{layer}})
	m := put(mraw, v1.MediaTypeImageManifest)
	testutil.WriteRawLayout(t, dir, blobs, []v1.Descriptor{testutil.Named(m, "big")})
	l := libOpen(t, dir, 1)
	l.clean()
	if got, err := l.s.Resolve(l.ctx, "big"); err != nil || got.Digest != m.Digest {
		t.Fatalf("Resolve = %v, %v", got, err)
	}
	l.del("big")
	l.wantBlobs(false, m.Digest, cfg.Digest, layer.Digest)
	l.clean()
}

func TestClose(t *testing.T) {
	l := newLib(t)
	m := l.image(nil, 1)
	l.tag(m, "x")
	if err := l.s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	ctx := l.ctx
	layer := []byte("after close")
	checks := map[string]error{
		"PutBlob": l.s.PutBlob(ctx, libDesc(layer, v1.MediaTypeImageLayer), bytes.NewReader(layer)),
		"Tag":     l.s.Tag(ctx, m, "y"),
		"Untag":   l.s.Untag(ctx, "x"),
	}
	_, checks["PutManifest"] = l.s.PutManifest(ctx, v1.MediaTypeImageManifest, []byte(`{"schemaVersion":2}`))
	_, checks["Delete"] = l.s.Delete(ctx, "x")
	_, checks["Resolve"] = l.s.Resolve(ctx, "x")
	_, checks["List"] = l.s.List(ctx)
	_, checks["Fetch"] = l.s.Fetch(ctx, m)
	_, checks["Exists"] = l.s.Exists(ctx, m)
	_, checks["Check"] = l.s.Check(ctx, nil)
	_, checks["Recover"] = l.s.Recover(ctx)
	for op, err := range checks {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", op, err)
		}
	}
	if l.has(libDesc(layer, "").Digest) {
		t.Error("PutBlob after Close wrote the blob")
	}
	// The layout is intact for the next handle.
	l2 := libOpen(t, l.dir, 2)
	if l2.index()[0] != "x="+m.Digest.String() {
		t.Fatalf("index after reopen: %v", l2.index())
	}
	l2.clean()
}

// TestCloseWhileWriting closes a store while writers are queued on it: every
// writer returns (done or ErrClosed) and Close returns.
func TestCloseWhileWriting(t *testing.T) {
	for round := 0; round < 5; round++ {
		// Not closed by a cleanup: after a deadlock that would hang too.
		s, err := store.Open(context.Background(), t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		l := &lib{t: t, ctx: context.Background(), s: s, b: testutil.NewBuilder(t, s, uint64(round))}
		m := l.image(nil, 1)
		l.tag(m, "base")
		errs := make(chan error, 64)
		for g := 0; g < 4; g++ {
			name := fmt.Sprintf("t%d", g)
			go func() {
				var err error
				for i := 0; i < 1000 && err == nil; i++ {
					if err = l.s.Tag(l.ctx, m, name); err == nil {
						err = l.s.Untag(l.ctx, name)
					}
					_, _ = l.s.Resolve(l.ctx, "base")
				}
				errs <- err
			}()
		}
		time.Sleep(time.Duration(5+round*5) * time.Millisecond)
		closed := make(chan error, 1)
		go func() { closed <- l.s.Close() }()
		timeout := time.After(20 * time.Second)
		for g := 0; g < 4; g++ {
			select {
			case err := <-errs:
				if err != nil && !errors.Is(err, store.ErrClosed) {
					t.Errorf("writer: %v", err)
				}
			case <-timeout:
				t.Fatal("writers deadlocked with Close")
			}
		}
		select {
		case <-closed:
		case <-timeout:
			t.Fatal("Close deadlocked with writers")
		}
	}
}

// TestWriterLockTimeout: a writer waits for another process's lock (here a
// journal handle held open) and gives up with ErrLocked; readers do not wait.
func TestWriterLockTimeout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := store.Open(ctx, dir, &store.Options{LockTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := testutil.NewBuilder(t, s, 3)
	m := b.Manifest(nil, 1)
	b.Tag(m, "x")

	held, err := journal.Open(filepath.Join(dir, protocol.JournalFile), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.Tag(ctx, m, "y")
	if !errors.Is(err, store.ErrLocked) {
		t.Errorf("Tag under another's lock = %v, want ErrLocked", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("waited %s for a 50ms lock timeout", el)
	}
	if _, err := s.Delete(ctx, "x"); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Delete under another's lock = %v, want ErrLocked", err)
	}
	if d, err := s.Resolve(ctx, "x"); err != nil || d.Digest != m.Digest {
		t.Errorf("Resolve under a writer's lock = %v, %v", d, err)
	}
	if _, err := store.Open(ctx, dir, &store.Options{LockTimeout: -1}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Open under another's lock = %v, want ErrLocked", err)
	}
	held.Close()
	if err := s.Tag(ctx, m, "y"); err != nil {
		t.Fatalf("Tag after the lock is released: %v", err)
	}
	testutil.MustCheck(t, s)
}

// TestSchemaV2Journal: a layout whose journal was written by the previous
// build (schema 2: refcounts without the children of manifests) is
// upgraded on open; a delete then reads the manifests it releases, frees
// what it frees with a current journal, and leaves a layout fsck finds
// clean.
func TestSchemaV2Journal(t *testing.T) {
	ctx := context.Background()
	clean := testutil.DamagedCaseNamed(t, damagedRoot, "clean")
	v2, err := os.ReadFile("../internal/journal/testdata/v2-clean.db")
	if err != nil {
		t.Fatal(err)
	}
	freed := map[bool][]store.Blob{}
	for _, old := range []bool{false, true} {
		dir, _ := clean.Materialize(t)
		if old {
			if err := os.WriteFile(filepath.Join(dir, protocol.JournalFile), v2, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		s, err := store.Open(ctx, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Delete(ctx, "app:1", "multi:1")
		if err != nil {
			t.Fatal(err)
		}
		freed[old] = res.Freed
		if p := testutil.Problems(t, s); len(p) != 0 {
			t.Errorf("v2 %v: fsck after the delete: %v", old, p)
		}
		s.Close()
	}
	sortBlobs := func(b []store.Blob) []store.Blob {
		slices.SortFunc(b, func(x, y store.Blob) int { return strings.Compare(x.Digest, y.Digest) })
		return b
	}
	if len(freed[false]) < 3 || !slices.Equal(sortBlobs(freed[true]), sortBlobs(freed[false])) {
		t.Errorf("freed with a v2 journal %v, with a current one %v", freed[true], freed[false])
	}
}
