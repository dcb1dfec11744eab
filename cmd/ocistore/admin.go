package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// Commands on the layout as a whole: init, fsck, recover, journal.

var initCmd = &command{
	name:    "init",
	summary: "create an empty layout",
	help: `Creates an empty OCI image layout (oci-layout, index.json, blobs/sha256) in the
--layout directory, creating the directory if needed. A directory that already
is a layout is left as it is (ocistore adopts it: builds its journal from the
files) and the exit status is 0. A directory that holds other files is an
error.`,
	maxArgs: 0,
	run:     runInit,
}

func runInit(ctx context.Context, a *app, _ []string) error {
	_, err := os.Lstat(filepath.Join(a.layout, v1.ImageLayoutFile))
	already := err == nil
	s, err := store.Open(ctx, a.layout, a.storeOptions(!already))
	if err != nil {
		return err
	}
	if !already {
		fmt.Fprintf(a.stdout, "created an empty OCI image layout in %s\n", s.Dir())
		return s.Close()
	}
	imgs, err := s.List(ctx)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%s is already an OCI image layout (%s); nothing to do\n", s.Dir(), plural(len(imgs), "image", "images"))
	return nil
}

var fsckCmd = &command{
	name:    "fsck",
	summary: "check the layout's consistency; --repair fixes what it can",
	help: `Checks the layout as it is on disk, without running recovery first (an
interrupted transaction shows as a pending record): oci-layout and index.json
parse; every blob reachable from index.json is present with the size its
descriptor says; the journal is sound and its reference counts match a
recount; orphan blobs and leftover temp files are reported too. Blob
contents other than manifests are not read.

With --deep every blob file under blobs/ (reachable or not) is also read and
hashed, on every core, streamed (memory does not grow with blob size); a blob
whose bytes do not hash to its name is a digest-mismatch. A progress line is
drawn on a terminal. --max stops the hashing after a duration; the output
then says how much was hashed.

Each finding is a problem (damage: exit 3) or a notice (a state that is
normal for a layout other tools write too, or that the next ocistore command
clears by itself: exit 0). Notices: journal-missing (ocistore has not
adopted the layout yet; its next write does), external-change (another
tool, e.g. skopeo or umoci, wrote index.json; the next write recounts),
orphan (a blob nothing references, e.g. left by umoci rm before umoci gc;
gc removes it), temp-file (a leftover of a process that is gone; the next
open removes it). Every other kind is a problem, among them pending (an
interrupted transaction: ocistore recover), dangling, size-mismatch,
digest-mismatch, refcount, journal-corrupt, journal-newer and not-directory
(.ocistore, blobs/ or blobs/ALG, or a directory of .ocistore, is a symlink
or a file: not followed).

Text output: one line per finding, "KIND DIGEST PATH: DETAIL", a notice's
line starting with "notice: ", then a summary ("..., N problems, M
notices"; the notices only when there are some). JSON output: the report
{images, blobs, bytes, problems: [{kind, severity, digest, path, detail}],
deep: {files, bytes, hashedFiles, hashedBytes, stopped}}: problems lists
every finding, severity is "problem" or "notice".

With --repair the layout is brought back to a consistent state, keeping
whatever can be kept, then checked again: recovery runs (interrupted
transactions, temp files, reference counts); a journal that is missing,
empty, truncated or corrupt is rebuilt from the layout (the damaged file is
kept aside as .ocistore/journal.db.corrupt-TIME, and the pending records it
still holds are honoured first); index.json, when missing or unreadable, is
restored from the journal's copy of the last committed index (never replaced
by an empty one); blobs whose bytes do not match their digest, and symlinks
or directories where blobs should be, are moved to .ocistore/quarantine/
(never followed, never deleted), and so is blobs/ or blobs/ALG when it is
a symlink or a file (an empty directory is made in its place: the images
whose blobs were behind it are then broken); a .ocistore that is not a
directory is renamed to .ocistore.corrupt-TIME and the layout adopted
again; unreferenced blobs are removed in one
journaled transaction unless --keep-orphans; index.json entries whose blobs
are missing or damaged are reported, and removed only with --drop-broken
(one journaled transaction; the blobs only they used are freed). Output: what
was done, the broken entries left, then the check. JSON output: {actions:
[{kind, txn, detail}], broken: [{pos, name, digest, reason}], invalid,
report}.

--drop-broken never removes every image of the layout unless --force: it
exits 1 and changes nothing. A layout whose blobs/ holds no blob while most
entries have none is reported as blobs-elsewhere (the blobs likely are in a
shared blob directory: skopeo --dest-shared-blob-dir) and not repaired
unless --force. --shared-blob-dir (or OCISTORE_SHARED_BLOB_DIR) names that
directory for a layout ocistore has not adopted yet: fsck looks for its
blobs there, and --repair adopts it, counting every layout of the directory
(a blob another layout uses is never removed; at adoption, no unreferenced
blob of the directory is removed).

A journal that a newer ocistore wrote (its format version is above the one
this build reads) is reported as journal-newer and left as it is; --repair
refuses it (exit 1, naming both versions) unless --rebuild-journal is given,
which rebuilds it as a damaged one is: kept aside, its leases kept when they
can be read, and, when they cannot, nothing freed for a day.

Exit status 0 when no problem is found (after --repair: when no problem is
left; notices may be), 3 when a problem is found (or left), 1 when the
check or repair could not run. ocistore recover fixes what an interrupted
transaction left.`,
	flagHelp: `      --deep            also re-hash every blob (digest-mismatch)
      --max DURATION    stop hashing after DURATION (e.g. 10m); with --deep
      --workers N       blobs hashed at once (default: one per core)
      --repair          repair what can be repaired without losing data
      --keep-orphans    with --repair: remove no unreferenced blob
      --drop-broken     with --repair: remove from index.json the entries
                        whose blobs are missing or damaged
      --grace DURATION  with --repair: keep unreferenced blobs modified
                        within DURATION (default 1h, as gc)
      --force           with --repair: let --drop-broken remove every image,
                        and repair a layout whose blobs seem to live
                        elsewhere (both refused without it)
      --rebuild-journal with --repair: rebuild a journal that a newer
                        ocistore wrote (refused otherwise)`,
	maxArgs: 0,
	format:  true,
	flags:   fsckFlags,
	run:     runFsck,
}

// fsckOpts are fsck's flags.
type fsckOpts struct {
	deep    bool
	max     time.Duration
	workers int

	repair, keepOrphans, dropBroken, force, rebuildJournal bool
	grace                                                  time.Duration
	graceSet                                               bool
}

func fsckFlags(fs *flag.FlagSet, a *app) {
	fs.BoolVar(&a.fsck.repair, "repair", false, "repair")
	fs.BoolVar(&a.fsck.keepOrphans, "keep-orphans", false, "remove no unreferenced blob")
	fs.BoolVar(&a.fsck.dropBroken, "drop-broken", false, "remove broken entries from index.json")
	fs.BoolVar(&a.fsck.force, "force", false, "let --drop-broken remove every image; repair a layout whose blobs seem to live elsewhere")
	fs.BoolVar(&a.fsck.rebuildJournal, "rebuild-journal", false, "rebuild a journal a newer ocistore wrote")
	fs.Func("grace", "keep unreferenced blobs modified within this duration",
		atLeast(parseDuration, 0, "must not be negative", func(d time.Duration) { a.fsck.grace, a.fsck.graceSet = d, true }))
	fs.BoolVar(&a.fsck.deep, "deep", false, "re-hash every blob")
	fs.Func("max", "stop hashing after this duration",
		atLeast(parseDuration, 1, "must be positive", func(d time.Duration) { a.fsck.max = d }))
	fs.Func("workers", "blobs hashed at once", count("want a positive number", func(n int) { a.fsck.workers = n }))
}

// checkOptions are the recovery.CheckOptions fsck's flags ask for, with a
// progress line on a terminal for a deep check. Stop the progress when done.
func (a *app) checkOptions() (*recovery.CheckOptions, *progress) {
	o := &recovery.CheckOptions{Deep: a.fsck.deep, Max: a.fsck.max, Workers: a.fsck.workers, SharedBlobDir: a.sharedBlobs, LockTimeout: a.lockTimeout}
	if !o.Deep {
		return o, nil
	}
	p := startProgress(a.stderr, isTerminal(a.stderr), "fsck: hashing blobs (MiB)")
	o.Progress = func(done, total int64) { p.Set(done>>20, total>>20) }
	return o, p
}

func runFsck(ctx context.Context, a *app, _ []string) error {
	if a.fsck.max > 0 && !a.fsck.deep {
		return usagef("--max limits the hashing of --deep")
	}
	if !a.fsck.repair && (a.fsck.keepOrphans || a.fsck.dropBroken || a.fsck.graceSet || a.fsck.force || a.fsck.rebuildJournal) {
		return usagef("--keep-orphans, --drop-broken, --grace, --force and --rebuild-journal go with --repair")
	}
	if a.fsck.repair {
		return a.runRepair(ctx)
	}
	o, p := a.checkOptions()
	rep, err := store.CheckDir(ctx, a.layout, o)
	p.Stop()
	if err != nil {
		return lockedHint(a, err)
	}
	return a.printOutcome(rep, rep.OK(), func() { a.printReport(rep) })
}

// printOutcome writes fsck's outcome v as JSON, or as text with printText;
// a layout with a problem (not ok; notices are no problem) makes the exit
// status 3.
func (a *app) printOutcome(v any, ok bool, printText func()) error {
	if a.json() {
		if err := a.printJSON(v); err != nil {
			return err
		}
	} else {
		printText()
	}
	if !ok {
		return exitStatus(exitProblems)
	}
	return nil
}

func (a *app) runRepair(ctx context.Context) error {
	o, p := a.checkOptions()
	res, err := store.Repair(ctx, a.layout, &store.RepairOptions{Check: *o, KeepOrphans: a.fsck.keepOrphans,
		DropBroken: a.fsck.dropBroken, Grace: repairGrace(a.fsck.grace, a.fsck.graceSet), Logger: a.log, LockTimeout: a.lockTimeout,
		SharedBlobDir: a.sharedBlobs, Force: a.fsck.force, RebuildJournal: a.fsck.rebuildJournal})
	p.Stop()
	if err != nil {
		return lockedHint(a, err)
	}
	return a.printOutcome(res, res.OK(), func() {
		a.printActions(res.Actions)
		if len(res.Actions) == 0 {
			fmt.Fprintln(a.stdout, "nothing to repair")
		}
		for _, b := range res.Invalid {
			fmt.Fprintf(a.stdout, "invalid entry manifests[%d] %s: %s (--drop-broken removes it)\n", b.Pos, b.Raw, b.Err)
		}
		for _, b := range res.Broken {
			fmt.Fprintf(a.stdout, "broken %s %s: %s (--drop-broken removes it)\n", displayName(b.Name), b.Digest, b.Reason)
		}
		fmt.Fprintln(a.stdout, "after repair:")
		a.printReport(res.Report)
	})
}

// printActions writes what recovery or a repair did: one line per action,
// "KIND [txn N]: DETAIL".
func (a *app) printActions(acts []recovery.Action) {
	for _, act := range acts {
		line := act.Kind
		if act.Txn != 0 {
			line += fmt.Sprintf(" txn %d", act.Txn)
		}
		fmt.Fprintf(a.stdout, "%s: %s\n", line, act.Detail)
	}
}

// printReport writes a check report as text: one line per finding (a
// notice's marked "notice: "), the deep check's figures, then a summary
// line.
func (a *app) printReport(rep *recovery.Report) {
	for _, p := range rep.Problems {
		fmt.Fprintln(a.stdout, findingLine(p))
	}
	if d := rep.Deep; d != nil {
		fmt.Fprintf(a.stdout, "deep: %d of %s hashed, %s of %s", d.HashedFiles, plural(d.Files, "blob", "blobs"), humanSize(d.HashedBytes), humanSize(d.Bytes))
		if d.Stopped {
			fmt.Fprintf(a.stdout, ": STOPPED EARLY (--max %s); the rest was not checked", a.fsck.max)
		}
		fmt.Fprintln(a.stdout)
	}
	problems, notices := rep.Count()
	summary := fmt.Sprintf("%s, %s, %s, %s", plural(rep.Images, "image", "images"), plural(rep.Blobs, "blob", "blobs"),
		sizeWithBytes(rep.Bytes), plural(problems, "problem", "problems"))
	if notices > 0 {
		summary += ", " + plural(notices, "notice", "notices")
	}
	fmt.Fprintln(a.stdout, summary)
}

// findingLine words a finding of fsck: "KIND DIGEST PATH: DETAIL", with
// "notice: " first for a notice.
func findingLine(p recovery.Problem) string {
	line := p.Kind
	if p.IsNotice() {
		line = "notice: " + line
	}
	if p.Digest != "" {
		line += " " + p.Digest
	}
	if p.Path != "" {
		line += " " + p.Path
	}
	return line + ": " + p.Detail
}

// lockedHint makes a lock timeout of a read-only open say which layout is
// locked, as the store's own writer-lock errors do.
func lockedHint(a *app, err error) error {
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("layout %s is locked by another process (waited %s): %w", a.layout, a.lockTimeout, err)
	}
	return err
}

var recoverCmd = &command{
	name:    "recover",
	summary: "finish or undo interrupted transactions",
	help: `Opens the layout (which runs recovery) and runs recovery again under the
writer lock, then prints what was done: transactions rolled forward or
replayed (finished), rolled back (index.json was changed by another tool),
reference counts recounted, temp files removed. Prints "nothing to recover"
when the layout was consistent. Recovery is idempotent.`,
	maxArgs: 0,
	format:  true,
	run:     runRecover,
}

type recoverOutput struct {
	Actions []recovery.Action `json:"actions"`
}

func runRecover(ctx context.Context, a *app, _ []string) error {
	return a.withStore(ctx, func(s *store.Store) error {
		acts, err := s.Recover(ctx)
		if err != nil {
			return err
		}
		if a.json() {
			if acts == nil {
				acts = []recovery.Action{}
			}
			return a.printJSON(recoverOutput{Actions: acts})
		}
		if len(acts) == 0 {
			fmt.Fprintln(a.stdout, "nothing to recover")
			return nil
		}
		a.printActions(acts)
		return nil
	})
}

var journalCmd = &command{
	name:    "journal",
	summary: "list pending journal records (read-only)",
	help: `Lists the transactions that are journaled but not finished, as the journal
holds them, without running recovery: id, operation, time, the index.json
digest before and after, and how many blobs the transaction unlinks. A healthy
layout has none between commands; ocistore recover finishes them. It never
waits for a writer: it reads the journal as the last commit left it, and when
another process holds the journal (a transaction in flight) it says so: its
records are then that transaction's, not an interrupted one.

JSON output: {journal, inFlight, pending: [record...]}; journal is false for a
layout ocistore has not opened yet (it has no journal).`,
	maxArgs: 0,
	format:  true,
	run:     runJournal,
}

// pendingRecord is a journal record as `ocistore journal` prints it: the
// record's fields (store.PendingRecords), and how many blobs it unlinks.
type pendingRecord struct {
	ID          uint64                  `json:"id"`
	Op          string                  `json:"op"`
	Time        time.Time               `json:"time"`
	OldIndex    digest.Digest           `json:"oldIndex"`
	NewIndex    digest.Digest           `json:"newIndex"`
	Unlink      []digest.Digest         `json:"unlink,omitempty"`
	Deltas      map[digest.Digest]int64 `json:"deltas,omitempty"`
	UnlinkCount int                     `json:"unlinkCount"`
}

type journalOutput struct {
	Journal  bool            `json:"journal"`
	InFlight bool            `json:"inFlight"`
	Pending  []pendingRecord `json:"pending"`
}

func runJournal(ctx context.Context, a *app, _ []string) error {
	if _, err := os.Stat(filepath.Join(a.layout, v1.ImageLayoutFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", a.layout, store.ErrNotLayout)
		}
		return err
	}
	out := journalOutput{Journal: true, Pending: []pendingRecord{}}
	recs, err := store.PendingRecords(a.layout, a.lockTimeout)
	switch {
	case errors.Is(err, store.ErrNotFound):
		out.Journal = false
	case err != nil:
		return lockedHint(a, err)
	}
	if out.InFlight, err = store.InFlight(a.layout); err != nil {
		return err
	}
	for _, r := range recs {
		out.Pending = append(out.Pending, pendingRecord{ID: r.ID, Op: r.Op, Time: r.Time, OldIndex: r.OldIndex, NewIndex: r.NewIndex,
			Unlink: r.Unlink, Deltas: r.Deltas, UnlinkCount: len(r.Unlink)})
	}
	if a.json() {
		return a.printJSON(out)
	}
	if out.InFlight {
		fmt.Fprintln(a.stdout, "a transaction is in flight (another process holds the journal); shown as its last commit left it")
	}
	switch {
	case !out.Journal:
		fmt.Fprintf(a.stdout, "no journal in %s: ocistore has not opened this layout yet\n", a.layout)
		return nil
	case len(out.Pending) == 0:
		fmt.Fprintln(a.stdout, "no pending records")
		return nil
	}
	tw := a.table()
	fmt.Fprintln(tw, "ID\tOP\tTIME\tOLD INDEX\tNEW INDEX\tUNLINK")
	for _, r := range out.Pending {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", r.ID, r.Op, r.Time.UTC().Format(time.RFC3339), orDash(r.OldIndex), orDash(r.NewIndex), r.UnlinkCount)
	}
	return tw.Flush()
}

func orDash(d digest.Digest) string {
	if d == "" {
		return "-"
	}
	return d.String()
}

// repairGrace is the library's RepairOptions.Grace for fsck's --grace: the
// default of gc when not given, none for an explicit 0.
func repairGrace(d time.Duration, set bool) time.Duration {
	switch {
	case !set:
		return defaultGrace
	case d == 0:
		return -1
	}
	return d
}
