package store_test

import (
	"context"
	"fmt"
	"path/filepath"
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
// from layouts of N images; the cost must not grow with N (DESIGN.md §6).
func BenchmarkDeleteOne(b *testing.B) {
	for _, n := range []int{100, 1000, 5000} {
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
