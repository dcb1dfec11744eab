package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestGenerateShape(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "l")
	st, err := generate(dir, genSpec{Images: 50, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	// 10 base sets × 3 layers, and per image a manifest, a config, 2 layers.
	if want := 30 + 4*50; st.Blobs != want {
		t.Fatalf("blobs = %d, want %d", st.Blobs, want)
	}
	r, err := checkLayout(dir, remaining(50, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.IndexOK || r.Entries != 50 || r.Dangling != 0 || r.Orphans != 0 || r.Lost != 0 || r.Reachable != st.Blobs {
		t.Fatalf("check of a fresh layout: %+v", r)
	}
}

func TestCheckFindsDanglingAndOrphans(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "l")
	if _, err := generate(dir, genSpec{Images: 20, Seed: 2}); err != nil {
		t.Fatal(err)
	}
	// An orphan: a blob nothing names.
	orphan := filepath.Join(dir, "blobs", "sha256", strings.Repeat("ab", 32))
	if err := os.WriteFile(orphan, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A dangling descriptor: unlink an image's manifest, as a crash between
	// unlink and index write leaves it.
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	var manifestHex string
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", e.Name()))
		// A manifest names its config's media type (a config's rootfs
		// says "layers" too: not a test for a manifest).
		if bytes.Contains(b, []byte(mtConfig)) {
			manifestHex = e.Name()
			break
		}
	}
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", manifestHex)); err != nil {
		t.Fatal(err)
	}
	r, err := checkLayout(dir, remaining(20, []string{"img5"}), []string{"img5"})
	if err != nil {
		t.Fatal(err)
	}
	// The manifest is dangling; its config and 2 own layers become orphans,
	// plus the unnamed blob. img5 was said deleted but was not.
	if r.Dangling != 1 || r.Orphans != 4 || r.Surviving != 1 || r.Lost != 0 {
		t.Fatalf("check: %+v", r)
	}
}

func TestBlobStreamSameBytesWhateverTheReads(t *testing.T) {
	const size = 3*streamBlock + 12345
	a, err := io.ReadAll(newBlobStream(size, 9))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	s := newBlobStream(size, 9)
	buf := make([]byte, 7) // odd-sized reads cross the salted block starts
	for {
		n, err := s.Read(buf[:1+b.Len()%7])
		b.Write(buf[:n])
		if err == io.EOF {
			break
		}
	}
	if int64(len(a)) != size || !bytes.Equal(a, b.Bytes()) {
		t.Fatal("the stream depends on the read sizes")
	}
	if bytes.Equal(a[:streamBlock], a[streamBlock:2*streamBlock]) {
		t.Fatal("blocks repeat unsalted")
	}
	dg, err := streamDigest(size, 9)
	if err != nil || !strings.HasPrefix(dg, "sha256:") {
		t.Fatal(dg, err)
	}
}

// TestPeersDeleteCleanly runs every peer's single and batch delete on a small
// layout and checks what they leave.
func TestPeersDeleteCleanly(t *testing.T) {
	ctx := context.Background()
	for _, p := range peers {
		t.Run(strings.ReplaceAll(p.name, "/", "_"), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "l")
			if _, err := generate(dir, genSpec{Images: 40, Seed: 3}); err != nil {
				t.Fatal(err)
			}
			h, err := p.open(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			one := pickSpread(40, 4)
			for _, tag := range one {
				if err := h.deleteOne(ctx, tag); err != nil {
					t.Fatal(err)
				}
			}
			batch := []string{}
			for _, tag := range pickHalf(40) {
				if !contains(one, tag) {
					batch = append(batch, tag)
				}
			}
			if err := h.deleteBatch(ctx, batch); err != nil {
				t.Fatal(err)
			}
			if err := h.close(); err != nil {
				t.Fatal(err)
			}
			gone := append(one, batch...)
			r, err := checkLayout(dir, remaining(40, gone), gone)
			if err != nil {
				t.Fatal(err)
			}
			if !r.IndexOK || r.Dangling != 0 || r.Orphans != 0 || r.Lost != 0 || r.Surviving != 0 {
				t.Fatalf("%s left: %+v", p.name, r)
			}
		})
	}
}

func TestIngesters(t *testing.T) {
	ctx := context.Background()
	const size = 5<<20 + 3
	dg, err := streamDigest(size, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ingestOrder {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			dir := t.TempDir()
			put, done, err := ingesters[name](ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := put(ctx, digestOf(dg), size, newBlobStream(size, 4)); err != nil {
				t.Fatal(err)
			}
			done()
			if name == pLimitHash {
				return // hashes only: writes nothing
			}
			if err := verifyBlob(dir, dg, size, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func digestOf(s string) digest.Digest { return digest.Digest(s) }

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
