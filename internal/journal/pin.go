package journal

import (
	"encoding/binary"
	"time"
)

var kPinned = []byte("pinned")

// SetPinnedUntil records that the database was rebuilt at since without
// knowing the leases of the one it replaced (DESIGN.md §7.4, §8.2), so
// that nothing may be freed before until (the blobs of a lease that could
// not be read are unknown: any unreferenced blob may be one of them). It
// is in the top-level meta bucket: leases are shared by every layout of a
// shared journal.
func (t *Tx) SetPinnedUntil(since, until time.Time) error {
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, uint64(since.UnixNano()))
	binary.BigEndian.PutUint64(v[8:], uint64(until.UnixNano()))
	return t.tx.Bucket(bMeta).Put(kPinned, v)
}

// PinnedUntil returns what SetPinnedUntil recorded: until when nothing may
// be freed, and when the database was rebuilt. Both are zero when nothing
// was recorded (or the value does not decode: a pin is advisory, and a
// store whose journal lost it frees as before).
func (t *Tx) PinnedUntil() (until, since time.Time) {
	v := t.tx.Bucket(bMeta).Get(kPinned)
	if len(v) != 16 {
		return time.Time{}, time.Time{}
	}
	since = time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC()
	until = time.Unix(0, int64(binary.BigEndian.Uint64(v[8:]))).UTC()
	return until, since
}
