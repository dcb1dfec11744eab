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
		ib := copies{tx.tx.Bucket(bIndexes)}
		return ib.b.ForEach(func(k, _ []byte) error {
			out[digest.Digest(k)] = len(ib.get(k))
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
	if err := db.Update(func(tx *Tx) error { return copies{tx.tx.Bucket(bIndexes)}.drop([]byte(d)) }); err != nil {
		t.Fatal(err)
	}
}

// StoredInBucket reports whether d's copy is stored in a bucket of its own.
func StoredInBucket(t interface{ Fatal(...any) }, db *DB, d digest.Digest) bool {
	in := false
	if err := db.View(func(tx *Tx) error { in = tx.tx.Bucket(bIndexes).Bucket([]byte(d)) != nil; return nil }); err != nil {
		t.Fatal(err)
	}
	return in
}

// PageAllocBytes is how many bytes of pages bbolt has allocated for
// commits since the database was opened.
func PageAllocBytes(db *DB) int64 { st := db.bolt.Stats(); return st.TxStats.GetPageAlloc() }
