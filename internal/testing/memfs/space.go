package memfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"syscall"

	"github.com/ocistore/ocistore/internal/fsio"
)

// The space model: a FS may be given a capacity, in bytes of file data
// (every regular file counted once, however many names it has; directories
// and external files count nothing). A file unlinked (or renamed over)
// counts until the unlink is durable (its directory synced), as a file
// system with a journal reuses freed blocks only once the transaction that
// freed them is committed. A write, a ReplaceFile or an Allocate
// that would take the data past it fails with syscall.ENOSPC and writes
// nothing. The capacity, and whether the FS holds a space reserve
// (fsio.Reserver), survive a crash: a Crash materialises with them.
type space struct {
	capacity  int64 // 0: unlimited
	reserve   bool  // Allocate and Avail work (else: errors.ErrUnsupported)
	hideAvail bool  // Avail fails, as a statfs that cannot tell
}

var _ fsio.Reserver = (*FS)(nil)

// SetCapacity sets the file system's size in bytes of file data; 0 is
// unlimited. A capacity below what is used makes every write fail.
func (f *FS) SetCapacity(n int64) {
	f.mu.Lock()
	f.space.capacity = n
	f.mu.Unlock()
}

// Used returns the bytes of file data the file system holds.
func (f *FS) Used() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used()
}

// EnableReserve makes the FS a fsio.Reserver (without it, Allocate and
// Avail fail with errors.ErrUnsupported, as on a file system that cannot
// hold a reserve, and a store over it makes none).
func (f *FS) EnableReserve() {
	f.mu.Lock()
	f.space.reserve = true
	f.mu.Unlock()
}

// HideAvail makes Avail fail (hide) or work again: the statfs of a file
// system that cannot tell what is available, so that a store meets ENOSPC
// before it releases its reserve.
func (f *FS) HideAvail(hide bool) {
	f.mu.Lock()
	f.space.hideAvail = hide
	f.mu.Unlock()
}

// FailNextRename makes the next Rename (or ReplaceFile) onto name fail
// with err and change nothing: a fault hook for tests. name is a path of
// this FS (not of a Sub).
func (f *FS) FailNextRename(name string, err error) {
	f.mu.Lock()
	f.failRename.name, f.failRename.err = strings.Join(split(name), "/"), err
	f.mu.Unlock()
}

// used sums the data of every regular file that has a name, or had one
// at its directory's last sync. f.mu is held.
func (f *FS) used() int64 {
	var n int64
	seen := map[*inode]bool{}
	var walk func(d *inode)
	walk = func(d *inode) {
		for _, m := range []map[string]*inode{d.entries, d.durable} {
			for _, c := range m {
				switch {
				case seen[c]:
				case c.dir:
					seen[c] = true
					walk(c)
				case c.ext:
				default:
					seen[c] = true
					n += int64(len(c.data))
				}
			}
		}
	}
	walk(f.top)
	return n
}

// fits reports whether n more bytes of data fit. f.mu is held.
func (f *FS) fits(n int64) bool {
	return f.space.capacity == 0 || n <= 0 || f.used()+n <= f.space.capacity
}

var errNoReserve = fmt.Errorf("memfs: no space reserve: %w", errors.ErrUnsupported)

// Allocate implements fsio.Reserver: name becomes a regular file of at
// least size bytes (zeros past its old data), synced; its directory entry,
// when it is new, is not durable until its directory is synced.
func (f *FS) Allocate(name string, size int64) (before, after int64, err error) {
	f.mu.Lock()
	changed := false
	func() {
		if !f.space.reserve {
			err = errNoReserve
			return
		}
		var n *inode
		if n, err = f.lookup(name); err == nil {
			if n.dir || n.ext {
				err = pathErr("allocate", name, fsio.ErrNotRegular)
				return
			}
			before = int64(len(n.data))
			if before >= size {
				after = before
				return
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			err = pathErr("allocate", name, err)
			return
		}
		err = nil
		if !f.fits(size - before) {
			after, err = before, pathErr("fallocate", name, syscall.ENOSPC)
			return
		}
		if n == nil {
			if n, _, err = f.create(path.Dir(path.Clean(name)), path.Base(name)); err != nil {
				err = pathErr("allocate", name, err)
				return
			}
		}
		n.data = append(n.data, make([]byte, size-before)...)
		n.synced = bytes.Clone(n.data)
		n.mtime = f.tick()
		after, changed = size, true
	}()
	f.mu.Unlock()
	if changed {
		f.notify("allocate+fsync " + name)
	}
	return before, after, err
}

// Avail implements fsio.Reserver: capacity less what is used (a large
// number when the capacity is unlimited).
func (f *FS) Avail(dir string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.space.reserve:
		return 0, errNoReserve
	case f.space.hideAvail:
		return 0, pathErr("statfs", dir, syscall.ENOSYS)
	case f.space.capacity == 0:
		return 1 << 50, nil
	}
	return max(0, f.space.capacity-f.used()), nil
}

// Allocate and Avail of a Sub are its FS's, on its names.
func (s *sub) Allocate(name string, size int64) (int64, int64, error) {
	return s.f.Allocate(s.in(name), size)
}

func (s *sub) Avail(dir string) (int64, error) { return s.f.Avail(s.in(dir)) }

var _ fsio.Reserver = (*sub)(nil)
