package journal

import "github.com/opencontainers/go-digest"

// EncodeImageForTest and DecodeImageForTest expose the image metadata
// encoding to the tests.
func EncodeImageForTest(m ImageMeta) []byte { return encodeImage(m) }

func DecodeImageForTest(b []byte) (ImageMeta, error) {
	return decodeImage(digest.FromString("test"), b)
}
