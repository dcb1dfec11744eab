package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/errdef"
)

// Copies of index.json in the indexes bucket (DESIGN.md §7.2) are stored
// whole or as a delta against another stored copy, its base: a transaction
// that changes a few entries of a large index journals a few hundred
// bytes, not the whole file again (at 20,000 images index.json is about
// 5 MB).
//
// A whole copy is the file's bytes; they start with '{' or white space, as
// any JSON document does. A delta starts with deltaTag:
//
//	deltaTag, uvarint depth, uvarint len(base), base digest,
//	uvarint prefix, uvarint suffix, middle bytes
//
// and stands for base[:prefix] + middle + base[len(base)-suffix:]. depth is
// the number of deltas down to a whole copy (1 when the base is whole); a
// chain never grows beyond maxDeltaDepth: the next copy is stored whole.
// Every copy read back is checked against its digest by its reader
// (recovery, repair), so a damaged delta is no copy, never a wrong index.
//
// A whole copy larger than wholeInBucket is stored in a bucket of its own
// (v3), under the key "v": bbolt rewrites a leaf page with every value it
// holds whenever one key of it changes, and keeps at least two keys in a
// leaf, so a 5 MB copy stored as a plain value beside the deltas would be
// written again by every transaction that adds or drops a delta next to
// it. In a bucket of its own, only its parent's small leaf is rewritten.
const (
	deltaTag      = 0x01
	maxDeltaDepth = 16
)

// wholeInBucket is the size above which a whole copy gets its own bucket.
const wholeInBucket = 16 << 10

var kWhole = []byte("v")

// copies is the indexes bucket: values or, for large whole copies, buckets.
type copies struct{ b *bolt.Bucket }

// get returns the stored value of d's copy (whole bytes or a delta), nil
// when there is none.
func (c copies) get(k []byte) []byte {
	if sub := c.b.Bucket(k); sub != nil {
		return sub.Get(kWhole)
	}
	return c.b.Get(k)
}

// has reports whether a copy of k is stored.
func (c copies) has(k []byte) bool { return c.b.Bucket(k) != nil || c.b.Get(k) != nil }

// put stores v as k's copy.
func (c copies) put(k, v []byte) error {
	if _, isDelta, _ := decodeDelta(v); isDelta || len(v) <= wholeInBucket {
		return c.b.Put(k, v)
	}
	sub, err := c.b.CreateBucket(k)
	if err != nil {
		return err
	}
	return sub.Put(kWhole, v)
}

// drop removes k's copy.
func (c copies) drop(k []byte) error {
	if c.b.Bucket(k) != nil {
		return c.b.DeleteBucket(k)
	}
	return c.b.Delete(k)
}

// delta is a decoded delta value.
type delta struct {
	depth          int
	base           digest.Digest
	prefix, suffix int
	middle         []byte
}

func (d *delta) encode() []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(d.base)+len(d.middle))
	b = append(b, deltaTag)
	b = binary.AppendUvarint(b, uint64(d.depth))
	b = binary.AppendUvarint(b, uint64(len(d.base)))
	b = append(b, d.base...)
	b = binary.AppendUvarint(b, uint64(d.prefix))
	b = binary.AppendUvarint(b, uint64(d.suffix))
	return append(b, d.middle...)
}

// decodeDelta decodes v; ok is false when v is a whole copy.
func decodeDelta(v []byte) (d delta, ok bool, err error) {
	if len(v) == 0 || v[0] != deltaTag {
		return delta{}, false, nil
	}
	r := v[1:]
	next := func() (uint64, bool) {
		x, n := binary.Uvarint(r)
		if n <= 0 {
			return 0, false
		}
		r = r[n:]
		return x, true
	}
	depth, ok1 := next()
	n, ok2 := next()
	if !ok1 || !ok2 || n > uint64(len(r)) || depth == 0 || depth > maxDeltaDepth {
		return delta{}, true, fmt.Errorf("index delta header: %w", errdef.ErrCorrupt)
	}
	d.depth, d.base, r = int(depth), digest.Digest(r[:n]), r[n:]
	p, ok1 := next()
	s, ok2 := next()
	if !ok1 || !ok2 || p > 1<<40 || s > 1<<40 {
		return delta{}, true, fmt.Errorf("index delta lengths: %w", errdef.ErrCorrupt)
	}
	d.prefix, d.suffix, d.middle = int(p), int(s), r
	return d, true, nil
}

// resolveIndex returns the whole bytes of the copy of d, following deltas
// through get (a bucket's Get); nil when there is no such copy or the chain
// is broken.
func resolveIndex(get func([]byte) []byte, d digest.Digest) ([]byte, error) {
	v := get([]byte(d))
	if v == nil {
		return nil, nil
	}
	var chain []delta
	for {
		dl, isDelta, err := decodeDelta(v)
		if err != nil {
			return nil, fmt.Errorf("stored index %s: %w", d, err)
		}
		if !isDelta {
			break
		}
		if len(chain) >= maxDeltaDepth {
			return nil, fmt.Errorf("stored index %s: deltas deeper than %d: %w", d, maxDeltaDepth, errdef.ErrCorrupt)
		}
		chain = append(chain, dl)
		if v = get([]byte(dl.base)); v == nil {
			return nil, fmt.Errorf("stored index %s: base %s missing: %w", d, dl.base, errdef.ErrCorrupt)
		}
	}
	out := bytes.Clone(v)
	for i := len(chain) - 1; i >= 0; i-- {
		dl := chain[i]
		if dl.prefix+dl.suffix > len(out) {
			return nil, fmt.Errorf("stored index %s: delta longer than its base: %w", d, errdef.ErrCorrupt)
		}
		next := make([]byte, 0, dl.prefix+len(dl.middle)+dl.suffix)
		next = append(next, out[:dl.prefix]...)
		next = append(next, dl.middle...)
		out = append(next, out[len(out)-dl.suffix:]...)
	}
	return out, nil
}

// makeDelta returns the value storing b as a delta against base (whose
// whole bytes are baseBytes and whose stored value is baseValue), or b
// itself when a delta would not pay: the chain is at its limit, or the
// bytes that differ are more than a quarter of b.
func makeDelta(b []byte, base digest.Digest, baseBytes, baseValue []byte) []byte {
	depth := 1
	if dl, isDelta, err := decodeDelta(baseValue); err != nil {
		return b
	} else if isDelta {
		depth = dl.depth + 1
	}
	if depth > maxDeltaDepth || len(b) < 4096 {
		return b
	}
	p := commonPrefix(b, baseBytes)
	s := commonSuffix(b[p:], baseBytes[p:])
	middle := b[p : len(b)-s]
	if len(middle) > len(b)/4 {
		return b
	}
	return (&delta{depth: depth, base: base, prefix: p, suffix: s, middle: middle}).encode()
}

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	const chunk = 512
	for i+chunk <= n && bytes.Equal(a[i:i+chunk], b[i:i+chunk]) {
		i += chunk
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// commonSuffix is the length of the longest common suffix of a and b.
func commonSuffix(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	const chunk = 512
	for i+chunk <= n && bytes.Equal(a[len(a)-i-chunk:len(a)-i], b[len(b)-i-chunk:len(b)-i]) {
		i += chunk
	}
	for i < n && a[len(a)-1-i] == b[len(b)-1-i] {
		i++
	}
	return i
}

// deltaBase returns the base of the stored value v, "" for a whole copy.
func deltaBase(v []byte) digest.Digest {
	dl, isDelta, err := decodeDelta(v)
	if err != nil || !isDelta {
		return ""
	}
	return dl.base
}
