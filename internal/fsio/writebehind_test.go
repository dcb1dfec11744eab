package fsio_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ocistore/ocistore/internal/fsio"
)

// TestWriteBehind: a write-behind writer writes every byte, in order,
// across several writeback starts, to the temp file of the layout's file
// system and to one in a shared blob directory; it is the file itself for
// a TempFile that is not an operating system's file.
func TestWriteBehind(t *testing.T) {
	data := make([]byte, 2*fsio.WriteBehindEvery+12345)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	root, shared := t.TempDir(), t.TempDir()
	for _, d := range []string{filepath.Join(root, "blobs", "sha256"), filepath.Join(shared, "sha256")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	layoutFS, err := fsio.OpenOS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer layoutFS.Close()
	blobFS, err := fsio.OpenOS(shared)
	if err != nil {
		t.Fatal(err)
	}
	defer blobFS.Close()
	for _, c := range []struct {
		name string
		fsys fsio.FS
		dir  string // where blobs/sha256 is
	}{
		{"layout", layoutFS, filepath.Join(root, "blobs", "sha256")},
		{"shared", &fsio.Shared{Layout: layoutFS, Blobs: blobFS}, filepath.Join(shared, "sha256")},
	} {
		t.Run(c.name, func(t *testing.T) {
			tmp, err := c.fsys.CreateTemp("blobs/sha256", "wb-")
			if err != nil {
				t.Fatal(err)
			}
			w := fsio.WriteBehind(tmp)
			if w == io.Writer(tmp) {
				t.Fatal("WriteBehind of an OS temp file is the file itself")
			}
			// Odd-sized writes: the starts fall inside writes.
			for off := 0; off < len(data); {
				n := min(len(data)-off, 1<<20+7)
				if _, err := w.Write(data[off : off+n]); err != nil {
					t.Fatal(err)
				}
				off += n
			}
			if err := tmp.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := tmp.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(c.dir, filepath.Base(tmp.Name())))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("the file holds %d bytes, not the %d written", len(got), len(data))
			}
		})
	}
}
