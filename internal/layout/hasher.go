package layout

import (
	"crypto/sha256"
	"encoding"

	"github.com/opencontainers/go-digest"
)

// IndexHasher computes Sum of successive versions of index.json. A
// transaction changes a few entries of a large file, so a version shares a
// long prefix with the one before it: the SHA-256 state is saved every
// hashChunk bytes, and the next version is hashed from the last state saved
// inside the prefix they share. At 20,000 images (4.3 MB) a delete then
// hashes half the file on average instead of all of it.
//
// A hasher is immutable; Sum returns a new one for the bytes it hashed. A
// nil hasher hashes everything.
type IndexHasher struct {
	raw    []byte   // the version last hashed (never written)
	states [][]byte // states[i]: the state after raw[:(i+1)*hashChunk]
}

const hashChunk = 64 << 10

// Sum returns Sum(b), and the hasher for the versions after b. b must never
// be written after (the new hasher keeps it).
func (h *IndexHasher) Sum(b []byte) (digest.Digest, *IndexHasher) {
	next := &IndexHasher{raw: b, states: make([][]byte, 0, len(b)/hashChunk)}
	hh := sha256.New()
	pos := 0
	if h != nil {
		k := min(sharedPrefix(h.raw, b)/hashChunk, len(h.states))
		if k > 0 && hh.(encoding.BinaryUnmarshaler).UnmarshalBinary(h.states[k-1]) == nil {
			next.states = append(next.states, h.states[:k]...)
			pos = k * hashChunk
		} else {
			hh.Reset()
		}
	}
	for ; pos+hashChunk <= len(b); pos += hashChunk {
		hh.Write(b[pos : pos+hashChunk])
		// Only contiguous states are kept (MarshalBinary does not fail
		// for SHA-256; if it did, the states would stop there).
		if st, err := hh.(encoding.BinaryMarshaler).MarshalBinary(); err == nil && len(next.states) == pos/hashChunk {
			next.states = append(next.states, st)
		}
	}
	hh.Write(b[pos:])
	return digest.NewDigestFromBytes(digest.SHA256, hh.Sum(nil)), next
}

// sharedPrefix is the length of the longest common prefix of a and b.
func sharedPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	const step = 4096
	for i+step <= n && string(a[i:i+step]) == string(b[i:i+step]) {
		i += step
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}
