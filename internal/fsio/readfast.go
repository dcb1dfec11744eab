package fsio

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ocistore/ocistore/internal/errdef"
)

// The read path of a layout opens the same few directories (blobs/<alg>,
// the root) for every file it reads: a manifest read through os.Root walks
// each element of the path (an openat and a close per element), and an
// *os.File registers with the runtime's poller and reads in growing steps.
// A layout of 100,000 images has 200,000 manifests and configs to read at
// its adoption, and a server reads them on every request, so the OS file
// system keeps each directory it reads from open (readDirs) and reads a
// small whole file with plain system calls: openat in the directory,
// fstat, one read of the known size, close.

// readDirs caches directories opened through the root, for reads only.
// A cached directory that another tool replaces (renamed away, made anew)
// would keep answering for the old one: a name not found in it is looked
// up once more through the root, and the cache then holds the directory
// the path names now. Replaced handles stay open until Close, since a
// concurrent reader may still be using them.
type readDirs struct {
	mu    sync.Mutex
	dirs  map[string]*os.File
	stale []*os.File
}

// get returns the cached directory dir ("." for the root), opening it
// through the root the first time.
func (o *OS) readDir(dir string) (*os.File, error) {
	o.rd.mu.Lock()
	defer o.rd.mu.Unlock()
	if d, ok := o.rd.dirs[dir]; ok {
		return d, nil
	}
	d, err := o.root.Open(dir)
	if err != nil {
		return nil, err
	}
	if o.rd.dirs == nil {
		o.rd.dirs = map[string]*os.File{}
	}
	o.rd.dirs[dir] = d
	return d, nil
}

// refreshDir replaces the cached handle old of dir by a fresh open through
// the root, when the path names another directory now (or none). It
// reports whether a retry may find what old did not.
func (o *OS) refreshDir(dir string, old *os.File) bool {
	fresh, err := o.root.Open(dir)
	if err != nil {
		return false
	}
	if same(old, fresh) {
		fresh.Close()
		return false
	}
	o.rd.mu.Lock()
	defer o.rd.mu.Unlock()
	if cur := o.rd.dirs[dir]; cur == old {
		o.rd.dirs[dir] = fresh
		o.rd.stale = append(o.rd.stale, old)
	} else {
		fresh.Close() // another reader refreshed it first
	}
	return true
}

func same(a, b *os.File) bool {
	x, err1 := a.Stat()
	y, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(x, y)
}

func (o *OS) closeReadDirs() {
	o.rd.mu.Lock()
	defer o.rd.mu.Unlock()
	for _, d := range o.rd.dirs {
		d.Close()
	}
	for _, d := range o.rd.stale {
		d.Close()
	}
	o.rd.dirs, o.rd.stale = nil, nil
}

// splitName splits a relative path into its directory ("." for the root)
// and its last element, refusing an empty, "." or ".." last element.
func splitName(op, name string) (string, string, error) {
	dir, base := path.Split(name)
	if base == "" || base == "." || base == ".." {
		return "", "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	if dir == "" {
		return ".", base, nil
	}
	return strings.TrimSuffix(dir, "/"), base, nil
}

// openRead opens the regular file name for reading in its cached
// directory, as openAt does (no final symlink, no blocking on a FIFO), and
// returns the raw descriptor with its stat.
func (o *OS) openRead(name string) (int, *syscall.Stat_t, error) {
	dir, base, err := splitName("open", name)
	if err != nil {
		return -1, nil, err
	}
	d, err := o.readDir(dir)
	if err != nil {
		return -1, nil, err
	}
	fd, err := openatRetry(d, base)
	if err == syscall.ENOENT && o.refreshDir(dir, d) {
		if d, err = o.readDir(dir); err != nil {
			return -1, nil, err
		}
		fd, err = openatRetry(d, base)
	}
	if err != nil {
		return -1, nil, openErr(name, err)
	}
	var st syscall.Stat_t
	if err := fstatRetry(fd, &st); err != nil {
		syscall.Close(fd)
		return -1, nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		syscall.Close(fd)
		return -1, nil, &fs.PathError{Op: "open", Path: name, Err: ErrNotRegular}
	}
	return fd, &st, nil
}

func openatRetry(d *os.File, base string) (int, error) {
	for {
		fd, err := syscall.Openat(int(d.Fd()), base, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

func fstatRetry(fd int, st *syscall.Stat_t) error {
	for {
		if err := syscall.Fstat(fd, st); err != syscall.EINTR {
			return err
		}
	}
}

// openErr is the error of a failed openat of name, as openAt reports it.
func openErr(name string, err error) error {
	switch err {
	case syscall.ELOOP:
		return &fs.PathError{Op: "open", Path: name, Err: errSymlink}
	case syscall.EISDIR:
		return &fs.PathError{Op: "open", Path: name, Err: ErrNotRegular}
	}
	return &fs.PathError{Op: "openat", Path: name, Err: err}
}

// readFile is ReadFile on the OS file system: the file's size from fstat,
// then reads until end of file into a buffer of that size (one read for a
// file that does not change meanwhile), never past limit.
func (o *OS) readFile(name string, limit int64) ([]byte, error) {
	fd, st, err := o.openRead(name)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	if st.Size > limit {
		return nil, fmt.Errorf("%s is %d bytes, limit %d: %w", name, st.Size, limit, errdef.ErrTooLarge)
	}
	// One byte more than the size, so that the read that fills the file's
	// bytes is followed by one that sees the end in the same buffer.
	b := make([]byte, 0, st.Size+1)
	for {
		if len(b) == cap(b) {
			if int64(len(b)) > limit {
				break
			}
			b = append(b, 0)[:len(b)] // grow: the file is growing
		}
		n, err := syscall.Read(fd, b[len(b):cap(b)])
		if err == syscall.EINTR || err == syscall.EAGAIN {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: name, Err: err}
		}
		if n == 0 {
			break
		}
		b = b[:len(b)+n]
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s grew past limit %d: %w", name, limit, errdef.ErrTooLarge)
	}
	return b, nil
}

// wholeFileReader is implemented by file systems with a faster way to read
// a whole small file than Open and read (the OS file system).
type wholeFileReader interface {
	readFile(name string, limit int64) ([]byte, error)
}

func (s *Shared) readFile(name string, limit int64) ([]byte, error) {
	f, rel := s.route(name)
	return ReadFile(f, rel, limit)
}

// lstat is Lstat through the kept directory of name: one fstatat, without
// following a final symlink. A name that is not a file in a directory
// ("." the root) goes through the root.
func (o *OS) lstat(name string) (fs.FileInfo, error) {
	dir, base, err := splitName("lstat", name)
	if err != nil {
		return o.root.Lstat(name)
	}
	d, err := o.readDir(dir)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	err = fstatatRetry(d, base, &st)
	if err == syscall.ENOENT && o.refreshDir(dir, d) {
		if d, err = o.readDir(dir); err != nil {
			return nil, err
		}
		err = fstatatRetry(d, base, &st)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	return newFileInfo(base, &st), nil
}

// fstatatRetry is fstatat(2) without following a final symlink. The
// syscall package has no fstatat on Linux; x/sys/unix's Stat_t is the
// same kernel structure as syscall's (the assertion below checks the
// size), which the rest of the package reads (Sys).
func fstatatRetry(d *os.File, base string, st *syscall.Stat_t) error {
	for {
		if err := unix.Fstatat(int(d.Fd()), base, (*unix.Stat_t)(unsafe.Pointer(st)), unix.AT_SYMLINK_NOFOLLOW); err != unix.EINTR {
			return err
		}
	}
}

var _ [unsafe.Sizeof(unix.Stat_t{}) - unsafe.Sizeof(syscall.Stat_t{})]struct{}
var _ [unsafe.Sizeof(syscall.Stat_t{}) - unsafe.Sizeof(unix.Stat_t{})]struct{}

// fileInfo describes a file from its stat, as the os package does (Sys
// is the *syscall.Stat_t).
type fileInfo struct {
	name string
	st   *syscall.Stat_t
	mode fs.FileMode
}

func newFileInfo(name string, st *syscall.Stat_t) fileInfo {
	m := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFBLK:
		m |= fs.ModeDevice
	case syscall.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFDIR:
		m |= fs.ModeDir
	case syscall.S_IFIFO:
		m |= fs.ModeNamedPipe
	case syscall.S_IFLNK:
		m |= fs.ModeSymlink
	case syscall.S_IFSOCK:
		m |= fs.ModeSocket
	}
	if st.Mode&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if st.Mode&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if st.Mode&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return fileInfo{name: name, st: st, mode: m}
}

func (f fileInfo) Name() string       { return f.name }
func (f fileInfo) Size() int64        { return f.st.Size }
func (f fileInfo) Mode() fs.FileMode  { return f.mode }
func (f fileInfo) ModTime() time.Time { return time.Unix(f.st.Mtim.Unix()) }
func (f fileInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fileInfo) Sys() any           { return f.st }
