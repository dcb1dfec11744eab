package fsck

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// The check of a layout by its directory, without opening it as a store:
// no recovery runs first, so an interrupted transaction shows as a pending
// record.

// DefaultLockTimeout is how long a check waits for a writer when its
// options say nothing.
const DefaultLockTimeout = 30 * time.Second

// checkDirOnce checks the layout in dir as it is (see store.CheckDir). The
// blobs of a layout on a shared blob directory are looked for there: the
// one its marker names (.ocistore/shared-blob-dir, written when ocistore
// adopted it), or o.SharedBlobDir for a layout not adopted yet (skopeo
// copied into it with --dest-shared-blob-dir).
func checkDirOnce(ctx context.Context, dir string, o *recovery.CheckOptions) (*recovery.Report, error) {
	var want string
	lockTimeout := DefaultLockTimeout
	if o != nil {
		want = o.SharedBlobDir
		if o.LockTimeout != 0 {
			lockTimeout = o.LockTimeout
		}
	}
	if shared, err := protocol.SharedDirFor(dir, want); err != nil {
		return nil, fmt.Errorf("check %s: %w", dir, err)
	} else if shared != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		return checkSharedDir(ctx, abs, shared, lockTimeout, o)
	}
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", dir, err)
	}
	defer fsys.Close()
	// bbolt opens the journal by path, outside os.Root: a .ocistore or a
	// journal.db that is not what it should be (a symlink out of the layout)
	// is reported, never opened. The check reports a .ocistore that is not
	// a directory itself (not-directory).
	if bad, detail := protocol.JournalNotRegular(fsys); bad != "" {
		rep, err := CheckWith(ctx, fsys, nil, o)
		if err != nil || bad == layout.StateDir {
			return rep, err
		}
		rep.Problems = append(rep.Problems[:len(rep.Problems)-1], finding(recovery.KindJournalCorrupt, "", bad, detail))
		return rep, nil
	}
	path := filepath.Join(dir, protocol.JournalFile)
	db, err := journal.Open(path, journal.Options{Snapshot: true, ReadOnly: true, LockTimeout: lockTimeout})
	if errors.Is(err, errdef.ErrCorrupt) {
		if nerr := protocol.NewerJournalAt(path, lockTimeout); nerr != nil {
			err = nerr // damaged, and newer: newer says what to do
		}
	}
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		db = nil
	case errors.Is(err, errdef.ErrCorrupt), errors.Is(err, errdef.ErrJournalNewer):
		return checkWithoutJournal(ctx, fsys, o, err)
	case err != nil:
		return nil, fmt.Errorf("check: %w", (&protocol.Layout{Dir: dir}).Locked(lockTimeout, err))
	}
	if db != nil {
		defer db.Close()
	}
	rep, err := CheckWith(ctx, fsys, db, o)
	if err != nil {
		return nil, err
	}
	if err := DropLeasedOrphans(rep, db, time.Now()); err != nil {
		return nil, fmt.Errorf("check: leases: %w", err)
	}
	return rep, nil
}

// checkWithoutJournal checks the layout in fsys without its journal, which
// could not be read (err says why): the report's journal-missing is then
// journal-newer or journal-corrupt.
func checkWithoutJournal(ctx context.Context, fsys fsio.FS, o *recovery.CheckOptions, err error) (*recovery.Report, error) {
	rep, cerr := CheckWith(ctx, fsys, nil, o)
	if cerr != nil {
		return nil, cerr
	}
	kind := recovery.KindJournalCorrupt
	if errors.Is(err, errdef.ErrJournalNewer) {
		kind = recovery.KindJournalNewer
	}
	rep.Problems = append(rep.Problems[:len(rep.Problems)-1], finding(kind, "", protocol.JournalFile, err.Error()))
	return rep, nil
}

// checkSharedDir is CheckDir for a layout with a shared blob
// directory: the layout as it is (no recovery), with the other layouts'
// references counted.
func checkSharedDir(ctx context.Context, dir, shared string, lockTimeout time.Duration, o *recovery.CheckOptions) (*recovery.Report, error) {
	l, err := protocol.OpenLayout(dir, protocol.LayoutOptions{SharedBlobDir: shared, ReadOnly: true, AsItIs: true})
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", dir, err)
	}
	defer l.Close()
	var opts recovery.CheckOptions
	if o != nil {
		opts = *o
	}
	var peers []layout.Entry
	db, err := journal.Open(l.JournalPath(), journal.Options{Snapshot: true, ReadOnly: true, LockTimeout: lockTimeout, Scope: l.Scope})
	if errors.Is(err, errdef.ErrCorrupt) {
		if nerr := protocol.NewerJournalAt(l.JournalPath(), lockTimeout); nerr != nil {
			err = nerr
		}
	}
	// shdb is the shared journal, for the other layouts and the leases:
	// db, or when db holds no state for this layout (not adopted yet),
	// the journal of the layouts that are.
	shdb := db
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		db = nil
		shdb, err = journal.Open(l.JournalPath(), journal.Options{Snapshot: true, ReadOnly: true, LockTimeout: lockTimeout})
		switch {
		case errors.Is(err, errdef.ErrNotFound):
			shdb = nil
		case err != nil:
			return nil, fmt.Errorf("check %s: %w", dir, l.Locked(lockTimeout, err))
		}
	case errors.Is(err, errdef.ErrJournalNewer):
		return checkWithoutJournal(ctx, l.FS, &opts, err)
	case err != nil:
		return nil, fmt.Errorf("check %s: %w", dir, l.Locked(lockTimeout, err))
	}
	if shdb != nil {
		defer shdb.Close()
		if peers, err = l.PeerEntries(shdb); err != nil {
			return nil, fmt.Errorf("check %s: %w", dir, err)
		}
	}
	rep, err := CheckShared(ctx, l.FS, db, &opts, peers)
	if err != nil || shdb == nil {
		return rep, err
	}
	if err := DropLeasedOrphans(rep, shdb, time.Now()); err != nil {
		return nil, fmt.Errorf("check: leases: %w", err)
	}
	return rep, nil
}

// DropLeasedOrphans removes from rep the orphans that a live lease protects:
// they are not garbage (the blob files are the closure of index.json plus leased blobs).
func DropLeasedOrphans(rep *recovery.Report, db *journal.DB, now time.Time) error {
	if db == nil {
		return nil
	}
	var leased map[digest.Digest]bool
	if err := db.View(func(tx *journal.Tx) error {
		var err error
		leased, err = tx.Leased(now)
		return err
	}); err != nil {
		return err
	}
	if len(leased) == 0 {
		return nil
	}
	kept := rep.Problems[:0]
	for _, p := range rep.Problems {
		if p.Kind == recovery.KindOrphan && leased[digest.Digest(p.Digest)] {
			continue
		}
		kept = append(kept, p)
	}
	rep.Problems = kept
	return nil
}
