package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/ocistore/ocistore/internal/protocol"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/recovery"
)

// Recover takes the writer lock and runs recovery (it also runs on Open and
// before every transaction). It returns what it did, including what the
// recovery run by Open did.
func (s *Store) Recover(ctx context.Context) (acts []protocol.Action, err error) {
	err = s.freeing(ctx, "recover", false, func() error {
		acts, err = s.recoverNow(ctx)
		return err
	})
	return acts, err
}

func (s *Store) recoverNow(ctx context.Context) ([]protocol.Action, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	db, err := s.openJournal()
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	defer db.Close()
	st, err := protocol.Run(ctx, s.envFor(db), db, nil)
	if err != nil {
		return nil, s.check(fmt.Errorf("recover: %w", err))
	}
	return append(append([]protocol.Action(nil), s.opened...), st.Actions...), nil
}

// Pending returns the journal's unfinished transaction records (there are
// none between transactions of a healthy store).
func (s *Store) Pending(ctx context.Context) ([]*journal.Record, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	return PendingRecords(s.dir, s.opts.LockTimeout)
}

// PendingRecords reads the pending records of the layout in dir without
// opening it as a store (so without running recovery).
func PendingRecords(dir string, lockTimeout time.Duration) ([]*journal.Record, error) {
	if shared, err := SharedBlobDirOf(dir); err != nil {
		return nil, err
	} else if shared != "" {
		return sharedPending(dir, shared, lockTimeout)
	}
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		return nil, err
	}
	bad, detail := journalNotRegular(fsys)
	fsys.Close()
	if bad != "" {
		return nil, fmt.Errorf("%s: %w", detail, errdef.ErrCorrupt)
	}
	return readPending(dir, filepath.Join(dir, JournalPath), "", lockTimeout)
}

// readPending reads the pending records of the layout in dir from the
// journal at path (scope: its name in a shared journal).
func readPending(dir, path, scope string, lockTimeout time.Duration) ([]*journal.Record, error) {
	db, err := journal.Open(path, journal.Options{ReadOnly: true, LockTimeout: lockTimeout, Scope: scope})
	if err != nil {
		return nil, lockedMessage(dir, lockTimeout, err)
	}
	defer db.Close()
	var recs []*journal.Record
	err = db.View(func(tx *journal.Tx) error {
		var err error
		recs, err = tx.Pending()
		return err
	})
	return recs, err
}

// lockedMessage words a lock timeout of a read-only journal open the way
// writers word theirs.
func lockedMessage(dir string, waited time.Duration, err error) error {
	if errors.Is(err, errdef.ErrLocked) {
		return fmt.Errorf("layout %s is locked by another process (waited %s for %s): %w", dir, waited, JournalPath, errdef.ErrLocked)
	}
	return err
}

// Check runs the quick consistency check of the layout (see recovery.Check)
// under the writer lock, so that no transaction is half done while it looks.
func (s *Store) Check(ctx context.Context) (*recovery.Report, error) {
	return s.CheckWith(ctx, nil)
}

// CheckWith is Check with options (o.Deep re-hashes every blob: see
// recovery.CheckOptions). A nil o is the quick check.
func (s *Store) CheckWith(ctx context.Context, o *recovery.CheckOptions) (*recovery.Report, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	if s.opts.ReadOnly {
		if s.scope != "" {
			return nil, fmt.Errorf("check: a read-only check of a layout with a shared blob directory: %w", errdef.ErrInvalidArgument)
		}
		return CheckDirWith(ctx, s.dir, s.opts.LockTimeout, o)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	db, err := s.openJournal()
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	defer db.Close()
	if s.scope != "" {
		var opts recovery.CheckOptions
		if o != nil {
			opts = *o
		}
		if opts.Peers, err = s.peerEntries(db); err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
		o = &opts
	}
	rep, err := recovery.CheckWith(ctx, s.fsys, db, o)
	if err != nil {
		return nil, err
	}
	if err := dropLeasedOrphans(rep, db, s.now()); err != nil {
		return nil, fmt.Errorf("check: leases: %w", err)
	}
	return rep, nil
}

// CheckDir runs the quick consistency check on the layout in dir as it is,
// without opening it as a store: no recovery runs first, so an interrupted
// transaction shows as a pending record. It takes a shared lock on the
// journal, waiting up to lockTimeout for a writer.
func CheckDir(ctx context.Context, dir string, lockTimeout time.Duration) (*recovery.Report, error) {
	return CheckDirWith(ctx, dir, lockTimeout, nil)
}

// CheckDirWith is CheckDir with options (see Store.CheckWith). The blobs
// of a layout on a shared blob directory are looked for there: the one its
// marker names (.ocistore/shared-blob-dir, written when ocistore adopted
// it), or o.SharedBlobDir for a layout not adopted yet (skopeo copied into
// it with --dest-shared-blob-dir).
func CheckDirWith(ctx context.Context, dir string, lockTimeout time.Duration, o *recovery.CheckOptions) (*recovery.Report, error) {
	var want string
	if o != nil {
		want = o.SharedBlobDir
	}
	if shared, err := sharedDirFor(dir, want); err != nil {
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
	// is reported, never opened.
	if bad, detail := journalNotRegular(fsys); bad != "" {
		rep, err := recovery.CheckWith(ctx, fsys, nil, o)
		if err != nil {
			return nil, err
		}
		rep.Problems = append(rep.Problems[:len(rep.Problems)-1], recovery.Problem{Kind: recovery.KindJournalCorrupt, Path: bad, Detail: detail})
		return rep, nil
	}
	path := filepath.Join(dir, JournalPath)
	db, err := journal.Open(path, journal.Options{ReadOnly: true, LockTimeout: lockTimeout})
	if errors.Is(err, errdef.ErrCorrupt) {
		if nerr := newerJournal(path, lockTimeout); nerr != nil {
			err = nerr // damaged, and newer: newer says what to do
		}
	}
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		db = nil
	case errors.Is(err, errdef.ErrCorrupt), errors.Is(err, errdef.ErrJournalNewer):
		return checkWithoutJournal(ctx, fsys, o, err)
	case err != nil:
		return nil, fmt.Errorf("check: %w", lockedMessage(dir, lockTimeout, err))
	}
	if db != nil {
		defer db.Close()
	}
	rep, err := recovery.CheckWith(ctx, fsys, db, o)
	if err != nil {
		return nil, err
	}
	if err := dropLeasedOrphans(rep, db, time.Now()); err != nil {
		return nil, fmt.Errorf("check: leases: %w", err)
	}
	return rep, nil
}

// checkWithoutJournal checks the layout in fsys without its journal, which
// could not be read (err says why): the report's journal-missing is then
// journal-newer or journal-corrupt.
func checkWithoutJournal(ctx context.Context, fsys fsio.FS, o *recovery.CheckOptions, err error) (*recovery.Report, error) {
	rep, cerr := recovery.CheckWith(ctx, fsys, nil, o)
	if cerr != nil {
		return nil, cerr
	}
	kind := recovery.KindJournalCorrupt
	if errors.Is(err, errdef.ErrJournalNewer) {
		kind = recovery.KindJournalNewer
	}
	rep.Problems = append(rep.Problems[:len(rep.Problems)-1], recovery.Problem{Kind: kind, Path: JournalPath, Detail: err.Error()})
	return rep, nil
}

// journalNotRegular returns the path of .ocistore or of the journal when it
// exists but is not a directory, or not a regular file, with why.
func journalNotRegular(fsys fsio.FS) (string, string) {
	for _, c := range []struct {
		path string
		ok   func(fs.FileMode) bool
		want string
	}{
		{layout.StateDir, fs.FileMode.IsDir, "a directory"},
		{JournalPath, fs.FileMode.IsRegular, "a regular file"},
	} {
		fi, err := fsys.Lstat(c.path)
		if errors.Is(err, fs.ErrNotExist) {
			return "", ""
		}
		if err != nil {
			return c.path, err.Error()
		}
		if !c.ok(fi.Mode()) {
			return c.path, fmt.Sprintf("%s is %s, not %s: not opened", c.path, kindOf(fi.Mode()), c.want)
		}
	}
	return "", ""
}
