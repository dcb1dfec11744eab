package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
)

// TestReadAheadChildren: the read-ahead of du's walk answers every read
// as the plain load does, deeper than the walk's limit included (what it
// did not read, the load reads), and reads each descriptor once.
func TestReadAheadChildren(t *testing.T) {
	desc := func(i int) v1.Descriptor {
		return v1.Descriptor{MediaType: v1.MediaTypeImageIndex, Digest: digest.FromString(fmt.Sprint(i)), Size: int64(100 + i)}
	}
	const n = layout.MaxDepth + 4
	var calls atomic.Int64
	load := func(d v1.Descriptor) (layout.Children, error) {
		calls.Add(1)
		for i := 0; i < n; i++ {
			if desc(i).Digest == d.Digest && desc(i).Size == d.Size {
				return layout.Children{MediaType: d.MediaType, Refs: []v1.Descriptor{desc(i + 1)}}, nil
			}
		}
		return layout.Children{}, fmt.Errorf("unreadable %s", d.Digest)
	}
	// Roots 0 and 2 of the chain 0 -> 1 -> ... -> n-1, and an unreadable
	// one. Level k reads k and k+2: the last level, MaxDepth, reads
	// MaxDepth+2 and leaves MaxDepth+3 queued but not read.
	images := []usageImage{{desc: desc(0)}, {desc: desc(2)}, {desc: desc(0), repo: 1}, {desc: desc(n + 5)}}
	ra := readAheadChildren(context.Background(), load, images)
	if ahead := calls.Load(); ahead != layout.MaxDepth+4 {
		t.Errorf("read ahead %d descriptors, want %d", ahead, layout.MaxDepth+4)
	}
	before := calls.Load()
	if _, err := ra(desc(n - 1)); err != nil || calls.Load() != before+1 {
		t.Errorf("the descriptor queued at the last level and not read was not read by the load: %v", err)
	}
	for _, i := range append([]int{n + 5}, seq(n)...) {
		want, werr := load(desc(i))
		got, gerr := ra(desc(i))
		if fmt.Sprint(got, gerr) != fmt.Sprint(want, werr) {
			t.Errorf("descriptor %d: read ahead %v %v, load %v %v", i, got, gerr, want, werr)
		}
	}
	// Another size of a digest read ahead is read again, as the walk would.
	other := desc(1)
	other.Size++
	before = calls.Load()
	if _, err := ra(other); err == nil || calls.Load() != before+1 {
		t.Errorf("a descriptor with another size was answered from the read-ahead: %v", err)
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
