package layout

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestIndexHasher: over chains of versions, each an edit of the one before
// (a cut, an insertion, a change at the start, in the middle, at the end,
// across chunk boundaries), the hasher's digest is Sum's, and it hashes
// only from the last saved state inside the shared prefix.
func TestIndexHasher(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for chain := 0; chain < 20; chain++ {
		b := make([]byte, rng.IntN(6*hashChunk))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		var h *IndexHasher
		for step := 0; step < 15; step++ {
			got, next := h.Sum(b)
			if want := Sum(b); got != want {
				t.Fatalf("chain %d step %d (%d bytes): %s, want %s", chain, step, len(b), got, want)
			}
			if len(next.states) != len(b)/hashChunk {
				t.Fatalf("chain %d step %d: %d states for %d bytes", chain, step, len(next.states), len(b))
			}
			h = next
			b = edit(rng, b)
		}
	}
}

// TestIndexHasherReuses: a change at the end of a large version reuses the
// states saved before it, without reading the bytes they cover.
func TestIndexHasherReuses(t *testing.T) {
	b := bytes.Repeat([]byte("0123456789abcdef"), 5*hashChunk/16+100)
	_, h := (*IndexHasher)(nil).Sum(b)
	b2 := append(bytes.Clone(b[:len(b)-50]), "changed tail"...)
	got, _ := h.Sum(b2)
	if got != Sum(b2) {
		t.Fatalf("wrong digest")
	}
	// A hasher whose saved states were taken over other bytes than the
	// copy it keeps gives a wrong digest for that copy: so it reused them.
	b3 := bytes.Clone(b2)
	b3[10] ^= 1
	h.raw = b3
	if got, _ := h.Sum(b3); got == Sum(b3) {
		t.Errorf("the saved states were not used")
	}
}

func edit(rng *rand.Rand, b []byte) []byte {
	at := 0
	if len(b) > 0 {
		at = rng.IntN(len(b) + 1)
	}
	switch rng.IntN(3) {
	case 0: // cut
		n := min(rng.IntN(3*hashChunk/2), len(b)-at)
		return append(bytes.Clone(b[:at]), b[at+n:]...)
	case 1: // insert
		ins := make([]byte, rng.IntN(hashChunk))
		for i := range ins {
			ins[i] = byte(rng.IntN(256))
		}
		return append(append(bytes.Clone(b[:at]), ins...), b[at:]...)
	default: // change one byte
		out := bytes.Clone(b)
		if at < len(out) {
			out[at] ^= 0x55
		}
		return out
	}
}
