package journal

import (
	_ "crypto/sha512" // Decode validates sha384 and sha512 digests: go-digest needs them registered
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"slices"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
)

// RecordVersion is the encoding version of Record.
const RecordVersion = 1

// Record is one planned transaction (step 2 of the protocol, DESIGN.md
// §4.2): everything needed to finish it, or to know that it must be
// dropped, after a crash (the recovery table, DESIGN.md §5.2). Its stored
// form is DESIGN.md §7.2.
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
	out := make([]byte, 5, 5+256+(len(r.Unlink)+len(r.Deltas))*80)
	out[0] = RecordVersion
	out = r.appendJSON(out)
	binary.BigEndian.PutUint32(out[1:5], crc32.Checksum(out[5:], castagnoli))
	return out
}

// appendJSON appends the JSON of r that encoding/json would write (the
// same bytes: TestRecordJSON), without its reflection: a prune's record
// lists about 10,000 digests to unlink and 20,000 deltas, and
// encoding/json's reflection and sorting of the map's keys were a visible
// part of a prune's commit (figures: BENCHMARKS.md, "Figures behind design
// choices"). Digests whose characters need no escaping (every valid one)
// are copied as they are; any other string goes through encoding/json.
func (r *Record) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendUint(b, r.ID, 10)
	b = append(b, `,"op":`...)
	b = appendJSONString(b, r.Op)
	b = append(b, `,"time":`...)
	t, err := r.Time.MarshalJSON()
	if err != nil {
		panic(err) // a year outside [0,9999]: records are stamped with the clock
	}
	b = append(b, t...)
	b = append(b, `,"oldIndex":`...)
	b = appendJSONString(b, string(r.OldIndex))
	b = append(b, `,"newIndex":`...)
	b = appendJSONString(b, string(r.NewIndex))
	if len(r.Unlink) > 0 {
		b = append(b, `,"unlink":[`...)
		for i, d := range r.Unlink {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, string(d))
		}
		b = append(b, ']')
	}
	if len(r.Deltas) > 0 {
		keys := make([]string, 0, len(r.Deltas))
		for d := range r.Deltas {
			keys = append(keys, string(d))
		}
		slices.Sort(keys)
		b = append(b, `,"deltas":{`...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = strconv.AppendInt(b, r.Deltas[digest.Digest(k)], 10)
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendJSONString appends s as encoding/json writes a string.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, err := json.Marshal(s)
			if err != nil {
				panic(err) // a string always encodes
			}
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
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
