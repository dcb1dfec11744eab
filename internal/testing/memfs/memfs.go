// Package memfs is a strict in-memory fsio.FS that can crash, in the style
// of Pebble's crashable MemFS. It keeps, per file, the data written and the
// data synced, and per directory, the entries as they are and as they were
// at the last directory sync. A crash keeps what was synced plus any subset
// of what was not: directory entries created, renamed or removed since their
// directory's last sync, and file data at 4 KiB block granularity.
//
// Crash tests snapshot a FS after every mutation (Snapshot), list what a
// crash could lose at that point (Crash.Items) and build the file system a
// given choice of survivors leaves (Crash.Materialize).
//
// The journal database is not stored here (bbolt does its own I/O on a real
// file): the harness registers its directory entry with AddExternal, so that
// losing that entry (a missing directory sync) is part of the crash states.
package memfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ocistore/ocistore/internal/fsio"
)

// BlockSize is the granularity at which unsynced file data survives a crash.
const BlockSize = 4096

type inode struct {
	dir     bool
	ext     bool // external file (the journal): contents live elsewhere
	data    []byte
	synced  []byte // nil: never synced
	mtime   int64
	entries map[string]*inode // dir: as it is
	durable map[string]*inode // dir: as of the last sync
}

func newDir() *inode {
	return &inode{dir: true, entries: map[string]*inode{}, durable: map[string]*inode{}}
}

// FS is the crashable file system.
type FS struct {
	root string // real path reported by Root (for the journal)

	mu    sync.Mutex
	top   *inode
	clock int64
	seq   int
	locks map[*inode]bool // files locked (Lock); a crash drops them all
	space space           // the space model (space.go); a crash keeps it
	// failRename is the one-shot fault of FailNextRename.
	failRename struct {
		name string
		err  error
	}
	// OnMutation, when set, is called after every change (outside the lock)
	// with a short description.
	OnMutation func(what string)
}

var _ fsio.FS = (*FS)(nil)

// New returns an empty file system whose root directory is durable. root is
// the real directory Root reports (where the journal lives).
func New(root string) *FS {
	return &FS{root: root, top: newDir()}
}

func (f *FS) Root() string { return f.root }
func (f *FS) Close() error { return nil }

func (f *FS) tick() int64 { f.clock++; return f.clock }

func (f *FS) notify(what string) {
	if f.OnMutation != nil {
		f.OnMutation(what)
	}
}

func split(name string) []string {
	name = path.Clean(strings.TrimPrefix(name, "/"))
	if name == "." || name == "" {
		return nil
	}
	return strings.Split(name, "/")
}

// lookup returns the inode at name (current state).
func (f *FS) lookup(name string) (*inode, error) {
	n := f.top
	for _, p := range split(name) {
		if !n.dir {
			return nil, fs.ErrNotExist
		}
		c, ok := n.entries[p]
		if !ok {
			return nil, fs.ErrNotExist
		}
		n = c
	}
	return n, nil
}

// parent returns the directory holding name and the last element.
func (f *FS) parent(name string) (*inode, string, error) {
	parts := split(name)
	if len(parts) == 0 {
		return nil, "", fs.ErrInvalid
	}
	d, err := f.lookup(strings.Join(parts[:len(parts)-1], "/"))
	if err != nil {
		return nil, "", err
	}
	if !d.dir {
		return nil, "", fs.ErrNotExist
	}
	return d, parts[len(parts)-1], nil
}

func pathErr(op, name string, err error) error { return &fs.PathError{Op: op, Path: name, Err: err} }

// file info ------------------------------------------------------------------

type info struct {
	name string
	n    *inode
	size int64
}

func (i info) Name() string { return i.name }
func (i info) Size() int64  { return i.size }
func (i info) Mode() fs.FileMode {
	if i.n.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
func (i info) ModTime() time.Time { return time.Unix(0, i.n.mtime) }
func (i info) IsDir() bool        { return i.n.dir }
func (i info) Sys() any           { return nil }

type dirent struct{ info }

func (d dirent) Type() fs.FileMode          { return d.Mode().Type() }
func (d dirent) Info() (fs.FileInfo, error) { return d.info, nil }

func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup(name)
	if err != nil {
		return nil, pathErr("lstat", name, err)
	}
	return info{name: path.Base(name), n: n, size: int64(len(n.data))}, nil
}

func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup(name)
	if err != nil {
		return nil, pathErr("readdir", name, err)
	}
	if !n.dir {
		return nil, pathErr("readdir", name, errors.New("not a directory"))
	}
	out := make([]fs.DirEntry, 0, len(n.entries))
	for k, c := range n.entries {
		out = append(out, dirent{info{name: k, n: c, size: int64(len(c.data))}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// reading ----------------------------------------------------------------------

type reader struct {
	*bytes.Reader
	st info
}

func (r *reader) Close() error               { return nil }
func (r *reader) Stat() (fs.FileInfo, error) { return r.st, nil }

func (f *FS) Open(name string) (fsio.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup(name)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	if n.dir || n.ext {
		return nil, pathErr("open", name, fsio.ErrNotRegular)
	}
	data := bytes.Clone(n.data)
	return &reader{Reader: bytes.NewReader(data), st: info{name: path.Base(name), n: n, size: int64(len(data))}}, nil
}

// mutations --------------------------------------------------------------------

func (f *FS) Mkdir(name string, _ fs.FileMode) error {
	f.mu.Lock()
	d, base, err := f.parent(name)
	if err == nil {
		if _, ok := d.entries[base]; ok {
			err = fs.ErrExist
		} else {
			nd := newDir()
			nd.mtime = f.tick()
			d.entries[base] = nd
		}
	}
	f.mu.Unlock()
	if err != nil {
		return pathErr("mkdir", name, err)
	}
	f.notify("mkdir " + name)
	return nil
}

type tempFile struct {
	f    *FS
	n    *inode
	name string
}

func (t *tempFile) Name() string { return t.name }

func (t *tempFile) Write(p []byte) (int, error) {
	t.f.mu.Lock()
	if !t.f.fits(int64(len(p))) {
		t.f.mu.Unlock()
		return 0, pathErr("write", t.name, syscall.ENOSPC)
	}
	t.n.data = append(t.n.data, p...)
	t.n.mtime = t.f.tick()
	t.f.mu.Unlock()
	t.f.notify("write " + t.name)
	return len(p), nil
}

func (t *tempFile) Sync() error {
	t.f.mu.Lock()
	t.n.synced = bytes.Clone(t.n.data)
	t.f.mu.Unlock()
	t.f.notify("fsync " + t.name)
	return nil
}

func (t *tempFile) Close() error { return nil }

func (f *FS) create(dir, base string) (*inode, string, error) {
	d, err := f.lookup(dir)
	if err != nil || !d.dir {
		return nil, "", fs.ErrNotExist
	}
	if _, ok := d.entries[base]; ok {
		return nil, "", fs.ErrExist
	}
	n := &inode{mtime: f.tick()}
	d.entries[base] = n
	return n, path.Join(dir, base), nil
}

func (f *FS) CreateTemp(dir, prefix string) (fsio.TempFile, error) {
	f.mu.Lock()
	f.seq++
	n, name, err := f.create(dir, fmt.Sprintf("%s%d", prefix, f.seq))
	f.mu.Unlock()
	if err != nil {
		return nil, pathErr("createtemp", dir, err)
	}
	f.notify("create " + name)
	return &tempFile{f: f, n: n, name: name}, nil
}

// ReplaceFile creates a temp file in the root named like renameio's, writes
// and syncs it, then renames it over name: two mutations. (A test that
// needs the sync left out wraps the FS in errorfs, whose ReplaceFile is
// made of CreateTemp, Write, Sync and Rename.)
func (f *FS) ReplaceFile(name, tmpDir string, data []byte, _ fs.FileMode) error {
	f.mu.Lock()
	f.seq++
	n, tmp, err := f.create(tmpDir, fmt.Sprintf(".%s%d", path.Base(name), f.seq))
	for errors.Is(err, fs.ErrExist) { // a temp file a crash left: renameio draws another name
		f.seq++
		n, tmp, err = f.create(tmpDir, fmt.Sprintf(".%s%d", path.Base(name), f.seq))
	}
	if err == nil && !f.fits(int64(len(data))) {
		d, _ := f.lookup(tmpDir) // the write fails: the temp file goes
		delete(d.entries, path.Base(tmp))
		err = syscall.ENOSPC
	}
	if err == nil {
		n.data = bytes.Clone(data)
		n.synced = bytes.Clone(data)
	}
	f.mu.Unlock()
	if errors.Is(err, syscall.ENOSPC) {
		return pathErr("write", tmp, err)
	}
	if err != nil {
		return pathErr("replace", name, err)
	}
	f.notify("write+fsync " + tmp)
	return f.Rename(tmp, name)
}

// parents is parent for both names of a link or a rename. f.mu is held.
func (f *FS) parents(oldname, newname string) (od *inode, ob string, nd *inode, nb string, err error) {
	if od, ob, err = f.parent(oldname); err == nil {
		nd, nb, err = f.parent(newname)
	}
	return od, ob, nd, nb, err
}

// Link gives the file oldname a second name, newname (which must not
// exist); not durable until newname's directory is synced.
func (f *FS) Link(oldname, newname string) error {
	f.mu.Lock()
	od, ob, nd, nb, err := f.parents(oldname, newname)
	if err == nil {
		n, ok := od.entries[ob]
		switch {
		case !ok:
			err = fs.ErrNotExist
		case n.dir:
			err = fs.ErrPermission
		case nd.entries[nb] != nil:
			err = fs.ErrExist
		default:
			nd.entries[nb] = n
		}
	}
	f.mu.Unlock()
	if err != nil {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: err}
	}
	f.notify("link " + oldname + " " + newname)
	return nil
}

func (f *FS) Rename(oldname, newname string) error {
	f.mu.Lock()
	od, ob, nd, nb, err := f.parents(oldname, newname)
	if err == nil && f.failRename.err != nil && strings.Join(split(newname), "/") == f.failRename.name {
		err = f.failRename.err
		f.failRename.err = nil
	} else if err == nil {
		n, ok := od.entries[ob]
		switch {
		case !ok:
			err = fs.ErrNotExist
		case nd.entries[nb] != nil && nd.entries[nb].dir:
			err = fs.ErrExist
		default:
			delete(od.entries, ob)
			nd.entries[nb] = n
		}
	}
	f.mu.Unlock()
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	f.notify("rename " + oldname + " " + newname)
	return nil
}

func (f *FS) Remove(name string) error {
	f.mu.Lock()
	d, base, err := f.parent(name)
	if err == nil {
		n, ok := d.entries[base]
		switch {
		case !ok:
			err = fs.ErrNotExist
		case n.dir && len(n.entries) > 0:
			err = errors.New("directory not empty")
		default:
			delete(d.entries, base)
		}
	}
	f.mu.Unlock()
	if err != nil {
		return pathErr("remove", name, err)
	}
	f.notify("remove " + name)
	return nil
}

func (f *FS) SyncDir(name string) error {
	f.mu.Lock()
	n, err := f.lookup(name)
	if err == nil && !n.dir {
		err = errors.New("not a directory")
	}
	if err == nil {
		n.durable = make(map[string]*inode, len(n.entries))
		for k, v := range n.entries {
			n.durable[k] = v
		}
	}
	f.mu.Unlock()
	if err != nil {
		return pathErr("fsync", name, err)
	}
	f.notify("fsync " + name + "/")
	return nil
}

// memLock is a lock taken by Lock.
type memLock struct {
	f    *FS
	n    *inode
	once sync.Once
}

func (l *memLock) Unlock() error {
	l.once.Do(func() {
		l.f.mu.Lock()
		delete(l.f.locks, l.n)
		l.f.mu.Unlock()
	})
	return nil
}

// Lock takes the exclusive lock of a regular file (creating it first when
// create), as flock does: another Lock of the file fails with fsio.ErrHeld
// until Unlock. Locks belong to this FS: the FS a crash leaves
// (Materialize) has none, as a restarted system has none.
func (f *FS) Lock(name string, create bool) (fsio.FileLock, error) {
	f.mu.Lock()
	var n *inode
	var err error
	if create {
		n, _, err = f.create(path.Dir(path.Clean(name)), path.Base(name))
	} else if n, err = f.lookup(name); err == nil && (n.dir || n.ext) {
		err = fsio.ErrNotRegular
	}
	if err == nil && f.locks[n] {
		err = fsio.ErrHeld
	}
	if err == nil {
		if f.locks == nil {
			f.locks = map[*inode]bool{}
		}
		f.locks[n] = true
	}
	f.mu.Unlock()
	if err != nil {
		return nil, pathErr("lock", name, err)
	}
	if create {
		f.notify("create " + name)
	}
	return &memLock{f: f, n: n}, nil
}

// AddExternal records that a file kept elsewhere (the journal database) was
// created at name: its directory entry is unsynced until the directory is.
// It does nothing when the entry exists.
func (f *FS) AddExternal(name string) error {
	f.mu.Lock()
	d, base, err := f.parent(name)
	added := false
	if err == nil {
		if _, ok := d.entries[base]; !ok {
			d.entries[base] = &inode{ext: true, mtime: f.tick()}
			added = true
		}
	}
	f.mu.Unlock()
	if err != nil {
		return pathErr("external", name, err)
	}
	if added {
		f.notify("create external " + name)
	}
	return nil
}

// HasExternal reports whether the external file at name exists.
func (f *FS) HasExternal(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.lookup(name)
	return err == nil && n.ext
}

// WriteFile creates (or replaces) a file with data, synced, and its
// directory entry durable: for building fixtures before a test starts.
func (f *FS) WriteFile(name string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, base, err := f.parent(name)
	if err != nil {
		return pathErr("writefile", name, err)
	}
	n := &inode{data: bytes.Clone(data), synced: bytes.Clone(data), mtime: f.tick()}
	d.entries[base] = n
	d.durable[base] = n
	return nil
}

// Tree lists every file with its current contents (externals as nil), for
// comparing states.
func (f *FS) Tree() map[string][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]byte{}
	var walk func(prefix string, d *inode)
	walk = func(prefix string, d *inode) {
		for k, c := range d.entries {
			p := path.Join(prefix, k)
			switch {
			case c.dir:
				walk(p, c)
			case c.ext:
				out[p] = nil
			default:
				out[p] = bytes.Clone(c.data)
			}
		}
	}
	walk("", f.top)
	return out
}

// crash states -------------------------------------------------------------------

// Crash is a frozen copy of a FS at one point: what is durable and what a
// crash there may or may not keep.
type Crash struct {
	top   *inode
	items []item
	space space // the disk's size does not change in a crash
}

// item is one thing a crash may lose: a directory entry whose binding
// differs from the synced one, or one block of a file's unsynced data.
type item struct {
	dir   *inode
	name  string
	file  *inode
	block int
}

// Snapshot freezes the current state.
func (f *FS) Snapshot() *Crash {
	f.mu.Lock()
	defer f.mu.Unlock()
	copies := map[*inode]*inode{}
	var cp func(n *inode) *inode
	cp = func(n *inode) *inode {
		if n == nil {
			return nil
		}
		if c, ok := copies[n]; ok {
			return c
		}
		c := &inode{dir: n.dir, ext: n.ext, data: bytes.Clone(n.data), synced: bytes.Clone(n.synced), mtime: n.mtime}
		copies[n] = c
		if n.dir {
			c.entries = map[string]*inode{}
			c.durable = map[string]*inode{}
			for k, v := range n.entries {
				c.entries[k] = cp(v)
			}
			for k, v := range n.durable {
				c.durable[k] = cp(v)
			}
		}
		return c
	}
	c := &Crash{top: cp(f.top), space: f.space}
	c.items = listItems(c.top)
	return c
}

func listItems(top *inode) []item {
	var items []item
	seenDir := map[*inode]bool{}
	seenFile := map[*inode]bool{}
	var walk func(d *inode)
	walk = func(d *inode) {
		if seenDir[d] {
			return
		}
		seenDir[d] = true
		names := map[string]bool{}
		for k := range d.entries {
			names[k] = true
		}
		for k := range d.durable {
			names[k] = true
		}
		sorted := make([]string, 0, len(names))
		for k := range names {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			cur, dur := d.entries[k], d.durable[k]
			if cur != dur {
				items = append(items, item{dir: d, name: k})
			}
			for _, n := range []*inode{dur, cur} {
				switch {
				case n == nil:
				case n.dir:
					walk(n)
				case !n.ext && !seenFile[n]:
					seenFile[n] = true
					for b := 0; b*BlockSize < len(n.data); b++ {
						if !bytes.Equal(block(n.data, b), block(n.synced, b)) || len(n.synced) != len(n.data) && b == (len(n.data)-1)/BlockSize {
							items = append(items, item{file: n, block: b})
						}
					}
				}
			}
		}
	}
	walk(top)
	return items
}

func block(b []byte, i int) []byte {
	lo := i * BlockSize
	if lo >= len(b) {
		return nil
	}
	return b[lo:min(lo+BlockSize, len(b))]
}

// Items is how many unsynced things a crash here may keep or lose.
func (c *Crash) Items() int { return len(c.items) }

// Describe names item i, for failure messages.
func (c *Crash) Describe(i int) string {
	it := c.items[i]
	if it.file != nil {
		return fmt.Sprintf("data block %d of a %d-byte file", it.block, len(it.file.data))
	}
	return "entry " + it.name
}

// Materialize returns the file system left by a crash that kept the items
// with keep[i] true (and lost the others), everything in it durable. ext
// reports, by path, the external files that survived.
func (c *Crash) Materialize(root string, keep []bool) (out *FS, ext []string) {
	keepEntry := map[*inode]map[string]bool{}
	keepBlock := map[*inode]map[int]bool{}
	for i, it := range c.items {
		if !keep[i] {
			continue
		}
		if it.file != nil {
			if keepBlock[it.file] == nil {
				keepBlock[it.file] = map[int]bool{}
			}
			keepBlock[it.file][it.block] = true
			continue
		}
		if keepEntry[it.dir] == nil {
			keepEntry[it.dir] = map[string]bool{}
		}
		keepEntry[it.dir][it.name] = true
	}
	out = New(root)
	out.space = c.space
	files := map[*inode]*inode{}
	var build func(prefix string, src, dst *inode)
	build = func(prefix string, src, dst *inode) {
		names := map[string]bool{}
		for k := range src.entries {
			names[k] = true
		}
		for k := range src.durable {
			names[k] = true
		}
		for k := range names {
			n := src.durable[k]
			if keepEntry[src][k] {
				n = src.entries[k]
			}
			if n == nil {
				continue
			}
			p := path.Join(prefix, k)
			var m *inode
			switch {
			case n.dir:
				m = newDir()
				build(p, n, m)
			case n.ext:
				m = &inode{ext: true}
				ext = append(ext, p)
			default:
				if m = files[n]; m == nil {
					data := crashData(n, keepBlock[n])
					m = &inode{data: data, synced: bytes.Clone(data)}
					files[n] = m
				}
			}
			m.mtime = out.tick()
			dst.entries[k] = m
			dst.durable[k] = m
		}
	}
	build("", c.top, out.top)
	sort.Strings(ext)
	return out, ext
}

// crashData is a file's content after a crash that kept the given blocks of
// its unsynced data.
func crashData(n *inode, blocks map[int]bool) []byte {
	if len(blocks) == 0 {
		return bytes.Clone(n.synced)
	}
	out := make([]byte, len(n.data))
	copy(out, n.synced)
	for b := range blocks {
		copy(out[b*BlockSize:], block(n.data, b))
	}
	return out
}

var _ io.Reader = (*reader)(nil)
