package protocol

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/recovery"
)

// JournalFile is the journal database, relative to the directory that holds
// the state (the layout, or its shared blob directory).
const JournalFile = layout.StateDir + "/journal.db"

// SharedMarker is the file, in a layout that uses a shared blob directory,
// that names that directory: a later open finds it there without being
// told, and the tools that do not support shared directories refuse the
// layout instead of seeing its blobs missing.
const SharedMarker = layout.StateDir + "/shared-blob-dir"

// Layout is one layout's files as the protocol works on them: the store,
// the repair and the check each open one, instead of borrowing each
// other's handles.
type Layout struct {
	Dir       string  // the layout's directory, absolute
	StateRoot string  // where .ocistore (the journal) lives: Dir, or the shared blob directory
	Scope     string  // the layout's name in a shared journal ("" without a shared blob directory)
	FS        fsio.FS // the layout's files, with blobs/ in the shared blob directory if it has one
	Log       *slog.Logger
	// Now is the clock (nil: time.Now), for leases' expiry.
	Now func() time.Time
}

func (l *Layout) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// LayoutOptions says how to open a Layout.
type LayoutOptions struct {
	// SharedBlobDir is the shared blob directory ("" for none; a caller
	// finds the one a layout was adopted with by SharedBlobDirOf).
	SharedBlobDir string
	// ReadOnly creates nothing and writes no marker; NoCreate creates no
	// layout directory (a shared blob directory is still created).
	ReadOnly, NoCreate bool
	// AsItIs opens a layout whose directories may not be directories
	// (NotDirectories), for fsck and its repair: without it, one of
	// blobs/ and its algorithm directories that is not is an error, and
	// so is .ocistore unless ReadOnly (a reader does not need it). A
	// marker is not written into a .ocistore that is not a directory.
	AsItIs bool
	// SharedFS, in tests, replaces the layout's and the shared blob
	// directory's file systems; FS replaces the layout's (no shared
	// directory).
	SharedFS [2]fsio.FS
	FS       fsio.FS
	Log      *slog.Logger
	Now      func() time.Time
}

// OpenLayout opens the layout in dir (absolute), creating its directory
// unless o says not to. A directory that does not exist is
// errdef.ErrLayoutMissing (which wraps errdef.ErrNotLayout). Unless
// o.AsItIs, a directory of the layout that is not one (NotDirectories) is
// an error wrapping errdef.ErrCorrupt that names it and says to run fsck
// --repair.
func OpenLayout(dir string, o LayoutOptions) (*Layout, error) {
	l := &Layout{Dir: dir, StateRoot: dir, Log: o.Log, Now: o.Now}
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.SharedBlobDir != "":
		if err := l.openShared(o); err != nil {
			return nil, err
		}
		if err := l.checkDirs(o); err != nil {
			l.Close()
			return nil, err
		}
		if err := l.writeMarker(o); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	case o.FS != nil:
		l.FS = o.FS
	default:
		if !o.NoCreate && !o.ReadOnly {
			if err := fsio.CreateRoot(dir); err != nil {
				return nil, err
			}
		}
		osfs, err := fsio.OpenOS(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = errdef.ErrLayoutMissing
			}
			return nil, err
		}
		l.FS = osfs
	}
	if err := l.checkDirs(o); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// NotDirectory is a directory of a layout that is something else: a
// symlink (never followed, whether it leads out of the layout or not), a
// file, a device.
type NotDirectory struct {
	Path string      // relative to the layout root: .ocistore, blobs, blobs/sha256
	Mode fs.FileMode // what is there
}

func (n NotDirectory) String() string {
	return fmt.Sprintf("%s is %s, not a directory", n.Path, KindOf(n.Mode))
}

// BlobAlgorithms are the algorithm directories of blobs/ (the algorithms
// layout.ValidateDigest accepts).
var BlobAlgorithms = []string{"sha256", "sha384", "sha512"}

// NotDirectories returns the directories of the layout in fsys that exist
// and are not directories: .ocistore (the layout's own, for a layout on a
// shared blob directory), blobs/ and its algorithm directories. Nothing
// under one can be taken for the layout's (a symlink may lead anywhere):
// fsck reports each, repair moves each aside, and a store does not open
// (OpenLayout).
func NotDirectories(fsys fsio.FS) ([]NotDirectory, error) {
	var out []NotDirectory
	look := func(fsys fsio.FS, name string) (bool, error) {
		fi, err := fsys.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return false, nil
		case err != nil:
			return false, err
		case !fi.IsDir():
			out = append(out, NotDirectory{Path: name, Mode: fi.Mode()})
			return false, nil
		}
		return true, nil
	}
	lfs := fsys
	if sh, ok := fsys.(*fsio.Shared); ok {
		lfs = sh.Layout
	}
	if _, err := look(lfs, layout.StateDir); err != nil {
		return nil, err
	}
	ok, err := look(fsys, layout.BlobsDir)
	if err != nil || !ok {
		return out, err
	}
	for _, alg := range BlobAlgorithms {
		if _, err := look(fsys, layout.BlobsDir+"/"+alg); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// checkDirs refuses a layout whose directories are not all directories
// (see LayoutOptions.AsItIs).
func (l *Layout) checkDirs(o LayoutOptions) error {
	if o.AsItIs {
		return nil
	}
	bad, err := NotDirectories(l.FS)
	if err != nil {
		return err
	}
	for _, b := range bad {
		if o.ReadOnly && b.Path == layout.StateDir {
			continue
		}
		return fmt.Errorf("%s: run ocistore fsck --repair: %w", b, errdef.ErrCorrupt)
	}
	return nil
}

// Close closes the layout's file system.
func (l *Layout) Close() error { return l.FS.Close() }

// LayoutFS returns the file system of the layout's own files (not the
// shared blob directory's).
func (l *Layout) LayoutFS() fsio.FS {
	if sh, ok := l.FS.(*fsio.Shared); ok {
		return sh.Layout
	}
	return l.FS
}

// JournalPath is the journal's file: in the layout, or in the shared blob
// directory.
func (l *Layout) JournalPath() string { return filepath.Join(l.StateRoot, JournalFile) }

// openShared sets the layout up on a shared blob directory: the layout's
// files in dir, its blobs and its state in the shared directory, its own
// state in the shared journal under its absolute path (symlinks resolved,
// so that two spellings of one layout are one layout).
func (l *Layout) openShared(o LayoutOptions) error {
	shared, err := filepath.Abs(o.SharedBlobDir)
	if err != nil {
		return fmt.Errorf("shared blob directory %s: %w", o.SharedBlobDir, err)
	}
	lfs, bfs, scope := o.SharedFS[0], o.SharedFS[1], l.Dir // tests
	if lfs == nil {
		if lfs, bfs, scope, err = openSharedDirs(l.Dir, shared, o); err != nil {
			return err
		}
	}
	l.FS = &fsio.Shared{Layout: lfs, Blobs: bfs}
	l.StateRoot, l.Scope = shared, scope
	return nil
}

// writeMarker records the shared blob directory in the layout, unless
// read-only, or as it is with a .ocistore that is not a directory (the
// repair moves it aside; the open that follows writes the marker).
func (l *Layout) writeMarker(o LayoutOptions) error {
	if o.ReadOnly {
		return nil
	}
	lfs := l.LayoutFS()
	if o.AsItIs {
		if fi, err := lfs.Lstat(layout.StateDir); err == nil && !fi.IsDir() {
			return nil
		}
	}
	return writeSharedMarker(lfs, l.StateRoot)
}

// openSharedDirs opens (creating them unless read-only) the layout and the
// shared blob directory, and names the layout by its path with symlinks
// resolved.
func openSharedDirs(dir, shared string, o LayoutOptions) (lfs, bfs fsio.FS, scope string, err error) {
	if !o.ReadOnly {
		if err := fsio.CreateRoot(shared); err != nil {
			return nil, nil, "", fmt.Errorf("shared blob directory %s: %w", shared, err)
		}
		if !o.NoCreate {
			if err := fsio.CreateRoot(dir); err != nil {
				return nil, nil, "", err
			}
		}
	}
	if scope, err = filepath.EvalSymlinks(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = errdef.ErrLayoutMissing
		}
		return nil, nil, "", err
	}
	lf, err := fsio.OpenOS(dir)
	if err != nil {
		return nil, nil, "", err
	}
	bf, err := fsio.OpenOS(shared)
	if err != nil {
		lf.Close()
		return nil, nil, "", fmt.Errorf("shared blob directory %s: %w", shared, err)
	}
	return lf, bf, scope, nil
}

// writeSharedMarker records shared in the layout (durably), unless it
// already names it.
func writeSharedMarker(lfs fsio.FS, shared string) error {
	want := shared + "\n"
	if b, err := fsio.ReadFile(lfs, SharedMarker, 4096); err == nil && string(b) == want {
		return nil
	}
	if _, err := fsio.MkdirDurable(lfs, layout.StateDir); err != nil {
		return fmt.Errorf("%s: %w", layout.StateDir, err)
	}
	if err := lfs.ReplaceFile(SharedMarker, ".", []byte(want), 0o644); err != nil {
		return fmt.Errorf("%s: %w", SharedMarker, err)
	}
	if err := lfs.SyncDir(layout.StateDir); err != nil {
		return &fsio.SyncError{Path: layout.StateDir, Err: err}
	}
	return nil
}

// SharedBlobDirOf returns the shared blob directory the layout in dir was
// opened with ("" when none), from its marker. A .ocistore that is not a
// directory holds no marker, and is not looked into (a symlink is not
// followed): "" (OpenLayout then refuses it to a writer, and fsck reports
// it).
func SharedBlobDirOf(dir string) (string, error) {
	if fi, err := os.Lstat(filepath.Join(dir, layout.StateDir)); err == nil && !fi.IsDir() {
		return "", nil
	}
	p := filepath.Join(dir, SharedMarker)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Size() > 4096 {
		return "", fmt.Errorf("%s: not a small regular file: %w", p, errdef.ErrCorrupt)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	d := strings.TrimSpace(string(b))
	if d == "" || !filepath.IsAbs(d) {
		return "", fmt.Errorf("%s: %q is not an absolute path: %w", p, d, errdef.ErrCorrupt)
	}
	return d, nil
}

// SharedDirFor returns the shared blob directory of the layout in dir: the
// one its marker names, else want (a layout not adopted yet; "" when it
// has none). A want that is not the directory the marker names is an
// error: the layout's journal and refcounts are in the marker's.
func SharedDirFor(dir, want string) (string, error) {
	marked, err := SharedBlobDirOf(dir)
	if err != nil || want == "" {
		return marked, err
	}
	if want, err = filepath.Abs(want); err != nil {
		return "", err
	}
	if marked != "" && !sameDir(marked, want) {
		return "", fmt.Errorf("the layout uses the shared blob directory %s (%s), not %s: %w", marked, SharedMarker, want, errdef.ErrInvalidArgument)
	}
	return want, nil
}

// sameDir reports whether a and b name one directory (symlinks resolved
// when they exist).
func sameDir(a, b string) bool {
	if a == b {
		return true
	}
	ra, erra := filepath.EvalSymlinks(a)
	rb, errb := filepath.EvalSymlinks(b)
	return erra == nil && errb == nil && ra == rb
}

// Locked words a lock timeout of a journal open: the layout, the wait and
// the file.
func (l *Layout) Locked(waited time.Duration, err error) error {
	if errors.Is(err, errdef.ErrLocked) {
		return fmt.Errorf("layout %s is locked by another process (waited %s for %s): %w", l.Dir, waited, JournalFile, errdef.ErrLocked)
	}
	return err
}

// Env returns base for work under the lock db holds: with a shared blob
// directory, recovery counts the other layouts' references too.
func (l *Layout) Env(db *journal.DB, base Env) Env {
	base.FS = l.FS
	if base.Log == nil {
		base.Log = l.Log
	}
	if l.Scope != "" {
		base.Peers = func() ([]layout.Entry, error) { return l.PeerEntries(db) }
	}
	return base
}

// PeerEntries returns the root entries of every other layout registered in
// the shared journal, from its index.json on disk. When that file cannot be
// read (the layout was moved or removed, its disk is not mounted, another
// tool left it torn), the index the layout last committed through the
// journal stands in for it, so that its blobs stay counted: nothing is
// freed because a layout is out of sight. A layout with neither is skipped
// with a warning.
func (l *Layout) PeerEntries(db *journal.DB) ([]layout.Entry, error) {
	return l.entriesBut(db, l.Scope)
}

// entriesBut is PeerEntries from the point of view of the layout except:
// every registered layout but that one.
func (l *Layout) entriesBut(db *journal.DB, except string) ([]layout.Entry, error) {
	var scopes []string
	if err := db.View(func(tx *journal.Tx) error { scopes = tx.Layouts(); return nil }); err != nil {
		return nil, err
	}
	var out []layout.Entry
	for _, sc := range scopes {
		if sc == except {
			continue
		}
		ix, err := readPeerIndex(sc)
		if err != nil {
			var committed []byte
			_ = db.View(func(tx *journal.Tx) error { _, committed = tx.LayoutIndex(sc); return nil })
			if committed != nil {
				ix, err = layout.ParseIndex(committed)
			}
			if err != nil || ix == nil {
				l.Log.Warn("a layout sharing the blob directory has no readable index; its references are not counted", "peer", sc, "err", err)
				continue
			}
			l.Log.Warn("a layout sharing the blob directory has no readable index.json; counting the index it last committed", "peer", sc)
		}
		out = append(out, ix.Entries...)
	}
	return out, nil
}

// readPeerIndex reads the index.json of the layout in dir, never following
// a symlink out of it.
func readPeerIndex(dir string) (*layout.Index, error) {
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	b, err := fsio.ReadFile(fsys, layout.IndexFile, layout.MaxIndexSize)
	if err != nil {
		return nil, err
	}
	return layout.ParseIndex(b)
}

// Recover runs recovery under the lock db holds, as a writer that needs
// the index does first: on a shared blob directory, the other layouts'
// interrupted transactions first (RecoverPeers), then this layout's (Run),
// then the recount of what other tools changed in the other layouts
// (Reconcile).
func (l *Layout) Recover(ctx context.Context, db *journal.DB, env Env) (*State, error) {
	if l.Scope != "" {
		if err := l.RecoverPeers(ctx, db); err != nil {
			return nil, err
		}
	}
	st, err := Run(ctx, env, db, nil)
	if err == nil && l.Scope != "" {
		st, err = l.Reconcile(ctx, db, env, st)
	}
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	return st, nil
}

// Reconcile recounts when another layout sharing the blob directory
// changed its index.json outside ocistore (see ReconcilePeers): every
// transaction checks, so that a blob another tool just referenced from
// another layout is never freed here.
func (l *Layout) Reconcile(ctx context.Context, db *journal.DB, env Env, st *State) (*State, error) {
	changes, err := PeerChanges(db, l.Scope)
	if err != nil || len(changes) == 0 {
		return st, err
	}
	if st.Index == nil {
		if st, err = Run(ctx, env, db, nil); err != nil {
			return nil, err
		}
	}
	if err := ReconcilePeers(env, db, st, changes); err != nil {
		return nil, err
	}
	st.Actions = append(st.Actions, recovery.Action{Kind: "recount", Detail: fmt.Sprintf("%d layouts sharing the blob directory changed outside ocistore", len(changes))})
	return st, nil
}

// RecoverPeers runs recovery for every other layout of the shared journal
// that has a pending record (a process working on it crashed), before this
// layout does anything: its record's refcounts are in the shared counts,
// so until it is finished or rolled back, a blob its index.json on disk may
// still reach can have a count of zero, and a GC or a delete here could
// free it. A layout that cannot be reached keeps its record (and what its
// record freed is left alone: see GC's pending check).
func (l *Layout) RecoverPeers(ctx context.Context, db *journal.DB) error {
	var peers []string
	if err := db.View(func(tx *journal.Tx) error {
		for _, sc := range tx.Layouts() {
			if sc == l.Scope {
				continue
			}
			if o := tx.In(sc); o != nil {
				if recs, err := o.Pending(); err == nil && len(recs) > 0 {
					peers = append(peers, sc)
				}
			}
		}
		return nil
	}); err != nil {
		return err
	}
	blobs := l.FS.(*fsio.Shared).Blobs
	for _, sc := range peers {
		pfs, err := fsio.OpenOS(sc)
		if err != nil {
			l.Log.Warn("cannot recover a layout sharing the blob directory", "peer", sc, "err", err)
			continue
		}
		pdb := db.WithScope(sc)
		env := Env{
			FS:    &fsio.Shared{Layout: pfs, Blobs: blobs},
			Log:   l.Log.With(slog.String("peer", sc)),
			Peers: func() ([]layout.Entry, error) { return l.entriesBut(pdb, sc) },
		}
		st, err := Run(ctx, env, pdb, nil)
		pfs.Close()
		if err != nil {
			return fmt.Errorf("recover layout %s (sharing the blob directory): %w", sc, err)
		}
		for _, a := range st.Actions {
			l.Log.Info("recovered a layout sharing the blob directory", "peer", sc, "action", a.Kind, "txn", a.Txn)
		}
	}
	return nil
}
