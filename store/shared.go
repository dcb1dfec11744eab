package store

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

	"github.com/ocistore/ocistore/internal/protocol"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/recovery"
)

// openShared sets the store up on a shared blob directory
// (Options.SharedBlobDir): the layout's files in dir, its blobs and its
// state in the shared directory, its own state in the shared journal under
// its absolute path (symlinks resolved, so that two spellings of one
// layout are one layout).
func (s *Store) openShared() error {
	shared, err := filepath.Abs(s.opts.SharedBlobDir)
	if err != nil {
		return fmt.Errorf("shared blob directory %s: %w", s.opts.SharedBlobDir, err)
	}
	lfs, bfs, scope := s.opts.sharedFS[0], s.opts.sharedFS[1], s.dir // tests
	if lfs == nil {
		if lfs, bfs, scope, err = s.openSharedDirs(shared); err != nil {
			return err
		}
	}
	s.fsys = &fsio.Shared{Layout: lfs, Blobs: bfs}
	s.stateRoot, s.scope = shared, scope
	if !s.opts.ReadOnly {
		if err := writeSharedMarker(lfs, shared); err != nil {
			s.fsys.Close()
			return err
		}
	}
	return nil
}

// openSharedDirs opens (creating them unless read-only) the layout and the
// shared blob directory, and names the layout by its path with symlinks
// resolved.
func (s *Store) openSharedDirs(shared string) (lfs, bfs fsio.FS, scope string, err error) {
	if !s.opts.ReadOnly {
		if err := fsio.CreateRoot(shared); err != nil {
			return nil, nil, "", fmt.Errorf("shared blob directory %s: %w", shared, err)
		}
		if !s.opts.NoCreate {
			if err := fsio.CreateRoot(s.dir); err != nil {
				return nil, nil, "", err
			}
		}
	}
	if scope, err = filepath.EvalSymlinks(s.dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = errdef.ErrNotLayout
		}
		return nil, nil, "", err
	}
	l, err := fsio.OpenOS(s.dir)
	if err != nil {
		return nil, nil, "", err
	}
	b, err := fsio.OpenOS(shared)
	if err != nil {
		l.Close()
		return nil, nil, "", fmt.Errorf("shared blob directory %s: %w", shared, err)
	}
	return l, b, scope, nil
}

// SharedMarker is the file, in a layout that uses a shared blob directory,
// that names that directory: a later open finds it there without being
// told, and the tools that do not support shared directories refuse the
// layout instead of seeing its blobs missing.
const SharedMarker = layout.StateDir + "/shared-blob-dir"

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
// opened with ("" when none), from its marker.
func SharedBlobDirOf(dir string) (string, error) {
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

// checkSharedDir is CheckDirWith for a layout with a shared blob
// directory: the layout as it is (no recovery), with the other layouts'
// references counted.
func checkSharedDir(ctx context.Context, dir, shared string, lockTimeout time.Duration, o *recovery.CheckOptions) (*recovery.Report, error) {
	s := &Store{dir: dir, stateRoot: dir, log: slog.New(slog.DiscardHandler), opts: Options{SharedBlobDir: shared, ReadOnly: true}}
	if err := s.openShared(); err != nil {
		return nil, fmt.Errorf("check %s: %w", dir, err)
	}
	defer s.fsys.Close()
	var opts recovery.CheckOptions
	if o != nil {
		opts = *o
	}
	db, err := journal.Open(s.journalPath(), journal.Options{ReadOnly: true, LockTimeout: lockTimeout, Scope: s.scope})
	if errors.Is(err, errdef.ErrCorrupt) {
		if nerr := newerJournal(s.journalPath(), lockTimeout); nerr != nil {
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
		shdb, err = journal.Open(s.journalPath(), journal.Options{ReadOnly: true, LockTimeout: lockTimeout})
		switch {
		case errors.Is(err, errdef.ErrNotFound):
			shdb = nil
		case err != nil:
			return nil, fmt.Errorf("check %s: %w", dir, lockedMessage(dir, lockTimeout, err))
		}
	case errors.Is(err, errdef.ErrJournalNewer):
		return checkWithoutJournal(ctx, s.fsys, &opts, err)
	case err != nil:
		return nil, fmt.Errorf("check %s: %w", dir, lockedMessage(dir, lockTimeout, err))
	}
	if shdb != nil {
		defer shdb.Close()
		if opts.Peers, err = s.peerEntries(shdb); err != nil {
			return nil, fmt.Errorf("check %s: %w", dir, err)
		}
	}
	rep, err := recovery.CheckWith(ctx, s.fsys, db, &opts)
	if err != nil || shdb == nil {
		return rep, err
	}
	if err := dropLeasedOrphans(rep, shdb, time.Now()); err != nil {
		return nil, fmt.Errorf("check: leases: %w", err)
	}
	return rep, nil
}

// sharedDirFor returns the shared blob directory of the layout in dir: the
// one its marker names, else want (a layout not adopted yet; "" when it
// has none). A want that is not the directory the marker names is an
// error: the layout's journal and refcounts are in the marker's.
func sharedDirFor(dir, want string) (string, error) {
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

// journalPath is the journal's file: in the layout, or in the shared blob
// directory.
func (s *Store) journalPath() string { return filepath.Join(s.stateRoot, JournalPath) }

// journalOptions are the options of every read-write open of the journal.
func (s *Store) journalOptions(timeout time.Duration) journal.Options {
	return journal.Options{LockTimeout: timeout, AfterCommit: s.opts.journalHook, CommitHook: s.opts.commitHook, Scope: s.scope}
}

// envFor is env for recovery under the lock db holds: with a shared blob
// directory, recovery counts the other layouts' references too.
func (s *Store) envFor(db *journal.DB) protocol.Env {
	env := s.env()
	if s.scope != "" {
		env.Peers = func() ([]layout.Entry, error) { return s.peerEntries(db) }
	}
	return env
}

// peerEntries returns the root entries of every other layout registered in
// the shared journal, from its index.json on disk. When that file cannot be
// read (the layout was moved or removed, its disk is not mounted, another
// tool left it torn), the index the layout last committed through the
// journal stands in for it, so that its blobs stay counted: nothing is
// freed because a layout is out of sight. A layout with neither is skipped
// with a warning.
func (s *Store) peerEntries(db *journal.DB) ([]layout.Entry, error) {
	return s.entriesBut(db, s.scope)
}

// entriesBut is peerEntries from the point of view of the layout except:
// every registered layout but that one.
func (s *Store) entriesBut(db *journal.DB, except string) ([]layout.Entry, error) {
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
				s.log.Warn("a layout sharing the blob directory has no readable index; its references are not counted", "peer", sc, "err", err)
				continue
			}
			s.log.Warn("a layout sharing the blob directory has no readable index.json; counting the index it last committed", "peer", sc)
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

// reconcilePeers recounts when another layout sharing the blob directory
// changed its index.json outside ocistore (see protocol.ReconcilePeers):
// every transaction checks, so that a blob another tool just referenced
// from another layout is never freed here.
func (s *Store) reconcilePeers(ctx context.Context, db *journal.DB, st *protocol.State) (*protocol.State, error) {
	changes, err := protocol.PeerChanges(db, s.scope)
	if err != nil || len(changes) == 0 {
		return st, err
	}
	if st.Index == nil {
		if st, err = protocol.Run(ctx, s.envFor(db), db, nil); err != nil {
			return nil, err
		}
	}
	if err := protocol.ReconcilePeers(s.envFor(db), db, st, changes); err != nil {
		return nil, err
	}
	st.Actions = append(st.Actions, protocol.Action{Kind: "recount", Detail: fmt.Sprintf("%d layouts sharing the blob directory changed outside ocistore", len(changes))})
	return st, nil
}

// recoverPeers runs recovery for every other layout of the shared journal
// that has a pending record (a process working on it crashed), before this
// layout does anything: its record's refcounts are in the shared counts,
// so until it is finished or rolled back, a blob its index.json on disk may
// still reach can have a count of zero, and a GC or a delete here could
// free it. A layout that cannot be reached keeps its record (and what its
// record freed is left alone: see GC's pending check).
func (s *Store) recoverPeers(ctx context.Context, db *journal.DB) error {
	var peers []string
	if err := db.View(func(tx *journal.Tx) error {
		for _, sc := range tx.Layouts() {
			if sc == s.scope {
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
	blobs := s.fsys.(*fsio.Shared).Blobs
	for _, sc := range peers {
		pfs, err := fsio.OpenOS(sc)
		if err != nil {
			s.log.Warn("cannot recover a layout sharing the blob directory", "peer", sc, "err", err)
			continue
		}
		pdb := db.WithScope(sc)
		env := protocol.Env{
			FS:    &fsio.Shared{Layout: pfs, Blobs: blobs},
			Log:   s.log.With(slog.String("peer", sc)),
			Peers: func() ([]layout.Entry, error) { return s.entriesBut(pdb, sc) },
		}
		st, err := protocol.Run(ctx, env, pdb, nil)
		pfs.Close()
		if err != nil {
			return fmt.Errorf("recover layout %s (sharing the blob directory): %w", sc, err)
		}
		for _, a := range st.Actions {
			s.log.Info("recovered a layout sharing the blob directory", "peer", sc, "action", a.Kind, "txn", a.Txn)
		}
	}
	return nil
}

// sharedPending is PendingRecords for a layout with a shared blob
// directory: its records in the shared journal.
func sharedPending(dir, shared string, lockTimeout time.Duration) ([]*journal.Record, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	scope, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, err
	}
	recs, err := readPending(dir, filepath.Join(shared, JournalPath), scope, lockTimeout)
	if errors.Is(err, errdef.ErrNotFound) {
		return nil, nil // the layout has no state in the shared journal yet
	}
	return recs, err
}
