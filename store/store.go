// Package store is ocistore's library: a crash-safe, transactional store for
// an OCI image layout that other tools (skopeo, umoci, oras, crane, BuildKit)
// keep reading and writing.
//
// # Basics
//
// Open a layout with Open (it is created when the directory is empty, and
// adopted when another tool wrote it). Blobs go in with PutBlob, manifests
// with PutManifest; Tag names a manifest in index.json, Untag removes names,
// Delete removes images and every blob that only they used. Every change of
// index.json is one journal transaction (docs/DESIGN.md §4.2): the plan is
// committed to the journal first, then index.json is replaced
// atomically and durably, then the freed blobs are unlinked, then the record
// is cleared. A crash at any point is finished or undone by the next Open.
//
// A Store is safe for concurrent use. Writers are serialized, in the process
// by a mutex and across processes by the journal's file lock, held only for
// the length of one transaction. Readers (Resolve, List, Fetch, Exists) never
// wait for a writer: they see the last committed index.
//
// # References
//
// A reference is a tag (the org.opencontainers.image.ref.name annotation of
// an index.json entry, matched exactly) or a digest ("sha256:..."), which
// stands for every entry of that manifest.
//
// Removing a name never deletes data: Untag, and Tag moving a name to another
// manifest, leave the old manifest in index.json as an untagged entry when no
// other entry holds it (like Docker's dangling images). Delete and Prune are
// what free blobs; both also remove the OCI 1.1 referrers (signatures,
// SBOMs) of every image that leaves the layout, unless told to keep them.
//
// # Reclaiming space
//
// Prune removes images by policy (keep the newest N per repository, age,
// size budget with least-recently-used eviction, filters) in one
// transaction. GC removes blob files nothing reachable uses. A Lease
// protects blobs not referenced yet (a pull in progress) from both, across
// processes and restarts. Usage measures the layout.
//
// # Caveats
//
// Reference counts are persistent and updated per transaction, so a delete
// costs the size of the image, not of the layout. When another tool changes
// index.json, the next transaction notices (its digest differs from the
// journal's) and recounts from disk before doing anything.
//
// Any failed fsync or journal commit poisons the handle: every later write
// returns ErrPoisoned until the store is closed and opened again.
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// Errors, for errors.Is. They are the sentinels of every layer.
var (
	ErrNotFound          = errdef.ErrNotFound
	ErrInvalidDigest     = errdef.ErrInvalidDigest
	ErrDigestMismatch    = errdef.ErrDigestMismatch
	ErrSizeMismatch      = errdef.ErrSizeMismatch
	ErrCorrupt           = errdef.ErrCorrupt
	ErrJournalNewer      = errdef.ErrJournalNewer
	ErrLocked            = errdef.ErrLocked
	ErrPoisoned          = errdef.ErrPoisoned
	ErrClosed            = errdef.ErrClosed
	ErrInvalidArgument   = errdef.ErrInvalidArgument
	ErrMissingDependency = errdef.ErrMissingDependency
	ErrTooLarge          = errdef.ErrTooLarge
	ErrNotLayout         = errdef.ErrNotLayout
	ErrLayoutMissing     = errdef.ErrLayoutMissing
	ErrReadOnly          = errdef.ErrReadOnly
	ErrDurability        = errdef.ErrDurability
	ErrConflict          = errdef.ErrConflict
	ErrIncomplete        = errdef.ErrIncomplete
	ErrRefused           = errdef.ErrRefused
	ErrReferenced        = errdef.ErrReferenced
)

// Log attribute keys.
const (
	attrDigest = "digest"
	attrRef    = "ref"
	attrTxn    = "txn"
	attrLayout = "layout"
	attrLease  = "lease"
)

// Options configure Open. A nil *Options means the defaults.
type Options struct {
	// Logger receives debug lines per operation and info lines for recovery
	// actions. Nil discards.
	Logger *slog.Logger
	// LockTimeout is how long a writer waits for another process's lock
	// before failing with ErrLocked. Zero means 30 seconds; negative fails at once.
	LockTimeout time.Duration
	// NoCreate makes Open fail with ErrNotLayout instead of creating a layout
	// in an empty or missing directory (ErrLayoutMissing, which wraps
	// ErrNotLayout, for a missing one).
	NoCreate bool
	// SharedBlobDir, when set, is a directory of blobs (<alg>/<hex>, the
	// layout of skopeo's --shared-blob-dir) that this layout uses in place
	// of its blobs/ and that other layouts may share. The journal then
	// lives in that directory (SharedBlobDir/.ocistore/journal.db), so
	// that the refcounts count the references of every layout that shares
	// it: a shared blob is freed when, and only when, no layout uses it.
	// Every layout opened with the same directory is registered in that
	// journal (by its absolute path); the writer lock is the directory's.
	SharedBlobDir string
	// ReadOnly opens for reading only: no layout is created, no lock is
	// taken and no recovery runs, so it never waits for a writer and never
	// changes a file. Readers see index.json as it is on disk; every write
	// returns ErrReadOnly.
	ReadOnly bool
	// OnWriterLock, when set, is told of each use of the writer lock (a
	// transaction, a lease change, a GC): how long the caller waited for
	// this process's other writers, and how long it held the lock (which
	// includes the wait for another process's). A server's metrics read
	// it. It must not block.
	OnWriterLock func(wait, held time.Duration)

	// fs replaces the real file system (tests).
	fs fsio.FS
	// sharedFS replaces the layout's and the shared blob directory's file
	// systems when SharedBlobDir is set (tests).
	sharedFS [2]fsio.FS
	// now replaces the clock (tests: lease expiry, ages).
	now func() time.Time
	// journalHook is passed to the journal as AfterCommit (crash tests).
	journalHook func()
	// syncReclaim unlinks the trash in the call that fills it, not in
	// the background (crash tests: every mutation in a known order).
	syncReclaim bool
	// trashMin, when positive, is protocol.Env.TrashMin (crash tests: the
	// trash taken by small transactions).
	trashMin int
	// commitHook is passed to the journal as CommitHook (fault tests:
	// a failed journal commit, code run right after one).
	commitHook func(*journal.Tx) (after func() error, err error)
	// reserveSize, when positive, is the space reserve's size instead of
	// reserveWant's (crash tests: a small reserve is cheap to snapshot).
	reserveSize int64
}

// DefaultLockTimeout is the writer lock wait when Options.LockTimeout is zero.
const DefaultLockTimeout = 30 * time.Second

// Store is an open layout.
type Store struct {
	// lay is the layout's files: its directory, its file system, where
	// its state lives and its name in a shared journal.
	lay  *protocol.Layout
	log  *slog.Logger
	opts Options
	// copies is the readers' shared copy of the journal (journalRead).
	copies journalCopies

	// wmu serializes writers in this process; the journal's file lock
	// serializes them across processes.
	wmu ctxMutex
	// group queues the changes that wait for wmu (group commit).
	group struct {
		sync.Mutex
		queue []*change
	}

	// used counts, per blob, the operations of this handle that are
	// writing or about to reference it (use): GC and the transactions of
	// this handle never free such a blob, so that a manifest pushed
	// without a lease cannot lose its own blob, or one it names, between
	// the write and its transaction.
	used struct {
		sync.Mutex
		m map[digest.Digest]int
	}

	// committing counts, by upload ID, the commits of Uploads running in
	// this handle: GC does not remove their staging files.
	committing struct {
		sync.Mutex
		m map[string]int
	}

	// ingests is held shared by each PutBlob for its whole length and
	// exclusively by Close, so that Close never closes the file system
	// under an ingest (which then could not remove its temp file).
	ingests sync.RWMutex

	// dirSynced is, for each blob directory, a time before which every
	// name in it is known durable: this handle synced the directory after
	// it; and the names this handle renamed in and synced since a little
	// before that time (see durableBlobName).
	dirSynced struct {
		sync.Mutex
		m      map[string]int64 // blobs/<alg> -> Unix nanoseconds
		recent map[string]int64 // blob path -> when it was synced, until m passes it
	}

	// snap is the last index this handle committed or read; readers load it
	// without locks and writers swap it after their commit point.
	snap atomic.Pointer[snapshot]

	// opened is what recovery did when the store was opened.
	opened []recovery.Action

	// leaseMu guards the leases this handle knows are durable, so that a
	// PutBlob under a lease that already holds the blob costs no commit.
	leaseMu struct {
		sync.Mutex
		known map[string]*knownLease
	}

	// lastUse holds the uses of images (Resolve, Fetch of a manifest) not
	// yet in the journal: they go with the next transaction, or on Close,
	// never one commit per read.
	lastUse struct {
		sync.Mutex
		m map[digest.Digest]time.Time
	}

	// own is the owner of this handle's ingest temp files and trash
	// files (protocol.OwnersDir): made on first need, released by Close.
	own struct {
		sync.Mutex
		o *fsio.Owner
	}

	// rec is the reclaimer, which empties the trash (reclaim.go).
	rec struct {
		sync.Mutex
		r reclaimer
	}

	// reserve serializes the changes of the space reserve (reserve.go).
	reserve struct {
		sync.Mutex
		warned bool // the open said why it made no reserve
	}

	// mu guards the handle's life.
	mu struct {
		sync.Mutex
		closed   bool
		poisoned error // first durability failure; writes refuse until reopened
	}
}

type snapshot struct {
	ix     *layout.Index
	raw    []byte // index.json bytes, nil when not kept
	digest digest.Digest
	stamp  fsio.Stamp
	// hasher hashes the next version of index.json from the states it
	// saved hashing raw (nil: hashes all of it). Whatever raw it was made
	// for, it gives the right digest.
	hasher *layout.IndexHasher
}

// Open opens the layout in dir, creating it when dir is missing or empty, and
// adopting it when another tool wrote it. It runs recovery before returning.
func Open(ctx context.Context, dir string, o *Options) (*Store, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open layout %s: %w", dir, err)
	}
	if opts.SharedBlobDir == "" && opts.fs == nil {
		// A layout that was opened with a shared blob directory says so.
		if opts.SharedBlobDir, err = protocol.SharedBlobDirOf(abs); err != nil {
			return nil, fmt.Errorf("open layout %s: %w", abs, err)
		}
	}
	s := &Store{log: opts.Logger.With(slog.String(attrLayout, abs)), opts: opts}
	s.lay, err = protocol.OpenLayout(abs, protocol.LayoutOptions{
		SharedBlobDir: opts.SharedBlobDir, ReadOnly: opts.ReadOnly, NoCreate: opts.NoCreate,
		SharedFS: opts.sharedFS, FS: opts.fs, Log: s.log, Now: opts.now,
	})
	if err != nil {
		return nil, fmt.Errorf("open layout %s: %w", abs, err)
	}
	if err := s.openFreeing(ctx); err != nil {
		s.lay.Close()
		return nil, fmt.Errorf("open layout %s: %w", abs, err)
	}
	return s, nil
}

func (s *Store) open(ctx context.Context) error {
	if s.opts.ReadOnly {
		return s.openReadOnly()
	}
	fresh, err := s.classify()
	if err != nil {
		return err
	}
	if fresh {
		if s.opts.NoCreate {
			return errdef.ErrNotLayout
		}
		if err := s.initLayout(); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	} else {
		b, err := fsio.ReadFile(s.lay.FS, layout.LayoutFile, 4096)
		if err != nil {
			return fmt.Errorf("read %s: %w", layout.LayoutFile, err)
		}
		if err := layout.CheckLayoutFile(b); err != nil {
			return err
		}
	}
	db, st, err := s.lockLazy(ctx)
	if err != nil {
		return err
	}
	s.opened = st.Actions
	return db.Close()
}

func (s *Store) openReadOnly() error {
	// A newer ocistore's layout is refused by readers too. The check
	// waits for no writer: a journal a writer holds passes.
	if err := s.lay.NewerJournal(-1); err != nil {
		return err
	}
	b, err := fsio.ReadFile(s.lay.FS, layout.LayoutFile, 4096)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no %s: %w", layout.LayoutFile, errdef.ErrNotLayout)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", layout.LayoutFile, err)
	}
	if err := layout.CheckLayoutFile(b); err != nil {
		return err
	}
	raw, ix, err := protocol.ReadIndex(s.lay.FS)
	if err != nil {
		return err
	}
	sn := &snapshot{ix: ix, raw: raw, digest: layout.Sum(raw)}
	if fi, err := s.lay.FS.Lstat(layout.IndexFile); err == nil {
		sn.stamp = fsio.StampOf(fi)
	}
	s.snap.Store(sn)
	return nil
}

// Dir is the layout's absolute path.
func (s *Store) Dir() string { return s.lay.Dir }

// Close releases the store. It holds no lock between transactions, so Close
// only marks the handle closed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	s.mu.Unlock()
	s.ingests.Lock() // wait for ingests in flight
	defer s.ingests.Unlock()
	s.wmu.Lock() // wait for a writer in flight (it may poison: mu must be free)
	defer s.wmu.Unlock()
	s.persistLastUse()
	if err := s.WaitReclaimed(context.Background()); err != nil {
		s.log.Warn("closing with files left in the trash; the next open unlinks them", "err", err)
	}
	s.mu.Lock()
	poisoned := s.mu.poisoned != nil
	s.mu.Unlock()
	if !poisoned {
		s.ensureReserve() // the space a transaction freed through the trash is back
	}
	s.releaseOwner()
	s.copies.close()
	return s.lay.FS.Close()
}

// owner returns the token of this handle's owner (protocol.OwnersDir),
// making its owner file on first use.
func (s *Store) owner() (string, error) {
	s.own.Lock()
	defer s.own.Unlock()
	if s.own.o == nil {
		if _, err := fsio.MkdirDurable(s.lay.FS, layout.StateDir); err != nil {
			return "", s.check(err)
		}
		o, err := fsio.NewOwner(s.lay.FS, protocol.OwnersDir)
		if err != nil {
			return "", s.check(fmt.Errorf("make an owner file: %w", err))
		}
		s.own.o = o
	}
	return s.own.o.Token(), nil
}

// ownerToken is the token of this handle's owner, "" before it has one.
func (s *Store) ownerToken() string {
	s.own.Lock()
	defer s.own.Unlock()
	if s.own.o == nil {
		return ""
	}
	return s.own.o.Token()
}

// releaseOwner removes this handle's owner file and drops its lock: what
// it left in the ingest directory or the trash is then anyone's to
// remove. Close calls it once no ingest, transaction or unlinking of the
// trash runs.
func (s *Store) releaseOwner() {
	s.own.Lock()
	defer s.own.Unlock()
	if s.own.o == nil {
		return
	}
	if err := s.own.o.Release(); err != nil {
		s.log.Warn("cannot remove the owner file; the next open removes it", "err", err)
	}
	s.own.o = nil
}

// Err reports why the handle refuses writes: nil when it takes them;
// ErrPoisoned (with the first durability failure: reopen the store),
// ErrReadOnly or ErrClosed otherwise. A server's health check reads it.
func (s *Store) Err() error { return s.writable() }

// writable returns why writes are refused, if they are.
func (s *Store) writable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return errdef.ErrClosed
	}
	if s.opts.ReadOnly {
		return errdef.ErrReadOnly
	}
	if s.mu.poisoned != nil {
		return fmt.Errorf("%w (first failure: %v)", errdef.ErrPoisoned, s.mu.poisoned)
	}
	return nil
}

// reading is readable for a reader called with ctx: a context already
// done fails it before it looks at anything.
func (s *Store) reading(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.readable()
}

func (s *Store) readable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return errdef.ErrClosed
	}
	return nil
}

// check poisons the handle when err is a durability failure (a failed fsync
// or journal commit) and returns err. A journal commit that failed writing
// for want of space is not one: no fsync failed, and the journal is as it
// was before the commit (fsio.NoSpaceOnWrite).
func (s *Store) check(err error) error {
	if errors.Is(err, errdef.ErrDurability) && !fsio.NoSpaceOnWrite(err) {
		return s.poison(err)
	}
	return err
}

// poison records a durability failure and returns err.
func (s *Store) poison(err error) error {
	s.mu.Lock()
	if s.mu.poisoned == nil {
		s.mu.poisoned = err
	}
	s.mu.Unlock()
	s.log.Error("durability failure: refusing writes until reopened", "err", err)
	return err
}

// classify reports whether dir needs a new layout: it has no oci-layout and
// holds nothing but what an interrupted init leaves (empty blob
// directories, an empty index.json, our state directory).
func (s *Store) classify() (fresh bool, err error) {
	ok, err := fsio.Exists(s.lay.FS, layout.LayoutFile)
	if err != nil || ok {
		return false, err
	}
	ents, err := s.lay.FS.ReadDir(".")
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		switch n := e.Name(); {
		case n == layout.StateDir:
		case n == layout.BlobsDir && e.IsDir():
			if nonEmpty, err := s.hasBlobs(); err != nil || nonEmpty {
				return false, orNotLayout(err)
			}
		case n == layout.IndexFile:
			b, err := fsio.ReadFile(s.lay.FS, layout.IndexFile, layout.MaxIndexSize)
			if err != nil {
				return false, err
			}
			if ix, err := layout.ParseIndex(b); err == nil && len(ix.Entries) > 0 {
				return false, errdef.ErrNotLayout
			}
		case protocol.IsIndexTemp(n):
		default:
			return false, fmt.Errorf("%s holds %q but no %s: %w", s.lay.Dir, n, layout.LayoutFile, errdef.ErrNotLayout)
		}
	}
	return true, nil
}

func orNotLayout(err error) error {
	if err != nil {
		return err
	}
	return errdef.ErrNotLayout
}

func (s *Store) hasBlobs() (bool, error) {
	algs, err := s.lay.FS.ReadDir(layout.BlobsDir)
	if err != nil {
		return false, err
	}
	for _, a := range algs {
		if !a.IsDir() {
			return true, nil
		}
		files, err := s.lay.FS.ReadDir(layout.BlobsDir + "/" + a.Name())
		if err != nil {
			return false, err
		}
		if len(files) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// initLayout writes a new empty layout. oci-layout goes last: a directory
// without it is still "fresh" and init runs again after a crash.
func (s *Store) initLayout() error {
	for _, d := range []string{layout.BlobsDir, layout.BlobsDir + "/sha256"} {
		if _, err := fsio.MkdirDurable(s.lay.FS, d); err != nil {
			return err
		}
	}
	if err := protocol.WriteIndex(s.lay.FS, layout.EmptyIndex()); err != nil {
		return err
	}
	crash.Point(crash.LayoutInitialized)
	if err := s.lay.FS.ReplaceFile(layout.LayoutFile, ".", append(layout.LayoutFileContent(), '\n'), 0o644); err != nil {
		return err
	}
	if err := fsio.SyncDirFor(s.lay.FS, fsio.SyncLayoutDir, "."); err != nil {
		return err
	}
	s.log.Info("created layout")
	return nil
}

// openJournal opens the journal read-write, taking the layout's writer
// lock (see protocol.Layout.OpenJournal); a durability failure poisons the
// handle.
func (s *Store) openJournal(ctx context.Context) (*journal.DB, error) {
	db, err := s.lay.OpenJournal(ctx, s.journalOptions(s.opts.LockTimeout))
	if err != nil {
		return nil, s.check(err)
	}
	return db, nil
}

// section says what a writer section needs before it runs.
type section int

const (
	// sectionCheck reads under the lock: a poisoned handle may still
	// look, and no recovery runs (a pending record shows).
	sectionCheck section = iota
	// sectionJournal opens the journal and runs nothing first: the
	// section is recovery itself.
	sectionJournal
	// sectionLazy runs recovery first, reading index.json only when the
	// journal cannot vouch for it by its stamp (lockLazy).
	sectionLazy
	// sectionIndex runs recovery first and reads the index (lock).
	sectionIndex
)

// use marks ds in use by an operation of this handle until the returned
// function is called (see Store.used).
func (s *Store) use(ds []digest.Digest) (done func()) {
	s.used.Lock()
	if s.used.m == nil {
		s.used.m = map[digest.Digest]int{}
	}
	for _, d := range ds {
		s.used.m[d]++
	}
	s.used.Unlock()
	return func() {
		s.used.Lock()
		for _, d := range ds {
			if s.used.m[d]--; s.used.m[d] <= 0 {
				delete(s.used.m, d)
			}
		}
		s.used.Unlock()
	}
}

// inUse reports whether an operation of this handle uses d (use).
func (s *Store) inUse(d digest.Digest) bool {
	s.used.Lock()
	defer s.used.Unlock()
	return s.used.m[d] > 0
}

// withWriter runs fn under the writer lock: this process's writers are
// serialized by wmu, other processes' by the journal's file lock, which
// opening it takes. The handle must be writable (readable for
// sectionCheck), before and after the wait, and ctx not done. fn gets the
// open journal and, when the section asks for recovery first, the layout
// after it (else nil). A durability failure of recovery poisons the handle;
// fn poisons it for its own (s.check).
func (s *Store) withWriter(ctx context.Context, sec section, fn func(db *journal.DB, cur *protocol.State) error) error {
	ok := s.writable
	if sec == sectionCheck {
		ok = s.readable
	}
	if err := ok(); err != nil {
		return err
	}
	start := time.Now()
	if err := s.wmu.LockContext(ctx); err != nil {
		return err
	}
	defer s.wmu.Unlock()
	defer s.lockedAt(start)()
	if err := ok(); err != nil { // closed or poisoned while we waited
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		db  *journal.DB
		cur *protocol.State
		err error
	)
	switch sec {
	case sectionCheck, sectionJournal:
		db, err = s.openJournal(ctx)
	default:
		db, cur, err = s.lockWith(ctx, sec == sectionLazy)
	}
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(db, cur)
}

// lockedAt is called once wmu is taken, by a caller that began to wait
// for it at start; the function it returns is called when it is released.
// They tell Options.OnWriterLock.
func (s *Store) lockedAt(start time.Time) func() {
	if s.opts.OnWriterLock == nil {
		return func() {}
	}
	locked := time.Now()
	return func() { s.opts.OnWriterLock(locked.Sub(start), time.Since(locked)) }
}

// lock takes the writer lock, runs recovery and refreshes the snapshot. The
// caller closes db to release the lock.
func (s *Store) lock(ctx context.Context) (*journal.DB, *protocol.State, error) {
	return s.lockWith(ctx, false)
}

// lockLazy is lock for a caller that does not need the index: when the
// journal vouches for index.json by its stamp (protocol.RunLazy), the file
// is not read, and the State has no Index; the snapshot then loads it when
// a reader first needs it.
func (s *Store) lockLazy(ctx context.Context) (*journal.DB, *protocol.State, error) {
	return s.lockWith(ctx, true)
}

func (s *Store) lockWith(ctx context.Context, lazy bool) (*journal.DB, *protocol.State, error) {
	db, err := s.openJournal(ctx)
	if err != nil {
		return nil, nil, err
	}
	sn := s.snap.Load()
	if !lazy && sn != nil && sn.ix == nil && sn.stamp != (fsio.Stamp{}) {
		// A lazy open left index.json unread, vouched for by its stamp:
		// read it as readers do (no hashing while the stamp holds).
		if loaded, err := s.current(); err == nil {
			sn = loaded
		}
	}
	var known *protocol.State
	if sn != nil && sn.ix != nil && sn.raw != nil && fsio.StampFile(s.lay.FS, layout.IndexFile) == sn.stamp {
		known = &protocol.State{Index: sn.ix, Bytes: sn.raw, Digest: sn.digest, Stamp: sn.stamp}
	}
	if s.lay.Scope != "" {
		if err := s.lay.RecoverPeers(ctx, db); err != nil {
			db.Close()
			return nil, nil, s.check(err)
		}
	}
	// One cache of manifests for recovery's recounts and the image
	// metadata after it: an adoption reads each manifest once.
	mc := newManifestCache(layout.LoadChildren(s.lay.FS))
	env := s.envFor(db)
	env.Load, env.Prefetch = mc.Load, mc.Prefetch
	var st *protocol.State
	if lazy && known == nil {
		st, err = protocol.RunLazy(ctx, env, db)
		if err == nil && st.Index == nil {
			var inSync bool
			if inSync, err = s.imagesInSync(db, st.Digest); err == nil && !inSync {
				st, err = protocol.Run(ctx, env, db, nil) // the image metadata needs the entries
			}
		}
	} else {
		st, err = protocol.Run(ctx, env, db, known)
	}
	if err == nil && s.lay.Scope != "" {
		st, err = s.lay.Reconcile(ctx, db, env, st)
	}
	if err != nil {
		db.Close()
		return nil, nil, s.check(fmt.Errorf("recover: %w", err))
	}
	if st.Index != nil {
		if err := s.syncImages(db, st, mc); err != nil {
			db.Close()
			return nil, nil, s.check(err)
		}
	}
	if sn == nil || sn.digest != st.Digest || sn.stamp != st.Stamp || st.Index != nil && st.Index != sn.ix {
		nsn := &snapshot{ix: st.Index, raw: st.Bytes, digest: st.Digest, stamp: st.Stamp}
		if sn != nil {
			nsn.hasher = sn.hasher // its saved states serve whatever bytes come next
		}
		s.snap.Store(nsn)
	}
	return db, st, nil
}

func (s *Store) env() protocol.Env {
	env := protocol.Env{FS: s.lay.FS, Log: s.log, Reclaim: s.reclaim, Owner: s.owner, Self: s.ownerToken(), TrashMin: s.opts.trashMin}
	if s.opts.syncReclaim {
		env.Reclaim = s.reclaimNow
	}
	return env
}

// current returns the index readers should see: the snapshot, reloaded when
// index.json on disk is no longer the file it was read from (another process
// or tool wrote it), or read the first time it is needed (an open that did
// not read it: lockLazy).
func (s *Store) current() (*snapshot, error) {
	sn := s.snap.Load()
	fi, err := s.lay.FS.Lstat(layout.IndexFile)
	if sn.ix != nil && (err != nil || fsio.StampOf(fi) == sn.stamp) {
		return sn, nil
	}
	raw, ix, rerr := protocol.ReadIndex(s.lay.FS)
	if rerr != nil {
		if sn.ix == nil {
			return nil, rerr
		}
		// Mid-replacement by a tool that writes in place: keep the last good one.
		s.log.Debug("index.json unreadable, serving the last good copy", "err", rerr)
		return sn, nil
	}
	nsn := &snapshot{ix: ix, raw: raw}
	if err == nil {
		nsn.stamp = fsio.StampOf(fi)
	}
	// A lazy open left the digest the journal vouches for by index.json's
	// stamp: while the file keeps that stamp (before and after the read),
	// the bytes are that digest's and need no hashing.
	if sn.ix == nil && err == nil && sn.stamp != (fsio.Stamp{}) && nsn.stamp == sn.stamp && fsio.StampFile(s.lay.FS, layout.IndexFile) == sn.stamp {
		nsn.digest = sn.digest
	} else {
		nsn.digest = layout.Sum(raw)
	}
	if sn.ix == nil && nsn.digest != sn.digest {
		s.log.Warn("index.json is not the index the journal committed; the next write recounts", "committed", sn.digest, "now", nsn.digest)
	}
	s.snap.CompareAndSwap(sn, nsn)
	return nsn, nil
}
