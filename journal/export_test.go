package journal

import "github.com/opencontainers/go-digest"

// EncodeImageForTest and DecodeImageForTest expose the image metadata
// encoding to the tests.
func EncodeImageForTest(m ImageMeta) []byte { return encodeImage(m) }

func DecodeImageForTest(b []byte) (ImageMeta, error) {
	return decodeImage(digest.FromString("test"), b)
}

// StoredIndexSizes is the size of each value of the indexes bucket.
func StoredIndexSizes(t interface{ Fatal(...any) }, db *DB) map[digest.Digest]int {
	out := map[digest.Digest]int{}
	err := db.View(func(tx *Tx) error {
		return tx.tx.Bucket(bIndexes).ForEach(func(k, v []byte) error {
			out[digest.Digest(k)] = len(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// DropStoredIndex deletes one value of the indexes bucket (damage).
func DropStoredIndex(t interface{ Fatal(...any) }, db *DB, d digest.Digest) {
	if err := db.Update(func(tx *Tx) error { return tx.tx.Bucket(bIndexes).Delete([]byte(d)) }); err != nil {
		t.Fatal(err)
	}
}
