package journal

import (
	_ "crypto/sha512" // Decode validates sha384 and sha512 digests: go-digest needs them registered
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
)

// RecordVersion is the encoding version of Record.
const RecordVersion = 1

// Record is one planned transaction (DESIGN.md §3 step 2): everything needed
// to finish it, or to know that it must be dropped, after a crash.
type Record struct {
	ID       uint64          `json:"id"`
	Op       string          `json:"op"`
	Time     time.Time       `json:"time"`
	OldIndex digest.Digest   `json:"oldIndex"` // index.json digest when planned
	NewIndex digest.Digest   `json:"newIndex"` // digest of the new bytes, stored in indexes/
	Unlink   []digest.Digest `json:"unlink,omitempty"`
	// Deltas are the refcount changes applied with the record, for audit and
	// for `ocistore journal`; recovery recounts rather than trusting them.
	Deltas map[digest.Digest]int64 `json:"deltas,omitempty"`
}

// Encode gives the stored form: one version byte, the CRC-32C of the
// payload (big endian), then the JSON payload.
func (r *Record) Encode() []byte {
	p, err := json.Marshal(r)
	if err != nil {
		panic(err) // only digests, strings, ints and a time: cannot fail
	}
	out := make([]byte, 5, 5+len(p))
	out[0] = RecordVersion
	binary.BigEndian.PutUint32(out[1:5], crc32.Checksum(p, castagnoli))
	return append(out, p...)
}

// Decode parses a stored record. A wrong version, a bad checksum or a
// malformed payload gives an error wrapping errdef.ErrCorrupt; it never panics.
func Decode(b []byte) (*Record, error) {
	if len(b) < 5 {
		return nil, fmt.Errorf("record of %d bytes: %w", len(b), errdef.ErrCorrupt)
	}
	if b[0] != RecordVersion {
		return nil, fmt.Errorf("record version %d, want %d: %w", b[0], RecordVersion, errdef.ErrCorrupt)
	}
	p := b[5:]
	if crc32.Checksum(p, castagnoli) != binary.BigEndian.Uint32(b[1:5]) {
		return nil, fmt.Errorf("record checksum mismatch: %w", errdef.ErrCorrupt)
	}
	var r Record
	if err := json.Unmarshal(p, &r); err != nil {
		return nil, fmt.Errorf("record payload: %w: %v", errdef.ErrCorrupt, err)
	}
	for _, d := range append([]digest.Digest{r.NewIndex}, r.Unlink...) {
		if d.Validate() != nil {
			return nil, fmt.Errorf("record %d: digest %q: %w", r.ID, string(d), errdef.ErrCorrupt)
		}
	}
	if r.OldIndex != "" && r.OldIndex.Validate() != nil {
		return nil, fmt.Errorf("record %d: old index digest %q: %w", r.ID, string(r.OldIndex), errdef.ErrCorrupt)
	}
	return &r, nil
}
