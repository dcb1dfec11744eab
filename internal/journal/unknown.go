package journal

import (
	"encoding/binary"

	"github.com/opencontainers/go-digest"
)

// Unknown closures (schema v4; "unknown means pinned", DESIGN.md §8.2).
//
// A manifest or index that is live but whose children could not be read
// when it was counted (too large, unreadable, malformed, nested too deep)
// has a closure nobody knows: any blob of the layout could be in it. Its
// Ref carries the reason (Ref.Unknown), and meta "unknown-refs" counts
// such Refs, so that whoever is about to free a blob asks one key whether
// it may (UnknownRefs): while the count is above zero, nothing is freed.
//
// The count is written by a recount (ReplaceRefs) and kept by PutRef from
// then on. A database upgraded from version 3 has no count yet: its refs
// may hold manifests that an older build left unexpanded without saying
// why, so UnknownCounted is false until the store recounts.

var kUnknownRefs = []byte("unknown-refs")

// UnknownCounted reports whether the count of unknown closures is kept
// (false after an upgrade from version 3, until a recount).
func (t *Tx) UnknownCounted() bool {
	return len(t.tx.Bucket(bMeta).Get(kUnknownRefs)) == 8
}

// UnknownRefs is the number of live Refs whose closure is unknown, with
// this transaction's changes. A database whose count is not kept yet
// (UnknownCounted false) answers 1: not known to be none.
func (t *Tx) UnknownRefs() uint64 {
	v := t.tx.Bucket(bMeta).Get(kUnknownRefs)
	if len(v) != 8 {
		return 1
	}
	n := int64(binary.BigEndian.Uint64(v)) + t.unknownDelta
	if n < 0 {
		return 1 // a count out of step: not known to be none
	}
	return uint64(n)
}

// UnknownClosures returns every live Ref whose closure is unknown, with
// its reason. It walks the refcounts: for reports, not for transactions.
func (t *Tx) UnknownClosures() (map[digest.Digest]string, error) {
	out := map[digest.Digest]string{}
	err := t.ForEachRef(func(d digest.Digest, r Ref) error {
		if r.Count > 0 && r.Unknown != "" {
			out[d] = r.Unknown
		}
		return nil
	})
	return out, err
}

// unknownOf is 1 for a live Ref whose closure is unknown, else 0.
func unknownOf(r Ref) int64 {
	if r.Count > 0 && r.Unknown != "" {
		return 1
	}
	return 0
}

// flushUnknown stores the change of the count, when it is kept.
func (t *Tx) flushUnknown() error {
	if t.unknownDelta == 0 {
		return nil
	}
	m := t.tx.Bucket(bMeta)
	v := m.Get(kUnknownRefs)
	t.unknownDelta, v = 0, binaryAdd(v, t.unknownDelta)
	if v == nil {
		return nil // not kept yet: the next recount writes it
	}
	return m.Put(kUnknownRefs, v)
}

func binaryAdd(v []byte, delta int64) []byte {
	if len(v) != 8 {
		return nil
	}
	n := max(int64(binary.BigEndian.Uint64(v))+delta, 0)
	return u64(uint64(n))
}
