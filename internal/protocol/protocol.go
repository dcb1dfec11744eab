// Package protocol is ocistore's write protocol, in one place: a change of
// index.json is journaled with its record (the blobs it frees and the new
// index's bytes), the new index.json is renamed into place, the freed blobs
// are unlinked or moved to the trash, and the record is cleared (Apply,
// Finish). Recovery (Run) finishes or undoes the records an interrupted
// process left, by the table below, and reconciles index.json changes made
// by other tools. It runs on every store open, at the start of every write
// transaction, and as `ocistore recover`. Every function here expects the
// caller to hold the writer lock: the journal, opened read-write (Layout).
// The protocol is docs/DESIGN.md §4, recovery §5 (the table: §5.2).
//
// # The recovery table
//
// For each pending record, by the digest of index.json on disk:
//
//	== new index digest           roll forward: unlink what is left of the blob set, sync, clear
//	== old index digest           replay: write the new index from the record, then as above
//	missing, empty, unparseable   replay, as above
//	anything else                 another tool changed index.json: drop the record, unlink
//	                              nothing, recount the refcounts from disk
//
// When the old index is on disk we replay rather than roll back: the record's
// refcounts were committed with it, the caller was never told either way, and
// replaying needs no recount. Replay (in both rows) writes only index bytes
// stored with the record that hash to its new index digest and parse as an
// index; a record without such bytes is treated as having none: rolled back
// (dropped, refcounts recounted) when the old index is on disk, and with
// index.json missing or unparseable recovery fails, changing nothing.
//
// Before unlinking anything for a record it found pending, recovery walks
// the graph of the index.json now on disk (from the files, not the
// journal): no blob that walk reaches is unlinked, and when the journal's
// refcounts disagree with it they are recounted first. A blob is unlinked
// only when the walk does not reach it and its journal count is zero. The
// forward path of a transaction (Apply, Finish) does not walk: there the
// journal's counts were just computed for the index it wrote.
//
// With no pending record, an index.json whose digest differs from the last one
// committed through the journal was written by another tool (or the journal is
// new): the refcounts are recounted from disk and nothing is deleted.
//
// Every step is idempotent and is followed by the sync that makes it durable,
// so recovery can itself be interrupted at any point and run again.
package protocol

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/recovery"
)

// IngestDir holds blobs being written, relative to the layout root.
const IngestDir = layout.StateDir + "/ingest"

// UploadsDir holds the staging files of resumable uploads (store.Upload),
// each named after the lease of its session: they outlive the process
// that began them, so the owner sweep of IngestDir (which lists only
// regular files) leaves them to GC, which removes those whose lease is
// gone.
const UploadsDir = IngestDir + "/uploads"

// Log attribute keys.
const (
	attrDigest = "digest"
	attrPath   = "path"
	attrTxn    = "txn"
)

// Env is what recovery works on.
type Env struct {
	FS  fsio.FS
	Log *slog.Logger
	// Peers, set for a layout whose blob directory other layouts share,
	// returns the root entries of every other layout sharing it (their
	// index.json on disk): the journal's refcounts count the references of
	// all of them, so recounts and the walk before unlinking count them
	// too.
	Peers func() ([]layout.Entry, error)
	// Unlinked, when set, is told the path of each blob file a transaction
	// removed (not those it found missing).
	Unlinked func(path string)
	// Reclaim, when set, takes the files of the trash to unlink later: a
	// transaction that removes at least TrashMin blobs then moves them
	// into TrashDir instead of unlinking them (fsio.TrashFiles), and an
	// open gives it what an owner that is gone, or the caller, left there.
	// When nil, blobs are unlinked in place and leftovers removed at once.
	Reclaim func(trashed []string)
	// Owner, needed with Reclaim, returns the token of the owner of the
	// files a transaction puts in the trash (see OwnersDir), making its
	// owner file on first use.
	Owner func() (string, error)
	// TrashMin is the number of blobs from which a transaction takes
	// them into the trash (with Reclaim); 0 means DefaultTrashMin. Crash
	// tests lower it to take the trash with small transactions.
	TrashMin int
	// Self is the token of the caller's owner, "" when it has none yet:
	// recovery takes its files in the trash too (they are its own), and
	// leaves its ingest temp files.
	Self string
	// Load, when set, reads a manifest's children for the recounts
	// (else layout.LoadChildren of FS): a store passes a cache it reuses
	// after recovery (the image metadata), so that an adoption reads each
	// manifest once. Prefetch, when set, is given the roots of a recount
	// first, to read their manifests in parallel.
	Load     refcount.Loader
	Prefetch func(roots []v1.Descriptor)
	// Dry makes recovery change no file: it works on a private copy of
	// the journal (journal.Options.Snapshot), as a dry run's plan does,
	// and says what it would do (State.Actions). A pending record's new
	// index is taken as the index (what rolling it forward or replaying
	// it would leave) and the record dropped from the copy; leftovers
	// are not swept.
	Dry bool
}

// loader is Load, or the children of the manifests of FS.
func (env Env) loader() refcount.Loader {
	if env.Load != nil {
		return env.Load
	}
	return layout.LoadChildren(env.FS)
}

// withPeers returns ix with the root entries of the peers added: the graph
// whose counts the journal keeps.
func (env Env) withPeers(ix *layout.Index) (*layout.Index, error) {
	if env.Peers == nil {
		return ix, nil
	}
	peers, err := env.Peers()
	if err != nil {
		return nil, fmt.Errorf("layouts sharing the blob directory: %w", err)
	}
	all := make([]layout.Entry, 0, len(ix.Entries)+len(peers))
	return ix.With(append(append(all, ix.Entries...), peers...)), nil
}

// State is the layout after recovery: the index.json on disk.
type State struct {
	Index  *layout.Index
	Bytes  []byte
	Digest digest.Digest
	// Stamp is index.json's stamp, taken before Bytes were read (or after
	// they were written): if the file still has it, it still holds Bytes.
	Stamp fsio.Stamp
	// Actions lists what recovery did, for `ocistore recover`.
	Actions []recovery.Action
}

// ReadIndex reads and parses index.json. It returns the raw bytes even when
// they do not parse (with the error), and nil bytes when the file is missing.
func ReadIndex(fsys fsio.FS) ([]byte, *layout.Index, error) {
	b, err := fsio.ReadFile(fsys, layout.IndexFile, layout.MaxIndexSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s: %w", layout.IndexFile, errdef.ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", layout.IndexFile, err)
	}
	ix, err := layout.ParseIndex(b)
	return b, ix, err
}

// Run brings the layout and the journal to a consistent state (the table in
// the package comment) and returns the index on disk. db must be open
// read-write (it holds the writer lock).
//
// known, when not nil, is the index the caller last read or wrote, and the
// caller vouches that index.json on disk is still that file (same inode,
// size and change times). If the journal agrees (no pending record, same
// committed digest), Run returns known without reading index.json: that keeps
// a transaction's cost independent of the size of the layout.
func Run(ctx context.Context, env Env, db *journal.DB, known *State) (*State, error) {
	return run(ctx, env, db, known, false)
}

// RunLazy is Run for an open: when no record is pending and index.json
// still has the stamp it had when the journal last committed or counted it
// (same inode, size, modification and change times), the layout is
// consistent as it is and RunLazy returns without reading index.json: the
// State has the committed digest and the stamp but no Index nor Bytes, and
// the caller reads the file when it needs it. Otherwise it is Run. This
// makes an open with no pending work cost a stat, whatever the size of the
// layout.
func RunLazy(ctx context.Context, env Env, db *journal.DB) (*State, error) {
	return run(ctx, env, db, nil, true)
}

func run(ctx context.Context, env Env, db *journal.DB, known *State, lazy bool) (*State, error) {
	st := &State{}
	if !env.Dry {
		if err := sweepLeftovers(env, st, known == nil); err != nil {
			return nil, err
		}
	}
	var recs []*journal.Record
	var lastDigest digest.Digest
	var stamp fsio.Stamp
	trust := stampNo
	// A journal upgraded from version 3 does not know which closures are
	// unknown: it is recounted before anything relies on it.
	uncounted := false
	if err := db.View(func(tx *journal.Tx) error {
		var err error
		recs, err = tx.Pending()
		lastDigest = tx.IndexDigest()
		uncounted = !tx.UnknownCounted()
		if lazy && err == nil && len(recs) == 0 && !uncounted {
			stamp, trust = stamped(env, tx, lastDigest)
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("read pending records: %w", err)
	}
	if known != nil && len(recs) == 0 && known.Digest == lastDigest && !uncounted {
		return &State{Index: known.Index, Bytes: known.Bytes, Digest: known.Digest, Stamp: known.Stamp, Actions: st.Actions}, nil
	}
	if trust == stampRacy {
		// Hash without parsing; once it matches, the stamp is taken
		// again, now long enough after the change to be trusted.
		raw, err := fsio.ReadFile(env.FS, layout.IndexFile, layout.MaxIndexSize)
		if err == nil && layout.Sum(raw) == lastDigest && fsio.StampFile(env.FS, layout.IndexFile) == stamp {
			if err := db.Update(func(tx *journal.Tx) error { return setStamp(tx, lastDigest, stamp) }); err != nil {
				return nil, fmt.Errorf("note the stamp of %s: %w", layout.IndexFile, err)
			}
			trust = stampTrusted
		}
	}
	if trust == stampTrusted {
		return &State{Digest: lastDigest, Stamp: stamp, Actions: st.Actions}, nil
	}
	stamp = fsio.StampFile(env.FS, layout.IndexFile)
	raw, ix, ixErr := ReadIndex(env.FS)
	recount := uncounted
	for _, rec := range recs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		log := env.Log.With(slog.Uint64(attrTxn, rec.ID))
		newBytes, newIx := storedIndex(db, rec, log)
		onDisk := digest.Digest("")
		if raw != nil && ixErr == nil {
			onDisk = layout.Sum(raw)
		}
		switch {
		case onDisk == rec.NewIndex:
			log.Info("recovery: rolling forward", "op", rec.Op)
			st.Actions = append(st.Actions, recovery.Action{Kind: "roll-forward", Txn: rec.ID, Detail: rec.Op})
		case newIx != nil && (onDisk == "" || onDisk == rec.OldIndex):
			// Replay only bytes that are the record's new index and parse
			// as one (storedIndex): a damaged journal must never replace
			// index.json.
			log.Info("recovery: replaying", "op", rec.Op, "index", describe(raw, ixErr))
			st.Actions = append(st.Actions, recovery.Action{Kind: "replay", Txn: rec.ID, Detail: rec.Op})
			if env.Dry {
				raw, ix, ixErr = newBytes, newIx, nil
				break
			}
			if err := WriteIndex(env.FS, newBytes); err != nil {
				return nil, fmt.Errorf("replay txn %d: %w", rec.ID, err)
			}
			crash.Point(crash.RecoverReplayed)
			stamp = fsio.StampFile(env.FS, layout.IndexFile)
			raw, ix, ixErr = newBytes, newIx, nil
		case ixErr != nil:
			// index.json cannot be read and the record cannot replay it:
			// nothing can be recounted, so the record stays (its refcount
			// changes are in the counts, and dropping it would leave them
			// there unmarked) and recovery fails, changing nothing. Repair
			// restores index.json, and the next run rolls the record back.
			log.Warn("recovery: index.json is unreadable and the record's new index is not in the journal; keeping the record", "op", rec.Op, "index", describe(raw, ixErr))
			return nil, fmt.Errorf("txn %d (%s) is pending and its new index is not in the journal: %w", rec.ID, rec.Op, ixErr)
		default:
			if onDisk == rec.OldIndex {
				log.Warn("recovery: the record's new index is not in the journal; dropping the record and recounting", "op", rec.Op)
			} else {
				log.Warn("recovery: index.json changed by another tool; dropping the record and recounting", "op", rec.Op)
			}
			st.Actions = append(st.Actions, recovery.Action{Kind: "roll-back", Txn: rec.ID, Detail: rec.Op})
			// The record goes in the commit that stores the recount: its
			// refcount changes are in the journal's counts, so a crash
			// between a drop and a recount would leave counts for an index
			// that is not on disk, in a journal that looks consistent.
			if _, err := recountDropping(env, db, &State{Index: ix, Bytes: raw, Digest: onDisk, Stamp: stamp}, rec.ID); err != nil {
				return nil, fmt.Errorf("roll back txn %d: %w", rec.ID, err)
			}
			lastDigest = onDisk
			continue
		}
		if env.Dry {
			// What finishing it would leave in the journal: no record.
			if err := db.Update(func(tx *journal.Tx) error { return tx.DeletePending(rec.ID) }); err != nil {
				return nil, fmt.Errorf("txn %d: %w", rec.ID, err)
			}
			lastDigest = rec.NewIndex
			continue
		}
		on := &State{Index: ix, Bytes: raw, Digest: rec.NewIndex, Stamp: stamp}
		recounted, err := finishRecovered(env, db, rec, on)
		if err != nil {
			return nil, err
		}
		if recounted {
			st.Actions = append(st.Actions, recovery.Action{Kind: "recount", Txn: rec.ID, Detail: "the journal's refcounts did not match " + string(rec.NewIndex)})
		}
		lastDigest = rec.NewIndex
	}
	if ixErr != nil {
		return nil, ixErr
	}
	st.Bytes, st.Index, st.Digest, st.Stamp = raw, ix, layout.Sum(raw), stamp
	if recount || st.Digest != lastDigest {
		if lastDigest != "" && !recount {
			env.Log.Warn("index.json changed outside ocistore; recounting references", "was", lastDigest, "now", st.Digest)
		}
		if uncounted && lastDigest != "" {
			env.Log.Info("journal upgraded: recounting references to learn which closures are unknown")
		}
		n, err := Recount(env, db, st)
		if err != nil {
			return nil, err
		}
		st.Actions = append(st.Actions, recovery.Action{Kind: "recount", Detail: fmt.Sprintf("%d blobs referenced by %s", n, st.Digest)})
		return st, nil
	}
	// Consistent: note the stamp, for the next open (RunLazy), unless the
	// journal has it already (then this costs no write).
	if err := db.View(func(tx *journal.Tx) error {
		_, trust := stamped(env, tx, st.Digest)
		if trust != stampNo || st.Stamp.IsZero() || fsio.StampFile(env.FS, layout.IndexFile) != st.Stamp {
			return errStamped
		}
		return nil
	}); err == nil {
		if err := db.Update(func(tx *journal.Tx) error { return setStamp(tx, st.Digest, st.Stamp) }); err != nil {
			return nil, fmt.Errorf("note the stamp of %s: %w", layout.IndexFile, err)
		}
	} else if !errors.Is(err, errStamped) {
		return nil, err
	}
	return st, nil
}

// errStamped ends a read of the journal that found no stamp to write.
var errStamped = errors.New("stamp known")

// setStamp records that index.json with stamp held the index d, so that a
// later open can skip reading it (RunLazy), with the time it was taken.
// Nothing when the stamp is unknown.
func setStamp(tx *journal.Tx, d digest.Digest, stamp fsio.Stamp) error {
	if stamp.IsZero() {
		return nil
	}
	b, _ := stamp.MarshalBinary()
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixNano()))
	return tx.SetIndexStamp(d, b)
}

// racyWindow is how close to the moment a stamp was taken the file's change
// time may be for the stamp to be trusted without reading the file: a file
// changed again within the time-stamp granularity of the file system (a
// jiffy on ext4 without fine-grained times, 2 s on FAT) can keep its stamp
// (the "racy git" problem).
var racyWindow = 2 * time.Second

// stampTrust is what a recorded stamp says of index.json on disk.
type stampTrust int

const (
	stampNo      stampTrust = iota // no stamp, another digest, or another file
	stampRacy                      // the same stamp, taken too soon after the file changed: read it to be sure
	stampTrusted                   // the same file, unchanged since the journal counted it
)

// stamped compares index.json's stamp on disk with the one the journal
// recorded for the committed index d.
func stamped(env Env, tx *journal.Tx, d digest.Digest) (fsio.Stamp, stampTrust) {
	sd, sb := tx.IndexStamp()
	if d == "" || sd != d {
		return fsio.Stamp{}, stampNo
	}
	got := fsio.StampFile(env.FS, layout.IndexFile)
	return got, trustStamp(sb, got)
}

// trustStamp compares got, an index.json's stamp now, with recorded, what
// SetIndexStamp stored for it (the stamp and when it was taken).
func trustStamp(recorded []byte, got fsio.Stamp) stampTrust {
	var want fsio.Stamp
	if len(recorded) != 40 || want.UnmarshalBinary(recorded[:32]) != nil || want.IsZero() || got != want {
		return stampNo
	}
	taken := int64(binary.BigEndian.Uint64(recorded[32:]))
	if max(got.Ctime, got.Mtime) >= taken-int64(racyWindow) {
		return stampRacy
	}
	return stampTrusted
}

// PeerChange is another layout of a shared blob directory whose index.json
// is not the index the journal last committed for it.
type PeerChange struct {
	Dir       string        // the layout (its scope in the journal)
	Committed digest.Digest // what the journal has
	Now       digest.Digest // what index.json holds
	raw       []byte
	stamp     fsio.Stamp
}

// PeerChanges checks the index.json of every other layout registered in a
// shared journal (self is this layout's scope) against the index the
// journal last committed for it: by stamp, else by hashing it. A layout
// whose index.json cannot be read is not reported (its committed index
// keeps counting, see the store's peer entries).
func PeerChanges(db *journal.DB, self string) ([]PeerChange, error) {
	type peer struct {
		dir       string
		committed digest.Digest
		stamp     []byte
	}
	var peers []peer
	if err := db.View(func(tx *journal.Tx) error {
		for _, sc := range tx.Layouts() {
			if sc == self {
				continue
			}
			if o := tx.In(sc); o != nil {
				sd, sb := o.IndexStamp()
				if sd != o.IndexDigest() {
					sb = nil
				}
				peers = append(peers, peer{dir: sc, committed: o.IndexDigest(), stamp: sb})
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var out []PeerChange
	for _, p := range peers {
		fi, err := os.Lstat(filepath.Join(p.dir, layout.IndexFile))
		if err != nil {
			continue
		}
		now := fsio.StampOf(fi)
		if trustStamp(p.stamp, now) == stampTrusted {
			continue // the file the journal counted
		}
		pfs, err := fsio.OpenOS(p.dir)
		if err != nil {
			continue
		}
		raw, err := fsio.ReadFile(pfs, layout.IndexFile, layout.MaxIndexSize)
		pfs.Close()
		if err != nil {
			continue
		}
		if d := layout.Sum(raw); d != p.committed {
			if _, err := layout.ParseIndex(raw); err != nil {
				continue // torn or foreign: the committed index keeps counting
			}
			out = append(out, PeerChange{Dir: p.dir, Committed: p.committed, Now: d, raw: raw, stamp: now})
		}
	}
	return out, nil
}

// ReconcilePeers recounts the refcounts of a shared blob directory after
// other layouts' index.json changed outside ocistore (changes, from
// PeerChanges; st is this layout's state, with its Index), so that no blob
// another layout's index.json now reaches is freed, and records each
// changed index as committed for its layout (unless that layout has a
// pending record: its own recovery comes first), so that the change is
// counted once.
func ReconcilePeers(env Env, db *journal.DB, st *State, changes []PeerChange) error {
	for _, c := range changes {
		env.Log.Warn("a layout sharing the blob directory changed outside ocistore; recounting references", "peer", c.Dir, "was", c.Committed, "now", c.Now)
	}
	if _, err := Recount(env, db, st); err != nil {
		return err
	}
	return db.Update(func(tx *journal.Tx) error {
		for _, c := range changes {
			o := tx.In(c.Dir)
			if o == nil {
				continue
			}
			if recs, err := o.Pending(); err != nil || len(recs) > 0 {
				continue
			}
			if err := o.SetCommittedIndex(c.Now, c.raw); err != nil {
				return err
			}
			if err := setStamp(o, c.Now, c.stamp); err != nil {
				return err
			}
		}
		return nil
	})
}

// storedIndex returns the index bytes stored with rec, and their parse,
// when they are rec's new index: they hash to NewIndex and parse as an
// index. Anything else (none, other bytes, bytes that are no index: a
// damaged journal) is no bytes: nil, nil.
func storedIndex(db *journal.DB, rec *journal.Record, log *slog.Logger) ([]byte, *layout.Index) {
	var b []byte
	_ = db.View(func(tx *journal.Tx) error { b, _ = tx.IndexBytes(rec.NewIndex); return nil })
	if b == nil {
		return nil, nil
	}
	if got := layout.Sum(b); got != rec.NewIndex {
		log.Warn("recovery: the index stored with the record does not hash to its new index", "want", rec.NewIndex, "got", got)
		return nil, nil
	}
	ix, err := layout.ParseIndex(b)
	if err != nil {
		log.Warn("recovery: the index stored with the record does not parse", "err", err)
		return nil, nil
	}
	return b, ix
}

func describe(raw []byte, err error) string {
	switch {
	case raw == nil:
		return "missing"
	case err != nil:
		return "unparseable"
	}
	return "old"
}

// Recount replaces the journal's refcounts with a count of st's graph and
// records st as the committed index. It never deletes anything.
func Recount(env Env, db *journal.DB, st *State) (int, error) {
	return recountDropping(env, db, st, 0)
}

// recountDropping is Recount that also drops the pending record drop (when
// not 0) in the same journal commit: a record whose deltas are in the
// refcounts must not go without them, or a crash between the two commits
// leaves counts of an index that is not on disk under a journal that looks
// consistent (no record, the committed index on disk: no recount).
func recountDropping(env Env, db *journal.DB, st *State, drop uint64) (int, error) {
	all, err := env.withPeers(st.Index)
	if err != nil {
		return 0, err
	}
	if env.Prefetch != nil {
		roots := make([]v1.Descriptor, len(all.Entries))
		for i, e := range all.Entries {
			roots[i] = e.Desc
		}
		env.Prefetch(roots)
	}
	m, problems := refcount.Recount(all, env.loader())
	for _, p := range problems {
		env.Log.Warn("recount: cannot follow a manifest", "err", p)
	}
	return storeCounts(db, st, m, drop)
}

// storeCounts stores m, a recount of st's graph, as the journal's refcounts
// and st as the committed index, and drops the pending record drop (when
// not 0).
func storeCounts(db *journal.DB, st *State, m refcount.Map, drop uint64) (int, error) {
	crash.Point(crash.RecoverRecounted)
	err := db.Update(func(tx *journal.Tx) error {
		if drop != 0 {
			if err := tx.DeletePending(drop); err != nil {
				return err
			}
		}
		if err := tx.ReplaceRefs(m); err != nil {
			return err
		}
		if err := tx.SetCommittedIndex(st.Digest, st.Bytes); err != nil {
			return err
		}
		return setStamp(tx, st.Digest, st.Stamp)
	})
	if err != nil {
		return 0, fmt.Errorf("store recount: %w", err)
	}
	return len(m), nil
}

// WriteIndex replaces index.json atomically and durably: temp file in the
// layout root, fsync, rename, fsync of the layout directory.
func WriteIndex(fsys fsio.FS, b []byte) error {
	if err := fsys.ReplaceFile(layout.IndexFile, ".", b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", layout.IndexFile, err)
	}
	crash.Point(crash.IndexRenamed)
	if err := fsio.SyncDirFor(fsys, fsio.SyncLayoutDir, "."); err != nil {
		return fmt.Errorf("write %s: %w", layout.IndexFile, err)
	}
	return nil
}

// prepareIndex writes a transaction's new index.json to a temp file in the
// layout root and syncs it: the part of step 3 that needs space. A
// transaction does it before its journal commit, so that a full disk or a
// failed write fails it while nothing is committed.
func prepareIndex(fsys fsio.FS, b []byte) (*fsio.Prepared, error) {
	return fsio.PrepareFile(fsys, layout.IndexFile, b, fsio.SyncIndexFile)
}

// Journal is step 2 of a transaction that replaces index.json by
// newBytes, inside the caller's bbolt transaction tx (with the refcount
// changes the caller made in it): the record, with the new index's bytes
// (as a delta against base, the committed index's bytes, when given and
// smaller), and the new index.json written and synced under a temp name
// (prepareIndex). All of it is before the commit: an error, a full disk
// included, means nothing changed. The caller aborts the prepared file
// when the commit fails, and else runs Apply (docs/DESIGN.md §4.2).
func Journal(tx *journal.Tx, fsys fsio.FS, rec *journal.Record, newBytes, base []byte) (*fsio.Prepared, error) {
	if err := tx.AddPendingFrom(rec, newBytes, base); err != nil {
		return nil, err
	}
	return prepareIndex(fsys, newBytes)
}

// Apply runs steps 3 to 5 of a journaled transaction whose new index is
// prepared (prepareIndex): rename it over index.json, sync the layout
// directory, then Finish (docs/DESIGN.md §4.2, what an error means: §4.3;
// the stamp check: §9.2). It returns the stamp of the new index.json.
//
// When index.json no longer has old's stamp (another tool rewrote it
// since the transaction read it), nothing is renamed: the record is
// dropped, the counts taken from the file, and the error is ErrConflict.
// What an error means for the caller otherwise: a failed rename changed nothing on
// disk, and Apply rolls the record back (rollBack) before it returns, so
// the error means the transaction did not happen, unless the roll back
// failed too (then the error wraps ErrIncomplete: recovery will apply
// it), or index.json is no longer old's file after the failed rename
// (then the outcome is unknown: the error wraps ErrIncomplete and
// ErrDurability, and the record is left to recovery). Any error after
// the rename wraps ErrIncomplete: the new index is in place, and recovery
// finishes the cleanup.
func Apply(env Env, db *journal.DB, rec *journal.Record, p *fsio.Prepared, old *State) (fsio.Stamp, error) {
	if old != nil && !old.Stamp.IsZero() && fsio.StampFile(env.FS, layout.IndexFile) != old.Stamp {
		// Another tool wrote index.json since the transaction read it: its
		// index stands, the transaction is dropped and the counts taken
		// from the file (a rename now would lose what it wrote).
		_ = p.Abort()
		err := fmt.Errorf("txn %d: %w: %s changed before the transaction could replace it (nothing changed)", rec.ID, errdef.ErrConflict, layout.IndexFile)
		if rerr := recountFromDisk(env, db, rec); rerr != nil {
			return fsio.Stamp{}, fmt.Errorf("%w (and the recount failed, so the next recovery decides: %v)", err, rerr)
		}
		return fsio.Stamp{}, err
	}
	if err := p.Commit(); err != nil {
		_ = p.Abort()
		if old != nil && !old.Stamp.IsZero() && fsio.StampFile(env.FS, layout.IndexFile) != old.Stamp {
			// The rename failed, yet index.json is no longer the file it
			// was: the rename may have taken place all the same (a
			// network file system can report an error for a rename it
			// did). Rolled back, the journal would count the old index
			// while the new one is on disk and say that nothing changed.
			// The outcome is unknown: the record stays, for recovery to
			// finish (or roll back, if another tool wrote the file).
			return fsio.Stamp{}, fmt.Errorf("txn %d: %w: %w: %w (%s changed: the rename may have taken place; recovery decides)", rec.ID, errdef.ErrIncomplete, errdef.ErrDurability, err, layout.IndexFile)
		}
		if rerr := rollBack(env, db, rec, old); rerr != nil {
			return fsio.Stamp{}, fmt.Errorf("txn %d: %w: %w (and it could not be rolled back, so the next recovery applies it: %v)", rec.ID, errdef.ErrIncomplete, err, rerr)
		}
		return fsio.Stamp{}, fmt.Errorf("txn %d: %w (rolled back: nothing changed)", rec.ID, err)
	}
	crash.Point(crash.IndexRenamed)
	if err := fsio.SyncDirFor(env.FS, fsio.SyncLayoutDir, "."); err != nil {
		return fsio.Stamp{}, fmt.Errorf("txn %d: %w: write %s: %w", rec.ID, errdef.ErrIncomplete, layout.IndexFile, err)
	}
	stamp := fsio.StampFile(env.FS, layout.IndexFile)
	crash.Point(crash.IndexSynced)
	if err := Finish(env, db, rec, stamp, crash.BlobUnlinked); err != nil {
		if errors.Is(err, errdef.ErrConflict) {
			// Another tool rewrote index.json meanwhile: its index wins.
			// The record goes and the counts are taken from the file now,
			// here rather than by the next recovery, which could take a
			// rewrite with the old bytes for a crash before the rename
			// and replay the transaction over it.
			if rerr := recountFromDisk(env, db, rec); rerr != nil {
				return stamp, fmt.Errorf("%w: %w (and the recount failed: %v)", errdef.ErrIncomplete, err, rerr)
			}
			return stamp, err
		}
		return stamp, fmt.Errorf("%w: %w", errdef.ErrIncomplete, err)
	}
	return stamp, nil
}

// recountFromDisk drops rec, whose new index another tool replaced before
// its cleanup was done, and recounts the references of index.json as it is
// now. Nothing is unlinked.
func recountFromDisk(env Env, db *journal.DB, rec *journal.Record) error {
	stamp := fsio.StampFile(env.FS, layout.IndexFile)
	raw, ix, err := ReadIndex(env.FS)
	if err != nil {
		return err // recovery will deal with it
	}
	env.Log.Warn("index.json was rewritten by another tool during a transaction; recounting from it", attrTxn, rec.ID, "op", rec.Op)
	if _, err := recountDropping(env, db, &State{Index: ix, Bytes: raw, Digest: layout.Sum(raw), Stamp: stamp}, rec.ID); err != nil {
		return fmt.Errorf("drop txn %d: %w", rec.ID, err)
	}
	return nil
}

// rollBack undoes a journaled transaction whose new index never reached
// index.json: it drops the record and puts back the refcounts of old, the
// index still on disk (a recount: the record's deltas do not say what a
// count that dropped to zero recorded), in one journal commit. Nothing is
// unlinked.
func rollBack(env Env, db *journal.DB, rec *journal.Record, old *State) error {
	if _, err := recountDropping(env, db, old, rec.ID); err != nil {
		return fmt.Errorf("roll back txn %d: %w", rec.ID, err)
	}
	env.Log.Warn("transaction rolled back: its new index.json could not be put in place", attrTxn, rec.ID, "op", rec.Op)
	return nil
}

// indexStill checks that index.json on disk is the record's new index: by
// its stamp when it still has the one taken when it was known to be, else
// by reading and hashing it.
func indexStill(fsys fsio.FS, want digest.Digest, stamp fsio.Stamp) error {
	if fsio.StampFile(fsys, layout.IndexFile) == stamp && stamp != (fsio.Stamp{}) {
		return nil
	}
	raw, _, err := ReadIndex(fsys)
	if err != nil {
		return fmt.Errorf("%w: %v", errdef.ErrConflict, err)
	}
	if got := layout.Sum(raw); got != want {
		return fmt.Errorf("%w: %s is %s, expected %s", errdef.ErrConflict, layout.IndexFile, got, want)
	}
	return nil
}

// Finish runs steps 4 and 5 once the record's new index is on disk: unlink
// the blob set, sync each touched blob directory, then clear the record.
// Before any unlink it checks that index.json is still the record's new
// index (stamp: see indexStill) and that the journal's count of each blob,
// which describes that index, is zero: so no blob the index on disk reaches
// is unlinked. If another tool changed index.json meanwhile, it unlinks
// nothing and returns ErrConflict, leaving the record to recovery (which
// then rolls it back).
func Finish(env Env, db *journal.DB, rec *journal.Record, stamp fsio.Stamp, point string) error {
	if len(rec.Unlink) > 0 {
		if err := indexStill(env.FS, rec.NewIndex, stamp); err != nil {
			return fmt.Errorf("txn %d: %w", rec.ID, err)
		}
	}
	return finish(env, db, rec, point, nil, false, stamp)
}

// finishRecovered is Finish for a record recovery found pending, whose new
// index on is now on disk. The journal that left the record behind is not
// trusted (a referenced blob is never unlinked, whatever the journal says): the graph of the index on disk is walked
// from the files, no blob it reaches is unlinked, and when the journal's
// refcounts disagree with the walk they are replaced by it (a recount)
// before anything is unlinked. If a manifest the index reaches cannot be
// read, what it reaches is unknown: nothing is unlinked (GC collects what
// is left once the layout is whole). It reports whether it recounted.
// Only recovery pays for the walk; a transaction's own Finish does not.
func finishRecovered(env Env, db *journal.DB, rec *journal.Record, on *State) (bool, error) {
	if err := indexStill(env.FS, rec.NewIndex, on.Stamp); err != nil {
		return false, fmt.Errorf("txn %d: %w", rec.ID, err)
	}
	all, err := env.withPeers(on.Index)
	if err != nil {
		return false, fmt.Errorf("txn %d: %w", rec.ID, err)
	}
	walk, problems := refcount.Recount(all, env.loader())
	for _, p := range problems {
		env.Log.Warn("recovery: cannot follow a manifest of index.json; unlinking nothing", "err", p, attrTxn, rec.ID)
	}
	agree := true
	err = db.View(func(tx *journal.Tx) error {
		n := 0
		err := tx.ForEachRef(func(d digest.Digest, r journal.Ref) error {
			n++
			if walk[d].Count != r.Count {
				agree = false
			}
			return nil
		})
		if n != len(walk) {
			agree = false
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("txn %d: read refcounts: %w", rec.ID, err)
	}
	if !agree {
		env.Log.Warn("recovery: the journal's refcounts do not match index.json on disk; recounting", attrTxn, rec.ID, "index", rec.NewIndex)
		if _, err := storeCounts(db, on, walk, 0); err != nil {
			return false, fmt.Errorf("txn %d: %w", rec.ID, err)
		}
	}
	return !agree, finish(env, db, rec, crash.RecoverUnlinked, walk, len(problems) > 0, on.Stamp)
}

// finish unlinks rec's blob set but for the blobs the journal counts as
// referenced, those in reached, or all of them when keepAll, syncs each
// touched blob directory, and clears the record. stamp is index.json's
// stamp when it was known to hold rec's new index (zero if unknown).
func finish(env Env, db *journal.DB, rec *journal.Record, point string, reached refcount.Map, keepAll bool, stamp fsio.Stamp) error {
	var paths []string
	err := db.View(func(tx *journal.Tx) error {
		counted := tx.Counted(rec.Unlink)
		for _, d := range rec.Unlink {
			if counted[d] || reached[d].Count > 0 {
				env.Log.Warn("not unlinking a blob that is still referenced (or whose count cannot be read)", attrDigest, d, attrTxn, rec.ID)
				continue
			}
			if keepAll {
				continue
			}
			paths = append(paths, layout.BlobPath(d))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("txn %d: %w", rec.ID, err)
	}
	unlinked := func(p string, existed bool) {
		env.Log.Debug("unlinked", attrPath, p, attrTxn, rec.ID, "existed", existed)
		if existed && env.Unlinked != nil {
			env.Unlinked(p)
		}
		crash.Point(point)
	}
	// Another tool may rewrite index.json while the blobs go (it takes no
	// lock): the unlinks stop as soon as its stamp changes, and what went
	// into the trash that the new index.json reaches comes back.
	guard := indexGuard(env.FS, stamp)
	if env.Reclaim != nil && env.Owner != nil && len(paths) >= env.trashMin() {
		tok, err := env.Owner()
		if err != nil {
			return fmt.Errorf("txn %d: owner of the trash: %w", rec.ID, err)
		}
		trashed, err := fsio.TrashFilesGuarded(env.FS, fsio.SyncBlobDir, paths, TrashDir, TempPrefix(tok), guard, unlinked)
		if err == nil && guard != nil {
			err = guard() // a write during the last few
		}
		if errors.Is(err, errdef.ErrConflict) && len(trashed) > 0 {
			var rerr error
			if trashed, rerr = restoreTrashed(env, trashed); rerr != nil {
				err = fmt.Errorf("%w (and the blobs taken out could not all be put back: %v)", err, rerr)
			}
		}
		if len(trashed) > 0 {
			env.Reclaim(trashed)
		}
		if err != nil {
			return fmt.Errorf("txn %d: unlink: %w", rec.ID, err)
		}
	} else if err := fsio.RemoveFilesGuarded(env.FS, fsio.SyncBlobDir, paths, guard, unlinked); err != nil {
		return fmt.Errorf("txn %d: unlink: %w", rec.ID, err)
	}
	crash.Point(crash.BlobDirSynced)
	err = db.Update(func(tx *journal.Tx) error {
		if err := tx.DeletePending(rec.ID); err != nil {
			return err
		}
		if err := tx.SetCommittedIndex(rec.NewIndex, nil); err != nil {
			return err
		}
		return setStamp(tx, rec.NewIndex, stamp)
	})
	if err != nil {
		return fmt.Errorf("txn %d: clear record: %w", rec.ID, err)
	}
	crash.Point(crash.TxnCleared)
	return nil
}

// indexGuard stops a transaction's unlinks when index.json no longer has
// the stamp it had when it held the transaction's new index: another tool
// rewrote it. Nil when that stamp is not known.
func indexGuard(fsys fsio.FS, stamp fsio.Stamp) fsio.Guard {
	if stamp.IsZero() {
		return nil
	}
	return func() error {
		if fsio.StampFile(fsys, layout.IndexFile) != stamp {
			return fmt.Errorf("%w: %s changed while the blobs it no longer used were being removed", errdef.ErrConflict, layout.IndexFile)
		}
		return nil
	}
}

// restoreTrashed puts back into the layout the blobs of trashed (files a
// transaction took out into the trash) that index.json reaches now: it was
// rewritten by another tool meanwhile, perhaps from a copy read before the
// transaction, naming images the transaction removed. When index.json
// cannot be read or followed whole, every one goes back (unknown means
// kept). It returns what is left in the trash, for the reclaimer.
func restoreTrashed(env Env, trashed []string) ([]string, error) {
	_, ix, err := ReadIndex(env.FS)
	all := err != nil
	var reach refcount.Map
	if !all {
		if ix, err = env.withPeers(ix); err != nil {
			all = true
		} else {
			var problems []error
			reach, problems = refcount.Recount(ix, env.loader())
			all = len(problems) > 0
		}
	}
	var left, back []string
	dirs := map[string]bool{}
	var firstErr error
	for _, t := range trashed {
		d, ok := trashedDigest(t)
		if !ok || !all && reach[d].Count == 0 {
			left = append(left, t)
			continue
		}
		p := layout.BlobPath(d)
		if err := env.FS.Rename(t, p); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("put back %s: %w", p, err)
			}
			left = append(left, t)
			continue
		}
		back = append(back, p)
		dirs[fsio.Dir(p)] = true
	}
	for d := range dirs {
		if err := fsio.SyncDirFor(env.FS, fsio.SyncBlobDir, d); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if len(back) > 0 {
		if err := fsio.SyncDirFor(env.FS, fsio.SyncBlobDir, TrashDir); err != nil && firstErr == nil {
			firstErr = err
		}
		env.Log.Warn("index.json was rewritten by another tool while a transaction removed blobs; put back the ones it uses", "blobs", len(back))
	}
	return left, firstErr
}

// trashedDigest is the digest of the blob a trash file holds.
func trashedDigest(trashPath string) (digest.Digest, bool) {
	p, ok := fsio.TrashedBlob(trashPath)
	if !ok {
		return "", false
	}
	alg, hex, _ := strings.Cut(strings.TrimPrefix(p, "blobs/"), "/")
	d := digest.Digest(alg + ":" + hex)
	return d, layout.ValidateDigest(d) == nil && layout.BlobPath(d) == p
}

// IsIndexTemp reports whether a root entry is a temp file of renameio:
// ".index.json" (or ".oci-layout", which init and repair write the same
// way, or ".shared-blob-dir", the marker of a layout with a shared blob
// directory) followed by digits.
func IsIndexTemp(name string) bool { return indexTemp.MatchString(name) }

var indexTemp = regexp.MustCompile(`^\.(` + regexp.QuoteMeta(layout.IndexFile) + `|` + regexp.QuoteMeta(layout.LayoutFile) + `|shared-blob-dir)(-?[0-9]+|-[0-9a-z]+)$`)

// TrashDir holds the blobs a large transaction took out of the layout,
// until they are unlinked (Env.Reclaim), relative to the layout root. It is
// in the state directory, on the blobs' file system (with a shared blob
// directory, in that directory's).
const TrashDir = layout.StateDir + "/trash"

// DefaultTrashMin is Env.TrashMin's default: the number of blobs from
// which a transaction moves them into the trash rather than unlinking
// them in place.
const DefaultTrashMin = 64

// trashMin is the number of blobs from which a transaction takes the trash.
func (env Env) trashMin() int {
	if env.TrashMin > 0 {
		return env.TrashMin
	}
	return DefaultTrashMin
}
