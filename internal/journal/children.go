package journal

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
)

// A Ref of an expanded manifest or index may carry its children (v3;
// DESIGN.md §7.2 and §8.1), so that releasing it reads no blob: the
// digest, size and media type of each descriptor it references, in its
// order. Manifests are content addressed, so what was read from one when
// it became live is what it holds until it dies.
//
// Stored form, after the flag byte (bit 2 set): uvarint count, then per
// child its media type (uvarint code of mediaTypeCodes, 0 for a
// length-prefixed string), its digest (byte algorithm code of
// digestAlgorithms followed by the raw hash, 0 for a length-prefixed
// string), and its size (uvarint).

// mediaTypeCodes are the media types stored as one byte. Part of the stored
// form: only ever appended to.
var mediaTypeCodes = []string{
	"", // 0: a literal string follows
	v1.MediaTypeImageManifest,
	v1.MediaTypeImageIndex,
	v1.MediaTypeImageConfig,
	v1.MediaTypeImageLayer,
	v1.MediaTypeImageLayerGzip,
	v1.MediaTypeImageLayerZstd,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.container.image.v1+json",
	"application/vnd.docker.image.rootfs.diff.tar.gzip",
	v1.MediaTypeEmptyJSON,
}

var mediaTypeCode = func() map[string]uint64 {
	m := make(map[string]uint64, len(mediaTypeCodes))
	for i, mt := range mediaTypeCodes[1:] {
		m[mt] = uint64(i + 1)
	}
	return m
}()

// digestAlgorithms are the digest algorithms stored as raw hashes, by code
// (0: a literal string follows). Part of the stored form.
var digestAlgorithms = []struct {
	name string
	size int
}{
	{},
	{"sha256", 32},
	{"sha512", 64},
	{"sha384", 48},
}

const hexDigits = "0123456789abcdef"

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendChildren(b []byte, kids []v1.Descriptor) []byte {
	b = binary.AppendUvarint(b, uint64(len(kids)))
	for _, k := range kids {
		if c, ok := mediaTypeCode[k.MediaType]; ok {
			b = binary.AppendUvarint(b, c)
		} else {
			b = appendString(append(b, 0), k.MediaType)
		}
		b = appendDigest(b, k.Digest)
		b = binary.AppendUvarint(b, uint64(k.Size))
	}
	return b
}

// appendDigest stores d as its algorithm code and raw hash when it is one of
// digestAlgorithms with lower-case hex of the right length (so that it
// reads back the same string), else as a string.
func appendDigest(b []byte, d digest.Digest) []byte {
	s := string(d)
	for code, a := range digestAlgorithms[1:] {
		n := len(a.name)
		if len(s) != n+1+2*a.size || s[:n] != a.name || s[n] != ':' {
			continue
		}
		out := append(b, byte(code+1))
		hex := s[n+1:]
		for i := 0; i < len(hex); i += 2 {
			hi, lo := unhex(hex[i]), unhex(hex[i+1])
			if hi < 0 || lo < 0 {
				return appendString(append(b, 0), s)
			}
			out = append(out, byte(hi<<4|lo))
		}
		return out
	}
	return appendString(append(b, 0), s)
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	}
	return -1
}

// childReader decodes what appendChildren wrote.
type childReader struct {
	p   []byte
	bad bool
}

func (r *childReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.p)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.p = r.p[n:]
	return v
}

func (r *childReader) bytes(n uint64) []byte {
	if r.bad || n > uint64(len(r.p)) {
		r.bad = true
		return nil
	}
	b := r.p[:n]
	r.p = r.p[n:]
	return b
}

func (r *childReader) children() []v1.Descriptor {
	n := r.uvarint()
	// Each child takes at least 3 bytes: a bound before allocating.
	if r.bad || n > uint64(len(r.p))/3 {
		r.bad = true
		return nil
	}
	kids := make([]v1.Descriptor, n)
	for i := range kids {
		k := &kids[i]
		switch c := r.uvarint(); {
		case r.bad:
			return nil
		case c == 0:
			k.MediaType = string(r.bytes(r.uvarint()))
		case c < uint64(len(mediaTypeCodes)):
			k.MediaType = mediaTypeCodes[c]
		default:
			r.bad = true
			return nil
		}
		alg := r.bytes(1)
		switch {
		case r.bad:
			return nil
		case alg[0] == 0:
			k.Digest = digest.Digest(r.bytes(r.uvarint()))
		case int(alg[0]) < len(digestAlgorithms):
			a := digestAlgorithms[alg[0]]
			raw := r.bytes(uint64(a.size))
			if r.bad {
				return nil
			}
			s := make([]byte, 0, len(a.name)+1+2*a.size)
			s = append(append(s, a.name...), ':')
			for _, c := range raw {
				s = append(s, hexDigits[c>>4], hexDigits[c&15])
			}
			k.Digest = digest.Digest(s)
		default:
			r.bad = true
			return nil
		}
		size := r.uvarint()
		if size > math.MaxInt64 {
			r.bad = true
		}
		k.Size = int64(size)
		if r.bad {
			return nil
		}
	}
	return kids
}

func decodeChildren(d digest.Digest, v []byte) ([]v1.Descriptor, error) {
	r := childReader{p: v}
	kids := r.children()
	if r.bad || len(r.p) != 0 {
		return nil, fmt.Errorf("refcount of %s: children: %w", d, errdef.ErrCorrupt)
	}
	return kids, nil
}
