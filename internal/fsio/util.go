package fsio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ocistore/ocistore/internal/errdef"
)

// sortEntries sorts a listing by name, each name asked once (400,000
// interface calls per comparison round cost more than the sort itself).
func sortEntries(ents []fs.DirEntry) {
	type named struct {
		name string
		e    fs.DirEntry
	}
	ns := make([]named, len(ents))
	for i, e := range ents {
		ns[i] = named{e.Name(), e}
	}
	slices.SortFunc(ns, func(a, b named) int { return strings.Compare(a.name, b.name) })
	for i := range ns {
		ents[i] = ns[i].e
	}
}

func randSuffix() string { return strconv.FormatUint(rand.Uint64(), 36) }

// ReadFile reads a whole regular file of at most limit bytes. A larger file
// gives an error wrapping errdef.ErrTooLarge without reading it all.
func ReadFile(fsys FS, name string, limit int64) ([]byte, error) {
	if r, ok := fsys.(wholeFileReader); ok {
		return r.readFile(name, limit)
	}
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, limit %d: %w", name, fi.Size(), limit, errdef.ErrTooLarge)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s grew past limit %d: %w", name, limit, errdef.ErrTooLarge)
	}
	return b, nil
}

// Exists reports whether name exists (as anything, without following a final symlink).
func Exists(fsys FS, name string) (bool, error) {
	_, err := fsys.Lstat(name)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// MkdirDurable creates directory name unless it exists and syncs its parent
// so that the new entry survives a crash. It reports whether it created it.
func MkdirDurable(fsys FS, name string) (bool, error) {
	err := fsys.Mkdir(name, 0o755)
	if errors.Is(err, fs.ErrExist) {
		fi, lerr := fsys.Lstat(name)
		if lerr != nil {
			return false, lerr
		}
		if !fi.IsDir() {
			return false, &fs.PathError{Op: "mkdir", Path: name, Err: errors.New("exists and is not a directory")}
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := fsys.SyncDir(Dir(name)); err != nil {
		return true, &SyncError{Path: Dir(name), Err: err}
	}
	return true, nil
}

// Dir is path.Dir with "." for the root.
func Dir(name string) string { return path.Dir(name) }

// RemoveFiles unlinks every name (a missing file counts as removed), calling
// after(name, existed) after each unlink (existed: a file was removed, not
// found missing), then syncs each directory it touched, once,
// for purpose (see SyncDirFor).
// It stops at the first error other than "does not exist"; directories touched
// so far are still synced, so what was removed is durable.
func RemoveFiles(fsys FS, purpose string, names []string, after func(name string, existed bool)) error {
	return RemoveFilesGuarded(fsys, purpose, names, nil, after)
}

// Guard is asked before the first name of a batch (RemoveFilesGuarded,
// TrashFilesGuarded) and again before every GuardEvery names: an error
// stops the batch there, and is returned. A transaction's unlinks use it
// to stop as soon as another tool rewrites index.json (DESIGN.md §9.2).
type Guard func() error

// GuardEvery is how many names a batch takes between two questions to its
// Guard: a stat of index.json is cheap next to an unlink, so asking every
// 32 names costs the batch little while bounding what goes after another
// tool's write (figure: BENCHMARKS.md, "Figures behind design choices").
const GuardEvery = 32

// RemoveFilesGuarded is RemoveFiles asking guard (when not nil) as it goes.
func RemoveFilesGuarded(fsys FS, purpose string, names []string, guard Guard, after func(name string, existed bool)) error {
	var order []string
	dirs := newDirCache(fsys)
	defer dirs.close()
	var firstErr error
	if dirs.opener != nil && len(names) >= parallelRemoveMin {
		order = dirs.openAll(names)
		firstErr = removeParallel(dirs, names, guard, after)
	} else {
		touched := map[string]bool{}
		for i, n := range names {
			if guard != nil && i%GuardEvery == 0 {
				if firstErr = guard(); firstErr != nil {
					break
				}
			}
			err := dirs.remove(n)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				firstErr = err
				break
			}
			d := Dir(n)
			if !touched[d] {
				touched[d] = true
				order = append(order, d)
			}
			if after != nil {
				after(n, err == nil)
			}
		}
	}
	for _, d := range order {
		// Synced even when every unlink there found nothing: an unlink by a
		// process that crashed may be in the cache and not yet durable.
		// A directory that does not exist holds nothing to make durable.
		if err := SyncDirFor(fsys, purpose, d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return firstErr
}

// parallelRemoveMin is the batch from which RemoveFiles unlinks with
// several workers: unlinks in one directory still overlap in the kernel,
// so a large batch ends sooner on several goroutines (figures:
// BENCHMARKS.md, "Figures behind design choices").
const parallelRemoveMin = 64

// removeWorkers is how many unlinks run at once.
const removeWorkers = 4

// removeParallel is RemoveFiles' unlink loop on removeWorkers goroutines,
// for a file system with directory handles (whose directories dirs has
// opened already: the workers only read it).
func removeParallel(dirs *dirCache, names []string, guard Guard, after func(string, bool)) error {
	return eachName(names, removeWorkers, guard, func(name string) (func(), error) {
		err := dirs.remove(name)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if after == nil {
			return nil, nil
		}
		return func() { after(name, err == nil) }, nil
	})
}

// eachName runs op on every name, on up to workers goroutines. The first
// error stops the workers and is returned; the function op returns for a
// name it did (nil: nothing to do) is called under a lock, once per name,
// in the order they end, also for the ops that end after the first error. guard, when not
// nil, is asked before names[0] and every GuardEvery names; its error stops
// the workers as an error of op would.
func eachName(names []string, workers int, guard Guard, op func(name string) (done func(), err error)) error {
	var (
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	for range min(workers, len(names)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(names) {
					return
				}
				var done func()
				var err error
				if guard != nil && i%GuardEvery == 0 {
					err = guard()
				}
				if err == nil {
					done, err = op(names[i])
				}
				mu.Lock()
				switch {
				case err != nil:
					if firstErr == nil {
						firstErr = err
						next.Store(int64(len(names)))
					}
				case done != nil:
					// Also after the first error: an op another worker
					// had begun was done, and its caller must know (a
					// file taken into the trash is only found there by
					// the name done records).
					done()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return firstErr
}

// SyncError marks a failed fsync; a handle that sees one must refuse writes
// until it is reopened.
type SyncError struct {
	Path string
	Err  error
}

func (e *SyncError) Error() string { return "fsync " + e.Path + ": " + e.Err.Error() }

// Unwrap gives the cause and errdef.ErrDurability, so callers test for either.
func (e *SyncError) Unwrap() []error { return []error{e.Err, errdef.ErrDurability} }

// dirCache opens each directory of a batch once, when the file system can
// (see DirOpener), and otherwise goes through the FS path by path.
type dirCache struct {
	fsys   FS
	opener DirOpener
	dirs   map[string]DirHandle
}

func newDirCache(fsys FS) *dirCache {
	opener, _ := fsys.(DirOpener)
	return &dirCache{fsys: fsys, opener: opener}
}

// dir returns the open directory of name and name's last element, or nil.
func (c *dirCache) dir(name string) (DirHandle, string) {
	d, base := path.Split(name)
	d = strings.TrimSuffix(d, "/")
	if c.opener == nil || d == "" || base == "" {
		return nil, ""
	}
	if h, ok := c.dirs[d]; ok {
		return h, base
	}
	h, err := c.opener.OpenDir(d)
	if err != nil {
		h = nil // the path-by-path call reports the error
	}
	if c.dirs == nil {
		c.dirs = map[string]DirHandle{}
	}
	c.dirs[d] = h
	return h, base
}

// openAll opens the directory of each of names once, before workers that
// only read the cache, and returns the directories in the order first met.
func (c *dirCache) openAll(names []string) []string {
	seen := map[string]bool{}
	var order []string
	for _, n := range names {
		if d := Dir(n); !seen[d] {
			seen[d] = true
			order = append(order, d)
			c.dir(n)
		}
	}
	return order
}

func (c *dirCache) remove(name string) error {
	if h, base := c.dir(name); h != nil {
		if err := h.Remove(base); err != nil {
			return &fs.PathError{Op: "remove", Path: name, Err: cause(err)}
		}
		return nil
	}
	return c.fsys.Remove(name)
}

func (c *dirCache) lstat(name string) (fs.FileInfo, error) {
	if h, base := c.dir(name); h != nil {
		fi, err := h.Lstat(base)
		if err != nil {
			return nil, &fs.PathError{Op: "lstat", Path: name, Err: cause(err)}
		}
		return fi, nil
	}
	return c.fsys.Lstat(name)
}

func (c *dirCache) close() {
	for _, h := range c.dirs {
		if h != nil {
			h.Close()
		}
	}
}

// LstatFiles describes each of names (nil where it does not exist or
// cannot be described), opening each directory once.
func LstatFiles(fsys FS, names []string) []fs.FileInfo {
	dirs := newDirCache(fsys)
	defer dirs.close()
	out := make([]fs.FileInfo, len(names))
	for i, n := range names {
		if fi, err := dirs.lstat(n); err == nil {
			out[i] = fi
		}
	}
	return out
}

// cause is the error a *fs.PathError wraps, or err.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
