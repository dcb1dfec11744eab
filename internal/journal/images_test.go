package journal_test

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
)

func TestImages(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	img, sig, sbom, other := digest.FromString("img"), digest.FromString("sig"), digest.FromString("sbom"), digest.FromString("other")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	err := db.Update(func(tx *journal.Tx) error {
		if tx.HasReferrers() || tx.ImagesIndex() != "" {
			t.Error("a fresh journal has referrers or an images index")
		}
		if err := tx.PutImage(img, journal.ImageMeta{FirstSeen: now, Created: now.Add(-time.Hour), Labels: map[string]string{"a": "b"}}); err != nil {
			return err
		}
		for _, d := range []digest.Digest{sig, sbom} {
			if err := tx.PutImage(d, journal.ImageMeta{FirstSeen: now, Subject: img}); err != nil {
				return err
			}
		}
		if err := tx.PutImage(other, journal.ImageMeta{FirstSeen: now, Subject: other}); err != nil {
			return err
		}
		return tx.SetImagesIndex(digest.FromString("index"))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		m, ok, err := tx.GetImage(img)
		if !ok || err != nil || !m.FirstSeen.Equal(now) || !m.Created.Equal(now.Add(-time.Hour)) || m.Labels["a"] != "b" || !m.LastUsed.IsZero() {
			t.Errorf("GetImage = %+v %v %v", m, ok, err)
		}
		if _, ok, _ := tx.GetImage(digest.FromString("nope")); ok {
			t.Error("GetImage of an unknown digest")
		}
		refs := tx.Referrers(img)
		slices.Sort(refs)
		want := []digest.Digest{sig, sbom}
		slices.Sort(want)
		if !slices.Equal(refs, want) || !tx.HasReferrers() {
			t.Errorf("Referrers = %v", refs)
		}
		if len(tx.Referrers(sig)) != 0 {
			t.Error("referrers of a referrer")
		}
		if tx.ImagesIndex() != digest.FromString("index") {
			t.Errorf("ImagesIndex = %s", tx.ImagesIndex())
		}
		n := 0
		tx.ForEachImage(func(digest.Digest, journal.ImageMeta) error { n++; return nil })
		if n != 4 {
			t.Errorf("ForEachImage saw %d", n)
		}
		return nil
	})
	err = db.Update(func(tx *journal.Tx) error {
		if err := tx.DeleteImage(sig); err != nil {
			return err
		}
		if err := tx.DeleteImage(other); err != nil {
			return err
		}
		return tx.DeleteImage(digest.FromString("nope"))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		if refs := tx.Referrers(img); !slices.Equal(refs, []digest.Digest{sbom}) {
			t.Errorf("Referrers after delete = %v", refs)
		}
		if len(tx.Referrers(other)) != 0 {
			t.Error("a deleted self-referrer is still indexed")
		}
		return nil
	})
}

// TestLiveBytes: the total size of live blobs follows every PutRef and
// ReplaceRefs, and is summed when a version 1 journal is upgraded.
func TestLiveBytes(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[digest.Digest]journal.Ref{}
	sum := func() int64 {
		var n int64
		for _, r := range want {
			n += r.Size
		}
		return n
	}
	for round := 0; round < 20; round++ {
		err := db.Update(func(tx *journal.Tx) error {
			for i := 0; i < 30; i++ {
				d := digest.FromString(string(rune('a' + rng.IntN(40))))
				r := journal.Ref{Count: uint64(rng.IntN(3)), Size: int64(rng.IntN(1000))}
				if err := tx.PutRef(d, r); err != nil {
					return err
				}
				if r.Count == 0 {
					delete(want, d)
				} else {
					want[d] = r
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		db.View(func(tx *journal.Tx) error {
			if n, err := tx.LiveBytes(); err != nil || n != sum() {
				t.Fatalf("round %d: LiveBytes = %d, %v; want %d", round, n, err, sum())
			}
			return nil
		})
	}
	err := db.Update(func(tx *journal.Tx) error {
		return tx.ReplaceRefs(map[digest.Digest]journal.Ref{digest.FromString("x"): {Count: 2, Size: 77}, digest.FromString("y"): {Count: 0, Size: 5}})
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		if n, _ := tx.LiveBytes(); n != 77 {
			t.Errorf("after ReplaceRefs: %d", n)
		}
		return nil
	})

	// A version 1 journal: summed on upgrade (read-only: summed on read).
	path := filepath.Join(t.TempDir(), "v1.db")
	writeV1(t, path) // one ref of size 10
	ro := open(t, path, journal.Options{ReadOnly: true})
	ro.View(func(tx *journal.Tx) error {
		if n, err := tx.LiveBytes(); err != nil || n != 10 {
			t.Errorf("read-only v1 LiveBytes = %d, %v", n, err)
		}
		return nil
	})
	ro.Close()
	up := open(t, path, journal.Options{})
	up.View(func(tx *journal.Tx) error {
		if n, err := tx.LiveBytes(); err != nil || n != 10 {
			t.Errorf("upgraded LiveBytes = %d, %v", n, err)
		}
		return nil
	})
}

// TestImageMetaEncoding: what PutImage stores reads back the same, and a
// damaged value is ErrCorrupt, never a panic.
func TestImageMetaEncoding(t *testing.T) {
	db := open(t, filepath.Join(t.TempDir(), "journal.db"), journal.Options{})
	metas := []journal.ImageMeta{
		{FirstSeen: time.Unix(0, 1).UTC()},
		{FirstSeen: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Created: time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC), LastUsed: time.Date(2026, 5, 5, 5, 5, 5, 5, time.UTC),
			Subject: digest.FromString("s"), Labels: map[string]string{"a": "", "": "b", "k": "vvvvv"}},
	}
	err := db.Update(func(tx *journal.Tx) error {
		for i, m := range metas {
			if err := tx.PutImage(digest.FromString(string(rune('0'+i))), m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *journal.Tx) error {
		for i, want := range metas {
			got, ok, err := tx.GetImage(digest.FromString(string(rune('0' + i))))
			if !ok || err != nil || !got.FirstSeen.Equal(want.FirstSeen) || !got.Created.Equal(want.Created) || !got.LastUsed.Equal(want.LastUsed) ||
				got.Subject != want.Subject || len(got.Labels) != len(want.Labels) {
				t.Errorf("meta %d: got %+v, want %+v (%v %v)", i, got, want, ok, err)
			}
			for k, v := range want.Labels {
				if got.Labels[k] != v {
					t.Errorf("meta %d: label %q = %q", i, k, got.Labels[k])
				}
			}
		}
		return nil
	})
	// Damage: every truncation is ErrCorrupt; random bytes never panic.
	raw := journal.EncodeImageForTest(metas[1])
	for n := 0; n < len(raw); n++ {
		if _, err := journal.DecodeImageForTest(raw[:n]); !errors.Is(err, errdef.ErrCorrupt) {
			t.Errorf("truncated to %d bytes: %v", n, err)
		}
	}
	if _, err := journal.DecodeImageForTest(append(raw, 0)); !errors.Is(err, errdef.ErrCorrupt) {
		t.Errorf("trailing byte: %v", err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 5000; i++ {
		b := make([]byte, rng.IntN(40))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if len(b) > 0 {
			b[0] = raw[0]
		}
		journal.DecodeImageForTest(b)
	}
}
