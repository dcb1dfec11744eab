// Package errorfs wraps an fsio.FS to inject faults into its operations,
// by rules, in the spirit of pebble's vfs/errorfs: a test opens a store on
// an errorfs.FS over the real file system (or memfs), adds the rules it
// needs, and sees what the store makes of a failed fsync, rename, unlink
// or write, or runs code of its own at an exact point of the protocol
// (a Hook: "right after index.json is renamed", "after the 40th unlink
// under blobs/"). It can also leave out the fsyncs of a purpose of the
// protocol (OmitSync; fsio.SyncSkipper), to show that a crash harness
// notices a missing one. Nothing here is global: each FS has its rules.
//
// A rule names an operation (Op), a pattern for its path and, optionally,
// the one occurrence among the matching operations at which it fires
// (Nth). When it fires, its Hook runs and its error is returned by the
// operation, which is then not done; with After, the operation is done
// first (the caller sees an error for something that happened: the outcome
// of a failed fsync). A rule of OpWrite with an error makes a short write.
//
// What the wrapper changes beyond its rules: it hides fsio.DirOpener, so
// that every unlink of a batch goes through Remove, where rules see it;
// ReplaceFile is made of CreateTemp, Write, Sync, Close and Rename of the
// wrapper (so that rules see each step), with the errors fsio.OS gives
// (a failed write is returned as it is; a failed fsync, close or rename is
// an fsio.SyncError: the replace's outcome is unknown); Link and the space
// reserve (fsio.Linker, fsio.Reserver) pass to the wrapped file system,
// and fail as unsupported when it has none.
package errorfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
)

// ErrInjected is an error for rules that need one and care not which.
var ErrInjected = errors.New("errorfs: injected fault")

// Op is a kind of operation.
type Op int

// The operations rules can name. Event.Path is given for each.
const (
	OpCreate  Op = iota // CreateTemp; Path: dir/prefix (the temp file's name without its random end)
	OpWrite             // a Write of a file from CreateTemp; Path: its name
	OpSync              // the Sync of a file from CreateTemp; Path: its name
	OpClose             // the Close of a file from CreateTemp; Path: its name
	OpRename            // Rename; Path: the new name, From: the old one
	OpLink              // Link (fsio.Linker); Path: the new name, From: the old one
	OpRemove            // Remove; Path: the name
	OpSyncDir           // SyncDir; Path: the directory
	OpMkdir             // Mkdir; Path: the directory
	OpReplace           // ReplaceFile as a whole; Path: the name replaced
	OpOpen              // Open, for reading; Path: the name
	OpLstat             // Lstat (fsio.StampFile among others); Path: the name
	OpReadDir           // ReadDir; Path: the directory
)

var opNames = [...]string{"create", "write", "sync", "close", "rename", "link", "remove", "syncdir", "mkdir", "replace", "open", "lstat", "readdir"}

func (o Op) String() string {
	if o >= 0 && int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Event is one operation, as rules and hooks see it.
type Event struct {
	Op   Op
	Path string
	From string // Rename and Link: the old name
}

func (e Event) String() string {
	if e.From != "" {
		return e.Op.String() + " " + e.From + " " + e.Path
	}
	return e.Op.String() + " " + e.Path
}

// Rule is a fault, or a hook, at the operations it matches.
type Rule struct {
	Op Op
	// Path is a pattern for Event.Path: a path.Match pattern ("blobs/*/*",
	// ".index.json-*"), or a directory followed by "/..." for everything
	// under it ("blobs/..."). Empty matches any path.
	Path string
	// From is a pattern for Event.From (Rename, Link), as Path.
	From string
	// If, when set, must also return true for the operation to match.
	// It runs under the FS's lock: it must not use the FS.
	If func(Event) bool
	// Nth, when positive, makes the rule fire at the Nth operation it
	// matches only (1-based); zero fires it at every one.
	Nth int
	// After makes the rule fire once the operation is done: Err is then
	// returned for an operation that happened (a fsync whose data may be
	// on disk, a rename that took place), and Hook runs after it.
	After bool
	// Err, when set, is returned by the operation when the rule fires,
	// wrapped as the OS would wrap it (*fs.PathError, *os.LinkError).
	Err error
	// Short is for OpWrite with Err: how many bytes of the buffer are
	// written before Err is returned (a short write). Zero means half of
	// them; a negative value, none.
	Short int
	// Hook, when set, runs when the rule fires: before the operation (or
	// after it, with After), outside of any lock of the FS (it may use it).
	Hook func(Event)
}

// Handle tells how often an added rule matched and fired.
type Handle struct {
	fs *FS
	r  *rule
}

// Matched is how many operations the rule matched so far.
func (h *Handle) Matched() int {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	return h.r.matched
}

// Fired is how many times the rule fired so far.
func (h *Handle) Fired() int {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	return h.r.fired
}

// Remove takes the rule off its FS.
func (h *Handle) Remove() {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	for i, r := range h.fs.rules {
		if r == h.r {
			h.fs.rules = append(h.fs.rules[:i:i], h.fs.rules[i+1:]...)
			return
		}
	}
}

type rule struct {
	Rule
	matched, fired int
}

func match(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		return name == dir || strings.HasPrefix(name, dir+"/")
	}
	ok, err := path.Match(pattern, name)
	return ok && err == nil
}

func (r *rule) matches(ev Event) bool {
	return r.Op == ev.Op && match(r.Path, ev.Path) && (r.From == "" || match(r.From, ev.From)) && (r.If == nil || r.If(ev))
}

// FS is a file system that injects faults into another.
type FS struct {
	inner fsio.FS
	mu    sync.Mutex
	rules []*rule
	omit  map[string]bool
}

var (
	_ fsio.FS          = (*FS)(nil)
	_ fsio.SyncSkipper = (*FS)(nil)
	_ fsio.Linker      = (*FS)(nil)
	_ fsio.Reserver    = (*FS)(nil)
)

// New wraps inner with the rules given (more can be added).
func New(inner fsio.FS, rules ...Rule) *FS {
	f := &FS{inner: inner}
	for _, r := range rules {
		f.Add(r)
	}
	return f
}

// Inner is the wrapped file system.
func (f *FS) Inner() fsio.FS { return f.inner }

// Add adds a rule, after those added before (all the rules that match an
// operation count it; the first that fires with an error decides it).
func (f *FS) Add(r Rule) *Handle {
	f.mu.Lock()
	defer f.mu.Unlock()
	rr := &rule{Rule: r}
	f.rules = append(f.rules, rr)
	return &Handle{fs: f, r: rr}
}

// Clear removes every rule (not the omitted fsyncs).
func (f *FS) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// OmitSync leaves out, from now on, every fsync made for one of purposes
// (fsio.SyncIndexFile...): see fsio.SyncSkipper.
func (f *FS) OmitSync(purposes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.omit == nil {
		f.omit = map[string]bool{}
	}
	for _, p := range purposes {
		f.omit[p] = true
	}
}

// SkipSync implements fsio.SyncSkipper.
func (f *FS) SkipSync(purpose string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.omit[purpose]
}

// fired is what the rules that fire at one operation do.
type fired struct {
	before, after []*rule
}

// check counts ev for every rule that matches it and returns those that
// fire. Rules' If run under f.mu: they must not use the FS.
func (f *FS) check(ev Event) fired {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out fired
	for _, r := range f.rules {
		if !r.matches(ev) {
			continue
		}
		r.matched++
		if r.Nth > 0 && r.matched != r.Nth {
			continue
		}
		r.fired++
		if r.After {
			out.after = append(out.after, r)
		} else {
			out.before = append(out.before, r)
		}
	}
	return out
}

// run runs the hooks of rs and returns the first error among them.
func run(rs []*rule, ev Event) (*rule, error) {
	var first *rule
	for _, r := range rs {
		if r.Hook != nil {
			r.Hook(ev)
		}
		if first == nil && r.Err != nil {
			first = r
		}
	}
	if first == nil {
		return nil, nil
	}
	return first, first.Err
}

// do runs op at ev with the rules that fire there; wrap makes an
// injected error look as the OS's.
func (f *FS) do(ev Event, wrap func(error) error, op func() error) error {
	fr := f.check(ev)
	if _, err := run(fr.before, ev); err != nil {
		return wrap(err)
	}
	if err := op(); err != nil {
		return err
	}
	if _, err := run(fr.after, ev); err != nil {
		return wrap(err)
	}
	return nil
}

func pathErr(op, name string) func(error) error {
	return func(err error) error { return &fs.PathError{Op: op, Path: name, Err: err} }
}

func linkErr(op, oldname, newname string) func(error) error {
	return func(err error) error { return &os.LinkError{Op: op, Old: oldname, New: newname, Err: err} }
}

func (f *FS) Root() string { return f.inner.Root() }
func (f *FS) Close() error { return f.inner.Close() }

func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	var fi fs.FileInfo
	err := f.do(Event{Op: OpLstat, Path: name}, pathErr("lstat", name), func() (err error) {
		fi, err = f.inner.Lstat(name)
		return err
	})
	if err != nil {
		return nil, err
	}
	return fi, nil
}

func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	var ents []fs.DirEntry
	err := f.do(Event{Op: OpReadDir, Path: name}, pathErr("readdirent", name), func() (err error) {
		ents, err = f.inner.ReadDir(name)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ents, nil
}

func (f *FS) Lock(name string, create bool) (fsio.FileLock, error) {
	return f.inner.Lock(name, create)
}

func (f *FS) Open(name string) (fsio.File, error) {
	var file fsio.File
	err := f.do(Event{Op: OpOpen, Path: name}, pathErr("open", name), func() (err error) {
		file, err = f.inner.Open(name)
		return err
	})
	if err != nil && file != nil {
		file.Close() // an injected error after the open
		file = nil
	}
	return file, err
}

func (f *FS) Mkdir(name string, perm fs.FileMode) error {
	return f.do(Event{Op: OpMkdir, Path: name}, pathErr("mkdir", name), func() error { return f.inner.Mkdir(name, perm) })
}

func (f *FS) Rename(oldname, newname string) error {
	return f.do(Event{Op: OpRename, Path: newname, From: oldname}, linkErr("rename", oldname, newname), func() error {
		return f.inner.Rename(oldname, newname)
	})
}

// Link implements fsio.Linker when the wrapped file system does; on one
// that does not, it fails as a file system without hard links (ENOTSUP:
// the trash then unlinks in place).
func (f *FS) Link(oldname, newname string) error {
	return f.do(Event{Op: OpLink, Path: newname, From: oldname}, linkErr("link", oldname, newname), func() error {
		l, ok := f.inner.(fsio.Linker)
		if !ok {
			return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: syscall.ENOTSUP}
		}
		return l.Link(oldname, newname)
	})
}

func (f *FS) Remove(name string) error {
	return f.do(Event{Op: OpRemove, Path: name}, pathErr("remove", name), func() error { return f.inner.Remove(name) })
}

func (f *FS) SyncDir(name string) error {
	return f.do(Event{Op: OpSyncDir, Path: name}, pathErr("sync", name), func() error { return f.inner.SyncDir(name) })
}

func (f *FS) CreateTemp(dir, prefix string) (fsio.TempFile, error) {
	var t fsio.TempFile
	ev := Event{Op: OpCreate, Path: path.Join(dir, prefix)}
	err := f.do(ev, pathErr("open", ev.Path), func() (err error) {
		t, err = f.inner.CreateTemp(dir, prefix)
		return err
	})
	if err != nil {
		if t != nil { // an injected error after the create: the file is left, as a crash would
			t.Close()
		}
		return nil, err
	}
	return &file{fs: f, t: t}, nil
}

// file is a file from CreateTemp.
type file struct {
	fs *FS
	t  fsio.TempFile
}

func (w *file) Name() string { return w.t.Name() }

func (w *file) Write(p []byte) (int, error) {
	ev := Event{Op: OpWrite, Path: w.t.Name()}
	fr := w.fs.check(ev)
	if r, err := run(fr.before, ev); err != nil {
		n := r.Short
		switch {
		case n == 0:
			n = len(p) / 2
		case n < 0:
			n = 0
		}
		n = min(n, len(p))
		if n > 0 {
			if m, werr := w.t.Write(p[:n]); werr != nil {
				return m, werr
			}
		}
		return n, &fs.PathError{Op: "write", Path: ev.Path, Err: err}
	}
	n, err := w.t.Write(p)
	if err != nil {
		return n, err
	}
	if _, err := run(fr.after, ev); err != nil {
		return n, &fs.PathError{Op: "write", Path: ev.Path, Err: err}
	}
	return n, nil
}

func (w *file) Sync() error {
	return w.fs.do(Event{Op: OpSync, Path: w.t.Name()}, pathErr("sync", w.t.Name()), w.t.Sync)
}

func (w *file) Close() error {
	return w.fs.do(Event{Op: OpClose, Path: w.t.Name()}, pathErr("close", w.t.Name()), w.t.Close)
}

// ReplaceFile writes data to a temp file in tmpDir (named as
// fsio.PrepareFile names its own: recovery removes it), syncs it (unless
// it is index.json and fsio.SyncIndexFile fsyncs are omitted) and renames
// it over name, each
// step through the wrapper's rules. Errors are classified as fsio.OS
// classifies them: a failed create or write is returned as it is (nothing
// changed), a failed fsync, close or rename is an fsio.SyncError. A rule
// of OpReplace fires around the whole: before, as a failed create; with
// After, as a failed fsync once name is replaced.
func (f *FS) ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error {
	ev := Event{Op: OpReplace, Path: name}
	fr := f.check(ev)
	if _, err := run(fr.before, ev); err != nil {
		return &fs.PathError{Op: "replace", Path: name, Err: err}
	}
	if err := f.replace(name, tmpDir, data); err != nil {
		return err
	}
	if _, err := run(fr.after, ev); err != nil {
		return &fsio.SyncError{Path: name, Err: err}
	}
	return nil
}

func (f *FS) replace(name, tmpDir string, data []byte) error {
	t, err := f.CreateTemp(tmpDir, "."+path.Base(name)+"-")
	if err != nil {
		return err
	}
	fail := func(err error) error {
		t.Close()
		_ = f.inner.Remove(t.Name())
		return err
	}
	if _, err := t.Write(data); err != nil {
		return fail(err)
	}
	if path.Base(name) != layout.IndexFile || !f.SkipSync(fsio.SyncIndexFile) {
		if err := t.Sync(); err != nil {
			return fail(&fsio.SyncError{Path: name, Err: err})
		}
	}
	if err := t.Close(); err != nil {
		_ = f.inner.Remove(t.Name())
		return &fsio.SyncError{Path: name, Err: err}
	}
	if err := f.Rename(t.Name(), name); err != nil {
		_ = f.inner.Remove(t.Name())
		return &fsio.SyncError{Path: name, Err: err}
	}
	return nil
}

// errNoReserve: the wrapped file system holds no space reserve.
var errNoReserve = fmt.Errorf("errorfs: no space reserve on the wrapped file system: %w", errors.ErrUnsupported)

// Allocate implements fsio.Reserver through the wrapped file system.
func (f *FS) Allocate(name string, size int64) (before, after int64, err error) {
	r, ok := f.inner.(fsio.Reserver)
	if !ok {
		return 0, 0, errNoReserve
	}
	return r.Allocate(name, size)
}

// Avail implements fsio.Reserver through the wrapped file system.
func (f *FS) Avail(dir string) (int64, error) {
	r, ok := f.inner.(fsio.Reserver)
	if !ok {
		return 0, errNoReserve
	}
	return r.Avail(dir)
}
