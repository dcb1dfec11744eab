package protocol

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// The journal's file: opening it takes the writer lock; a damaged one is
// rebuilt from the layout, keeping the leases it can still read.

// OpenJournal opens the journal read-write, taking the layout's writer lock.
// A missing or empty database is created (and its directory synced); a
// corrupt one is moved aside and rebuilt from the layout by the recovery that
// follows, keeping the leases it can still read (RebuildJournal). One that
// a newer ocistore wrote is refused (ErrJournalNewer) and left as it is,
// even when it is damaged too, as long as its version can be read.
//
// The wait for another process's lock (o.LockTimeout: zero forever,
// negative not at all) ends early, with ctx's error, when ctx is done.
func (l *Layout) OpenJournal(ctx context.Context, o journal.Options) (*journal.DB, error) {
	o.Scope = l.Scope
	lockTimeout := o.LockTimeout
	if _, err := fsio.MkdirDurable(l.FS, layout.StateDir); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := l.FinishRebuild(); err != nil {
		return nil, err
	}
	path := l.JournalPath()
	if fi, err := l.FS.Lstat(layout.IndexFile); err == nil && o.MapHint == 0 {
		// The journal of a layout takes about six times its index.json
		// (the counts and children of every blob, a copy of the index):
		// a first open of a large layout maps it all at once.
		o.MapHint = 8 * fi.Size()
	}
	db, err := openWaiting(ctx, path, o)
	// A damaged journal is judged again under its lock, and rebuilt while
	// the lock is held (journal.LockDamaged): a sound one is opened again.
	for tries := 0; errors.Is(err, errdef.ErrCorrupt) && tries < rebuildTries; tries++ {
		if err = l.rebuildDamaged(path, lockTimeout); err == nil {
			db, err = openWaiting(ctx, path, o)
		}
	}
	if errors.Is(err, errdef.ErrLocked) {
		return nil, l.Locked(lockTimeout, err)
	}
	if err != nil {
		return nil, err
	}
	if db.Created {
		crash.Point(crash.JournalCreated)
		if err := fsio.SyncDirFor(l.FS, fsio.SyncJournalDir, layout.StateDir); err != nil {
			db.Close()
			return nil, err
		}
		l.Log.Info("journal created; counting references from the layout", "path", path)
	}
	return db, nil
}

// OpenWaiting opens the journal at path as openWaiting does: for a caller
// that must open it as it is, outside OpenJournal (fsck's repair).
func OpenWaiting(ctx context.Context, path string, o journal.Options) (*journal.DB, error) {
	return openWaiting(ctx, path, o)
}

// lockPoll is how long one try of openWaiting waits for the lock before
// it looks at its context again.
const lockPoll = 50 * time.Millisecond

// openWaiting opens the journal at path, waiting for another process's
// lock as o.LockTimeout says, in tries of lockPoll that each look at ctx
// first: a caller that gives up (a cancelled context, Ctrl-C) is not held
// for the whole lock timeout.
func openWaiting(ctx context.Context, path string, o journal.Options) (*journal.DB, error) {
	if ctx.Done() == nil || o.LockTimeout < 0 {
		return journal.Open(path, o)
	}
	var deadline time.Time
	if o.LockTimeout > 0 {
		deadline = time.Now().Add(o.LockTimeout)
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("wait for the writer lock: %w", err)
		}
		try := o
		try.LockTimeout = lockPoll
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				try.LockTimeout = -1 // one last try
			} else {
				try.LockTimeout = min(lockPoll, left)
			}
		}
		db, err := journal.Open(path, try)
		if !errors.Is(err, errdef.ErrLocked) || try.LockTimeout < 0 {
			return db, err
		}
	}
}

// rebuildTries bounds how many times an open that finds the journal
// damaged judges it under the lock and opens it again: each time it was
// sound under the lock (rebuilt by another process, or seen in the middle
// of a commit), and damaged at the next open.
const rebuildTries = 3

// rebuildDamaged rebuilds the journal an open found damaged, if it still is
// under its lock (else nothing: the caller opens it again). One that a
// newer ocistore wrote is refused (ErrJournalNewer), damaged or not.
func (l *Layout) rebuildDamaged(path string, lockTimeout time.Duration) error {
	dj, err := journal.LockDamaged(path, lockTimeout)
	if errors.Is(err, errdef.ErrLocked) {
		return l.Locked(lockTimeout, err)
	}
	if errors.Is(err, fs.ErrNotExist) {
		// Gone meanwhile: a rebuild by an older version between its two
		// renames (put in place here), or a journal removed by hand (the
		// open creates one).
		return l.FinishRebuild()
	}
	if err != nil {
		return err
	}
	defer dj.Close()
	switch {
	case dj.Why == nil:
		l.Log.Info("journal found sound under the lock: opened again", "path", path)
		return nil
	case errors.Is(dj.Why, errdef.ErrJournalNewer):
		return dj.Why
	case dj.Salvaged != nil && dj.Salvaged.Newer():
		return dj.Salvaged.NewerError(path)
	case dj.Salvaged == nil:
		l.Log.Warn("nothing could be salvaged from the corrupt journal", "err", dj.Why)
	}
	_, err = l.RebuildJournal(dj.Why, dj, dj.Salvaged, lockTimeout)
	return err
}

// RebuildPin is how long nothing is freed (by a transaction, GC or prune)
// after the journal was rebuilt without the leases of the one it replaced
// (they could not be read): a lease's blobs are unknown then, so any
// unreferenced blob may be one of them. There is no maximum lease length;
// a day covers the leases operations take for themselves (an hour,
// renewed while they run) and the pulls of a cache. A lease longer than
// that, lost with its journal, protects nothing after it.
const RebuildPin = 24 * time.Hour

// journalRebuild is the new journal while it is built, before it takes
// the damaged one's place.
const journalRebuild = JournalFile + ".rebuild"

// Rebuilt says what RebuildJournal kept.
type Rebuilt struct {
	Aside  string    // where the damaged journal is now
	Leases int       // leases put back
	Pinned time.Time // nothing is freed before (zero: no pin)
}

// RebuildJournal replaces the damaged journal (why it is) by a new one
// that holds the leases salv read from it (nil: nothing could be read),
// and, when leases may have been lost, a pin: nothing is freed for
// RebuildPin. The layout's state (refcounts, committed index, image
// metadata) is not copied: recovery counts it from the layout.
//
// dj is the damaged journal under its lock (journal.LockDamaged), held
// until the new one is in its place: no writer commits to the old one
// meanwhile, no other process rebuilds it, and one that waited for its
// lock finds the new file when it gets it (the open checks that the file
// it locked is still at the path). The new journal is built aside
// (journalRebuild) and synced; the damaged one's bytes are copied to
// journal.db.corrupt-<time> and synced; then the new one is renamed over
// the damaged one. There is always a journal at the path, so an open never
// creates an empty one in between; a crash before the last rename leaves
// the damaged journal, which the next open rebuilds again.
//
// dj is nil only for a journal that is not a regular file (fsck: a symlink
// or a directory, which no writer can open or lock): it is renamed aside,
// then the new one into its place (FinishRebuild completes that after a
// crash).
func (l *Layout) RebuildJournal(why error, dj *journal.Damaged, salv *journal.Salvaged, lockTimeout time.Duration) (Rebuilt, error) {
	var out Rebuilt
	if err := l.FS.Remove(journalRebuild); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return out, fmt.Errorf("%w (removing %s: %v)", why, journalRebuild, err)
	}
	db, err := journal.Open(filepath.Join(l.StateRoot, journalRebuild), journal.Options{LockTimeout: lockTimeout})
	if err != nil {
		return out, fmt.Errorf("%w (building a new journal: %v)", why, err)
	}
	now := l.now()
	lost := salv == nil || salv.LeasesLost || salv.Newer()
	err = db.Update(func(tx *journal.Tx) error {
		if salv != nil {
			for _, l := range salv.Leases {
				if l.Expired(now) {
					continue
				}
				if err := tx.PutLease(l.Lease); err != nil {
					return err
				}
				if err := tx.AddLeaseBlobs(l.ID, l.Blobs...); err != nil {
					return err
				}
				out.Leases++
			}
		}
		if lost {
			out.Pinned = now.Add(RebuildPin)
			return tx.SetPinnedUntil(now, out.Pinned)
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Rebuilt{}, fmt.Errorf("build a new journal: %w", err)
	}
	if err := l.FS.SyncDir(layout.StateDir); err != nil {
		return Rebuilt{}, &fsio.SyncError{Path: layout.StateDir, Err: err}
	}
	if dj == nil {
		if out.Aside, err = l.MoveJournalAside(why); err != nil {
			return Rebuilt{}, err
		}
		if err := l.FinishRebuild(); err != nil {
			return Rebuilt{}, err
		}
	} else {
		if out.Aside, err = l.copyJournalAside(why, dj); err != nil {
			return Rebuilt{}, err
		}
		if err := l.FS.Rename(journalRebuild, JournalFile); err != nil {
			return Rebuilt{}, fmt.Errorf("%w (putting the new journal in place: %v)", why, err)
		}
		if err := l.FS.SyncDir(layout.StateDir); err != nil {
			return Rebuilt{}, &fsio.SyncError{Path: layout.StateDir, Err: err}
		}
	}
	if out.Leases > 0 {
		l.Log.Warn("journal rebuilt: the leases that could be read are kept", "leases", out.Leases)
	}
	if lost {
		l.Log.Warn("journal rebuilt without all its leases: nothing is freed until the pin ends", "until", out.Pinned)
	}
	return out, nil
}

// FinishRebuild puts the journal RebuildJournal built in place when a crash
// left it aside with no journal (after the damaged one was moved away).
func (l *Layout) FinishRebuild() error {
	if _, err := l.FS.Lstat(JournalFile); !errors.Is(err, fs.ErrNotExist) {
		return nil // there is a journal (or the open reports why not)
	}
	if fi, err := l.FS.Lstat(journalRebuild); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if err := l.FS.Rename(journalRebuild, JournalFile); err != nil {
		return fmt.Errorf("journal: put the rebuilt one in place: %w", err)
	}
	if err := l.FS.SyncDir(layout.StateDir); err != nil {
		return &fsio.SyncError{Path: layout.StateDir, Err: err}
	}
	return nil
}

// NewerJournal is NewerJournalAt for the layout's journal, which is not
// opened when it, or .ocistore, is not what it should be (a symlink out of
// the layout is never followed: the open that follows reports it).
func (l *Layout) NewerJournal(lockTimeout time.Duration) error {
	if bad, _ := JournalNotRegular(l.FS); bad != "" {
		return nil
	}
	return NewerJournalAt(l.JournalPath(), lockTimeout)
}

// NewerJournalAt returns an error wrapping ErrJournalNewer when a newer
// ocistore wrote the journal at path, damaged or not (a damaged one is
// salvaged read-only for its version); nil otherwise, whatever else may be
// wrong with it (the caller's own open reports that). It changes nothing
// and waits at most lockTimeout for a writer (negative: not at all, and a
// journal a writer holds passes).
func NewerJournalAt(path string, lockTimeout time.Duration) error {
	db, err := journal.Open(path, journal.Options{Snapshot: true, ReadOnly: true, LockTimeout: lockTimeout})
	switch {
	case err == nil:
		return db.Close()
	case errors.Is(err, errdef.ErrJournalNewer):
		return err
	case errors.Is(err, errdef.ErrCorrupt):
		if salv, _ := journal.SalvageFile(path, lockTimeout); salv != nil && salv.Newer() {
			return salv.NewerError(path)
		}
	}
	return nil
}

// JournalNotRegular returns the path of .ocistore or of the journal when it
// exists but is not a directory, or not a regular file, with why.
func JournalNotRegular(fsys fsio.FS) (string, string) {
	for _, c := range []struct {
		path string
		ok   func(fs.FileMode) bool
		want string
	}{
		{layout.StateDir, fs.FileMode.IsDir, "a directory"},
		{JournalFile, fs.FileMode.IsRegular, "a regular file"},
	} {
		fi, err := fsys.Lstat(c.path)
		if errors.Is(err, fs.ErrNotExist) {
			return "", ""
		}
		if err != nil {
			return c.path, err.Error()
		}
		if !c.ok(fi.Mode()) {
			return c.path, fmt.Sprintf("%s is %s, not %s: not opened (fsck --repair moves it aside)", c.path, KindOf(fi.Mode()), c.want)
		}
	}
	return "", ""
}

// JournalAtIsRegular is JournalNotRegular for the layout or shared blob
// directory root, by its path: whether a reader may open or probe its
// journal by path (missing counts as regular: there is nothing to follow).
func JournalAtIsRegular(root string) bool {
	fsys, err := fsio.OpenOS(root)
	if err != nil {
		return false
	}
	defer fsys.Close()
	bad, _ := JournalNotRegular(fsys)
	return bad == ""
}

// KindOf words a file mode for messages ("a symlink", "a directory").
func KindOf(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}

// copyJournalAside writes the bytes of the damaged journal dj to
// journal.db.corrupt-<unix nanoseconds>, synced, for a person to look at,
// and returns that name. The journal itself stays at its path until the
// new one is renamed over it.
func (l *Layout) copyJournalAside(why error, dj *journal.Damaged) (string, error) {
	aside := asideName()
	l.Log.Warn("journal is corrupt; keeping a copy aside and rebuilding from the layout", "err", why, "aside", aside)
	f, err := l.FS.CreateTemp(layout.StateDir, ".journal.db.corrupt-partial-")
	if err != nil {
		return "", fmt.Errorf("%w (copying it aside: %v)", why, err)
	}
	_, err = dj.WriteTo(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = l.FS.Rename(f.Name(), aside)
	}
	if err != nil {
		_ = l.FS.Remove(f.Name())
		return "", fmt.Errorf("%w (copying it aside: %v)", why, err)
	}
	return aside, nil
}

func asideName() string { return fmt.Sprintf("%s.corrupt-%d", JournalFile, time.Now().UnixNano()) }

// MoveJournalAside renames the damaged journal to
// journal.db.corrupt-<unix nanoseconds> and syncs .ocistore, so that a new
// one can be built from the layout; the old file stays for a person to look
// at. It returns the new name.
func (l *Layout) MoveJournalAside(why error) (string, error) {
	aside := asideName()
	l.Log.Warn("journal is corrupt; keeping it aside and rebuilding from the layout", "err", why, "aside", aside)
	if err := l.FS.Rename(JournalFile, aside); err != nil {
		return "", fmt.Errorf("%w (moving it aside: %v)", why, err)
	}
	if err := l.FS.SyncDir(layout.StateDir); err != nil {
		return "", &fsio.SyncError{Path: layout.StateDir, Err: err}
	}
	return aside, nil
}
