package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/errdef"
)

// ImageMeta is what the journal keeps about a root manifest of index.json,
// for prune policies: its age, its last use, its labels, and its subject
// when it is an OCI 1.1 referrer.
type ImageMeta struct {
	// FirstSeen is when the store first saw the manifest as a root.
	FirstSeen time.Time `json:"firstSeen"`
	// Created is the config's "created" (or the manifest's
	// org.opencontainers.image.created annotation); zero when unknown.
	Created time.Time `json:"created,omitzero"`
	// LastUsed is the last Resolve or manifest Fetch that was persisted.
	LastUsed time.Time         `json:"lastUsed,omitzero"`
	Subject  digest.Digest     `json:"subject,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// imageMetaVersion is the encoding version of ImageMeta.
const imageMetaVersion = 1

var (
	bImages    = []byte("images")
	bReferrers = []byte("referrers")

	kImagesIndex = []byte("images-index")
	kLiveBytes   = []byte("live-bytes")
)

// Stored form: version byte, flag byte (1: Created set, 2: LastUsed set),
// varint Unix nanoseconds of FirstSeen (then Created, LastUsed when set),
// uvarint-length-prefixed Subject, uvarint label count, then each label's
// key and value, length-prefixed, in key order.
func encodeImage(m ImageMeta) []byte {
	b := make([]byte, 0, 40+len(m.Subject))
	var flags byte
	if !m.Created.IsZero() {
		flags |= 1
	}
	if !m.LastUsed.IsZero() {
		flags |= 2
	}
	b = append(b, imageMetaVersion, flags)
	b = binary.AppendVarint(b, m.FirstSeen.UnixNano())
	if flags&1 != 0 {
		b = binary.AppendVarint(b, m.Created.UnixNano())
	}
	if flags&2 != 0 {
		b = binary.AppendVarint(b, m.LastUsed.UnixNano())
	}
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str(string(m.Subject))
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		str(k)
		str(m.Labels[k])
	}
	return b
}

func decodeImage(d digest.Digest, v []byte) (ImageMeta, error) {
	var m ImageMeta
	bad := func() (ImageMeta, error) {
		return ImageMeta{}, fmt.Errorf("image %s: metadata: %w", d, errdef.ErrCorrupt)
	}
	if len(v) < 2 || v[0] != imageMetaVersion || v[1] > 3 {
		return bad()
	}
	flags, p := v[1], v[2:]
	ts := func() (time.Time, bool) {
		n, k := binary.Varint(p)
		if k <= 0 {
			return time.Time{}, false
		}
		p = p[k:]
		return time.Unix(0, n).UTC(), true
	}
	str := func() (string, bool) {
		n, k := binary.Uvarint(p)
		if k <= 0 || n > uint64(len(p)-k) {
			return "", false
		}
		s := string(p[k : k+int(n)])
		p = p[k+int(n):]
		return s, true
	}
	var ok bool
	if m.FirstSeen, ok = ts(); !ok {
		return bad()
	}
	if flags&1 != 0 {
		if m.Created, ok = ts(); !ok {
			return bad()
		}
	}
	if flags&2 != 0 {
		if m.LastUsed, ok = ts(); !ok {
			return bad()
		}
	}
	subject, ok := str()
	if !ok {
		return bad()
	}
	m.Subject = digest.Digest(subject)
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)) {
		return bad()
	}
	p = p[k:]
	for i := uint64(0); i < n; i++ {
		key, ok1 := str()
		val, ok2 := str()
		if !ok1 || !ok2 {
			return bad()
		}
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[key] = val
	}
	if len(p) != 0 {
		return bad()
	}
	return m, nil
}

// GetImage returns the metadata of the root manifest d, and whether there is any.
func (t *Tx) GetImage(d digest.Digest) (ImageMeta, bool, error) {
	b := t.sb(bImages)
	if b == nil {
		return ImageMeta{}, false, nil
	}
	v := b.Get([]byte(d))
	if v == nil {
		return ImageMeta{}, false, nil
	}
	m, err := decodeImage(d, v)
	return m, err == nil, err
}

// FillImages makes this transaction write the images bucket's pages
// full, for a caller that puts many images in key order (an adoption):
// bbolt splits pages at half by default, which an append in key order
// leaves half empty for good (12 MB of 24 at 100,000 images).
func (t *Tx) FillImages() {
	if b := t.sb(bImages); b != nil {
		b.FillPercent = 1.0
	}
}

// PutImage stores the metadata of the root manifest d, and indexes it under
// its subject when it has one. The subject must not change.
func (t *Tx) PutImage(d digest.Digest, m ImageMeta) error {
	b := t.sb(bImages)
	if b == nil {
		return fmt.Errorf("no images bucket: %w", errdef.ErrReadOnly)
	}
	if err := b.Put([]byte(d), encodeImage(m)); err != nil {
		return err
	}
	if m.Subject != "" {
		return t.sb(bReferrers).Put(referrerKey(m.Subject, d), nil)
	}
	return nil
}

// DeleteImage removes the metadata of d and its referrer entry.
func (t *Tx) DeleteImage(d digest.Digest) error {
	m, ok, err := t.GetImage(d)
	if err != nil || !ok {
		return err
	}
	if m.Subject != "" {
		if err := t.sb(bReferrers).Delete(referrerKey(m.Subject, d)); err != nil {
			return err
		}
	}
	return t.sb(bImages).Delete([]byte(d))
}

// ForEachImage calls fn for every image's metadata, in digest order.
func (t *Tx) ForEachImage(fn func(digest.Digest, ImageMeta) error) error {
	b := t.sb(bImages)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		m, err := decodeImage(digest.Digest(k), v)
		if err != nil {
			return err
		}
		return fn(digest.Digest(k), m)
	})
}

func referrerKey(subject, d digest.Digest) []byte {
	return []byte(string(subject) + " " + string(d))
}

// Referrers returns the root manifests whose subject is d.
func (t *Tx) Referrers(d digest.Digest) []digest.Digest {
	b := t.sb(bReferrers)
	if b == nil {
		return nil
	}
	prefix := []byte(string(d) + " ")
	var out []digest.Digest
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		out = append(out, digest.Digest(k[len(prefix):]))
	}
	return out
}

// HasReferrers reports whether any root manifest is a referrer.
func (t *Tx) HasReferrers() bool {
	b := t.sb(bReferrers)
	if b == nil {
		return false
	}
	k, _ := b.Cursor().First()
	return k != nil
}

// ImagesIndex is the digest of the index.json whose roots the images and
// referrers buckets describe, "" when they describe none.
func (t *Tx) ImagesIndex() digest.Digest {
	return digest.Digest(t.sb(bMeta).Get(kImagesIndex))
}

// SetImagesIndex records that the images bucket describes index d.
func (t *Tx) SetImagesIndex(d digest.Digest) error {
	return t.sb(bMeta).Put(kImagesIndex, []byte(d))
}

// LiveBytes is the total size of the blobs whose count is above zero: the
// bytes index.json keeps (foreign layers at their descriptor's size).
func (t *Tx) LiveBytes() (int64, error) {
	v := t.tx.Bucket(bMeta).Get(kLiveBytes)
	if len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v)) + t.liveDelta, nil
	}
	return t.sumRefs() // a read-only open of a database from before it was kept
}

func (t *Tx) sumRefs() (int64, error) {
	var n int64
	err := t.ForEachRef(func(_ digest.Digest, r Ref) error {
		n += r.Size
		return nil
	})
	return n, err
}

// addLiveBytes notes a change of live-bytes; flush stores it before the
// transaction commits (one write, not one per refcount).
func (t *Tx) addLiveBytes(delta int64) {
	t.liveDelta += delta
}

// flush writes what the transaction accumulated: the refcounts, then
// live-bytes.
func (t *Tx) flush() error {
	if err := t.flushRefs(); err != nil {
		return err
	}
	if err := t.flushUnknown(); err != nil {
		return err
	}
	if t.liveDelta == 0 {
		return nil
	}
	n, err := t.LiveBytes()
	if err != nil {
		return err
	}
	t.liveDelta = 0
	return t.tx.Bucket(bMeta).Put(kLiveBytes, i64(n))
}

// initLiveBytes stores the sum of the refcounts' sizes when it is missing
// (a database from before it was kept).
func initLiveBytes(btx *bolt.Tx) error {
	t := &Tx{tx: btx}
	if len(btx.Bucket(bMeta).Get(kLiveBytes)) == 8 {
		return nil
	}
	n, err := t.sumRefs()
	if err != nil {
		return err
	}
	return btx.Bucket(bMeta).Put(kLiveBytes, i64(n))
}
