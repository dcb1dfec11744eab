package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// unknownCase makes image b's closure unknown to ocistore in one way: it
// gets b's manifest (bytes and descriptor, already in blobs) and returns
// the root descriptor index.json lists for b.
type unknownCase struct {
	name string
	make func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor
}

var unknownCases = []unknownCase{
	{"manifest-over-limit", func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor {
		// A valid manifest that skopeo and umoci read: a 9 MiB annotation.
		var mf v1.Manifest
		if err := json.Unmarshal(m, &mf); err != nil {
			t.Fatal(err)
		}
		mf.Annotations = map[string]string{"big": strings.Repeat("x", layout.MaxManifestSize+1<<20)}
		raw, _ := json.Marshal(mf)
		d := testutil.Blob(raw, v1.MediaTypeImageManifest)
		blobs[d.Digest] = raw
		delete(blobs, md.Digest)
		return d
	}},
	{"root-without-media-type-over-limit", func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor {
		var mf v1.Manifest
		if err := json.Unmarshal(m, &mf); err != nil {
			t.Fatal(err)
		}
		mf.Annotations = map[string]string{"big": strings.Repeat("x", layout.MaxManifestSize+1<<20)}
		raw, _ := json.Marshal(mf)
		d := testutil.Blob(raw, "")
		blobs[d.Digest] = raw
		delete(blobs, md.Digest)
		return d
	}},
	{"manifest-malformed", func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor {
		raw := append([]byte(`{"schemaVersion":2,"layers":{"oops":`), m...)
		d := testutil.Blob(raw, v1.MediaTypeImageManifest)
		blobs[d.Digest] = raw
		delete(blobs, md.Digest)
		return d
	}},
	{"manifest-missing", func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor {
		delete(blobs, md.Digest)
		return md
	}},
	{"manifest-digest-mismatch", func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor {
		blobs[md.Digest] = append([]byte(" "), m[1:]...) // same size, other bytes
		return md
	}},
	{"nested-too-deep", func(t *testing.T, blobs map[digest.Digest][]byte, m []byte, md v1.Descriptor) v1.Descriptor {
		d := md
		for i := 0; i <= layout.MaxDepth+1; i++ {
			ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{d},
				Annotations: map[string]string{"level": fmt.Sprint(i)}}
			raw, _ := json.Marshal(ix)
			d = testutil.Blob(raw, v1.MediaTypeImageIndex)
			blobs[d.Digest] = raw
		}
		return d
	}},
}

// TestUnknownClosurePins: when an image's closure cannot be known (its
// manifest too large, malformed, missing, damaged, nested too deep), no
// transaction, GC, prune or repair frees a blob, and removing that image
// itself still works; once every closure is known again, GC frees what was
// kept.
func TestUnknownClosurePins(t *testing.T) {
	for _, c := range unknownCases {
		for _, removal := range []string{"rm", "drop-broken"} {
			t.Run(c.name+"/"+removal, func(t *testing.T) { unknownClosurePins(t, c, removal) })
		}
	}
}

func unknownClosurePins(t *testing.T, c unknownCase, removal string) {
	{
		{
			ctx := context.Background()
			dir := filepath.Join(t.TempDir(), "layout")
			blobs := map[digest.Digest][]byte{}
			base := []byte("shared base layer")
			a := testutil.RawImage(blobs, []byte(`{"a":1}`), base, []byte("a's own layer"))
			b := testutil.RawImage(blobs, []byte(`{"b":1}`), base, []byte("b's own layer"))
			var bm v1.Manifest
			if err := json.Unmarshal(blobs[b.Digest], &bm); err != nil {
				t.Fatal(err)
			}
			keep := []digest.Digest{bm.Config.Digest} // b's config and layers: must survive
			for _, l := range bm.Layers {
				keep = append(keep, l.Digest)
			}
			broot := c.make(t, blobs, blobs[b.Digest], b)
			testutil.WriteRawLayout(t, dir, blobs, []v1.Descriptor{testutil.Named(a, "a:1"), testutil.Named(broot, "b:1")})
			mustKeep := func(when string) {
				t.Helper()
				for _, d := range keep {
					if !testutil.HasBlob(t, dir, d) {
						t.Fatalf("%s: blob %s of the image whose closure is unknown was freed", when, d)
					}
				}
			}

			s, err := store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := s.Delete(ctx, "a:1")
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Freed) != 0 || res.Pinned == "" || len(res.Kept) == 0 {
				t.Errorf("delete of a: freed %v, kept %v, pinned %q", res.Freed, res.Kept, res.Pinned)
			}
			mustKeep("rm of another image")
			gc, err := s.GC(ctx, store.GCOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(gc.Freed) != 0 || gc.Pinned == "" {
				t.Errorf("gc: freed %v, pinned %q", gc.Freed, gc.Pinned)
			}
			mustKeep("gc --grace 0s")
			pr, err := s.Prune(ctx, store.Policy{MaxSize: 1})
			if err != nil {
				t.Fatal(err)
			}
			if len(pr.Removed) != 0 || len(pr.Freed) != 0 || pr.Pinned == "" {
				t.Errorf("prune: removed %v, freed %v, pinned %q", pr.Removed, pr.Freed, pr.Pinned)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := store.Repair(ctx, dir, &store.RepairOptions{Grace: -1}); err != nil {
				t.Fatal(err)
			}
			mustKeep("fsck --repair")
			// A reopened store still knows (the journal says so).
			s, err = store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if gc, err := s.GC(ctx, store.GCOptions{}); err != nil || len(gc.Freed) != 0 {
				t.Fatalf("gc after reopen: %v, freed %v", err, gc)
			}
			mustKeep("gc after reopen")

			// fsck names the image that cannot be followed, and why.
			rep, err := s.Check(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			named := false
			for _, p := range rep.Problems {
				if strings.Contains(p.Detail, "what it references is unknown") {
					named = true
				}
			}
			if !named {
				t.Errorf("fsck does not report the unknown closure: %v", rep.Problems)
			}

			// Removing the unknown image itself works (rm, or a repair
			// that drops broken images), and then every closure is known:
			// GC takes what was kept.
			if removal == "rm" {
				if _, err := s.Delete(ctx, "b:1"); err != nil {
					t.Fatalf("rm of the image whose closure is unknown: %v", err)
				}
			} else {
				s.Close()
				if _, err := store.Repair(ctx, dir, &store.RepairOptions{DropBroken: true, KeepOrphans: true, Force: true}); err != nil {
					t.Fatal(err)
				}
				if s, err = store.Open(ctx, dir, nil); err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				if imgs, err := s.List(ctx); err != nil || len(imgs) != 0 {
					t.Fatalf("after --drop-broken: %v, %v", imgs, err)
				}
			}
			gc, err = s.GC(ctx, store.GCOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if gc.Pinned != "" {
				t.Errorf("gc still pinned: %s", gc.Pinned)
			}
			for _, d := range keep {
				if testutil.HasBlob(t, dir, d) {
					t.Errorf("blob %s left after its image went and gc ran", d)
				}
			}
			if entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256")); err != nil || len(entries) != 0 {
				t.Errorf("blobs left: %d (%v)", len(entries), err)
			}
		}
	}
}

// TestUnknownClosureTagRefused: a transaction that would make a root
// live whose closure cannot be read is refused, as before, and changes
// nothing.
func TestUnknownClosureTagRefused(t *testing.T) {
	l := newLib(t)
	big := l.b.Put([]byte(strings.Repeat("y", layout.MaxManifestSize+1)), v1.MediaTypeImageManifest)
	err := l.s.Tag(l.ctx, big, "big:1")
	if !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("tag of a root too large to follow = %v", err)
	}
	if got := l.index(); len(got) != 0 {
		t.Errorf("index %v", got)
	}
}
