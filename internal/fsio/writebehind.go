package fsio

import (
	"io"

	"golang.org/x/sys/unix"
)

// WriteBehindEvery is how many bytes a WriteBehind writer lets pile up in
// the page cache before it asks the kernel to start writing them out.
const WriteBehindEvery = 8 << 20

// WriteBehind returns f as an io.Writer that, each time WriteBehindEvery
// more bytes have been written, asks the kernel to start writing those to
// the disk (sync_file_range(2), SYNC_FILE_RANGE_WRITE: it queues the
// writeback and returns). Without it, a file smaller than the kernel's
// background dirty threshold (a tenth of memory) goes to the disk only
// when it is fsynced: the disk idles while the data is produced (a blob
// hashed and written as it comes), then the fsync waits for all of it.
// With it, the disk writes while the data is still being produced, and the
// fsync finds most of it written.
//
// It makes nothing durable by itself (no metadata, no flush of the
// device's cache): the fsync that must follow still does. A TempFile that
// is not a file of the operating system's (a test file system) is returned
// as it is, and a file system that refuses the call is not asked again.
func WriteBehind(f TempFile) io.Writer {
	var fd uintptr
	switch t := f.(type) {
	case osTemp:
		fd = t.Fd()
	case sharedTemp:
		o, ok := t.TempFile.(osTemp)
		if !ok {
			return f
		}
		fd = o.Fd()
	default:
		return f
	}
	return &writeBehind{f: f, fd: int(fd)}
}

type writeBehind struct {
	f                TempFile
	fd               int
	written, started int64 // bytes written; those whose writeback was started
	off              bool  // the file system refused: not asked again
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if !w.off && w.written-w.started >= WriteBehindEvery {
		if unix.SyncFileRange(w.fd, w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE) != nil {
			w.off = true
		}
		w.started = w.written
	}
	return n, err
}
