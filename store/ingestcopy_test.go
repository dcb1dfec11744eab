package store

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// pieceReader yields b at most n bytes a read, then err (io.EOF when nil).
type pieceReader struct {
	b     []byte
	n     int
	err   error
	reads int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	r.reads++
	m := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[m:]
	return m, nil
}

// failWriter takes up to limit bytes, then fails.
type failWriter struct {
	bytes.Buffer
	limit int
	err   error
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.Buffer.Len()+len(p) > w.limit {
		return 0, w.err
	}
	return w.Buffer.Write(p)
}

func testBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*131 + i>>11)
	}
	return b
}

// TestIngestCopy: every size around the chunk boundaries, read in pieces
// of every kind, arrives whole and in order, whether the copy runs on two
// goroutines (alone) or on one (another ingest in flight).
func TestIngestCopy(t *testing.T) {
	t.Run("alone", testIngestCopy)
	t.Run("another in flight", func(t *testing.T) {
		ingestsInFlight.Add(1)
		defer ingestsInFlight.Add(-1)
		testIngestCopy(t)
	})
}

func testIngestCopy(t *testing.T) {
	for _, size := range []int{0, 1, ingestPiece, ingestChunk - 1, ingestChunk, ingestChunk + 1, 2 * ingestChunk, ingestChunks*ingestChunk + 12345, 20*ingestChunk + 7} {
		for _, piece := range []int{1 << 30, 4093, ingestPiece, 3 * ingestChunk} {
			data := testBytes(size)
			var out bytes.Buffer
			n, err := ingestCopy(&out, &pieceReader{b: data, n: piece})
			if err != nil || n != int64(size) || !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("size %d, reads of %d: copied %d, %v; equal %v", size, piece, n, err, bytes.Equal(out.Bytes(), data))
			}
		}
	}
}

// TestIngestCopyReadError: a reader that fails part way stops the copy with
// its error; what was written is a prefix of what was read.
func TestIngestCopyReadError(t *testing.T) {
	boom := errors.New("connection reset")
	for _, at := range []int{0, 100, ingestChunk, 7*ingestChunk + 5} {
		data := testBytes(at)
		var out bytes.Buffer
		n, err := ingestCopy(&out, &pieceReader{b: data, n: 5000, err: boom})
		if !errors.Is(err, boom) {
			t.Fatalf("failing at %d: err = %v, want the reader's", at, err)
		}
		if int(n) != out.Len() || !bytes.Equal(out.Bytes(), data[:out.Len()]) {
			t.Fatalf("failing at %d: %d bytes reported, %d written, not a prefix", at, n, out.Len())
		}
	}
}

// TestIngestCopyWriteError: a writer that fails stops the reading soon
// after (the blob is not read to its end), and its error is returned.
func TestIngestCopyWriteError(t *testing.T) {
	boom := errors.New("no space left on device")
	for _, limit := range []int{0, ingestChunk / 2, 3 * ingestChunk} {
		data := testBytes(64 * ingestChunk)
		r := &pieceReader{b: data, n: ingestPiece}
		w := &failWriter{limit: limit, err: boom}
		n, err := ingestCopy(w, r)
		if !errors.Is(err, boom) {
			t.Fatalf("writer failing after %d: err = %v, want the writer's", limit, err)
		}
		if int(n) != w.Len() || n > int64(limit) {
			t.Fatalf("writer failing after %d: %d bytes reported, %d written", limit, n, w.Len())
		}
		if read := len(data) - len(r.b); read > limit+(ingestChunks+1)*ingestChunk {
			t.Errorf("writer failing after %d: %d bytes read on", limit, read)
		}
	}
}
