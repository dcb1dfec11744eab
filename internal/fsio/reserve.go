package fsio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The space reserve (a ballast file, as CockroachDB keeps one; see
// DESIGN.md §13): a file of real, allocated blocks next to the journal that
// holds back enough space for the transactions that free space to run on a
// full file system. When the file system is full, everything ocistore
// writes fails: the journal (bbolt grows its file with ftruncate, a sparse
// extension, so a commit that writes a page past the last one written needs
// a new block and fails its write with ENOSPC), the temp file of the new
// index.json, the trash directory. Unlinking the reserve gives those writes
// their space back; the store makes it again once the space is free (see
// package store).
//
// The reserve holds no data: it needs no fsync for what it holds, only for
// its blocks and its name to survive a crash, and a failure to make or
// release it is never a durability failure (a lost reserve is made again
// by the next open).

// ReserveFile is the reserve, relative to the layout root (with a shared
// blob directory, in that directory's state directory, next to the
// journal).
const ReserveFile = stateDir + "/reserve"

// ReserveMin is the smallest reserve a store makes.
const ReserveMin = 4 << 20

// Reserver is implemented by file systems that can hold a reserve.
type Reserver interface {
	// Allocate makes name, a regular file (created when missing, never
	// through a symlink), at least size bytes long with every block
	// allocated, and syncs it. It returns the bytes allocated before and
	// after. When the space is not there it leaves the file as it was
	// (a file it created is removed) and returns the error (ENOSPC).
	Allocate(name string, size int64) (before, after int64, err error)
	// Avail returns the bytes of the file system holding dir that this
	// process may still write (statfs: f_bavail).
	Avail(dir string) (int64, error)
}

var reserveOff, availOff atomic.Bool

// DisableReserve turns MakeReserve into a no-op (tests: the full-disk test
// builds a binary without a reserve to show that it fails then).
func DisableReserve() { reserveOff.Store(true) }

// DisableAvailable makes Available say that it cannot tell (tests: the
// full-disk test builds a binary that meets ENOSPC before it releases the
// reserve, to take the path of a file system whose statfs does not tell,
// as one over its quota).
func DisableAvailable() { availOff.Store(true) }

// errNoReserve: the file system cannot hold a reserve, or it is turned off.
var errNoReserve = fmt.Errorf("no space reserve on this file system: %w", errors.ErrUnsupported)

// MakeReserve makes the reserve hold at least size allocated bytes: it
// creates it, or grows it, and syncs it and, when it created it, the state
// directory. It reports whether it changed anything. On a file system
// that has not the space, the reserve is left as it was and the error
// wraps ENOSPC (see NoSpace); on one that cannot hold a reserve (an
// in-memory test file system) the error wraps errors.ErrUnsupported.
func MakeReserve(fsys FS, size int64) (bool, error) {
	r, ok := fsys.(Reserver)
	if !ok || reserveOff.Load() {
		return false, errNoReserve
	}
	before, after, err := r.Allocate(ReserveFile, size)
	if err != nil {
		return false, fmt.Errorf("space reserve %s: %w", ReserveFile, err)
	}
	if before == 0 && after > 0 {
		if err := fsys.SyncDir(Dir(ReserveFile)); err != nil {
			return true, fmt.Errorf("space reserve %s: sync %s: %w", ReserveFile, Dir(ReserveFile), err)
		}
	}
	return after != before, nil
}

// ReserveBytes returns the bytes allocated to the reserve: 0 when there is
// none (or what has its name is not a regular file).
func ReserveBytes(fsys FS) int64 {
	fi, err := fsys.Lstat(ReserveFile)
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	return allocated(fi)
}

// ReleaseReserve unlinks the reserve and syncs the state directory (which
// also commits the file system's journal, so that the blocks are free for
// the next write), and returns how many bytes it held (0: there was none).
// What has the reserve's name but is not a regular file is left alone.
func ReleaseReserve(fsys FS) (int64, error) {
	fi, err := fsys.Lstat(ReserveFile)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, nil
	}
	held := allocated(fi)
	if err := fsys.Remove(ReserveFile); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	if err := fsys.SyncDir(Dir(ReserveFile)); err != nil {
		return held, fmt.Errorf("release %s: sync %s: %w", ReserveFile, Dir(ReserveFile), err)
	}
	return held, nil
}

// Available returns the bytes this process may still write in the file
// system that holds the state directory; ok is false when fsys cannot tell.
func Available(fsys FS) (n int64, ok bool) {
	r, is := fsys.(Reserver)
	if !is || availOff.Load() {
		return 0, false
	}
	n, err := r.Avail(stateDir)
	return n, err == nil
}

// NoSpace reports whether err is a file system out of space or over quota
// (ENOSPC, EDQUOT).
func NoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// NoSpaceOnWrite reports whether err is a write (not an fsync) that failed
// for want of space: the data never reached the page cache, so, unlike a
// failed fsync, it leaves nothing behind that a later read could take for
// durable (a bbolt commit that fails so leaves the journal as it was: its
// meta pages are written last, over blocks that are always allocated).
func NoSpaceOnWrite(err error) bool {
	var pe *fs.PathError
	return NoSpace(err) && errors.As(err, &pe) && pe.Op == "write"
}

func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Allocate implements Reserver for the OS file system. The file is opened
// with O_NOFOLLOW in its directory, opened through the root: a symlink in
// its place is refused, never followed.
func (o *OS) Allocate(name string, size int64) (before, after int64, err error) {
	dir, base := path.Split(name)
	if !singleElement(base) {
		return 0, 0, &fs.PathError{Op: "allocate", Path: name, Err: fs.ErrInvalid}
	}
	if dir == "" {
		dir = "."
	}
	d, err := o.root.Open(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return 0, 0, err
	}
	fd, err := unix.Openat(int(d.Fd()), base, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	d.Close()
	if err != nil {
		return 0, 0, &fs.PathError{Op: "openat", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, 0, &fs.PathError{Op: "allocate", Path: name, Err: ErrNotRegular}
	}
	before = allocated(fi)
	oldSize := fi.Size()
	if before >= size && oldSize >= size {
		return before, before, nil
	}
	undo := func(cause error) error {
		// Give back whatever was allocated: truncating to the old size
		// frees every block past it; a file this call created goes.
		if oldSize == 0 && before == 0 {
			_ = f.Truncate(0)
			if rerr := o.root.Remove(name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				return errors.Join(cause, rerr)
			}
			return cause
		}
		return errors.Join(cause, f.Truncate(oldSize))
	}
	if err := allocate(f, size); err != nil {
		return before, before, undo(&fs.PathError{Op: "fallocate", Path: name, Err: err})
	}
	if err := f.Sync(); err != nil {
		return before, before, undo(err)
	}
	fi, err = f.Stat()
	if err != nil {
		return before, before, err
	}
	return before, allocated(fi), nil
}

// allocate gives f size bytes of allocated blocks: fallocate, or where the
// file system has none, zeros written over what is past its end.
func allocate(f *os.File, size int64) error {
	var err error = unix.EINTR
	for err == unix.EINTR {
		err = unix.Fallocate(int(f.Fd()), 0, 0, size)
	}
	if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	zeros := make([]byte, 64<<10)
	for off := fi.Size(); off < size; {
		n := min(int64(len(zeros)), size-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// Avail implements Reserver for the OS file system.
func (o *OS) Avail(dir string) (int64, error) {
	d, err := o.root.Open(dir)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &st); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// Allocate routes to the file system that holds name.
func (s *Shared) Allocate(name string, size int64) (int64, int64, error) {
	f, rel := s.route(name)
	r, ok := f.(Reserver)
	if !ok {
		return 0, 0, errNoReserve
	}
	return r.Allocate(rel, size)
}

// Avail routes to the file system that holds dir.
func (s *Shared) Avail(dir string) (int64, error) {
	f, rel := s.route(dir)
	r, ok := f.(Reserver)
	if !ok {
		return 0, errNoReserve
	}
	return r.Avail(rel)
}
