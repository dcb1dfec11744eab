package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsck"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
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
	Actions []recovery.Action `json:"actions"`
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
	a := recovery.Action{Kind: kind, Detail: fmt.Sprintf(format, args...)}
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
	if shared, serr := protocol.SharedBlobDirOf(abs); serr != nil || shared != "" {
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
	shared, err := protocol.SharedDirFor(abs, want)
	if err == nil && shared != "" {
		if fi, serr := os.Stat(shared); serr != nil || !fi.IsDir() {
			err = fmt.Errorf("shared blob directory %s: not a directory (%v): %w", shared, serr, errdef.ErrNotFound)
		}
	}
	if err == nil {
		err = fsck.Preflight(ctx, abs, shared, opts.Force, opts.DropBroken)
	}
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	log := opts.Logger.With(slog.String(attrLayout, abs))
	l, err := protocol.OpenLayout(abs, protocol.LayoutOptions{SharedBlobDir: shared, NoCreate: true, AsItIs: true, Log: log})
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	if l.Scope != "" {
		opts.adopting = !fsck.Registered(ctx, l, opts.LockTimeout)
	}
	files := fsck.Repaired{Actions: []recovery.Action{}}
	openable, err := fsck.RepairFiles(ctx, l, fsck.FilesOptions{LockTimeout: opts.LockTimeout, RebuildJournal: opts.RebuildJournal, DropBroken: opts.DropBroken}, &files)
	l.Close()
	if err != nil {
		return nil, fmt.Errorf("repair %s: %w", abs, err)
	}
	res := &RepairResult{Actions: files.Actions, Broken: []recovery.Broken{}, Invalid: files.Invalid}
	if !openable {
		rep, err := fsck.CheckDir(ctx, abs, &recovery.CheckOptions{SharedBlobDir: shared, LockTimeout: opts.LockTimeout})
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

// repairOnline runs steps 5 to 7 on the open store, then the final check.
func (s *Store) repairOnline(ctx context.Context, res *RepairResult, o *RepairOptions) error {
	first, err := s.Check(ctx, &o.Check)
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
			res.Actions = append(res.Actions, recovery.Action{Kind: recovery.ActionOrphansFreed, Txn: gc.Txn,
				Detail: fmt.Sprintf("%d unreferenced blobs, %d bytes (kept: %d leased, %d young)", len(gc.Freed), gc.BytesFreed, gc.Leased, gc.Young)})
		}
		if gc.Pinned != "" {
			res.act(s.log, recovery.ActionPinned, "unreferenced blobs kept: %s", gc.Pinned)
		}
	}
	final, err := s.Check(ctx, nil)
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
		if ok, _ := fsio.Exists(s.lay.FS, p.Path); ok && !hasProblem(final, p) {
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
			res.act(s.log, recovery.ActionOrphansKept, "%d unreferenced blobs of the shared blob directory kept: this layout joined it now, and other layouts may use them without ocistore knowing them (skopeo --dest-shared-blob-dir records none); adopt each (ocistore -l DIR --shared-blob-dir %s recover), then fsck --repair or gc removes what none of them uses",
				n, s.lay.FS.(*fsio.Shared).BlobRoot())
		}
	}
	sn, err := s.current()
	if err != nil {
		return err
	}
	broken, err := fsck.BrokenEntries(ctx, s.lay.FS, sn.ix)
	if err != nil {
		return err
	}
	res.Broken = append(res.Broken, broken...)
	return nil
}

// recount replaces the stored reference counts with a recount of the index
// on disk, under the writer lock (they disagreed with it).
func (s *Store) recount(ctx context.Context, res *RepairResult) error {
	return s.withWriter(ctx, sectionIndex, func(db *journal.DB, cur *protocol.State) error {
		n, err := protocol.Recount(s.envFor(db), db, cur)
		if err != nil {
			return s.check(err)
		}
		res.act(s.log, "recount", "stored reference counts differed from a recount: %d blobs referenced by %s", n, cur.Digest)
		return nil
	})
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
	return s.withWriter(ctx, sectionIndex, func(*journal.DB, *protocol.State) error {
		return s.quarantineSuspects(ctx, suspects, res)
	})
}

// quarantineSuspects moves the suspect blobs that are what the check said
// (re-hashed) to the quarantine folder, under the writer lock.
func (s *Store) quarantineSuspects(ctx context.Context, suspects []digest.Digest, res *RepairResult) error {
	for _, d := range suspects {
		p := layout.BlobPath(d)
		fi, err := s.lay.FS.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("quarantine %s: %w", p, err)
		}
		why := "is " + protocol.KindOf(fi.Mode()) + ", not a regular file"
		if fi.Mode().IsRegular() {
			got, stamp, err := fsck.HashBlob(ctx, s.lay.FS, d)
			if err != nil {
				s.log.Warn("repair: cannot hash a suspect blob; leaving it", attrDigest, d, "err", err)
				continue
			}
			if got == d {
				continue // its descriptor is wrong, not its bytes
			}
			if fsio.StampFile(s.lay.FS, p) != stamp {
				continue // rewritten meanwhile: the next check looks again
			}
			why = "content hashes to " + got.String()
		}
		dest, err := protocol.Quarantine(s.lay.FS, p, d.Algorithm().String()+"/"+d.Encoded())
		if err != nil {
			return s.check(err)
		}
		res.act(s.log, recovery.ActionQuarantined, "%s (%s) %s: moved to %s", d, p, why, dest)
	}
	return nil
}

// dropBroken removes the entries whose closure is not whole from
// index.json in one journaled transaction (docs/DESIGN.md §4.4). Its refcounts are
// a recount of the new index, so the blobs it unlinks are exactly those no
// remaining entry reaches (and no live lease holds): a blob another image
// shares stays, and so does a blob another layout of a shared blob
// directory uses. With o.KeepOrphans it unlinks nothing. Unless o.Force,
// it refuses (ErrRefused, nothing changed) to remove every entry, or any
// when the layout's blobs seem to live elsewhere.
func (s *Store) dropBroken(ctx context.Context, o *RepairOptions, res *RepairResult) error {
	return s.withWriter(ctx, sectionIndex, func(db *journal.DB, cur *protocol.State) error {
		return s.dropBrokenLocked(ctx, db, cur, o, res)
	})
}

// dropBrokenLocked is dropBroken under the writer lock.
func (s *Store) dropBrokenLocked(ctx context.Context, db *journal.DB, cur *protocol.State, o *RepairOptions, res *RepairResult) error {
	keepOrphans := o.KeepOrphans
	broken, err := fsck.BrokenEntries(ctx, s.lay.FS, cur.Index)
	if err != nil || len(broken) == 0 {
		return err
	}
	if !o.Force {
		if len(broken) == len(cur.Index.Entries) {
			return fsck.DropAllError(s.lay.Dir, broken)
		}
		detail, err := fsck.BlobsElsewhere(s.lay.FS, cur.Index)
		if err != nil {
			return err
		}
		if detail != "" {
			return fmt.Errorf("--drop-broken would remove %s of the layout %s: %s; nothing was changed; --force removes them: %w", fsck.PluralImages(len(broken)), s.lay.Dir, detail, errdef.ErrRefused)
		}
	}
	drop := map[int]bool{}
	var names []string
	for _, b := range broken {
		drop[b.Pos] = true
		names = append(names, fsck.OrNone(b.Name))
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
	refs, err := fsck.RecountAll(s.lay, db, next)
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
					if fi, err := s.lay.FS.Lstat(layout.BlobPath(d)); err == nil && fi.Mode().IsRegular() {
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
		var err error
		prepared, err = protocol.Journal(tx, s.lay.FS, &rec, newBytes, nil)
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
		res.act(s.log, recovery.ActionEntryDropped, "%s %s: %s", fsck.OrNone(b.Name), b.Digest, b.Reason)
		res.Actions[len(res.Actions)-1].Txn = rec.ID
	}
	if len(rec.Unlink) > 0 {
		res.Actions = append(res.Actions, recovery.Action{Kind: recovery.ActionOrphansFreed, Txn: rec.ID,
			Detail: fmt.Sprintf("%d blobs only the dropped entries used", len(rec.Unlink))})
	}
	return nil
}
