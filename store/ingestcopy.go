package store

import (
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// An ingest reads and hashes a blob (the VerifyReader hashes what it
// reads) and writes it to its temp file. Done one after the other on one
// goroutine, the ingest of a large blob costs the hash plus the write;
// ingestCopy runs the write on a second goroutine, a chunk behind the
// hash, so that it costs about the slower of the two. That takes a second
// core: when other ingests of the process run already (a pull's parallel
// blobs), the cores are busy with them, and the copy stays on one
// goroutine.
const (
	// ingestChunk is what the reading goroutine hands to the writing one at
	// a time: large enough that handing over costs little, small enough
	// that the chunk is still in a CPU cache when it is written.
	ingestChunk = 1 << 20
	// ingestPiece is the most it asks of the reader at a time, so that the
	// hash reads bytes just copied in, still in the core's own cache.
	ingestPiece = 32 << 10
	// ingestChunks are in flight per ingest: one being read, the others
	// written or waiting to be.
	ingestChunks = 4
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, ingestChunk); return &b }}

// ingestsInFlight counts the ingest copies of the process running.
var ingestsInFlight atomic.Int32

// ingestCopy copies r to w until r's io.EOF and returns the bytes copied
// and the first error: r's (the copy stops at once, and no more is
// written), or w's (the reading stops at the next chunk). A blob that fits
// in one chunk, or one copied while other ingests run (or on one core),
// is copied on this goroutine alone.
func ingestCopy(w io.Writer, r io.Reader) (int64, error) {
	defer ingestsInFlight.Add(-1)
	if ingestsInFlight.Add(1) > 1 || runtime.GOMAXPROCS(0) < 2 {
		return io.CopyBuffer(onlyWriter{w}, r, make([]byte, ingestPiece))
	}
	first := chunkPool.Get().(*[]byte)
	n, eof, err := fillChunk(r, *first)
	if err != nil || eof {
		var written int
		if err == nil && n > 0 {
			written, err = w.Write((*first)[:n])
		}
		chunkPool.Put(first)
		return int64(written), err
	}

	full := make(chan []byte, ingestChunks)
	free := make(chan *[]byte, ingestChunks)
	for range ingestChunks - 1 {
		free <- chunkPool.Get().(*[]byte)
	}
	var (
		written int64
		werr    error
		failed  = make(chan struct{}) // closed when a write fails
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		for c := range full {
			if werr == nil {
				var m int
				m, werr = writePieces(w, c)
				written += int64(m)
				if werr != nil {
					close(failed)
				}
			}
			c = c[:cap(c)]
			free <- &c
		}
	}()

	cur := first
	for {
		full <- (*cur)[:n]
		if eof {
			break
		}
		select {
		case <-failed:
		case cur = <-free:
		}
		select {
		case <-failed:
			err = errWriterFailed
		default:
			n, eof, err = fillChunk(r, *cur)
		}
		if err != nil {
			break
		}
	}
	close(full)
	<-done
	for len(free) > 0 {
		chunkPool.Put(<-free)
	}
	if err == nil || errors.Is(err, errWriterFailed) {
		err = werr
	}
	return written, err
}

// onlyWriter hides a writer's ReadFrom, so that io.CopyBuffer uses its
// buffer.
type onlyWriter struct{ io.Writer }

// errWriterFailed stops the reading once the writer has failed; the
// writer's error is returned.
var errWriterFailed = errors.New("ingest: write failed")

// fillChunk reads r into b, at most ingestPiece bytes a read, until b is
// full or r ends: it returns the bytes read, whether r ended (io.EOF), and
// r's error otherwise.
func fillChunk(r io.Reader, b []byte) (n int, eof bool, err error) {
	for n < len(b) {
		m, err := r.Read(b[n:min(n+ingestPiece, len(b))])
		n += m
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// writePieces writes b to w, ingestPiece bytes at a time.
func writePieces(w io.Writer, b []byte) (int, error) {
	written := 0
	for written < len(b) {
		m, err := w.Write(b[written:min(written+ingestPiece, len(b))])
		written += m
		if err != nil {
			return written, err
		}
	}
	return written, nil
}
