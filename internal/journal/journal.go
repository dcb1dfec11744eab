// Package journal is ocistore's intent log and derived state: a bbolt database
// inside the layout, at .ocistore/journal.db.
//
// # Schema (version 4)
//
// DESIGN.md §7 describes this schema with its encodings (§7.2), its
// versions and upgrades (§7.3), salvage and rebuild (§7.4) and shared
// journals (§7.5); the record's part in the protocol is DESIGN.md §4.2.
//
//	meta/                      bucket
//	  "schema"        -> uint64 big endian: schema version (4)
//	  "index"         -> digest of the index.json last committed through the journal
//	  "next-txn"      -> uint64 big endian: id of the next transaction record
//	  "index-stamp"   -> digest, NUL, stamp: the stamp (inode, size, mtime,
//	                     ctime; opaque here) that index.json had when it was
//	                     known to hold that digest (optional; v2)
//	  "images-index"  -> digest of the index.json whose roots images/ and
//	                     referrers/ describe (v2)
//	  "live-bytes"    -> uint64 big endian (v2, top level only): total size
//	                     of the blobs in refs/
//	  "unknown-refs"  -> uint64 big endian (v4, top level only): how many
//	                     live refs have an unknown closure; absent until the
//	                     store recounts an upgraded database
//	  "pinned"        -> (optional, top level only) two int64 big endian,
//	                     Unix nanoseconds: when the database was rebuilt
//	                     without the leases of the one it replaced, and
//	                     until when nothing may be freed (see PinnedUntil).
//	                     A build that does not know it ignores it.
//	indexes/                   bucket: copies of index.json contents
//	  <digest>        -> index.json bytes, or a delta against another copy (see
//	                     indexdelta.go); holds the last committed index (meta
//	                     "index"), the new index of every pending record, and
//	                     the copies their deltas need, nothing else
//	  <digest>/       -> (v3) bucket holding "v" -> the bytes of a whole copy
//	                     larger than 16 KiB, so that it is never rewritten
//	                     with the deltas beside it
//	pending/                   bucket: transaction records not yet fully applied
//	  <txn id, u64 BE> -> Record (see Encode: version byte, crc32c, JSON)
//	refs/                      bucket: persistent reference counts
//	  <digest>        -> Ref: uvarint count, uvarint size, flag byte, then
//	                     (v3, flag bit 2) the children of an expanded
//	                     manifest (see children.go), or (v4, flag bit 4)
//	                     why a live manifest's children could not be
//	                     counted (its closure is unknown: see unknown.go)
//	images/                    bucket (v2): one key per root manifest of index.json
//	  <digest>        -> ImageMeta: version byte, then firstSeen, created,
//	                     lastUsed, subject, labels (see encodeImage)
//	referrers/                 bucket (v2): roots that are OCI 1.1 referrers
//	  <subject digest> " " <referrer digest> -> empty
//	leases/                    bucket (v2): one nested bucket per lease
//	  <lease id>/              bucket
//	    "created"     -> int64 big endian: Unix nanoseconds
//	    "expires"     -> int64 big endian: Unix nanoseconds
//	    "blobs"/      -> bucket: <digest> -> empty; the blobs the lease protects
//
//	layouts/                   bucket, only in a journal that several layouts
//	                           share with their blob directory (Options.Scope):
//	  <layout path>/           bucket: that layout's own meta/ ("index",
//	                           "index-stamp", "next-txn", "images-index"),
//	                           indexes/, pending/, images/ and referrers/, as
//	                           above; refs/, leases/ and the top-level meta
//	                           ("schema", "live-bytes", "unknown-refs",
//	                           "pinned") count every layout
//
// Version 1 had none of the buckets and keys marked (v2); version 2 stored
// no children in refs and no copy of index.json in a bucket of its own;
// version 3 did not say which live manifests could not be followed. Open
// upgrades an older database in place (one write transaction: the missing
// buckets are created, live-bytes is summed from refs/, the version is set
// to 4; refs without children stay so, and their manifests are read when
// they are released; "unknown-refs" stays absent, so the store recounts
// before it frees anything); a read-only open reads it as it is, with no
// leases and no image metadata. A build that knows only version 2 refuses
// a version 3 database rather than misread its refs.
// The store fills images/ from index.json when images-index is not the
// digest of the index on disk. A database of a newer version than this
// build knows is refused with errdef.ErrJournalNewer, by every open
// (read-only too), and never rebuilt: it is not damaged, only newer. The
// version decides what is newer: a key, bucket or flag this build does not
// know is corruption in a database of a version it knows (a ref with
// unknown flag bits), never consulted in one of a newer version (refused
// first). A damaged database whose version can still be read (Salvage)
// and is newer is refused as well.
//
// A blob's count is the number of references to it: one per index.json entry
// that names it, plus one per reference from each live manifest or index blob
// (a blob is live while its count is above zero). Blobs with a count of zero
// have no key. The flag records whether the blob's own children were counted
// when it became live, so that they are released exactly when it dies.
//
// # Locking
//
// bbolt takes an exclusive flock on the database file for a read-write open
// and a shared one for read-only. ocistore opens the database read-write only
// for the length of one transaction (or one recovery), so that lock is the
// cross-process writer lock of the layout: a second process waits up to its
// timeout, then gets ErrLocked (DESIGN.md §4.1).
//
// # Caveats
//
// bbolt does not fsync the directory of a file it creates. Open reports
// Created, and the caller (which owns the layout's directories through fsio)
// syncs .ocistore before relying on the file (DESIGN.md §3.1, rule 4).
package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
	bolterr "go.etcd.io/bbolt/errors"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
)

// SchemaVersion is the version of the bucket layout above.
const SchemaVersion = 4

// minSchemaVersion is the oldest version Open upgrades in place.
const minSchemaVersion = 1

var (
	bMeta    = []byte("meta")
	bIndexes = []byte("indexes")
	bPending = []byte("pending")
	bRefs    = []byte("refs")
	bLeases  = []byte("leases")

	// v1Buckets exist in every version; newBuckets were added since and are
	// created by the upgrade (a read-only open of an old database reads
	// them as empty).
	v1Buckets  = [][]byte{bMeta, bIndexes, bPending, bRefs}
	newBuckets = [][]byte{bLeases, bImages, bReferrers}

	// bLayouts holds one bucket per layout of a shared journal, each with
	// its own scopedBuckets.
	bLayouts      = []byte("layouts")
	scopedBuckets = [][]byte{bMeta, bIndexes, bPending, bImages, bReferrers}

	kSchema  = []byte("schema")
	kIndex   = []byte("index")
	kNextTxn = []byte("next-txn")
	kStamp   = []byte("index-stamp")
)

// DB is an open journal. It holds the layout's writer lock until Close.
type DB struct {
	bolt        *bolt.DB
	path        string
	afterCommit func()
	commitHook  func(*Tx) (func() error, error)
	scope       []byte
	// Created is true when Open found no database (or an empty file) and
	// initialized it: it holds no state for the layout yet.
	Created bool
}

// Options for Open.
type Options struct {
	// LockTimeout is how long to wait for another process's lock.
	// Zero waits forever; a negative value tries once.
	LockTimeout time.Duration
	// ReadOnly opens with a shared lock and no writes; the file must exist.
	ReadOnly bool
	// Snapshot opens a private copy of the file as its last commit left it
	// (see openSnapshot), taken without a lock: it never waits for a writer
	// and never blocks one, and changes no byte on disk. With ReadOnly the
	// copy is read-only and the file must exist; without, writes go to the
	// copy only (a dry run's recovery and plan) and vanish with it, and a
	// missing file is a new, empty copy (Created).
	Snapshot bool
	// Scope, when set, keeps the layout's own state (committed index,
	// pending records, image metadata) under layouts/<Scope>/ in a journal
	// that several layouts share with their blob directory; refcounts,
	// leases and live bytes stay shared (see the package comment).
	Scope string
	// AfterCommit, when set, is called after every durable change of the
	// file: each committed Update, and the initialization of a new
	// database. Crash tests use it to snapshot the journal between steps.
	AfterCommit func()
	// CommitHook, when set, is called in every Update whose fn succeeded,
	// with its transaction, just before the commit (tests: a failed
	// commit, code run right after one). An error fails the commit as a
	// failed write or fsync of the database would: bbolt rolls the
	// transaction back and Update returns an error wrapping
	// errdef.ErrDurability and it. Otherwise the commit runs and, once
	// it is durable (and AfterCommit has run), after is called when not
	// nil: an error it returns is returned by Update as a failed commit
	// too, although the change is committed, as when the fsync of a
	// commit fails after its pages reached the disk (the one outcome a
	// caller cannot know).
	CommitHook func(tx *Tx) (after func() error, err error)
	// MapHint is how large the database may grow while this handle is
	// open (an estimate). Past bbolt's allocation step (mapHintMin) it
	// maps that much address space at open, so that commits that grow the
	// file do not remap it: a remap first copies every node the
	// transaction holds out of the old mapping (2.2 s of the 14 s first
	// open of 100,000 images). Below the step it changes nothing: bbolt
	// would then grow the file in whole steps of the mapping.
	MapHint int64
	// file, when set, is the file bbolt opens instead of path: a private
	// copy judged by LockDamaged. It is closed with the database.
	file *os.File
}

// mapHintMin is bbolt's default allocation step (DefaultAllocSize): a
// database mapped larger than it grows its file by that step past what a
// commit needs, which a small journal must not pay.
const mapHintMin = 16 << 20

// Open opens or creates the journal at path.
func Open(path string, o Options) (*DB, error) {
	fi, statErr := os.Lstat(path)
	created := false
	switch {
	case statErr == nil && !fi.Mode().IsRegular():
		return nil, fmt.Errorf("journal %s: %w", path, errors.New("not a regular file"))
	case statErr == nil:
		created = fi.Size() == 0
		if created && o.ReadOnly {
			// A read-only bbolt open of an empty file fails writing its
			// first pages: an empty journal holds nothing, as a missing one.
			return nil, fmt.Errorf("journal %s is empty: %w", path, errdef.ErrNotFound)
		}
	case errors.Is(statErr, os.ErrNotExist):
		if o.ReadOnly {
			return nil, fmt.Errorf("journal %s: %w", path, errdef.ErrNotFound)
		}
		created = true
	default:
		return nil, fmt.Errorf("journal %s: %w", path, statErr)
	}
	if created && o.Snapshot && o.ReadOnly {
		return nil, fmt.Errorf("journal %s: %w", path, errdef.ErrNotFound)
	}
	timeout := o.LockTimeout
	if timeout < 0 {
		timeout = time.Nanosecond
	}
	bo := &bolt.Options{
		Timeout:      timeout,
		ReadOnly:     o.ReadOnly,
		FreelistType: bolt.FreelistMapType,
	}
	if o.MapHint > mapHintMin && !o.ReadOnly && int64(int(o.MapHint)) == o.MapHint {
		bo.InitialMmapSize = int(o.MapHint)
	}
	var own *os.File // the file bbolt opens (OpenFile), closed here if it fails
	switch {
	case o.file != nil:
		own = o.file
		if err := checkFileAt(own, path); err != nil {
			own.Close()
			return nil, err
		}
		bo.Timeout = time.Nanosecond
		bo.OpenFile = func(string, int, os.FileMode) (*os.File, error) { return own, nil }
	case o.Snapshot:
		var mem *os.File
		var err error
		if created {
			// No journal yet: the copy starts empty (a dry run on a
			// layout not adopted yet counts it from scratch).
			mem, err = fsio.NewMemFile()
		} else {
			mem, err = openSnapshot(path, o.LockTimeout)
		}
		if err != nil {
			return nil, err
		}
		if err := checkFileAt(mem, path); err != nil {
			mem.Close()
			return nil, err
		}
		bo.Timeout = time.Nanosecond // the copy is this open's alone
		bo.OpenFile = func(string, int, os.FileMode) (*os.File, error) { return mem, nil }
		own = mem
	default:
		// Locked first, then checked and handed to bbolt (lockfile.go).
		flag := os.O_RDWR | os.O_CREATE
		if o.ReadOnly {
			flag = os.O_RDONLY
		}
		f, err := lockFile(path, flag, !o.ReadOnly, timeout)
		if err != nil {
			return nil, classifyOpenErr(path, err)
		}
		fi, err := f.Stat()
		if err == nil {
			err = checkFileAt(f, path)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		// What the file is under the lock decides (another open may have
		// created and initialized it since the lstat above).
		created = fi.Size() == 0
		if created && o.ReadOnly {
			f.Close()
			return nil, fmt.Errorf("journal %s is empty: %w", path, errdef.ErrNotFound)
		}
		bo.OpenFile = func(string, int, os.FileMode) (*os.File, error) { return f, nil }
		own = f
	}
	bdb, err := openBolt(path, bo)
	if err != nil {
		if own != nil {
			own.Close() // bbolt closed it, unless it panicked (a second Close does nothing)
		}
		return nil, classifyOpenErr(path, err)
	}
	d := &DB{bolt: bdb, path: path, Created: created, afterCommit: o.AfterCommit, commitHook: o.CommitHook}
	if o.Scope != "" {
		d.scope = []byte(o.Scope)
	}
	if o.ReadOnly {
		err := d.View(func(tx *Tx) error {
			if err := tx.checkSchema(path); err != nil {
				return err
			}
			if tx.scope != nil && tx.sb(bMeta) == nil {
				return fmt.Errorf("journal %s holds no state for layout %s: %w", path, o.Scope, errdef.ErrNotFound)
			}
			return nil
		})
		if err != nil {
			bdb.Close()
			return nil, err
		}
		return d, nil
	}
	// The common case, an initialized database, costs no write transaction.
	switch err := d.View(func(tx *Tx) error { return tx.checkCurrent(path) }); {
	case err == nil:
		return d, nil
	case errors.Is(err, errdef.ErrJournalNewer):
		bdb.Close()
		return nil, err // refused before any write
	}
	err = d.initialize()
	if err != nil {
		bdb.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	if d.afterCommit != nil {
		d.afterCommit()
	}
	return d, nil
}

// initialize creates the buckets of a new database, or upgrades an older
// one in place, in one write transaction. A page bbolt finds damaged while
// committing (it panics) is ErrCorrupt.
func (d *DB) initialize() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: panic: %v", errdef.ErrCorrupt, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return d.bolt.Update(func(btx *bolt.Tx) error {
		m := btx.Bucket(bMeta)
		fresh := m == nil || m.Get(kSchema) == nil
		if !fresh {
			// Initialized: an older version is upgraded, a newer one refused.
			if err := (&Tx{tx: btx}).checkSchema(d.path); err != nil {
				return err
			}
		}
		for _, b := range append(append([][]byte(nil), v1Buckets...), newBuckets...) {
			if _, err := btx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if fresh {
			d.Created = true
		}
		if d.scope != nil {
			l, err := btx.CreateBucketIfNotExists(bLayouts)
			if err != nil {
				return err
			}
			sc, err := l.CreateBucketIfNotExists(d.scope)
			if err != nil {
				return err
			}
			for _, b := range scopedBuckets {
				if _, err := sc.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
		}
		if err := initLiveBytes(btx); err != nil {
			return err
		}
		return btx.Bucket(bMeta).Put(kSchema, u64(SchemaVersion))
	})
}

func classifyOpenErr(path string, err error) error {
	switch {
	case errors.Is(err, bolterr.ErrTimeout):
		return fmt.Errorf("journal %s: %w", path, errdef.ErrLocked)
	case errors.Is(err, bolterr.ErrInvalid), errors.Is(err, bolterr.ErrVersionMismatch),
		errors.Is(err, bolterr.ErrChecksum), errors.Is(err, bolterr.ErrInvalidMapping):
		return fmt.Errorf("journal %s: %w: %v", path, errdef.ErrCorrupt, err)
	}
	return fmt.Errorf("journal %s: %w", path, err)
}

// Path is the database file.
func (d *DB) Path() string { return d.path }

// WithScope returns the database seen from another layout of a shared
// journal (see Options.Scope): the same open file and lock, that layout's
// own state. It must not outlive d.
func (d *DB) WithScope(scope string) *DB {
	o := *d
	o.scope = []byte(scope)
	o.Created = false
	return &o
}

// Close releases the database and its lock.
func (d *DB) Close() error { return d.bolt.Close() }

// Update runs fn in a read-write transaction, committed (and fsynced) when fn
// returns nil. A commit error must poison the caller's handle.
// Errors of the commit itself wrap errdef.ErrDurability; errors of fn are
// returned as they are (and nothing is committed).
func (d *DB) Update(fn func(*Tx) error) (err error) {
	defer recoverCorrupt(d.path, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var (
		fnErr error
		after func() error
	)
	err = d.bolt.Update(func(btx *bolt.Tx) error {
		t := &Tx{tx: btx, scope: d.scope}
		if fnErr = fn(t); fnErr == nil {
			fnErr = t.flush()
		}
		if fnErr != nil || d.commitHook == nil {
			return fnErr
		}
		var herr error
		after, herr = d.commitHook(t)
		return herr // not fn's: a failed commit
	})
	if err != nil && fnErr == nil {
		return fmt.Errorf("journal %s: commit: %w: %w", d.path, errdef.ErrDurability, err)
	}
	if err == nil && d.afterCommit != nil {
		d.afterCommit()
	}
	if err == nil && after != nil {
		if aerr := after(); aerr != nil {
			return fmt.Errorf("journal %s: commit: %w: %w", d.path, errdef.ErrDurability, aerr)
		}
	}
	return err
}

// View runs fn in a read-only transaction.
func (d *DB) View(fn func(*Tx) error) (err error) {
	defer recoverCorrupt(d.path, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return d.bolt.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx, scope: d.scope}) })
}

// Check runs bbolt's consistency check and returns every problem it finds.
func (d *DB) Check() (errs []error) {
	defer func() {
		if r := recover(); r != nil {
			errs = append(errs, fmt.Errorf("journal %s: %w: panic: %v", d.path, errdef.ErrCorrupt, r))
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	err := d.bolt.View(func(btx *bolt.Tx) error {
		for e := range btx.Check() {
			errs = append(errs, e)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errs
}

// bbolt panics on some page corruptions instead of returning an error.
func recoverCorrupt(path string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("journal %s: %w: panic: %v", path, errdef.ErrCorrupt, r)
	}
}

// Tx is a journal transaction.
type Tx struct {
	tx    *bolt.Tx
	scope []byte // the layout's state in a shared journal; nil: top level
	// last is the refcount last read or written, so that PutRef after
	// GetRef of the same blob (what the counter does) reads it once.
	last struct {
		d  digest.Digest
		r  Ref
		ok bool
	}
	// refsDirty holds the refcounts this transaction changed that are
	// still above zero, not yet written to the refs bucket: a prune
	// releases a shared base layer once per image that uses it (thousands
	// of times), and each write to the bucket is a search and a node
	// update. flushRefs writes them, in key order, before anything reads
	// the bucket without looking here, and at commit.
	refsDirty map[digest.Digest]Ref
	// cur is a cursor of the refs bucket that GetRef left on curKey,
	// valid until the bucket changes: PutRef deletes a count that dropped
	// to zero through it, without searching the bucket again.
	cur       *bolt.Cursor
	curKey    digest.Digest
	liveDelta int64 // change of live-bytes not yet stored (see flush)
	// unknownDelta is the change of the count of unknown closures not yet
	// stored (see flushUnknown).
	unknownDelta int64
}

// checkSchema checks the version and the buckets every version has. A
// version above SchemaVersion is ErrJournalNewer (not ErrCorrupt: the file
// is not damaged, and must not be rebuilt); path names the file in it.
func (t *Tx) checkSchema(path string) error {
	m := t.tx.Bucket(bMeta)
	if m == nil {
		return fmt.Errorf("no meta bucket: %w", errdef.ErrCorrupt)
	}
	v := m.Get(kSchema)
	if len(v) != 8 {
		return fmt.Errorf("no schema version: %w", errdef.ErrCorrupt)
	}
	switch got := binary.BigEndian.Uint64(v); {
	case got > SchemaVersion:
		return newerError(path, got)
	case got < minSchemaVersion:
		return fmt.Errorf("schema version %d, this build reads %d to %d: %w", got, minSchemaVersion, SchemaVersion, errdef.ErrCorrupt)
	}
	for _, b := range v1Buckets[1:] {
		if t.tx.Bucket(b) == nil {
			return fmt.Errorf("no %s bucket: %w", b, errdef.ErrCorrupt)
		}
	}
	return nil
}

// newerError is the error of a database of schema version got, above
// SchemaVersion: a newer ocistore wrote it.
func newerError(path string, got uint64) error {
	return fmt.Errorf("%w: journal %s has format version %d, this ocistore reads up to %d: upgrade ocistore",
		errdef.ErrJournalNewer, path, got, SchemaVersion)
}

// errUpgrade says that a readable database needs the in-place upgrade.
var errUpgrade = errors.New("journal needs an upgrade")

// checkCurrent is checkSchema, and errUpgrade unless the database is of the
// current version with every bucket.
func (t *Tx) checkCurrent(path string) error {
	if err := t.checkSchema(path); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(t.tx.Bucket(bMeta).Get(kSchema)) != SchemaVersion {
		return errUpgrade
	}
	for _, b := range newBuckets {
		if t.tx.Bucket(b) == nil {
			return errUpgrade
		}
	}
	if len(t.tx.Bucket(bMeta).Get(kLiveBytes)) != 8 {
		return errUpgrade
	}
	if t.scope != nil {
		for _, b := range scopedBuckets {
			if t.sb(b) == nil {
				return errUpgrade // the layout joins the shared journal
			}
		}
	}
	return nil
}

// sb returns the bucket name of the transaction's layout: the top-level
// one, or the one under layouts/<scope>/ in a shared journal (nil when the
// layout has no state there yet).
func (t *Tx) sb(name []byte) *bolt.Bucket {
	if t.scope == nil {
		return t.tx.Bucket(name)
	}
	l := t.tx.Bucket(bLayouts)
	if l == nil {
		return nil
	}
	s := l.Bucket(t.scope)
	if s == nil {
		return nil
	}
	return s.Bucket(name)
}

// Layouts lists the layouts that keep state in a shared journal (their
// scopes), sorted.
func (t *Tx) Layouts() []string {
	var out []string
	if l := t.tx.Bucket(bLayouts); l != nil {
		_ = l.ForEachBucket(func(k []byte) error {
			out = append(out, string(k))
			return nil
		})
	}
	return out
}

// LayoutIndex returns the index the layout scope last committed in a shared
// journal and its stored copy (nil when there is none).
func (t *Tx) LayoutIndex(scope string) (digest.Digest, []byte) {
	o := &Tx{tx: t.tx, scope: []byte(scope)}
	m := o.sb(bMeta)
	if m == nil {
		return "", nil
	}
	d := digest.Digest(m.Get(kIndex))
	b, _ := o.IndexBytes(d)
	return d, b
}

// In returns the transaction seen from the layout scope of a shared
// journal (one of Layouts), to read or set that layout's own state; nil
// when the journal holds no state for it.
func (t *Tx) In(scope string) *Tx {
	o := &Tx{tx: t.tx, scope: []byte(scope)}
	if o.sb(bMeta) == nil {
		return nil
	}
	return o
}

// SchemaVersion returns the schema version of the open database.
func (t *Tx) SchemaVersion() uint64 {
	return binary.BigEndian.Uint64(t.tx.Bucket(bMeta).Get(kSchema))
}

// IndexDigest is the digest of the index.json last committed through the
// journal, "" when none was.
func (t *Tx) IndexDigest() digest.Digest {
	return digest.Digest(t.sb(bMeta).Get(kIndex))
}

// IndexBytes returns the stored copy of an index.json by digest.
// A copy stored as a delta whose chain is broken is no copy.
func (t *Tx) IndexBytes(d digest.Digest) ([]byte, bool) {
	b, err := resolveIndex(copies{t.sb(bIndexes)}.get, d)
	if err != nil || b == nil {
		return nil, false
	}
	return b, true
}

// SetCommittedIndex records b (with digest d) as the last committed index.json
// and drops stored copies that neither it nor a pending record needs.
func (t *Tx) SetCommittedIndex(d digest.Digest, b []byte) error {
	if err := t.sb(bMeta).Put(kIndex, []byte(d)); err != nil {
		return err
	}
	ib := copies{t.sb(bIndexes)}
	if b != nil && !ib.has([]byte(d)) {
		if err := ib.put([]byte(d), b); err != nil {
			return err
		}
	}
	keep := map[string]bool{}
	// Keep d, the new index of every pending record, and the bases their
	// deltas need.
	hold := func(k digest.Digest) {
		for i := 0; k != "" && !keep[string(k)] && i <= maxDeltaDepth; i++ {
			keep[string(k)] = true
			k = deltaBase(ib.get([]byte(k)))
		}
	}
	hold(d)
	recs, err := t.Pending()
	if err != nil {
		return err
	}
	for _, r := range recs {
		hold(r.NewIndex)
	}
	var drop [][]byte
	c := ib.b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if !keep[string(k)] {
			drop = append(drop, bytes.Clone(k))
		}
	}
	for _, k := range drop {
		if err := ib.drop(k); err != nil {
			return err
		}
	}
	return nil
}

// SetIndexStamp records that the index.json file with stamp (opaque bytes)
// held the index d. The store writes it when it wrote or read that file, so
// that an open can tell, by a stat, that index.json is still that file.
func (t *Tx) SetIndexStamp(d digest.Digest, stamp []byte) error {
	v := make([]byte, 0, len(d)+1+len(stamp))
	v = append(append(append(v, d...), 0), stamp...)
	return t.sb(bMeta).Put(kStamp, v)
}

// IndexStamp returns what SetIndexStamp recorded last ("" and nil if
// nothing).
func (t *Tx) IndexStamp() (digest.Digest, []byte) {
	v := t.sb(bMeta).Get(kStamp)
	d, stamp, ok := bytes.Cut(v, []byte{0})
	if !ok {
		return "", nil
	}
	return digest.Digest(d), bytes.Clone(stamp)
}

// Pending returns the pending records in transaction order.
func (t *Tx) Pending() ([]*Record, error) {
	var out []*Record
	err := t.sb(bPending).ForEach(func(k, v []byte) error {
		r, err := Decode(v)
		if err != nil {
			return fmt.Errorf("pending record %x: %w", k, err)
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// AddPending assigns r an id, stores it and the new index bytes.
func (t *Tx) AddPending(r *Record, newIndex []byte) error {
	return t.AddPendingFrom(r, newIndex, nil)
}

// AddPendingFrom is AddPending for a record whose old index is the
// committed one and whose bytes the caller has (baseBytes: they must be the
// committed index's): the new index is stored as a delta against it when
// that is smaller (see indexdelta.go).
func (t *Tx) AddPendingFrom(r *Record, newIndex, baseBytes []byte) error {
	m := t.sb(bMeta)
	id := uint64(1)
	if v := m.Get(kNextTxn); len(v) == 8 {
		id = binary.BigEndian.Uint64(v)
	}
	if err := m.Put(kNextTxn, u64(id+1)); err != nil {
		return err
	}
	r.ID = id
	ib := copies{t.sb(bIndexes)}
	v := newIndex
	if ib.has([]byte(r.NewIndex)) {
		// Stored already (perhaps as a delta): replaced by the whole bytes.
		if err := ib.drop([]byte(r.NewIndex)); err != nil {
			return err
		}
	} else if base := t.IndexDigest(); base != "" && base != r.NewIndex && baseBytes != nil {
		if bv := ib.get([]byte(base)); bv != nil {
			v = makeDelta(newIndex, base, baseBytes, bv)
		}
	}
	if err := ib.put([]byte(r.NewIndex), v); err != nil {
		return err
	}
	return t.sb(bPending).Put(u64(id), r.Encode())
}

// DeletePending removes a record.
func (t *Tx) DeletePending(id uint64) error {
	return t.sb(bPending).Delete(u64(id))
}

// Ref is one blob's entry in the refs bucket.
type Ref struct {
	Count    uint64
	Size     int64
	Expanded bool // its children were counted when it became live
	// Children are the descriptors an expanded manifest or index references
	// (digest, size and media type only), recorded when it was expanded so
	// that releasing it reads no blob; nil when not recorded (a count
	// stored before schema v3): the blob is read then. Not nil (perhaps
	// empty) when recorded.
	Children []v1.Descriptor
	// Unknown, when not empty, says why the children of this manifest or
	// index could not be counted when it became live (schema v4): its
	// closure is unknown, and while it is live nothing may be freed (see
	// UnknownRefs). Never set on an expanded Ref.
	Unknown string
}

// GetRef returns the stored refcount of d (zero Ref when it has none).
func (t *Tx) GetRef(d digest.Digest) (Ref, error) {
	if t.last.ok && t.last.d == d {
		return t.last.r, nil
	}
	if r, ok := t.refsDirty[d]; ok {
		t.last.d, t.last.r, t.last.ok = d, r, true
		return r, nil
	}
	c := t.tx.Bucket(bRefs).Cursor()
	k, v := c.Seek([]byte(d))
	if k == nil || string(k) != string(d) || v == nil {
		t.last.d, t.last.r, t.last.ok = d, Ref{}, true
		return Ref{}, nil
	}
	t.cur, t.curKey = c, d
	r, err := decodeRef(d, v)
	if err == nil {
		t.last.d, t.last.r, t.last.ok = d, r, true
	}
	return r, err
}

// Counted returns those of ds that have a stored count above zero (a
// stored Ref that cannot be decoded counts as one: the caller must not
// take it for unreferenced). It walks the refs bucket with one cursor in
// digest order, stepping to the next key while the wanted one is near and
// seeking when it is not: for a transaction's freed blobs, a small part of
// the cost of one lookup each.
func (t *Tx) Counted(ds []digest.Digest) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	if len(ds) == 0 {
		return out
	}
	sorted := make([]digest.Digest, 0, len(ds))
	for _, d := range ds {
		if _, ok := t.refsDirty[d]; ok {
			out[d] = true // every count there is above zero
		} else {
			sorted = append(sorted, d)
		}
	}
	if len(sorted) == 0 {
		return out
	}
	slices.Sort(sorted)
	c := t.tx.Bucket(bRefs).Cursor()
	k, v := c.Seek([]byte(sorted[0]))
	for _, d := range sorted {
		for steps := 0; k != nil && string(k) < string(d); steps++ {
			if steps == 8 {
				k, v = c.Seek([]byte(d))
				break
			}
			k, v = c.Next()
		}
		if k == nil || string(k) != string(d) {
			continue
		}
		if count, _, _, _, ok := splitRef(v); !ok || count > 0 {
			out[d] = true
		}
	}
	return out
}

// ChildrenRecorded reports whether d's stored Ref records its children (an
// expanded manifest counted by schema v3), without decoding them: then
// neither counting nor releasing d reads its blob.
func (t *Tx) ChildrenRecorded(d digest.Digest) bool {
	if r, ok := t.refsDirty[d]; ok {
		return r.Children != nil
	}
	_, _, f, _, ok := splitRef(t.tx.Bucket(bRefs).Get([]byte(d)))
	return ok && f&refChildren != 0
}

// PutRef stores r, or deletes the key when r.Count is zero, and keeps
// live-bytes.
func (t *Tx) PutRef(d digest.Digest, r Ref) error {
	old, err := t.GetRef(d)
	if err != nil {
		return err
	}
	var delta int64
	if old.Count > 0 {
		delta -= old.Size
	}
	if r.Count > 0 {
		delta += r.Size
	}
	t.addLiveBytes(delta)
	t.unknownDelta += unknownOf(r) - unknownOf(old)
	t.last.ok = false
	if r.Count > 0 {
		if t.refsDirty == nil {
			t.refsDirty = map[digest.Digest]Ref{}
		}
		t.refsDirty[d] = r
		t.last.d, t.last.r, t.last.ok = d, r, true
		return nil
	}
	delete(t.refsDirty, d)
	if t.cur != nil && t.curKey == d {
		err = t.cur.Delete()
	} else {
		err = t.tx.Bucket(bRefs).Delete([]byte(d)) // nothing when it was never stored
	}
	t.cur = nil
	if err == nil {
		t.last.d, t.last.r, t.last.ok = d, r, true
	}
	return err
}

// flushRefs writes the refcounts changed since the last flush to the
// refs bucket, in key order.
func (t *Tx) flushRefs() error {
	if len(t.refsDirty) == 0 {
		return nil
	}
	t.cur = nil
	keys := make([]string, 0, len(t.refsDirty))
	for d := range t.refsDirty {
		keys = append(keys, string(d))
	}
	slices.Sort(keys)
	b := t.tx.Bucket(bRefs)
	for _, k := range keys {
		if err := b.Put([]byte(k), encodeRef(t.refsDirty[digest.Digest(k)])); err != nil {
			return err
		}
	}
	t.refsDirty = nil
	return nil
}

// ForEachRef calls fn for every stored refcount, in digest order.
func (t *Tx) ForEachRef(fn func(digest.Digest, Ref) error) error {
	if err := t.flushRefs(); err != nil {
		return err
	}
	return t.tx.Bucket(bRefs).ForEach(func(k, v []byte) error {
		r, err := decodeRef(digest.Digest(k), v)
		if err != nil {
			return err
		}
		return fn(digest.Digest(k), r)
	})
}

// RefKeys is how many blobs have a refcount (bbolt's count of the bucket's
// keys, from its pages: no value is decoded), for a caller that sizes a
// map before ForEachRef.
func (t *Tx) RefKeys() int { return t.tx.Bucket(bRefs).Stats().KeyN }

// ReplaceRefs drops every stored refcount and stores refs instead.
func (t *Tx) ReplaceRefs(refs map[digest.Digest]Ref) error {
	t.last.ok, t.liveDelta, t.unknownDelta = false, 0, 0
	t.refsDirty, t.cur = nil, nil
	if err := t.tx.DeleteBucket(bRefs); err != nil {
		return err
	}
	b, err := t.tx.CreateBucket(bRefs)
	if err != nil {
		return err
	}
	// Keys go in sorted order: bbolt keeps a node's keys in one slice until
	// the commit splits it, so random order costs a memmove per insert
	// (quadratic in the number of blobs; the figure is in BENCHMARKS.md,
	// "Figures behind design choices"), sorted order an append.
	b.FillPercent = 1.0
	keys := make([]string, 0, len(refs))
	for d, r := range refs {
		if r.Count > 0 {
			keys = append(keys, string(d))
		}
	}
	sort.Strings(keys)
	var live int64
	var unknown uint64
	for _, k := range keys {
		r := refs[digest.Digest(k)]
		live += r.Size
		unknown += uint64(unknownOf(r))
		if err := b.Put([]byte(k), encodeRef(r)); err != nil {
			return err
		}
	}
	if err := t.tx.Bucket(bMeta).Put(kUnknownRefs, u64(unknown)); err != nil {
		return err
	}
	return t.tx.Bucket(bMeta).Put(kLiveBytes, i64(live))
}

// Flag bits of a stored Ref.
const (
	refExpanded = 1
	refChildren = 2 // children follow (v3): see children.go
	refUnknown  = 4 // (v4) the reason its closure is unknown follows; never with refChildren
)

func encodeRef(r Ref) []byte {
	b := make([]byte, 0, 2*binary.MaxVarintLen64+2+40*len(r.Children))
	b = binary.AppendUvarint(b, r.Count)
	b = binary.AppendUvarint(b, uint64(r.Size))
	var f byte
	if r.Expanded {
		f |= refExpanded
	}
	switch {
	case r.Unknown != "":
		f |= refUnknown
	case r.Children != nil:
		f |= refChildren
	}
	b = append(b, f)
	switch {
	case r.Unknown != "":
		b = append(b, r.Unknown...)
	case r.Children != nil:
		b = appendChildren(b, r.Children)
	}
	return b
}

// splitRef splits a stored Ref into its count, size, flag byte and what
// follows the flag (the children); ok is false when v is too short or
// malformed.
func splitRef(v []byte) (count, size uint64, flags byte, rest []byte, ok bool) {
	c, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, 0, 0, nil, false
	}
	s, m := binary.Uvarint(v[n:])
	if m <= 0 || len(v) < n+m+1 || s > math.MaxInt64 {
		return 0, 0, 0, nil, false
	}
	return c, s, v[n+m], v[n+m+1:], true
}

func decodeRef(d digest.Digest, v []byte) (Ref, error) {
	c, s, f, rest, ok := splitRef(v)
	if !ok {
		return Ref{}, fmt.Errorf("refcount of %s: %w", d, errdef.ErrCorrupt)
	}
	r := Ref{Count: c, Size: int64(s), Expanded: f&refExpanded != 0}
	switch {
	case f&^(refExpanded|refChildren|refUnknown) != 0, f&refChildren != 0 && f&refUnknown != 0,
		f&(refChildren|refUnknown) == 0 && len(rest) != 0, f&refUnknown != 0 && len(rest) == 0:
		return Ref{}, fmt.Errorf("refcount of %s: %w", d, errdef.ErrCorrupt)
	case f&refUnknown != 0:
		r.Unknown = string(rest)
	case f&refChildren != 0:
		var err error
		if r.Children, err = decodeChildren(d, rest); err != nil {
			return Ref{}, err
		}
	}
	return r, nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)
