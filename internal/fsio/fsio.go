// Package fsio owns every file mutation and every fsync that ocistore makes in
// a layout. Nothing else in the project creates, renames, removes or syncs a
// layout file: it calls this package, so the durability rules live here and a
// test file system can stand in for the real one.
//
// # Durability rules
//
// DESIGN.md §3.1 states them with their reasons; the protocol that relies on
// them is DESIGN.md §4.2.
//
//   - A file is published only after its data is synced: temp file in the
//     destination's file system, write, fsync, rename.
//   - A rename or an unlink is durable only after the directory that holds the
//     entry is synced. Callers group their renames and unlinks per directory and
//     call SyncDir once per touched directory.
//   - Any error from Sync is returned as is and must poison the caller's handle:
//     after a failed fsync the kernel may have dropped the dirty pages, and a
//     retried fsync can report success for data that is gone.
//
// All paths are slash-separated and relative to the layout root. The OS file
// system confines every access to the root (os.Root): a symlink or a ".."
// that leads outside the layout is an error, never a read or write outside it
// (DESIGN.md §3.2).
package fsio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/google/renameio/v2"

	"github.com/ocistore/ocistore/internal/crash"
)

// File is a file opened for reading.
type File interface {
	io.Reader
	io.ReaderAt
	io.Closer
	Stat() (fs.FileInfo, error)
}

// TempFile is a new file being written; it becomes visible under its final
// name only through FS.Rename.
type TempFile interface {
	io.Writer
	Name() string // path relative to the root
	Sync() error
	Close() error
}

// FS is the file system a layout lives on. Implementations must be safe for
// concurrent use.
type FS interface {
	// Root returns the absolute path of the layout root, for messages and for
	// the journal database, which does its own I/O.
	Root() string
	// Open opens a regular file for reading. It does not follow a symlink in
	// the last element.
	Open(name string) (File, error)
	// Lstat describes name without following a final symlink.
	Lstat(name string) (fs.FileInfo, error)
	// ReadDir lists a directory, sorted by name.
	ReadDir(name string) ([]fs.DirEntry, error)
	// Mkdir creates one directory. It is not durable until the parent is synced.
	Mkdir(name string, perm fs.FileMode) error
	// CreateTemp creates a new file in dir whose name starts with prefix.
	CreateTemp(dir, prefix string) (TempFile, error)
	// ReplaceFile writes data to a temp file in tmpDir, syncs it and renames it
	// over name. The rename is not durable until name's directory is synced.
	ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error
	// Rename renames a file; not durable until both directories are synced.
	Rename(oldname, newname string) error
	// Remove unlinks a file or an empty directory; not durable until the
	// directory is synced.
	Remove(name string) error
	// SyncDir fsyncs a directory, making its entries durable.
	SyncDir(name string) error
	// Lock opens the regular file name (creating it first when create, and
	// then failing with fs.ErrExist if it exists) and takes an exclusive
	// lock on it without waiting: flock(LOCK_EX|LOCK_NB) on the OS, on the
	// open file description, so that it is held until Unlock or until the
	// process ends, however it ends (the kernel drops it with the last
	// descriptor, SIGKILL included), and conflicts with a lock taken
	// through any other open, in this process or another, in any PID
	// namespace. An error wrapping ErrHeld when another holds it; one
	// wrapping fs.ErrNotExist when name does not exist or no longer names
	// the file locked (it was removed or replaced before the lock was
	// taken). A created file is not durable until its directory is synced.
	// See Owner.
	Lock(name string, create bool) (FileLock, error)
	// Close releases the file system.
	Close() error
}

// DirHandle is a directory opened once for a batch of operations on its entries
// (a transaction's unlinks): each then costs one system call, not one per
// path element. It is for one batch only: a directory that another tool
// replaces meanwhile keeps the old one's handle.
type DirHandle interface {
	Remove(name string) error
	Lstat(name string) (fs.FileInfo, error)
	Close() error
}

// DirOpener is implemented by file systems that can open a DirHandle.
type DirOpener interface {
	OpenDir(name string) (DirHandle, error)
}

// OS is the real file system, confined to one directory with os.Root.
type OS struct {
	root *os.Root
	abs  string
	rd   readDirs // directories kept open for reads (readfast.go)
}

var _ FS = (*OS)(nil)

// OpenOS opens the directory dir (which must exist) as a layout root.
func OpenOS(dir string) (*OS, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &OS{root: r, abs: dir}, nil
}

func (o *OS) Root() string { return o.abs }

func (o *OS) Close() error {
	o.closeReadDirs()
	return o.root.Close()
}

// Open opens name's directory through the root (a symlink among the
// directories is followed only while it stays inside the layout), then
// name itself with O_NOFOLLOW: os.Root resolves a final symlink that stays
// inside the root itself, whatever the flags say. O_NONBLOCK keeps a named
// pipe from blocking the open until a writer comes (it is then refused as
// not a regular file); reads of a regular file ignore it.
func (o *OS) Open(name string) (File, error) {
	f, _, err := o.openAt(name, syscall.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// openAt opens name as Open does (O_NOFOLLOW, O_NONBLOCK, O_CLOEXEC added to
// flags), and only a regular file, which it describes.
func (o *OS) openAt(name string, flags int, perm uint32) (*os.File, fs.FileInfo, error) {
	if flags == syscall.O_RDONLY {
		fd, _, err := o.openRead(name)
		if err != nil {
			return nil, nil, err
		}
		f := os.NewFile(uintptr(fd), name)
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		return f, fi, nil
	}
	dir, base, err := splitName("open", name)
	if err != nil {
		return nil, nil, err
	}
	d, err := o.root.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	fd, err := syscall.Openat(int(d.Fd()), base, flags|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, perm)
	d.Close()
	if err != nil {
		return nil, nil, openErr(name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, &fs.PathError{Op: "open", Path: name, Err: ErrNotRegular}
	}
	return f, fi, nil
}

// rootDirent is an entry of OS.ReadDir: its name and type from the
// listing, its Info from an lstat through the root.
type rootDirent struct {
	fs.DirEntry
	o    *OS
	path string
}

func (e rootDirent) Info() (fs.FileInfo, error) { return e.o.Lstat(e.path) }

// ErrNotRegular: a path that must be a regular file is a directory, a device or a symlink.
var ErrNotRegular = errors.New("not a regular file")

var errSymlink = fmt.Errorf("is a symlink: %w", ErrNotRegular)

// Lstat describes name through its kept directory (readfast.go).
func (o *OS) Lstat(name string) (fs.FileInfo, error) { return o.lstat(name) }

// ReadDir lists name with the type each entry has in the directory
// (d_type), without a stat per entry: a directory opened through os.Root
// lists with an lstat of every entry (400,000 of them in the blob
// directory of 100,000 images), so the listing reads a second descriptor
// of the same directory opened outside the root. Info, when asked, is an
// lstat through the root.
func (o *OS) ReadDir(name string) ([]fs.DirEntry, error) {
	d, err := o.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	fd, err := syscall.Openat(int(d.Fd()), ".", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "openat", Path: name, Err: err}
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	for i, e := range ents {
		ents[i] = rootDirent{o: o, path: join(name, e.Name()), DirEntry: e}
	}
	sortEntries(ents)
	return ents, nil
}

func (o *OS) Mkdir(name string, perm fs.FileMode) error { return o.root.Mkdir(name, perm) }

type osTemp struct {
	*os.File
	rel string
}

func (t osTemp) Name() string { return t.rel }

func (o *OS) CreateTemp(dir, prefix string) (TempFile, error) {
	for i := 0; i < 100; i++ {
		rel := join(dir, prefix+randSuffix())
		f, err := o.root.OpenFile(rel, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return osTemp{File: f, rel: rel}, nil
	}
	return nil, fmt.Errorf("create temp in %s: %w", dir, fs.ErrExist)
}

func (o *OS) ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error {
	// renameio names its temp file "."+base+digits in tmpDir; with WithRoot
	// the temp file lives in the root (never $TMPDIR), the same file system.
	if tmpDir != "" && tmpDir != "." {
		return fmt.Errorf("replace %s: temp dir must be the layout root", name)
	}
	pf, err := renameio.NewPendingFile(name, renameio.WithRoot(o.root),
		renameio.WithPermissions(perm), renameio.WithExistingPermissions())
	if err != nil {
		return err
	}
	defer pf.Cleanup()
	if _, err := pf.Write(data); err != nil {
		return err
	}
	crash.Point(crash.IndexTempWritten)
	// CloseAtomicallyReplace fsyncs the temp file, then renames it. Its
	// error cannot tell the fsync from the rename: either leaves the outcome
	// unknown, so both count as durability failures.
	if err := pf.CloseAtomicallyReplace(); err != nil {
		return &SyncError{Path: name, Err: err}
	}
	return nil
}

func (o *OS) Rename(oldname, newname string) error { return o.root.Rename(oldname, newname) }

func (o *OS) Remove(name string) error { return o.root.Remove(name) }

// Link gives the file oldname a second name (Linker).
func (o *OS) Link(oldname, newname string) error { return o.root.Link(oldname, newname) }

// OpenDir opens a directory under the root as a DirHandle (an os.Root of its own:
// its entries stay confined to it) that can rename into another (DirRenamer).
func (o *OS) OpenDir(name string) (DirHandle, error) {
	d, err := openOSDir(o.root, name)
	if err != nil {
		return nil, err
	}
	return d, nil
}

func (o *OS) SyncDir(name string) error {
	d, err := o.root.Open(name)
	if err != nil {
		return err
	}
	serr := d.Sync()
	cerr := d.Close()
	if serr != nil {
		return serr
	}
	return cerr
}

func join(dir, name string) string {
	if dir == "" || dir == "." {
		return name
	}
	return strings.TrimSuffix(dir, "/") + "/" + name
}

// CreateRoot makes the directory dir (and missing parents) for a new layout
// and syncs its parent, so that the layout's own directory survives a crash.
func CreateRoot(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "create layout", Path: dir, Err: errors.New("not a directory")}
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	parent, err := os.Open(filepathDir(dir))
	if err != nil {
		return err
	}
	defer parent.Close()
	return parent.Sync()
}

// RWFile is a file open for reading and writing at offsets: a resumable
// upload's staging file, which grows by appends over many requests (and
// over restarts of its writer) before it is synced and renamed into
// blobs/ like an ingest's temp file.
type RWFile interface {
	io.ReaderAt
	io.WriterAt
	Stat() (fs.FileInfo, error)
	Truncate(size int64) error
	Sync() error
	Close() error
}

// RWOpener is implemented by a file system that can open a regular file
// under its root for reading and writing: a new one (create: O_EXCL, so
// that two writers never share a name) or an existing one. Never through
// a symlink in the last element.
type RWOpener interface {
	OpenRW(name string, create bool) (RWFile, error)
}

// OpenRW opens name under the root for reading and writing (RWOpener).
func (o *OS) OpenRW(name string, create bool) (RWFile, error) {
	flags := syscall.O_RDWR
	if create {
		flags |= syscall.O_CREAT | syscall.O_EXCL
	}
	f, _, err := o.openAt(name, flags, 0o644)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// OpenRW routes name like every other path (RWOpener).
func (s *Shared) OpenRW(name string, create bool) (RWFile, error) {
	f, rel := s.route(name)
	o, ok := f.(RWOpener)
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.ErrUnsupported}
	}
	return o.OpenRW(rel, create)
}
