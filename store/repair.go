package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ocistore/ocistore/internal/protocol"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/recovery"
)

// RepairOptions tune Repair. A nil *RepairOptions means the defaults.
type RepairOptions struct {
	// Check tunes the check that finds what to repair: with Check.Deep every
	// blob is re-hashed, and every blob whose bytes do not match its digest
	// is moved to the quarantine folder. Without it only the blobs the
	// quick check finds suspect (size mismatch) are hashed.
	Check recovery.CheckOptions
	// KeepOrphans keeps the blobs nothing references (left by another
	// tool, a crash, or freed by DropBroken); by default they are removed,
	// in one journaled transaction (GC), unless a live lease holds them.
	KeepOrphans bool
	// Grace keeps orphans modified within this duration (see GCOptions):
	// another tool may have written them and not yet its index.json. Zero
	// means DefaultGrace, as `ocistore gc`; a negative value keeps none
	// back.
	Grace time.Duration
	// DropBroken removes from index.json, in one journaled transaction,
	// the entries whose closure is not whole (and entries whose descriptor
	// is invalid); the blobs only they used go with them unless
	// KeepOrphans. By default broken entries are only reported.
	DropBroken bool
	// Logger receives the repair's actions at Info. Nil discards.
	Logger *slog.Logger
	// LockTimeout is how long to wait for another process's writer lock
	// (zero: DefaultLockTimeout).
	LockTimeout time.Duration
	// SharedBlobDir is the shared blob directory of a layout that keeps
	// its blobs there (skopeo's --dest-shared-blob-dir) and that ocistore
	// has not adopted yet; an adopted one names its directory itself (it
	// must then be that one). Empty: Check.SharedBlobDir, else none.
	// Repair then adopts the layout into that directory's journal, and
	// counts every layout registered there: a blob another layout uses is
	// never freed.
	SharedBlobDir string
	// Force lets DropBroken remove every image of the layout, and lets
	// Repair run on a layout whose blobs seem to live elsewhere (blobs/
	// holds no blob and most entries have none: see
	// recovery.KindBlobsElsewhere). Without it both are refused with
	// ErrRefused before anything is changed.
	Force bool

	// adopting is set by Repair when the layout has no state yet in the
	// journal of its shared blob directory: orphans are then kept.
	adopting bool
	// RebuildJournal lets Repair rebuild a journal that a newer ocistore
	// wrote (moved aside as a damaged one is, its leases kept when they
	// can be read, and nothing freed for RebuildPin). Without it Repair
	// refuses such a journal with ErrJournalNewer and changes nothing.
	RebuildJournal bool
}

// RepairResult is what Repair did and what is left.
type RepairResult struct {
	// Actions lists every change, in order.
	Actions []protocol.Action `json:"actions"`
	// Broken lists the entries of index.json whose closure is still not
	// whole (all of them unless DropBroken).
	Broken []recovery.Broken `json:"broken"`
	// Invalid lists the entries of index.json that are not valid
	// descriptors and were left in place (without DropBroken).
	Invalid []recovery.BadEntry `json:"invalid,omitempty"`
	// Report is the check of the layout after the repair: the problems
	// left. Problems of the deep check that repair could not fix (a blob
	// that cannot be read) are carried over, and so is the deep check's
	// figures.
	Report *recovery.Report `json:"report"`
}

// OK reports whether the layout is consistent after the repair.
func (r *RepairResult) OK() bool { return r.Report.OK() }

func (r *RepairResult) act(log *slog.Logger, kind, format string, args ...any) {
	a := protocol.Action{Kind: kind, Detail: fmt.Sprintf(format, args...)}
	log.Info("repair: "+kind, "detail", a.Detail)
	r.Actions = append(r.Actions, a)
}

// Repair brings the layout in dir back to a consistent state without
// destroying anything it could keep (`ocistore fsck --repair`), then
// checks it again. In order:
//
//  1. oci-layout, when missing or unparseable in a directory that holds
//     index.json or blobs/, is written again (the bad one is kept).
//  2. A journal that cannot be opened, fails bbolt's check or holds a
//     record that does not decode is salvaged: its pending records that
//     still decode are honoured first (as recovery would: replay when
//     index.json is missing, unreadable or the record's old index; nothing
//     when it is the new one; dropped otherwise), and index.json is
//     restored from its copy when unreadable. Then it is moved aside
//     (journal.db.corrupt-<time>) and rebuilt from the layout.
//  3. index.json, when missing or unreadable, is restored from the
//     journal's copy of the last committed index (the unreadable file is
//     moved to the quarantine folder); without a copy it is reported,
//     never replaced by an empty one. Entries that are not valid
//     descriptors are removed with DropBroken (in a journaled
//     transaction; a copy of the old file is kept), else reported.
//  4. Recovery: pending records, temp files, refcounts recounted when
//     index.json changed outside the store.
//  5. Blobs whose bytes do not match their digest, and entries of blobs/
//     that are not regular files (symlinks, directories), are moved to
//     .ocistore/quarantine/<alg>/<hex> (never followed, never deleted).
//  6. With DropBroken, entries whose closure is not whole are removed
//     from index.json in one journaled transaction; the blobs only they
//     used are freed by the refcounts (unless KeepOrphans).
//  7. Unless KeepOrphans, unreferenced blobs are removed by a journaled GC.
//
// Every step is durable before the next starts and is idempotent: after a
// crash, Repair runs again from the top. The error is for a repair that
// could not run; problems it could not fix are in the result's Report.
//
// A repair that fails for want of space (a full file system) releases the
// space reserve (see Open) and runs again, once.
func Repair(ctx context.Context, dir string, o *RepairOptions) (*RepairResult, error) {
	res, err := repair(ctx, dir, o)
	if err == nil || !fsio.NoSpace(err) {
		return res, err
	}
	abs, aerr := filepath.Abs(dir)
	if aerr != nil {
		return res, err
	}
	if shared, serr := SharedBlobDirOf(abs); serr != nil || shared != "" {
		return res, err
	}
	fsys, ferr := fsio.OpenOS(abs)
	if ferr != nil {
		return res, err
	}
	log := slog.New(slog.DiscardHandler)
	if o != nil && o.Logger != nil {
		log = o.Logger
	}
	freed := releaseReserveIn(fsys, log.With(slog.String(attrLayout, abs)), "repair", err)
	fsys.Close()
	if freed == 0 {
		return res, err
	}
	return repair(ctx, dir, o)
}

func repair(ctx context.Context, dir string, o *RepairOptions) (*RepairResult, error) {
	var opts RepairOptions
	if o != nil {
		opts = *o
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", dir, err)
	}
	want := opts.SharedBlobDir
	if want == "" {
		want = opts.Check.SharedBlobDir
	}
	shared, err := sharedDirFor(abs, want)
	if err == nil && shared != "" {
		if fi, serr := os.Stat(shared); serr != nil || !fi.IsDir() {
			err = fmt.Errorf("shared blob directory %s: not a directory (%v): %w", shared, serr, errdef.ErrNotFound)
		}
	}
	if err == nil {
		err = repairPreflight(ctx, abs, shared, &opts)
	}
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	log := opts.Logger.With(slog.String(attrLayout, abs))
	s := &Store{dir: abs, stateRoot: abs, log: log, opts: Options{Logger: log, LockTimeout: opts.LockTimeout, NoCreate: true, SharedBlobDir: shared, now: time.Now}}
	if shared != "" {
		err = s.openShared()
	} else {
		s.fsys, err = fsio.OpenOS(abs)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = errdef.ErrNotLayout
		}
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	defer s.fsys.Close()
	if s.scope != "" {
		opts.adopting = !s.registered(opts.LockTimeout)
	}
	res := &RepairResult{Actions: []protocol.Action{}, Broken: []recovery.Broken{}}

	openable, err := s.repairOffline(ctx, res, &opts)
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	if !openable {
		rep, err := CheckDirWith(ctx, abs, opts.LockTimeout, &recovery.CheckOptions{SharedBlobDir: shared})
		if err != nil {
			return nil, fmt.Errorf("repair %s: %w", abs, err)
		}
		for i, p := range rep.Problems {
			if p.Kind != recovery.KindIndexMissing && p.Kind != recovery.KindIndexCorrupt {
				continue
			}
			if len(res.Invalid) > 0 {
				rep.Problems[i].Detail += " (not repaired: --drop-broken removes the invalid entries)"
			} else {
				rep.Problems[i].Detail += " (not repaired: no copy of it is left in the journal; it is never replaced by an empty one)"
			}
		}
		res.Report = rep
		return res, nil
	}
	st, err := Open(ctx, abs, &Options{Logger: opts.Logger, LockTimeout: opts.LockTimeout, NoCreate: true, SharedBlobDir: shared})
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	err = st.repairOnline(ctx, res, &opts)
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	return res, nil
}

// registered reports whether the layout has its state in the journal of
// its shared blob directory (ocistore adopted it before). When that cannot
// be read, it says yes: the repair then finds out what is wrong.
func (s *Store) registered(lockTimeout time.Duration) bool {
	db, err := journal.Open(s.journalPath(), journal.Options{ReadOnly: true, LockTimeout: lockTimeout, Scope: s.scope})
	if errors.Is(err, errdef.ErrNotFound) {
		return false
	}
	if err == nil {
		db.Close()
	}
	return true
}

// repairPreflight refuses, before anything is changed, what Repair must
// not do unless forced: repair a layout whose blobs seem to live elsewhere
// (a shared blob directory it was not told about: adopting it as it is
// would record every image as broken, and DropBroken would empty it), and
// remove every image with DropBroken. It also refuses a directory that
// holds no layout. It reads the layout as it is; what it cannot read
// (index.json damaged) is left to the repair, whose DropBroken refuses to
// remove every image again once index.json is whole.
func repairPreflight(ctx context.Context, dir, shared string, o *RepairOptions) error {
	ro := &Store{dir: dir, stateRoot: dir, log: slog.New(slog.DiscardHandler), opts: Options{SharedBlobDir: shared, ReadOnly: true}}
	var err error
	if shared != "" {
		err = ro.openShared()
	} else {
		ro.fsys, err = fsio.OpenOS(dir)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = errdef.ErrNotLayout
		}
		return err
	}
	defer ro.fsys.Close()
	lfs := ro.fsys
	if sh, ok := lfs.(*fsio.Shared); ok {
		lfs = sh.Layout
	}
	found := false
	for _, name := range []string{layout.LayoutFile, layout.IndexFile, layout.BlobsDir} {
		ok, err := fsio.Exists(lfs, name)
		if err != nil {
			return err
		}
		found = found || ok
	}
	if !found {
		return fmt.Errorf("no %s, %s or %s: %w", layout.LayoutFile, layout.IndexFile, layout.BlobsDir, errdef.ErrNotLayout)
	}
	if o.Force {
		return nil
	}
	_, ix, err := protocol.ReadIndex(ro.fsys)
	if err != nil {
		return nil // restored (or reported) by the repair
	}
	detail, err := recovery.BlobsElsewhere(ro.fsys, ix)
	if err != nil {
		return err
	}
	if detail != "" {
		return fmt.Errorf("%s; repairing the layout as it is would report its %s broken (and --drop-broken would remove them): nothing was changed; --force repairs it anyway: %w",
			detail, pluralImages(len(ix.Entries)), errdef.ErrRefused)
	}
	if o.DropBroken && len(ix.Entries) > 0 {
		broken, err := recovery.BrokenEntries(ctx, ro.fsys, ix)
		if err != nil {
			return err
		}
		if len(broken) == len(ix.Entries) {
			return dropAllError(dir, broken)
		}
	}
	return nil
}

// dropAllError is the refusal of DropBroken to remove every image of the
// layout in dir.
func dropAllError(dir string, broken []recovery.Broken) error {
	return fmt.Errorf("--drop-broken would remove every image of the layout %s (%s, all broken; the first: %s %s: %s): nothing was changed; --force removes them: %w",
		dir, pluralImages(len(broken)), orNone(broken[0].Name), broken[0].Digest, broken[0].Reason, errdef.ErrRefused)
}

func pluralImages(n int) string {
	if n == 1 {
		return "1 image"
	}
	return strconv.Itoa(n) + " images"
}

// repairOffline runs steps 1 to 4 on the files, under the writer lock,
// before the layout can be opened as a store. It reports whether it can be
// opened now.
func (s *Store) repairOffline(ctx context.Context, res *RepairResult, o *RepairOptions) (bool, error) {
	if !o.RebuildJournal {
		// Before anything changes: a newer ocistore's layout is its own.
		if err := s.newerJournalOf(s.opts.LockTimeout); err != nil {
			return false, fmt.Errorf("%w (fsck --repair --rebuild-journal rebuilds it, losing what only a newer ocistore reads)", err)
		}
	}
	if ok, err := s.repairLayoutFile(res); err != nil || !ok {
		return false, err
	}
	if hopeless, err := s.indexHopeless(); err != nil || hopeless {
		return false, err
	}
	db, err := s.repairJournal(ctx, res, o.RebuildJournal)
	if err != nil {
		return false, err
	}
	defer db.Close()
	if err := s.repairStateDirs(res); err != nil {
		return false, err
	}
	ok, err := s.repairIndex(ctx, db, res, o)
	if err != nil || !ok {
		return false, err
	}
	if s.scope != "" {
		// As every transaction on a shared blob directory does: the
		// other layouts' interrupted transactions first.
		if err := s.recoverPeers(ctx, db); err != nil {
			return false, s.check(err)
		}
	}
	st, err := protocol.Run(ctx, s.envFor(db), db, nil)
	if err == nil && s.scope != "" {
		st, err = s.reconcilePeers(ctx, db, st)
	}
	if err != nil {
		return false, s.check(fmt.Errorf("recover: %w", err))
	}
	res.Actions = append(res.Actions, st.Actions...)
	return true, nil
}

// indexHopeless reports whether index.json is missing or unreadable while
// nothing could restore it: no journal file (or an empty one), none kept
// aside. Repair then changes nothing at all (not even by creating a journal).
func (s *Store) indexHopeless() (bool, error) {
	raw, _, err := protocol.ReadIndex(s.fsys)
	if err == nil {
		return false, nil
	}
	if raw != nil {
		if _, _, lerr := recovery.ParseIndexLenient(raw); lerr == nil {
			return false, nil
		}
	}
	fi, err := s.fsys.Lstat(JournalPath)
	switch {
	case err == nil && (fi.Size() > 0 || !fi.Mode().IsRegular()):
		return false, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return false, err
	}
	ents, err := s.fsys.ReadDir(layout.StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), filepath.Base(JournalPath)+".corrupt-") {
			return false, nil
		}
	}
	s.log.Warn("repair: index.json is missing or unreadable and there is no journal to restore it from; changing nothing")
	return true, nil
}

// repairLayoutFile writes oci-layout again when it is missing or does not
// parse, in a directory that holds a layout's other files. A file that
// says another version is left alone (and Open refuses it).
func (s *Store) repairLayoutFile(res *RepairResult) (bool, error) {
	b, err := fsio.ReadFile(s.fsys, layout.LayoutFile, 4096)
	if err == nil && layout.CheckLayoutFile(b) == nil {
		return true, nil
	}
	exists := !errors.Is(err, fs.ErrNotExist)
	var hasIndex, hasBlobs bool
	if hasIndex, err = fsio.Exists(s.fsys, layout.IndexFile); err != nil {
		return false, err
	}
	if hasBlobs, err = fsio.Exists(s.fsys, layout.BlobsDir); err != nil {
		return false, err
	}
	if !hasIndex && !hasBlobs {
		return false, fmt.Errorf("no %s, %s or %s: %w", layout.LayoutFile, layout.IndexFile, layout.BlobsDir, errdef.ErrNotLayout)
	}
	if exists {
		dest, err := protocol.Quarantine(s.fsys, layout.LayoutFile, layout.LayoutFile)
		if err != nil {
			return false, s.check(err)
		}
		res.act(s.log, recovery.ActionQuarantined, "%s does not parse: moved to %s", layout.LayoutFile, dest)
	}
	if err := s.fsys.ReplaceFile(layout.LayoutFile, ".", append(layout.LayoutFileContent(), '\n'), 0o644); err != nil {
		return false, s.check(fmt.Errorf("write %s: %w", layout.LayoutFile, err))
	}
	if err := fsio.SyncDirFor(s.fsys, fsio.SyncLayoutDir, "."); err != nil {
		return false, s.check(err)
	}
	res.act(s.log, recovery.ActionLayoutFile, "wrote %s (%s)", layout.LayoutFile, layout.LayoutFileContent())
	return true, nil
}

// repairJournal opens the journal read-write (taking the writer lock).
// One that cannot be opened, fails bbolt's check, or holds a record that
// does not decode is salvaged (applySalvage), moved aside and rebuilt.
//
// A journal a newer ocistore wrote (its version says so, even when it is
// also damaged) is refused unless rebuildNewer, and then rebuilt as a
// damaged one is.
func (s *Store) repairJournal(ctx context.Context, res *RepairResult, rebuildNewer bool) (*journal.DB, error) {
	if _, err := fsio.MkdirDurable(s.fsys, layout.StateDir); err != nil {
		return nil, s.check(fmt.Errorf("state directory: %w", err))
	}
	if err := s.finishRebuild(); err != nil {
		return nil, err
	}
	path := s.journalPath()
	var why error
	var salv *journal.Salvaged
	var db *journal.DB
	fi, err := s.fsys.Lstat(JournalPath)
	if err == nil && !fi.Mode().IsRegular() {
		// A symlink or a directory: moved aside as it is, never followed.
		err = fmt.Errorf("journal %s is %s, not a regular file: %w", JournalPath, kindOf(fi.Mode()), errdef.ErrCorrupt)
		why = err
	} else {
		db, err = journal.Open(path, s.journalOptions(s.opts.LockTimeout))
	}
	if s.scope != "" && (why != nil || errors.Is(err, errdef.ErrCorrupt)) {
		return nil, s.sharedJournalDamaged(cmp.Or(why, err))
	}
	switch {
	case why != nil:
	case errors.Is(err, errdef.ErrJournalNewer), errors.Is(err, errdef.ErrCorrupt):
		why = err
		var serr error
		if salv, serr = journal.SalvageFile(path, s.opts.LockTimeout); serr != nil {
			s.log.Warn("repair: nothing could be salvaged from the journal", "err", serr)
		}
		switch {
		case rebuildNewer:
		case errors.Is(err, errdef.ErrJournalNewer):
			return nil, err
		case salv != nil && salv.Newer():
			return nil, salv.NewerError(path)
		}
	case errors.Is(err, errdef.ErrLocked):
		return nil, fmt.Errorf("layout %s is locked by another process (waited %s for %s): %w", s.dir, s.opts.LockTimeout, JournalPath, errdef.ErrLocked)
	case err != nil:
		return nil, err
	default:
		if errs := db.Check(); len(errs) > 0 {
			why = fmt.Errorf("bbolt check: %w", errors.Join(errs...))
		} else if perr := db.View(func(tx *journal.Tx) error { _, err := tx.Pending(); return err }); perr != nil {
			why = perr
		}
		if why != nil && s.scope != "" {
			db.Close()
			return nil, s.sharedJournalDamaged(why)
		}
		if why != nil {
			salv = db.Salvage()
			db.Close()
		} else {
			if db.Created {
				res.act(s.log, recovery.ActionJournalCreated, "%s was missing or empty: created, counting references from the layout", JournalPath)
				// openJournal syncs .ocistore for the new file.
				db.Close()
				return s.openJournal()
			}
			return db, nil
		}
	}
	if why != nil {
		if err := s.applySalvage(ctx, salv, "", res); err != nil {
			return nil, err
		}
		rb, err := s.rebuildJournal(why, salv)
		if err != nil {
			return nil, err
		}
		n := 0
		if salv != nil {
			n = len(salv.Pending)
		}
		res.act(s.log, recovery.ActionJournalRebuilt, "%v; kept aside as %s (%d pending records salvaged); rebuilt from the layout", why, rb.aside, n)
		if rb.leases > 0 {
			res.act(s.log, recovery.ActionLeasesKept, "%d live leases read from the damaged journal, with their blobs and expiry", rb.leases)
		}
		if !rb.pinned.IsZero() {
			res.act(s.log, recovery.ActionPinned, "the leases of the journal kept aside could not all be read (or a newer ocistore wrote it): nothing is freed until %s", rb.pinned.UTC().Format(time.RFC3339))
		}
	}
	return s.openJournal()
}

// sharedJournalDamaged is the error of a repair that finds the journal of
// its shared blob directory damaged: it is not rebuilt from this layout,
// since it holds the state and counts the references of every layout
// sharing the directory (rebuilt from one, the others' blobs would look
// unreferenced).
func (s *Store) sharedJournalDamaged(why error) error {
	return fmt.Errorf("the journal of the shared blob directory (%s) is damaged (%v): repair does not rebuild it from one layout, since it counts the references of every layout sharing the directory; nothing was changed: %w",
		s.journalPath(), why, errdef.ErrCorrupt)
}

// repairStateDirs renames .ocistore/ingest, quarantine, trash and owners out of
// the way (to <name>.corrupt-<unix nanoseconds>) when they are not
// directories: a symlink (never followed, in or out of the layout) or a
// file. Recovery lists them and repair moves damaged files into the
// quarantine; both make a new directory when they need one. The writer
// lock is held.
func (s *Store) repairStateDirs(res *RepairResult) error {
	for _, dir := range []string{protocol.IngestDir, protocol.QuarantineDir, protocol.TrashDir, protocol.OwnersDir} {
		fi, err := s.fsys.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) || err == nil && fi.IsDir() {
			continue
		}
		if err != nil {
			return err
		}
		aside := fmt.Sprintf("%s.corrupt-%d", dir, time.Now().UnixNano())
		if err := s.fsys.Rename(dir, aside); err != nil {
			return fmt.Errorf("move %s aside: %w", dir, err)
		}
		if err := s.fsys.SyncDir(layout.StateDir); err != nil {
			return s.poison(&fsio.SyncError{Path: layout.StateDir, Err: err})
		}
		res.act(s.log, recovery.ActionMovedAside, "%s is %s, not a directory: moved aside as %s", dir, kindOf(fi.Mode()), aside)
	}
	return nil
}

// moveJournalAside renames the damaged journal to
// journal.db.corrupt-<unix nanoseconds> and syncs .ocistore, so that a new
// one can be built from the layout; the old file stays for a person to look
// at. It returns the new name.
func (s *Store) moveJournalAside(why error) (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%d", JournalPath, time.Now().UnixNano())
	s.log.Warn("journal is corrupt; keeping it aside and rebuilding from the layout", "err", why, "aside", aside)
	if err := s.fsys.Rename(JournalPath, aside); err != nil {
		return "", fmt.Errorf("%w (moving it aside: %v)", why, err)
	}
	if err := s.fsys.SyncDir(layout.StateDir); err != nil {
		return "", s.poison(&fsio.SyncError{Path: layout.StateDir, Err: err})
	}
	return aside, nil
}

// indexState reads index.json: its bytes and digest when it parses (or
// parses with invalid entries only), exists when there is anything at the
// path.
func (s *Store) indexState() (raw []byte, d digest.Digest, exists bool, err error) {
	exists, err = fsio.Exists(s.fsys, layout.IndexFile)
	if err != nil || !exists {
		return nil, "", exists, err
	}
	raw, _, ixErr := protocol.ReadIndex(s.fsys)
	if ixErr == nil {
		return raw, layout.Sum(raw), true, nil
	}
	if raw != nil {
		if _, _, lerr := recovery.ParseIndexLenient(raw); lerr == nil {
			return raw, layout.Sum(raw), true, nil
		}
	}
	return nil, "", true, nil
}

// restoreIndex writes b as index.json, durably, first moving what is at
// the path (an unreadable file, a symlink, a directory) to the quarantine
// folder.
func (s *Store) restoreIndex(b []byte, exists bool, from string, res *RepairResult) error {
	if exists {
		dest, err := protocol.Quarantine(s.fsys, layout.IndexFile, layout.IndexFile)
		if err != nil {
			return s.check(err)
		}
		res.act(s.log, recovery.ActionQuarantined, "%s is unreadable: moved to %s", layout.IndexFile, dest)
	}
	if err := protocol.WriteIndex(s.fsys, b); err != nil {
		return s.check(err)
	}
	res.act(s.log, recovery.ActionIndexRestored, "%s restored from %s (%s)", layout.IndexFile, from, layout.Sum(b))
	return nil
}

// applySalvage honours what a damaged journal still holds, before it is
// moved aside: its readable pending records by the recovery table, then
// its copy of the last committed index when index.json is still missing
// or unreadable. Blobs the records would have unlinked are left: they are
// orphans once the journal is rebuilt (step 7 removes them, checking that
// nothing references them). source names the journal file for messages.
func (s *Store) applySalvage(ctx context.Context, salv *journal.Salvaged, source string, res *RepairResult) error {
	if salv == nil {
		return nil
	}
	if source == "" {
		source = "the damaged journal"
	}
	_, onDisk, exists, err := s.indexState()
	if err != nil {
		return err
	}
	for _, rec := range salv.Pending {
		if err := ctx.Err(); err != nil {
			return err
		}
		nb := salv.Indexes[rec.NewIndex]
		switch {
		case onDisk == rec.NewIndex:
			res.Actions = append(res.Actions, protocol.Action{Kind: "roll-forward", Txn: rec.ID,
				Detail: fmt.Sprintf("%s (salvaged from %s): index.json is its new index; the blobs it freed are orphans now", rec.Op, source)})
		case nb != nil && (onDisk == "" || onDisk == rec.OldIndex):
			if onDisk == "" && exists {
				dest, err := protocol.Quarantine(s.fsys, layout.IndexFile, layout.IndexFile)
				if err != nil {
					return s.check(err)
				}
				res.act(s.log, recovery.ActionQuarantined, "%s is unreadable: moved to %s", layout.IndexFile, dest)
			}
			if err := protocol.WriteIndex(s.fsys, nb); err != nil {
				return s.check(err)
			}
			onDisk, exists = rec.NewIndex, true
			res.Actions = append(res.Actions, protocol.Action{Kind: "replay", Txn: rec.ID,
				Detail: fmt.Sprintf("%s (salvaged from %s): wrote its new index", rec.Op, source)})
		default:
			res.Actions = append(res.Actions, protocol.Action{Kind: "roll-back", Txn: rec.ID,
				Detail: fmt.Sprintf("%s (salvaged from %s): index.json changed since, or its new index was lost; dropped", rec.Op, source)})
		}
	}
	if onDisk == "" && salv.Committed != "" {
		if b, ok := salv.Indexes[salv.Committed]; ok {
			return s.restoreIndex(b, exists, "the last committed index in "+source, res)
		}
	}
	return nil
}

// repairIndex makes index.json usable (step 3) and reports whether it is.
func (s *Store) repairIndex(ctx context.Context, db *journal.DB, res *RepairResult, o *RepairOptions) (bool, error) {
	raw, _, ixErr := protocol.ReadIndex(s.fsys)
	if ixErr == nil {
		return true, nil
	}
	if raw != nil {
		if lix, bad, err := recovery.ParseIndexLenient(raw); err == nil {
			if !o.DropBroken {
				res.Invalid = bad
				return false, nil
			}
			return true, s.dropInvalid(db, raw, lix, bad, res)
		}
	}
	exists, err := fsio.Exists(s.fsys, layout.IndexFile)
	if err != nil {
		return false, err
	}
	var committed digest.Digest
	var copyBytes []byte
	replay := false
	if err := db.View(func(tx *journal.Tx) error {
		recs, err := tx.Pending()
		if err != nil {
			return err
		}
		for _, r := range recs {
			if _, ok := tx.IndexBytes(r.NewIndex); ok {
				replay = true
			}
		}
		committed = tx.IndexDigest()
		copyBytes, _ = tx.IndexBytes(committed)
		return nil
	}); err != nil {
		return false, err
	}
	switch {
	case replay:
		// Recovery replays the record's new index over it; keep the old one.
		if exists {
			dest, err := protocol.Quarantine(s.fsys, layout.IndexFile, layout.IndexFile)
			if err != nil {
				return false, s.check(err)
			}
			res.act(s.log, recovery.ActionQuarantined, "%s is unreadable: moved to %s", layout.IndexFile, dest)
		}
		return true, nil
	case committed != "" && copyBytes != nil:
		return true, s.restoreIndex(copyBytes, exists, "the journal's copy of the last committed index", res)
	}
	// A journal rebuilt earlier (by an Open that then failed on index.json)
	// left the damaged one aside: it may still hold the copy.
	if committed == "" && s.scope == "" {
		if aside, salv := s.newestAside(); salv != nil {
			if err := s.applySalvage(ctx, salv, aside, res); err != nil {
				return false, err
			}
			if _, _, err := protocol.ReadIndex(s.fsys); err == nil {
				return true, nil
			}
		}
	}
	s.log.Warn("repair: index.json is missing or unreadable and no copy of it is left; not replacing it")
	return false, nil
}

// newestAside salvages the most recent journal moved aside, if any.
func (s *Store) newestAside() (string, *journal.Salvaged) {
	ents, err := s.fsys.ReadDir(layout.StateDir)
	if err != nil {
		return "", nil
	}
	prefix := filepath.Base(JournalPath) + ".corrupt-"
	var best string
	var bestN int64 = -1
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if v, err := strconv.ParseInt(n, 10, 64); err == nil && v > bestN {
			best, bestN = e.Name(), v
		}
	}
	if best == "" {
		return "", nil
	}
	name := layout.StateDir + "/" + best
	salv, err := journal.SalvageFile(filepath.Join(s.dir, filepath.FromSlash(name)), s.opts.LockTimeout)
	if err != nil {
		s.log.Warn("repair: nothing could be salvaged from the journal kept aside", "path", name, "err", err)
		return "", nil
	}
	return name, salv
}

// dropInvalid removes the entries of index.json that are not valid
// descriptors, in one journaled transaction, after keeping a copy of the
// file in the quarantine folder. Its refcounts are a recount of the new
// index; it unlinks nothing (what only those entries used is an orphan).
func (s *Store) dropInvalid(db *journal.DB, raw []byte, next *layout.Index, bad []recovery.BadEntry, res *RepairResult) error {
	kept, err := protocol.KeepCopy(s.fsys, layout.IndexFile, raw)
	if err != nil {
		return s.check(err)
	}
	res.act(s.log, recovery.ActionKept, "a copy of %s, before invalid entries were removed, is in %s", layout.IndexFile, kept)
	newBytes := next.Marshal()
	refs, err := s.recountAll(db, next)
	if err != nil {
		return err
	}
	rec := journal.Record{Op: "repair: drop invalid entries", Time: s.now().UTC(), OldIndex: layout.Sum(raw), NewIndex: layout.Sum(newBytes)}
	var prepared *fsio.Prepared
	if err := db.Update(func(tx *journal.Tx) error {
		if err := tx.AddPending(&rec, newBytes); err != nil {
			return err
		}
		if err := tx.ReplaceRefs(refs); err != nil {
			return err
		}
		var err error
		prepared, err = protocol.PrepareIndex(s.fsys, newBytes)
		return err
	}); err != nil {
		_ = prepared.Abort()
		return s.check(err)
	}
	crash.Point(crash.TxnJournaled)
	// What is on disk now, for a roll back: its valid entries count.
	old, _, _ := recovery.ParseIndexLenient(raw)
	if _, err := protocol.Apply(s.env(), db, &rec, prepared, &protocol.State{Index: old, Bytes: raw, Digest: rec.OldIndex}); err != nil {
		return s.check(err)
	}
	for _, b := range bad {
		res.Actions = append(res.Actions, protocol.Action{Kind: recovery.ActionEntryDropped, Txn: rec.ID,
			Detail: fmt.Sprintf("manifests[%d] %s: %s", b.Pos, b.Raw, b.Err)})
	}
	return nil
}

// repairOnline runs steps 5 to 7 on the open store, then the final check.
func (s *Store) repairOnline(ctx context.Context, res *RepairResult, o *RepairOptions) error {
	first, err := s.CheckWith(ctx, &o.Check)
	if err != nil {
		return err
	}
	for _, p := range first.Problems {
		if p.Kind == recovery.KindRefcount {
			if err := s.recount(ctx, res); err != nil {
				return err
			}
			break
		}
	}
	if err := s.quarantineBlobs(ctx, first, res); err != nil {
		return err
	}
	keep := o.KeepOrphans
	if o.adopting {
		// The layout joins the shared blob directory now. Other layouts
		// may use the directory without ocistore knowing them yet (skopeo
		// --dest-shared-blob-dir records none): their blobs look
		// unreferenced. Remove none; once every layout is adopted, a
		// repair or a GC removes what none of them uses.
		o2 := *o
		o2.KeepOrphans, o, keep = true, &o2, true
	}
	if o.DropBroken {
		if err := s.dropBroken(ctx, o, res); err != nil {
			return err
		}
	}
	if !keep {
		grace := o.Grace
		if grace == 0 {
			grace = DefaultGrace
		}
		gc, err := s.GC(ctx, GCOptions{Grace: max(grace, 0)})
		if err != nil {
			return err
		}
		if len(gc.Freed) > 0 {
			res.Actions = append(res.Actions, protocol.Action{Kind: recovery.ActionOrphansFreed, Txn: gc.Txn,
				Detail: fmt.Sprintf("%d unreferenced blobs, %d bytes (kept: %d leased, %d young)", len(gc.Freed), gc.BytesFreed, gc.Leased, gc.Young)})
		}
		if gc.Pinned != "" {
			res.act(s.log, recovery.ActionPinned, "unreferenced blobs kept: %s", gc.Pinned)
		}
	}
	final, err := s.Check(ctx)
	if err != nil {
		return err
	}
	// What the deep check found that repair could not fix (a blob that
	// cannot be read) is still there: carry it over.
	final.Deep = first.Deep
	for _, p := range first.Problems {
		if p.Kind != recovery.KindUnreadable && p.Kind != recovery.KindDigestMismatch {
			continue
		}
		if ok, _ := fsio.Exists(s.fsys, p.Path); ok && !hasProblem(final, p) {
			final.Problems = append(final.Problems, p)
		}
	}
	res.Report = final
	if o.adopting {
		n := 0
		for _, p := range final.Problems {
			if p.Kind == recovery.KindOrphan {
				n++
			}
		}
		if n > 0 {
			res.act(s.log, ActionOrphansKept, "%d unreferenced blobs of the shared blob directory kept: this layout joined it now, and other layouts may use them without ocistore knowing them (skopeo --dest-shared-blob-dir records none); adopt each (ocistore -l DIR --shared-blob-dir %s recover), then fsck --repair or gc removes what none of them uses",
				n, s.fsys.(*fsio.Shared).BlobRoot())
		}
	}
	sn, err := s.current()
	if err != nil {
		return err
	}
	broken, err := recovery.BrokenEntries(ctx, s.fsys, sn.ix)
	if err != nil {
		return err
	}
	res.Broken = append(res.Broken, broken...)
	return nil
}

// recount replaces the stored reference counts with a recount of the index
// on disk, under the writer lock (they disagreed with it).
func (s *Store) recount(ctx context.Context, res *RepairResult) error {
	if err := s.writable(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	db, cur, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := protocol.Recount(s.envFor(db), db, cur)
	if err != nil {
		return s.check(err)
	}
	res.act(s.log, "recount", "stored reference counts differed from a recount: %d blobs referenced by %s", n, cur.Digest)
	return nil
}

func hasProblem(r *recovery.Report, p recovery.Problem) bool {
	for _, q := range r.Problems {
		if q.Kind == p.Kind && q.Digest == p.Digest && q.Path == p.Path {
			return true
		}
	}
	return false
}

// quarantineBlobs moves to the quarantine folder, under the writer lock,
// every blob the check found whose bytes do not match its digest (hashed
// again first: only a file that still has the stamp it was hashed with is
// moved) and every entry of blobs/ named by a digest that is not a regular
// file. Blobs of the wrong size are hashed: a blob whose bytes match its
// digest stays (its descriptor is what is wrong).
func (s *Store) quarantineBlobs(ctx context.Context, rep *recovery.Report, res *RepairResult) error {
	seen := map[digest.Digest]bool{}
	var suspects []digest.Digest
	for _, p := range rep.Problems {
		switch p.Kind {
		case recovery.KindDigestMismatch, recovery.KindNotRegular, recovery.KindSizeMismatch:
		default:
			continue
		}
		d := digest.Digest(p.Digest)
		if layout.ValidateDigest(d) != nil || seen[d] || p.Path != layout.BlobPath(d) {
			continue
		}
		seen[d] = true
		suspects = append(suspects, d)
	}
	if len(suspects) == 0 {
		return nil
	}
	sort.Slice(suspects, func(i, j int) bool { return suspects[i] < suspects[j] })
	if err := s.writable(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	db, _, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	for _, d := range suspects {
		p := layout.BlobPath(d)
		fi, err := s.fsys.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("quarantine %s: %w", p, err)
		}
		why := "is " + kindOf(fi.Mode()) + ", not a regular file"
		if fi.Mode().IsRegular() {
			got, stamp, err := recovery.HashBlob(ctx, s.fsys, d)
			if err != nil {
				s.log.Warn("repair: cannot hash a suspect blob; leaving it", attrDigest, d, "err", err)
				continue
			}
			if got == d {
				continue // its descriptor is wrong, not its bytes
			}
			if fsio.StampFile(s.fsys, p) != stamp {
				continue // rewritten meanwhile: the next check looks again
			}
			why = "content hashes to " + got.String()
		}
		dest, err := protocol.Quarantine(s.fsys, p, d.Algorithm().String()+"/"+d.Encoded())
		if err != nil {
			return s.check(err)
		}
		res.act(s.log, recovery.ActionQuarantined, "%s (%s) %s: moved to %s", d, p, why, dest)
	}
	return nil
}

func kindOf(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	}
	return "a special file"
}

// dropBroken removes the entries whose closure is not whole from
// index.json in one journaled transaction (the protocol of package recovery). Its refcounts are
// a recount of the new index, so the blobs it unlinks are exactly those no
// remaining entry reaches (and no live lease holds): a blob another image
// shares stays, and so does a blob another layout of a shared blob
// directory uses. With o.KeepOrphans it unlinks nothing. Unless o.Force,
// it refuses (ErrRefused, nothing changed) to remove every entry, or any
// when the layout's blobs seem to live elsewhere.
func (s *Store) dropBroken(ctx context.Context, o *RepairOptions, res *RepairResult) error {
	keepOrphans := o.KeepOrphans
	if err := s.writable(); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	db, cur, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	broken, err := recovery.BrokenEntries(ctx, s.fsys, cur.Index)
	if err != nil || len(broken) == 0 {
		return err
	}
	if !o.Force {
		if len(broken) == len(cur.Index.Entries) {
			return dropAllError(s.dir, broken)
		}
		detail, err := recovery.BlobsElsewhere(s.fsys, cur.Index)
		if err != nil {
			return err
		}
		if detail != "" {
			return fmt.Errorf("--drop-broken would remove %s of the layout %s: %s; nothing was changed; --force removes them: %w", pluralImages(len(broken)), s.dir, detail, errdef.ErrRefused)
		}
	}
	drop := map[int]bool{}
	var names []string
	for _, b := range broken {
		drop[b.Pos] = true
		names = append(names, orNone(b.Name))
	}
	var kept []layout.Entry
	for i, e := range cur.Index.Entries {
		if !drop[i] {
			kept = append(kept, e)
		}
	}
	if kept == nil {
		kept = []layout.Entry{}
	}
	next := cur.Index.With(kept)
	newBytes := next.Marshal()
	refs, err := s.recountAll(db, next)
	if err != nil {
		return err
	}
	now := s.now()
	rec := journal.Record{Op: "repair: drop broken " + strings.Join(names, ","), Time: now.UTC(), OldIndex: cur.Digest, NewIndex: layout.Sum(newBytes)}
	var prepared *fsio.Prepared
	err = db.Update(func(tx *journal.Tx) error {
		if !keepOrphans {
			leased, err := tx.Leased(now)
			if err != nil {
				return err
			}
			err = tx.ForEachRef(func(d digest.Digest, r journal.Ref) error {
				if r.Count > 0 && refs[d].Count == 0 && !leased[d] {
					if fi, err := s.fsys.Lstat(layout.BlobPath(d)); err == nil && fi.Mode().IsRegular() {
						rec.Unlink = append(rec.Unlink, d)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		if err := tx.ReplaceRefs(refs); err != nil {
			return err
		}
		// Asked of the counts of the entries left: an entry whose closure
		// is unknown, or a rebuild's pin, keeps every blob (orphans now,
		// for a GC once freeing is allowed).
		if pinReason(tx, now) != "" {
			rec.Unlink = nil
		}
		if err := tx.AddPending(&rec, newBytes); err != nil {
			return err
		}
		var err error
		prepared, err = protocol.PrepareIndex(s.fsys, newBytes)
		return err
	})
	if err != nil {
		_ = prepared.Abort()
		return s.check(err)
	}
	crash.Point(crash.TxnJournaled)
	stamp, err := protocol.Apply(s.env(), db, &rec, prepared, cur)
	if err != nil {
		return s.check(err)
	}
	s.snap.Store(&snapshot{ix: next, raw: newBytes, digest: rec.NewIndex, stamp: stamp})
	for _, b := range broken {
		res.act(s.log, recovery.ActionEntryDropped, "%s %s: %s", orNone(b.Name), b.Digest, b.Reason)
		res.Actions[len(res.Actions)-1].Txn = rec.ID
	}
	if len(rec.Unlink) > 0 {
		res.Actions = append(res.Actions, protocol.Action{Kind: recovery.ActionOrphansFreed, Txn: rec.ID,
			Detail: fmt.Sprintf("%d blobs only the dropped entries used", len(rec.Unlink))})
	}
	return nil
}

// ActionOrphansKept is the action of a repair that adopts a layout into a
// shared blob directory and keeps the unreferenced blobs it finds there.
const ActionOrphansKept = "orphans-kept"

// recountAll counts the graph of next, the layout's new index, and of
// every other layout of its shared blob directory (whose references the
// journal's counts hold too): the counts a transaction that replaces them
// stores.
func (s *Store) recountAll(db *journal.DB, next *layout.Index) (refcount.Map, error) {
	all := next
	if s.scope != "" {
		peers, err := s.peerEntries(db)
		if err != nil {
			return nil, fmt.Errorf("layouts sharing the blob directory: %w", err)
		}
		all = next.With(append(append([]layout.Entry(nil), next.Entries...), peers...))
	}
	refs, _ := refcount.Recount(all, layout.LoadChildren(s.fsys))
	return refs, nil
}

func orNone(name string) string {
	if name == "" {
		return "<none>"
	}
	return name
}
