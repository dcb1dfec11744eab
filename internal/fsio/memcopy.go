package fsio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Copies of a file that another process writes, taken without a lock.
//
// A reader that must never wait for a writer (fsck, du, journal, a dry run)
// reads the journal database from a private copy. The copy lives in an
// anonymous memory file (memfd): it changes no byte of any file system,
// works on a read-only mount, and vanishes with its last descriptor.

// ErrUnstable: every copy of a file saw its head change while it was taken
// (the file's writer committed during each of them).
var ErrUnstable = errors.New("changed while it was copied")

// CopyStable copies the file at path into a new memory file and returns it,
// positioned at its start. The copy is one the file held at a moment: its
// first head bytes are read first, then the rest, then the head again; a
// copy whose head changed meanwhile is taken again, up to tries times.
//
// That is a consistent copy of a file whose writer changes its head last
// in every commit and never rewrites, before its next commit, what the head
// it replaced refers to: bbolt's meta pages (DESIGN.md §17.1).
func CopyStable(path string, head int64, tries int) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	for range max(tries, 1) {
		mem, err := copyOnce(src, head)
		if err == nil {
			return mem, nil
		}
		if !errors.Is(err, ErrUnstable) {
			return nil, fmt.Errorf("copy %s: %w", path, err)
		}
	}
	return nil, fmt.Errorf("copy %s: %w %d times", path, ErrUnstable, max(tries, 1))
}

// CopyLocked copies the file at path into a new memory file under a shared
// lock on it (flock LOCK_SH, the lock bbolt's readers take), waiting for
// its writer up to timeout (negative: not at all) or until ctx ends; the
// lock is released before CopyLocked returns. It is the fallback of a
// reader whose CopyStable saw the writer commit during every copy.
func CopyLocked(ctx context.Context, path string, timeout time.Duration) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(src.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if timeout < 0 || time.Now().After(deadline) {
			return nil, fmt.Errorf("lock %s: %w", path, ErrHeld)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	defer unix.Flock(int(src.Fd()), unix.LOCK_UN) //nolint:errcheck // closing src releases it too
	mem, err := copyOnce(src, 0)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", path, err)
	}
	return mem, nil
}

// Busy reports whether another open file description holds an exclusive
// lock on the file at path (a writer: bbolt's read-write open), without
// waiting and without keeping any lock. A missing file is not busy.
func Busy(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	switch err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); {
	case err == nil:
		return false, nil // closing f drops the lock
	case errors.Is(err, unix.EWOULDBLOCK):
		return true, nil
	default:
		return false, fmt.Errorf("probe the lock of %s: %w", path, err)
	}
}

// copyOnce copies src into a new memory file, checking that its first
// head bytes did not change meanwhile (head 0: no check).
func copyOnce(src *os.File, head int64) (*os.File, error) {
	first := make([]byte, head)
	n, err := src.ReadAt(first, 0)
	if err != nil && err != io.EOF {
		return nil, err
	}
	first = first[:n]
	mem, err := NewMemFile()
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			mem.Close()
		}
	}()
	if _, err := mem.Write(first); err != nil {
		return nil, err
	}
	if _, err := io.Copy(mem, io.NewSectionReader(src, int64(n), 1<<62)); err != nil {
		return nil, err
	}
	if head > 0 {
		again := make([]byte, head)
		m, err := src.ReadAt(again, 0)
		if err != nil && err != io.EOF {
			return nil, err
		}
		if !bytes.Equal(first, again[:m]) {
			return nil, ErrUnstable
		}
	}
	if _, err := mem.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	ok = true
	return mem, nil
}

// NewMemFile is a new, empty anonymous memory file: it changes no file
// system and vanishes with its last descriptor.
func NewMemFile() (*os.File, error) {
	fd, err := unix.MemfdCreate("ocistore-copy", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	return os.NewFile(uintptr(fd), "memfd:ocistore-copy"), nil
}

// CopyToMem copies the whole of src, which no one writes meanwhile (its
// caller holds its lock), into a new memory file, positioned at its start.
func CopyToMem(src *os.File) (*os.File, error) { return copyOnce(src, 0) }

// DupFile is a second descriptor of f's open file description: closing one
// leaves the other open.
func DupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
