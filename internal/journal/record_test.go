package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
)

var (
	dA = digest.FromString("a")
	dB = digest.FromString("b")
	dC = digest.SHA512.FromString("c")
)

func sampleRecords() []Record {
	return []Record{
		{NewIndex: dA},
		{ID: 1, Op: "delete img1,img2", Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), OldIndex: dA, NewIndex: dB},
		{ID: math.MaxUint64, Op: "tag ünïcode ✓", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), OldIndex: dA, NewIndex: dB,
			Unlink: []digest.Digest{dA, dB, dC}, Deltas: map[digest.Digest]int64{dA: -1, dB: 2, dC: math.MinInt64}},
		{ID: 7, Op: "", NewIndex: dC, Unlink: []digest.Digest{}},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for i, r := range sampleRecords() {
		b := r.Encode()
		if b[0] != RecordVersion {
			t.Errorf("%d: version byte %d", i, b[0])
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%d: Decode = %v", i, err)
		}
		want := r
		if len(want.Unlink) == 0 {
			want.Unlink = nil
		}
		if len(got.Unlink) == 0 {
			got.Unlink = nil
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("%d: round trip\n got %+v\nwant %+v", i, *got, want)
		}
		if !bytes.Equal(got.Encode(), b) {
			t.Errorf("%d: encoding is not stable", i)
		}
	}
}

// reseal recomputes the checksum of a record whose payload was changed.
func reseal(b []byte) []byte {
	out := bytes.Clone(b)
	binary.BigEndian.PutUint32(out[1:5], crc32.Checksum(out[5:], castagnoli))
	return out
}

func TestDecodeCorrupt(t *testing.T) {
	r := sampleRecords()[2]
	good := r.Encode()
	type tc struct {
		name string
		b    []byte
	}
	cases := []tc{
		{"nil", nil},
		{"empty", []byte{}},
		{"version only", []byte{RecordVersion}},
		{"header only", good[:5]},
		{"version 0", append([]byte{0}, good[1:]...)},
		{"version 2", append([]byte{2}, good[1:]...)},
		{"version 255", append([]byte{255}, good[1:]...)},
		{"appended byte", append(bytes.Clone(good), '}')},
		{"payload not JSON", reseal(append(bytes.Clone(good[:5]), "not json"...))},
		{"payload JSON array", reseal(append(bytes.Clone(good[:5]), "[]"...))},
		{"bad new index digest", reseal(append(bytes.Clone(good[:5]), `{"id":1,"newIndex":"sha256:zz"}`...))},
		{"no new index", reseal(append(bytes.Clone(good[:5]), `{"id":1}`...))},
		{"bad old index digest", reseal(append(bytes.Clone(good[:5]), `{"id":1,"newIndex":"`+dA.String()+`","oldIndex":"x"}`...))},
		{"escaping unlink digest", reseal(append(bytes.Clone(good[:5]), `{"id":1,"newIndex":"`+dA.String()+`","unlink":["sha256:../../x"]}`...))},
		{"wrong field type", reseal(append(bytes.Clone(good[:5]), `{"id":"one","newIndex":"`+dA.String()+`"}`...))},
	}
	for i := 1; i < 5; i++ {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		cases = append(cases, tc{"checksum byte flipped", b})
	}
	for _, i := range []int{5, 6, len(good) / 2, len(good) - 1} {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		cases = append(cases, tc{"payload byte flipped", b})
	}
	for n := 0; n < len(good); n++ {
		cases = append(cases, tc{"truncated", good[:n]})
	}
	for _, c := range cases {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("%s (%d bytes): Decode panicked: %v", c.name, len(c.b), p)
				}
			}()
			got, err := Decode(c.b)
			if !errors.Is(err, errdef.ErrCorrupt) {
				t.Errorf("%s (%d bytes): Decode = %+v, %v; want ErrCorrupt", c.name, len(c.b), got, err)
			}
		}()
	}
}

func FuzzDecode(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(r.Encode())
	}
	f.Add([]byte{})
	f.Add([]byte{RecordVersion, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			if !errors.Is(err, errdef.ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		again, err := Decode(r.Encode())
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if again.ID != r.ID || again.NewIndex != r.NewIndex || len(again.Unlink) != len(r.Unlink) {
			t.Fatalf("round trip changed the record: %+v -> %+v", r, again)
		}
	})
}

func TestRefEncoding(t *testing.T) {
	for _, r := range []Ref{
		{Count: 1},
		{Count: 1, Size: 0, Expanded: true},
		{Count: 3, Size: 12345, Expanded: true},
		{Count: math.MaxUint64, Size: math.MaxInt64},
		{Count: 127, Size: 128},
		{Count: 1, Size: 9, Expanded: true, Children: []v1.Descriptor{}},
		{Count: 2, Size: 900, Expanded: true, Children: []v1.Descriptor{
			{MediaType: v1.MediaTypeImageConfig, Digest: dA, Size: 0},
			{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.SHA512.FromString("b"), Size: math.MaxInt64},
			{MediaType: "application/x-unknown", Digest: digest.SHA384.FromString("c"), Size: 1 << 40},
			{MediaType: "", Digest: "sha256:ABCDEF", Size: 3},                                                           // not raw-encodable
			{MediaType: v1.MediaTypeImageManifest, Digest: digest.Digest("sha256:" + strings.Repeat("A", 64)), Size: 1}, // upper case stays a string
			{MediaType: v1.MediaTypeImageIndex, Digest: "blake3:" + digest.Digest(strings.Repeat("0", 64)), Size: 5},
		}},
	} {
		b := encodeRef(r)
		got, err := decodeRef(dA, b)
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Errorf("decodeRef(encodeRef(%+v)) = %+v, %v", r, got, err)
		}
	}
	good := encodeRef(Ref{Count: 300, Size: 70000, Expanded: true, Children: []v1.Descriptor{
		{MediaType: "x/y", Digest: dA, Size: 5}, {MediaType: v1.MediaTypeImageConfig, Digest: "other:1", Size: 7},
	}})
	bad := [][]byte{
		nil,
		{},
		{0x80},                               // unterminated count
		{0x01},                               // no size, no flag
		{0x01, 0x05},                         // no flag
		{0x01, 0x05, 0x04},                   // unknown flag
		{0x01, 0x05, 0x02},                   // children flag, no children
		{0x01, 0x05, 0x03, 0x01, 0x7f, 0x01}, // unknown media type code
		{0x01, 0x05, 0x03, 0x01, 0x01, 0x09}, // unknown digest algorithm
		{0x01, 0x05, 0x03, 0xff, 0xff, 0x03}, // more children than bytes
		{0x01, 0x05, 0x03, 0x00, 0x00},       // trailing byte after children
		{0x01, 0x05, 0x00, 0x00},             // trailing byte
		{0x01, 0x80},                         // unterminated size
		bytes.Repeat([]byte{0xff}, 11),       // varint overflow
	}
	for n := 0; n < len(good); n++ {
		bad = append(bad, good[:n])
	}
	for _, b := range bad {
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("decodeRef(%x) panicked: %v", b, p)
				}
			}()
			if r, err := decodeRef(dA, b); !errors.Is(err, errdef.ErrCorrupt) {
				t.Errorf("decodeRef(%x) = %+v, %v; want ErrCorrupt", b, r, err)
			} else if !strings.Contains(err.Error(), dA.String()) {
				t.Errorf("decodeRef error %q does not name the digest", err)
			}
		}()
	}
}

// TestRecordJSON: the hand-written encoding is byte for byte what
// encoding/json writes, for the samples and for random records whose
// strings need every kind of escaping.
func TestRecordJSON(t *testing.T) {
	recs := sampleRecords()
	rng := rand.New(rand.NewPCG(3, 4))
	pieces := []string{"a", "ü", "✓", `"`, `\`, "<", ">", "&", "\x00", "\x1f", "\x7f", "\xff", "\u2028", " ", "img:1"}
	for i := range 200 {
		var op strings.Builder
		for range rng.IntN(6) {
			op.WriteString(pieces[rng.IntN(len(pieces))])
		}
		r := Record{ID: rng.Uint64(), Op: op.String(), Time: time.Unix(rng.Int64N(1<<33), rng.Int64N(1e9)).UTC(),
			OldIndex: digest.FromString(fmt.Sprint("old", i)), NewIndex: digest.FromString(fmt.Sprint("new", i))}
		if i%3 == 0 {
			r.OldIndex = ""
		}
		for j := range rng.IntN(5) {
			r.Unlink = append(r.Unlink, digest.FromString(fmt.Sprint(i, j)))
		}
		if n := rng.IntN(5); n > 0 {
			r.Deltas = map[digest.Digest]int64{}
			for j := range n {
				r.Deltas[digest.SHA512.FromString(fmt.Sprint(i, j))] = rng.Int64() - math.MaxInt64/2
			}
		}
		if i%7 == 0 {
			r.Unlink = append(r.Unlink, digest.Digest(op.String())) // not a digest: escaped like any string
		}
		recs = append(recs, r)
	}
	for i, r := range recs {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.appendJSON(nil); !bytes.Equal(got, want) {
			t.Fatalf("%d: encoding differs from encoding/json\n got %s\nwant %s", i, got, want)
		}
	}
}
