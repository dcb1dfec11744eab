package fsck

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/recovery"
)

// The repair of a layout's files, before it can be opened as a store
// (store.Repair's steps 1 to 4): oci-layout, the journal, the state
// directories, index.json, and recovery. It runs under the writer lock
// (the journal, opened read-write) and never deletes data: what cannot be
// kept in place goes to the quarantine folder.

// FilesOptions tune RepairFiles.
type FilesOptions struct {
	LockTimeout    time.Duration
	RebuildJournal bool // rebuild a journal a newer ocistore wrote
	DropBroken     bool // remove index.json's invalid entries
}

// Repaired is what a repair did.
type Repaired struct {
	Actions []recovery.Action
	Invalid []recovery.BadEntry // index.json's invalid entries, left in place
}

func (r *Repaired) act(log *slog.Logger, kind, format string, args ...any) {
	a := recovery.Action{Kind: kind, Detail: fmt.Sprintf(format, args...)}
	log.Info("repair: "+kind, "detail", a.Detail)
	r.Actions = append(r.Actions, a)
}

// fixer repairs one layout's files.
type fixer struct {
	l           *protocol.Layout
	log         *slog.Logger
	lockTimeout time.Duration
}

// RepairFiles runs the repair of the layout's files and reports whether it
// can be opened as a store now.
func RepairFiles(ctx context.Context, l *protocol.Layout, o FilesOptions, res *Repaired) (bool, error) {
	f := &fixer{l: l, log: l.Log, lockTimeout: o.LockTimeout}
	return f.repair(ctx, res, o)
}

// Registered reports whether the layout has its state in the journal of
// its shared blob directory (ocistore adopted it before). When that cannot
// be read, it says yes: the repair then finds out what is wrong. Its wait
// for a writer ends with ctx.
func Registered(ctx context.Context, l *protocol.Layout, lockTimeout time.Duration) bool {
	db, err := protocol.OpenWaiting(ctx, l.JournalPath(), journal.Options{ReadOnly: true, LockTimeout: lockTimeout, Scope: l.Scope})
	if errors.Is(err, errdef.ErrNotFound) {
		return false
	}
	if err == nil {
		db.Close()
	}
	return true
}

// Preflight refuses, before anything is changed, what Repair must
// not do unless forced: repair a layout whose blobs seem to live elsewhere
// (a shared blob directory it was not told about: adopting it as it is
// would record every image as broken, and DropBroken would empty it), and
// remove every image with DropBroken. It also refuses a directory that
// holds no layout. It reads the layout as it is; what it cannot read
// (index.json damaged) is left to the repair, whose DropBroken refuses to
// remove every image again once index.json is whole.
func Preflight(ctx context.Context, dir, shared string, force, dropBroken bool) error {
	ro, err := protocol.OpenLayout(dir, protocol.LayoutOptions{SharedBlobDir: shared, ReadOnly: true, AsItIs: true})
	if err != nil {
		return err
	}
	defer ro.Close()
	lfs := ro.LayoutFS()
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
	if force {
		return nil
	}
	_, ix, err := protocol.ReadIndex(ro.FS)
	if err != nil {
		return nil // restored (or reported) by the repair
	}
	detail, err := BlobsElsewhere(ro.FS, ix)
	if err != nil {
		return err
	}
	if detail != "" {
		return fmt.Errorf("%s; repairing the layout as it is would report its %s broken (and --drop-broken would remove them): nothing was changed; --force repairs it anyway: %w",
			detail, PluralImages(len(ix.Entries)), errdef.ErrRefused)
	}
	if dropBroken && len(ix.Entries) > 0 {
		// The repair moves a blob directory that is not one aside: the
		// blobs under it are missing then.
		bad, err := blobDirsBad(ro.FS)
		if err != nil {
			return err
		}
		broken, err := BrokenEntries(ctx, without{ro.FS, bad}, ix)
		if err != nil {
			return err
		}
		if len(broken) == len(ix.Entries) {
			return DropAllError(dir, broken)
		}
	}
	return nil
}

// DropAllError is the refusal of DropBroken to remove every image of the
// layout in dir.
func DropAllError(dir string, broken []recovery.Broken) error {
	return fmt.Errorf("--drop-broken would remove every image of the layout %s (%s, all broken; the first: %s %s: %s): nothing was changed; --force removes them: %w",
		dir, PluralImages(len(broken)), OrNone(broken[0].Name), broken[0].Digest, broken[0].Reason, errdef.ErrRefused)
}

// PluralImages words a count of images.
func PluralImages(n int) string {
	if n == 1 {
		return "1 image"
	}
	return strconv.Itoa(n) + " images"
}

// repair runs steps 1 to 4 on the files, under the writer lock,
// before the layout can be opened as a store. It reports whether it can be
// opened now.
func (f *fixer) repair(ctx context.Context, res *Repaired, o FilesOptions) (bool, error) {
	if !o.RebuildJournal {
		// Before anything changes: a newer ocistore's layout is its own.
		if err := f.l.NewerJournal(f.lockTimeout); err != nil {
			return false, fmt.Errorf("%w (fsck --repair --rebuild-journal rebuilds it, losing what only a newer ocistore reads)", err)
		}
	}
	if ok, err := f.repairLayoutFile(res); err != nil || !ok {
		return false, err
	}
	if hopeless, err := f.indexHopeless(); err != nil || hopeless {
		return false, err
	}
	if err := f.repairStateRoot(res); err != nil {
		return false, err
	}
	db, err := f.repairJournal(ctx, res, o.RebuildJournal)
	if err != nil {
		return false, err
	}
	defer db.Close()
	if err := f.repairStateDirs(res); err != nil {
		return false, err
	}
	if err := f.repairBlobDirs(res); err != nil {
		return false, err
	}
	ok, err := f.repairIndex(ctx, db, res, o)
	if err != nil || !ok {
		return false, err
	}
	// As every writer does: on a shared blob directory, the other
	// layouts' interrupted transactions first.
	st, err := f.l.Recover(ctx, db, f.l.Env(db, protocol.Env{}))
	if err != nil {
		return false, err
	}
	res.Actions = append(res.Actions, st.Actions...)
	return true, nil
}

// indexHopeless reports whether index.json is missing or unreadable while
// nothing could restore it: no journal file (or an empty one), none kept
// aside. Repair then changes nothing at all (not even by creating a journal).
func (f *fixer) indexHopeless() (bool, error) {
	raw, _, err := protocol.ReadIndex(f.l.FS)
	if err == nil {
		return false, nil
	}
	if raw != nil {
		if _, _, lerr := ParseIndexLenient(raw); lerr == nil {
			return false, nil
		}
	}
	if fi, err := f.l.LayoutFS().Lstat(layout.StateDir); err == nil && !fi.IsDir() {
		// No journal in it (repairStateRoot moves it aside).
		f.log.Warn("repair: index.json is missing or unreadable and there is no journal to restore it from; changing nothing")
		return true, nil
	}
	fi, err := f.l.FS.Lstat(protocol.JournalFile)
	switch {
	case err == nil && (fi.Size() > 0 || !fi.Mode().IsRegular()):
		return false, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return false, err
	}
	ents, err := f.l.FS.ReadDir(layout.StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), filepath.Base(protocol.JournalFile)+".corrupt-") {
			return false, nil
		}
	}
	f.log.Warn("repair: index.json is missing or unreadable and there is no journal to restore it from; changing nothing")
	return true, nil
}

// repairLayoutFile writes oci-layout again when it is missing or does not
// parse, in a directory that holds a layout's other files. A file that
// says another version is left alone (and Open refuses it).
func (f *fixer) repairLayoutFile(res *Repaired) (bool, error) {
	b, err := fsio.ReadFile(f.l.FS, layout.LayoutFile, 4096)
	if err == nil && layout.CheckLayoutFile(b) == nil {
		return true, nil
	}
	exists := !errors.Is(err, fs.ErrNotExist)
	var hasIndex, hasBlobs bool
	if hasIndex, err = fsio.Exists(f.l.FS, layout.IndexFile); err != nil {
		return false, err
	}
	if hasBlobs, err = fsio.Exists(f.l.FS, layout.BlobsDir); err != nil {
		return false, err
	}
	if !hasIndex && !hasBlobs {
		return false, fmt.Errorf("no %s, %s or %s: %w", layout.LayoutFile, layout.IndexFile, layout.BlobsDir, errdef.ErrNotLayout)
	}
	if exists {
		dest, err := protocol.Quarantine(f.l.FS, layout.LayoutFile, layout.LayoutFile)
		if err != nil {
			return false, err
		}
		res.act(f.log, recovery.ActionQuarantined, "%s does not parse: moved to %s", layout.LayoutFile, dest)
	}
	if err := f.l.FS.ReplaceFile(layout.LayoutFile, ".", append(layout.LayoutFileContent(), '\n'), 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", layout.LayoutFile, err)
	}
	if err := fsio.SyncDirFor(f.l.FS, fsio.SyncLayoutDir, "."); err != nil {
		return false, err
	}
	res.act(f.log, recovery.ActionLayoutFile, "wrote %s (%s)", layout.LayoutFile, layout.LayoutFileContent())
	return true, nil
}

// repairJournal opens the journal read-write (taking the writer lock).
// One that cannot be opened, fails bbolt's check, or holds a record that
// does not decode is salvaged (applySalvage), moved aside and rebuilt.
//
// A journal a newer ocistore wrote (its version says so, even when it is
// also damaged) is refused unless rebuildNewer, and then rebuilt as a
// damaged one is.
func (f *fixer) repairJournal(ctx context.Context, res *Repaired, rebuildNewer bool) (*journal.DB, error) {
	if _, err := fsio.MkdirDurable(f.l.FS, layout.StateDir); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := f.l.FinishRebuild(); err != nil {
		return nil, err
	}
	path := f.l.JournalPath()
	var why error
	var salv *journal.Salvaged
	var dj *journal.Damaged // the damaged journal under its lock, until rebuilt
	defer func() {
		if dj != nil {
			dj.Close()
		}
	}()
	for tries := 0; ; tries++ {
		fi, err := f.l.FS.Lstat(protocol.JournalFile)
		if err == nil && !fi.Mode().IsRegular() {
			// A symlink or a directory: moved aside as it is, never followed.
			why = fmt.Errorf("journal %s is %s, not a regular file: %w", protocol.JournalFile, protocol.KindOf(fi.Mode()), errdef.ErrCorrupt)
			if f.l.Scope != "" {
				return nil, f.sharedJournalDamaged(why)
			}
			break
		}
		db, err := protocol.OpenWaiting(ctx, path, journal.Options{LockTimeout: f.lockTimeout, Scope: f.l.Scope})
		switch {
		case errors.Is(err, errdef.ErrJournalNewer), errors.Is(err, errdef.ErrCorrupt):
		case errors.Is(err, errdef.ErrLocked):
			return nil, fmt.Errorf("layout %s is locked by another process (waited %s for %s): %w", f.l.Dir, f.lockTimeout, protocol.JournalFile, errdef.ErrLocked)
		case err != nil:
			return nil, err
		default:
			if errs := db.Check(); len(errs) > 0 {
				err = fmt.Errorf("bbolt check: %w", errors.Join(errs...))
			} else if perr := db.View(func(tx *journal.Tx) error { _, err := tx.Pending(); return err }); perr != nil {
				err = perr
			}
			if err == nil {
				if db.Created {
					res.act(f.log, recovery.ActionJournalCreated, "%s was missing or empty: created, counting references from the layout", protocol.JournalFile)
					// openJournal syncs .ocistore for the new file.
					db.Close()
					return f.l.OpenJournal(ctx, journal.Options{LockTimeout: f.lockTimeout})
				}
				return db, nil
			}
			db.Close()
		}
		if f.l.Scope != "" {
			return nil, f.sharedJournalDamaged(err)
		}
		// Judged again, and rebuilt, under the journal's lock.
		if dj, err = journal.LockDamaged(path, f.lockTimeout); err != nil {
			if errors.Is(err, errdef.ErrLocked) {
				return nil, fmt.Errorf("layout %s is locked by another process (waited %s for %s): %w", f.l.Dir, f.lockTimeout, protocol.JournalFile, errdef.ErrLocked)
			}
			return nil, err
		}
		if dj.Why != nil {
			why, salv = dj.Why, dj.Salvaged
			if salv == nil {
				f.log.Warn("repair: nothing could be salvaged from the journal", "err", why)
			}
			break
		}
		// Sound under the lock (rebuilt by another process meanwhile):
		// opened again.
		dj.Close()
		dj = nil
		if tries == 2 {
			return nil, fmt.Errorf("journal %s: found damaged when opened, then sound under its lock, three times: %w", path, errdef.ErrLocked)
		}
	}
	switch {
	case rebuildNewer:
	case errors.Is(why, errdef.ErrJournalNewer):
		return nil, why
	case salv != nil && salv.Newer():
		return nil, salv.NewerError(path)
	}
	if why != nil {
		if err := f.applySalvage(ctx, salv, "", res); err != nil {
			return nil, err
		}
		rb, err := f.l.RebuildJournal(why, dj, salv, f.lockTimeout)
		if err != nil {
			return nil, err
		}
		if dj != nil {
			dj.Close() // the new journal is in place
			dj = nil
		}
		n := 0
		if salv != nil {
			n = len(salv.Pending)
		}
		res.act(f.log, recovery.ActionJournalRebuilt, "%v; kept aside as %s (%d pending records salvaged); rebuilt from the layout", why, rb.Aside, n)
		if rb.Leases > 0 {
			res.act(f.log, recovery.ActionLeasesKept, "%d live leases read from the damaged journal, with their blobs and expiry", rb.Leases)
		}
		if !rb.Pinned.IsZero() {
			res.act(f.log, recovery.ActionPinned, "the leases of the journal kept aside could not all be read (or a newer ocistore wrote it): nothing is freed until %s", rb.Pinned.UTC().Format(time.RFC3339))
		}
	}
	return f.l.OpenJournal(ctx, journal.Options{LockTimeout: f.lockTimeout})
}

// sharedJournalDamaged is the error of a repair that finds the journal of
// its shared blob directory damaged: it is not rebuilt from this layout,
// since it holds the state and counts the references of every layout
// sharing the directory (rebuilt from one, the others' blobs would look
// unreferenced).
func (f *fixer) sharedJournalDamaged(why error) error {
	return fmt.Errorf("the journal of the shared blob directory (%s) is damaged (%v): repair does not rebuild it from one layout, since it counts the references of every layout sharing the directory; nothing was changed: %w",
		f.l.JournalPath(), why, errdef.ErrCorrupt)
}

// repairStateDirs renames .ocistore/ingest, quarantine, trash and owners out of
// the way (to <name>.corrupt-<unix nanoseconds>) when they are not
// directories: a symlink (never followed, in or out of the layout) or a
// file. Recovery lists them and repair moves damaged files into the
// quarantine; both make a new directory when they need one. The writer
// lock is held.
func (f *fixer) repairStateDirs(res *Repaired) error {
	for _, dir := range []string{protocol.IngestDir, protocol.QuarantineDir, protocol.TrashDir, protocol.OwnersDir} {
		fi, err := f.l.FS.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) || err == nil && fi.IsDir() {
			continue
		}
		if err != nil {
			return err
		}
		aside := fmt.Sprintf("%s.corrupt-%d", dir, time.Now().UnixNano())
		if err := f.l.FS.Rename(dir, aside); err != nil {
			return fmt.Errorf("move %s aside: %w", dir, err)
		}
		if err := f.l.FS.SyncDir(layout.StateDir); err != nil {
			return &fsio.SyncError{Path: layout.StateDir, Err: err}
		}
		res.act(f.log, recovery.ActionMovedAside, "%s is %s, not a directory: moved aside as %s", dir, protocol.KindOf(fi.Mode()), aside)
	}
	return nil
}

// repairStateRoot renames the layout's .ocistore out of the way (to
// .ocistore.corrupt-<unix nanoseconds>, next to it) when it is not a
// directory: a file, or a symlink (never followed: what it leads to is
// left as it is). No journal could be opened in it, so no ocistore process
// used it (none takes the writer lock there); the repair then creates the
// journal and counts from the layout, as for a layout never adopted. The
// root is synced.
func (f *fixer) repairStateRoot(res *Repaired) error {
	lfs := f.l.LayoutFS()
	fi, err := lfs.Lstat(layout.StateDir)
	if errors.Is(err, fs.ErrNotExist) || err == nil && fi.IsDir() {
		return nil
	}
	if err != nil {
		return err
	}
	aside := fmt.Sprintf("%s.corrupt-%d", layout.StateDir, time.Now().UnixNano())
	if err := lfs.Rename(layout.StateDir, aside); err != nil {
		return fmt.Errorf("move %s aside: %w", layout.StateDir, err)
	}
	if err := lfs.SyncDir("."); err != nil {
		return &fsio.SyncError{Path: ".", Err: err}
	}
	res.act(f.log, recovery.ActionMovedAside, "%s is %s, not a directory: moved aside as %s", layout.StateDir, protocol.KindOf(fi.Mode()), aside)
	return nil
}

// repairBlobDirs moves blobs/, or an algorithm directory of it, that is
// not a directory (a symlink, in or out of the layout, never followed; a
// file) to the quarantine folder as it is, and makes an empty directory in
// its place: the images whose blobs were behind it are broken then (the
// check reports them; DropBroken removes them). What a symlink leads to is
// never opened, changed or removed. The writer lock is held.
func (f *fixer) repairBlobDirs(res *Repaired) error {
	bad, err := blobDirsBad(f.l.FS)
	if err != nil {
		return err
	}
	for _, p := range bad {
		fi, err := f.l.FS.Lstat(p)
		if err != nil {
			return err
		}
		dest, err := protocol.Quarantine(f.l.FS, p, strings.ReplaceAll(p, "/", "-"))
		if err != nil {
			return err
		}
		if _, err := fsio.MkdirDurable(f.l.FS, p); err != nil {
			return fmt.Errorf("make %s again: %w", p, err)
		}
		res.act(f.log, recovery.ActionQuarantined, "%s is %s, not a directory: moved to %s, and an empty directory made in its place", p, protocol.KindOf(fi.Mode()), dest)
	}
	return nil
}

// without is an FS on which the paths under the directories of hide
// do not exist.
type without struct {
	fsio.FS
	hide []string
}

func (w without) hidden(name string) bool {
	for _, h := range w.hide {
		if name == h || strings.HasPrefix(name, h+"/") {
			return true
		}
	}
	return false
}

func (w without) Lstat(name string) (fs.FileInfo, error) {
	if w.hidden(name) {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: fs.ErrNotExist}
	}
	return w.FS.Lstat(name)
}

func (w without) Open(name string) (fsio.File, error) {
	if w.hidden(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return w.FS.Open(name)
}

// indexState reads index.json: its bytes and digest when it parses (or
// parses with invalid entries only), exists when there is anything at the
// path.
func (f *fixer) indexState() (raw []byte, d digest.Digest, exists bool, err error) {
	exists, err = fsio.Exists(f.l.FS, layout.IndexFile)
	if err != nil || !exists {
		return nil, "", exists, err
	}
	raw, _, ixErr := protocol.ReadIndex(f.l.FS)
	if ixErr == nil {
		return raw, layout.Sum(raw), true, nil
	}
	if raw != nil {
		if _, _, lerr := ParseIndexLenient(raw); lerr == nil {
			return raw, layout.Sum(raw), true, nil
		}
	}
	return nil, "", true, nil
}

// restoreIndex writes b, from from, as index.json (replaceIndex) and says
// so.
func (f *fixer) restoreIndex(b []byte, exists bool, from string, res *Repaired) error {
	if err := f.replaceIndex(b, exists, res); err != nil {
		return err
	}
	res.act(f.log, recovery.ActionIndexRestored, "%s restored from %s (%s)", layout.IndexFile, from, layout.Sum(b))
	return nil
}

// replaceIndex writes b as index.json, durably, first moving what is at
// the path when it exists (an unreadable file, a symlink, a directory) to
// the quarantine folder.
func (f *fixer) replaceIndex(b []byte, exists bool, res *Repaired) error {
	if exists {
		dest, err := protocol.Quarantine(f.l.FS, layout.IndexFile, layout.IndexFile)
		if err != nil {
			return err
		}
		res.act(f.log, recovery.ActionQuarantined, "%s is unreadable: moved to %s", layout.IndexFile, dest)
	}
	return protocol.WriteIndex(f.l.FS, b)
}

// applySalvage honours what a damaged journal still holds, before it is
// moved aside: its readable pending records by the recovery table, then
// its copy of the last committed index when index.json is still missing
// or unreadable. Blobs the records would have unlinked are left: they are
// orphans once the journal is rebuilt (step 7 removes them, checking that
// nothing references them). source names the journal file for messages.
func (f *fixer) applySalvage(ctx context.Context, salv *journal.Salvaged, source string, res *Repaired) error {
	if salv == nil {
		return nil
	}
	if source == "" {
		source = "the damaged journal"
	}
	_, onDisk, exists, err := f.indexState()
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
			res.Actions = append(res.Actions, recovery.Action{Kind: "roll-forward", Txn: rec.ID,
				Detail: fmt.Sprintf("%s (salvaged from %s): index.json is its new index; the blobs it freed are orphans now", rec.Op, source)})
		case nb != nil && (onDisk == "" || onDisk == rec.OldIndex):
			if err := f.replaceIndex(nb, onDisk == "" && exists, res); err != nil {
				return err
			}
			onDisk, exists = rec.NewIndex, true
			res.Actions = append(res.Actions, recovery.Action{Kind: "replay", Txn: rec.ID,
				Detail: fmt.Sprintf("%s (salvaged from %s): wrote its new index", rec.Op, source)})
		default:
			res.Actions = append(res.Actions, recovery.Action{Kind: "roll-back", Txn: rec.ID,
				Detail: fmt.Sprintf("%s (salvaged from %s): index.json changed since, or its new index was lost; dropped", rec.Op, source)})
		}
	}
	if onDisk == "" && salv.Committed != "" {
		if b, ok := salv.Indexes[salv.Committed]; ok {
			return f.restoreIndex(b, exists, "the last committed index in "+source, res)
		}
	}
	return nil
}

// repairIndex makes index.json usable (step 3) and reports whether it is.
func (f *fixer) repairIndex(ctx context.Context, db *journal.DB, res *Repaired, o FilesOptions) (bool, error) {
	raw, _, ixErr := protocol.ReadIndex(f.l.FS)
	if ixErr == nil {
		return true, nil
	}
	if raw != nil {
		if lix, bad, err := ParseIndexLenient(raw); err == nil {
			if !o.DropBroken {
				res.Invalid = bad
				return false, nil
			}
			return true, f.dropInvalid(db, raw, lix, bad, res)
		}
	}
	exists, err := fsio.Exists(f.l.FS, layout.IndexFile)
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
		if copyBytes != nil && !validCopy(copyBytes, committed) {
			f.log.Warn("repair: the journal's copy of the committed index does not hash to its digest or does not parse; not restoring it", "digest", committed)
			copyBytes = nil
		}
		return nil
	}); err != nil {
		return false, err
	}
	switch {
	case replay:
		// Recovery replays the record's new index over it; keep the old one.
		if exists {
			dest, err := protocol.Quarantine(f.l.FS, layout.IndexFile, layout.IndexFile)
			if err != nil {
				return false, err
			}
			res.act(f.log, recovery.ActionQuarantined, "%s is unreadable: moved to %s", layout.IndexFile, dest)
		}
		return true, nil
	case committed != "" && copyBytes != nil:
		return true, f.restoreIndex(copyBytes, exists, "the journal's copy of the last committed index", res)
	}
	// A journal rebuilt earlier (by an Open that then failed on index.json)
	// left the damaged one aside: it may still hold the copy.
	if committed == "" && f.l.Scope == "" {
		if aside, salv := f.newestAside(); salv != nil {
			if err := f.applySalvage(ctx, salv, aside, res); err != nil {
				return false, err
			}
			if _, _, err := protocol.ReadIndex(f.l.FS); err == nil {
				return true, nil
			}
		}
	}
	f.log.Warn("repair: index.json is missing or unreadable and no copy of it is left; not replacing it")
	return false, nil
}

// newestAside salvages the most recent journal moved aside, if any.
func (f *fixer) newestAside() (string, *journal.Salvaged) {
	ents, err := f.l.FS.ReadDir(layout.StateDir)
	if err != nil {
		return "", nil
	}
	prefix := filepath.Base(protocol.JournalFile) + ".corrupt-"
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
	salv, err := journal.SalvageFile(filepath.Join(f.l.Dir, filepath.FromSlash(name)), f.lockTimeout)
	if err != nil {
		f.log.Warn("repair: nothing could be salvaged from the journal kept aside", "path", name, "err", err)
		return "", nil
	}
	return name, salv
}

// dropInvalid removes the entries of index.json that are not valid
// descriptors, in one journaled transaction, after keeping a copy of the
// file in the quarantine folder. Its refcounts are a recount of the new
// index; it unlinks nothing (what only those entries used is an orphan).
func (f *fixer) dropInvalid(db *journal.DB, raw []byte, next *layout.Index, bad []recovery.BadEntry, res *Repaired) error {
	kept, err := protocol.KeepCopy(f.l.FS, layout.IndexFile, raw)
	if err != nil {
		return err
	}
	res.act(f.log, recovery.ActionKept, "a copy of %s, before invalid entries were removed, is in %s", layout.IndexFile, kept)
	newBytes := next.Marshal()
	refs, err := RecountAll(f.l, db, next)
	if err != nil {
		return err
	}
	rec := journal.Record{Op: "repair: drop invalid entries", Time: time.Now().UTC(), OldIndex: layout.Sum(raw), NewIndex: layout.Sum(newBytes)}
	var prepared *fsio.Prepared
	if err := db.Update(func(tx *journal.Tx) error {
		if err := tx.ReplaceRefs(refs); err != nil {
			return err
		}
		var err error
		prepared, err = protocol.Journal(tx, f.l.FS, &rec, newBytes, nil)
		return err
	}); err != nil {
		_ = prepared.Abort()
		return err
	}
	crash.Point(crash.TxnJournaled)
	// What is on disk now, for a roll back: its valid entries count.
	old, _, _ := ParseIndexLenient(raw)
	if _, err := protocol.Apply(protocol.Env{FS: f.l.FS, Log: f.log}, db, &rec, prepared, &protocol.State{Index: old, Bytes: raw, Digest: rec.OldIndex}); err != nil {
		return err
	}
	for _, b := range bad {
		res.Actions = append(res.Actions, recovery.Action{Kind: recovery.ActionEntryDropped, Txn: rec.ID,
			Detail: fmt.Sprintf("manifests[%d] %s: %s", b.Pos, b.Raw, b.Err)})
	}
	return nil
}

// RecountAll counts the graph of next, the layout's new index, and of
// every other layout of its shared blob directory (whose references the
// journal's counts hold too): the counts a transaction that replaces them
// stores.
func RecountAll(l *protocol.Layout, db *journal.DB, next *layout.Index) (refcount.Map, error) {
	all := next
	if l.Scope != "" {
		peers, err := l.PeerEntries(db)
		if err != nil {
			return nil, fmt.Errorf("layouts sharing the blob directory: %w", err)
		}
		all = next.With(append(append([]layout.Entry(nil), next.Entries...), peers...))
	}
	refs, _ := refcount.Recount(all, layout.LoadChildren(l.FS))
	return refs, nil
}

// OrNone names an untagged entry for messages.
func OrNone(name string) string {
	if name == "" {
		return "<none>"
	}
	return name
}

// validCopy reports whether b, a copy of an index.json the journal holds
// under d, is that index: it hashes to d and parses. A damaged journal
// never writes index.json.
func validCopy(b []byte, d digest.Digest) bool {
	if layout.Sum(b) != d {
		return false
	}
	_, err := layout.ParseIndex(b)
	return err == nil
}
