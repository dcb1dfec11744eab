package store_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ocistore/ocistore/internal/gen"
	"github.com/ocistore/ocistore/store"
)

// openGenerated writes a layout of n images as another tool would and opens
// it (adoption: the journal is built from the files).
func openGenerated(b *testing.B, n int) (*store.Store, []string) {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "layout")
	st, err := gen.Write(dir, gen.Spec{Images: n, Seed: uint64(n)})
	if err != nil {
		b.Fatal(err)
	}
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	return s, st.Tags
}

// BenchmarkDeleteOne deletes one image per iteration (every fsync in place)
// from layouts of N images; the cost must not grow with N (README: what a transaction costs).
func BenchmarkDeleteOne(b *testing.B) {
	for _, n := range []int{100, 1000, 5000, 20000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			ctx := context.Background()
			s, tags := openGenerated(b, n)
			next := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if next == len(tags)/2 { // keep the layout near its size
					b.StopTimer()
					s.Close()
					s, tags = openGenerated(b, n)
					next = 0
					b.StartTimer()
				}
				if _, err := s.Delete(ctx, tags[next]); err != nil {
					b.Fatal(err)
				}
				next++
			}
			b.StopTimer()
			s.Close()
		})
	}
}

// BenchmarkOpen opens a layout with no pending work.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			s, _ := openGenerated(b, n)
			dir := s.Dir()
			s.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s, err := store.Open(context.Background(), dir, nil)
				if err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
		})
	}
}

// BenchmarkPruneHalf prunes half of a layout of N images (10 shared base
// sets, 4 blobs of each image's own: manifest, config, 2 layers) in one
// call, every fsync in place: keep-last over 10 repositories. Each
// iteration works on a copy of an adopted template (every blob a file of
// its own, synced before the timer starts). Run it alone with a small
// -benchtime (3x): a copy per iteration. The call returns once the freed
// blobs are out of the layout (in the trash); the background unlinking
// is not timed (Close waits for it, outside the timer): bench/ reports it.
func BenchmarkPruneHalf(b *testing.B) {
	for _, n := range []int{5000, 20000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			ctx := context.Background()
			tmpl := filepath.Join(b.TempDir(), "template")
			if _, err := gen.Write(tmpl, gen.Spec{Images: n, Repos: 10, Seed: uint64(n)}); err != nil {
				b.Fatal(err)
			}
			s, err := store.Open(ctx, tmpl, nil) // adoption: journal and image metadata
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), "layout")
				copyLayout(b, tmpl, dir)
				s, err := store.Open(ctx, dir, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				res, err := s.Prune(ctx, store.Policy{KeepLast: n / 20})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if len(res.Removed) != n/2 {
					b.Fatalf("pruned %d of %d", len(res.Removed), n)
				}
				b.ReportMetric(float64(len(res.Freed)), "blobs/op")
				s.Close()
				b.StartTimer()
			}
		})
	}
}

// copyLayout copies the layout src to dst, every file a file of its own
// (a prune then frees inodes and blocks, as on a real layout: with hard
// links an unlink frees nothing and costs a fifth), and syncs the file
// system, so that the copy's writeback does not land on the prune's
// fsyncs.
func copyLayout(b *testing.B, src, dst string) {
	b.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, raw, 0o644)
	})
	if err != nil {
		b.Fatal(err)
	}
	syscall.Sync()
}
