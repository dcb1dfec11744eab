package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/refcount"
)

// Blob is a blob a transaction freed.
type Blob struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// Result describes a committed transaction.
type Result struct {
	Txn uint64 `json:"txn,omitempty"` // journal record id; 0 when nothing changed
	// Freed are the blobs the transaction removed from the layout, in the
	// order it removed them. A transaction that frees many (64 or more)
	// moves them into .ocistore/trash and returns; the handle unlinks
	// them in the background, and their space is back once
	// Store.WaitReclaimed (or Close) returns.
	Freed      []Blob `json:"freed"`
	BytesFreed int64  `json:"bytesFreed"`
	// Referrers are the entries deleted with their subject (Delete).
	Referrers []Image `json:"referrers,omitempty"`
	// Pinned, when set, says why the blobs this transaction would have
	// freed stay on disk (Kept): a manifest of the layout cannot be
	// followed, so what it references is unknown, or the journal was
	// rebuilt without its leases (see RebuildPin). They are orphans for a
	// GC once freeing is allowed again.
	Pinned string `json:"pinned,omitempty"`
	Kept   []Blob `json:"kept,omitempty"`
	// Lingering are the blobs the transaction freed but keeps for a while
	// (Policy.Linger), in a lease; GC frees them once it has ended.
	Lingering []Blob `json:"lingering,omitempty"`
}

// txn is what a plan may read: the journal transaction the record will be
// committed in (its refcounts, image metadata and leases describe the
// current index), a loader of manifests cached for the transaction, and
// the time.
type txn struct {
	tx       *journal.Tx
	load     refcount.Loader
	prefetch func([]v1.Descriptor) // warms load for a batch of roots
	now      time.Time
	// configs are image configs read ahead (prefetchConfigs), by digest.
	configs map[digest.Digest]*imageConfig
	// linger, set by a plan, keeps what the transaction frees in a lease
	// of its own for that long instead of unlinking it (Policy.Linger).
	linger time.Duration
	// inUse reports the blobs this handle is writing a manifest of, or
	// about to reference (Store.use): never freed meanwhile.
	inUse func(digest.Digest) bool
}

// newTxn starts what a plan reads in tx.
func (s *Store) newTxn(tx *journal.Tx) *txn {
	return s.newTxnWith(tx, newManifestCache(layout.LoadChildren(s.lay.FS)))
}

// newTxnWith is newTxn reading manifests through mc (one the caller
// filled already).
func (s *Store) newTxnWith(tx *journal.Tx, mc *manifestCache) *txn {
	prefetch := func(ds []v1.Descriptor) {
		// The refcounts of manifests already live record their children:
		// only the others are read.
		var read []v1.Descriptor
		for _, d := range ds {
			if !tx.ChildrenRecorded(d.Digest) {
				read = append(read, d)
			}
		}
		mc.Prefetch(read)
	}
	return &txn{tx: tx, load: mc.Load, prefetch: prefetch, now: s.now(), inUse: s.inUse}
}

// planFunc computes the new index entries from the current ones. It must not
// modify cur, nor write to t.tx.
type planFunc func(cur *layout.Index, t *txn) ([]layout.Entry, error)

// errNoChange rolls back a transaction whose plan changes nothing.
var errNoChange = errors.New("no change")

// update runs one journal transaction (docs/DESIGN.md §4.2): plan
// under the writer lock, journal commit, index.json, unlinks, clear.
func (s *Store) update(ctx context.Context, op string, plan planFunc) (*Result, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := s.wmu.LockContext(ctx); err != nil {
		return nil, err
	}
	defer s.wmu.Unlock()
	defer s.lockedAt(start)()
	c := &change{ctx: ctx, op: op, plan: plan}
	s.commit(ctx, []*change{c})
	return c.res, c.err
}

// change is one caller's part of a transaction.
type change struct {
	ctx  context.Context
	op   string
	plan planFunc
	res  *Result
	err  error
	done chan struct{} // closed when res or err is set (group commit)
	// state is changeWaiting, changeClaimed or changeWithdrawn (claim).
	state atomic.Int32
}

// errSolo rolls back a group whose member at index solo failed while its
// refcounts were applied: the others are retried without it, then it runs
// alone (so that its outcome is the one it would have had alone).
type errSolo struct{ solo int }

func (e errSolo) Error() string { return fmt.Sprintf("change %d must run alone", e.solo) }

// commit runs changes, in order, as ONE journal transaction: each plan sees
// the index the previous ones made and the refcounts they left; a plan that
// fails changes nothing and gets its error. The caller holds wmu.
func (s *Store) commit(ctx context.Context, changes []*change) {
	for len(changes) > 0 {
		solo := -1
		err := s.commitOnce(ctx, changes)
		var es errSolo
		if errors.As(err, &es) {
			solo = es.solo
		} else if err != nil {
			for _, c := range changes {
				if c.res == nil && c.err == nil {
					c.err = err
				}
			}
		}
		if solo < 0 {
			return
		}
		rest := append(append([]*change(nil), changes[:solo]...), changes[solo+1:]...)
		for _, c := range rest {
			c.res, c.err = nil, nil
		}
		s.commit(ctx, rest)
		changes = changes[solo : solo+1]
	}
}

// commitOnce is one attempt of commit; errSolo asks for another. It is the
// protocol's forward path (docs/DESIGN.md §4.2): plan and journal in one
// bbolt transaction, then apply (index.json, unlinks, clear), then the
// callers' results.
func (s *Store) commitOnce(ctx context.Context, changes []*change) error {
	if err := s.writable(); err != nil { // closed or poisoned while we waited
		return err
	}
	var live []*change
	for _, c := range changes {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return nil
	}
	start := time.Now()
	// ctx ends when no caller waits any more (batchContext; a lone
	// caller's own context).
	db, cur, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	// Under the lock, each change is claimed (its caller then waits for
	// this commit) or was withdrawn by a caller whose context ended.
	claimed := live[:0:0]
	for _, c := range live {
		if c.claim() {
			claimed = append(claimed, c)
		}
	}
	if live = claimed; len(live) == 0 {
		return nil
	}

	p := &planned{cur: cur}
	err = db.Update(func(tx *journal.Tx) error {
		if err := s.plan(tx, live, changes, p); err != nil {
			return err
		}
		return s.journal(tx, p)
	})
	if err != nil {
		if aerr := p.prepared.Abort(); aerr != nil {
			s.log.Warn("temp index.json not removed; recovery removes it", "err", aerr)
		}
		return s.failed(live, err)
	}
	s.logSwept(p.swept)
	s.flushedLastUse(p.used)
	crash.Point(crash.TxnJournaled)
	present, err := s.apply(db, p)
	if err != nil {
		return s.check(err)
	}
	s.results(live, p, present, start)
	return nil
}

// planned is a transaction between its plan and its results.
type planned struct {
	cur       *protocol.State // the layout it starts from
	rec       journal.Record
	freed     []v1.Descriptor
	lingering []v1.Descriptor           // freed, but kept in a lease for a while (txn.linger)
	owner     map[digest.Digest]*change // who freed each blob
	swept     []journal.Lease
	used      map[digest.Digest]time.Time
	next      *layout.Index
	newBytes  []byte
	newDigest digest.Digest
	hasher    *layout.IndexHasher // for the transactions after this one
	ops       []string
	deltas    map[digest.Digest]int64 // the refcount changes, recorded with the record
	prepared  *fsio.Prepared          // the new index.json, written before the commit
	pinned    string                  // why nothing is freed (pinReason)
	kept      []v1.Descriptor         // what would have been freed but for it
}

// plan is step 1, inside the bbolt transaction: each change's plan on the
// index the previous ones made, the refcounts they change, and what they
// free (not what a live lease holds, nothing while a closure is unknown).
// errNoChange when nothing changes; errSolo when a change of a group must
// run alone.
func (s *Store) plan(tx *journal.Tx, live, changes []*change, p *planned) error {
	t := s.newTxn(tx)
	var err error
	if p.swept, err = s.sweepLeases(tx, t.now); err != nil {
		return err
	}
	if p.used, err = s.flushLastUse(tx); err != nil {
		return err
	}
	cur := p.cur
	c := &refcount.Counter{T: tx, Load: t.load, Present: s.present}
	prev, freedBy, err := planChanges(t, c, live, changes, p)
	if err != nil {
		return err
	}
	if len(p.ops) == 0 || sameEntries(cur.Index.Entries, prev) {
		return errNoChange // every plan failed, or none changed an entry
	}
	p.next = cur.Index.With(prev)
	p.newBytes = p.next.Marshal()
	p.newDigest, p.hasher = s.snap.Load().hasher.Sum(p.newBytes)
	if p.newDigest == cur.Digest {
		return errNoChange
	}
	if err := planFreed(t, c, freedBy, len(live) > 1, p); err != nil {
		return err
	}
	p.deltas = c.Deltas
	added, removed := diffRoots(cur.Index.Entries, prev)
	return s.trackImages(t, cur.Digest, p.newDigest, prev, added, removed)
}

// planChanges runs each change's plan on the index the previous ones made
// and counts what it adds and removes. It returns the entries of the new
// index and, for each blob c freed (by index), the change that freed it.
func planChanges(t *txn, c *refcount.Counter, live, changes []*change, p *planned) ([]layout.Entry, []*change, error) {
	var freedBy []*change
	p.ops = p.ops[:0]
	prev := p.cur.Index.Entries
	for _, ch := range live {
		ch.err = nil
		entries, err := ch.plan(p.cur.Index.With(prev), t)
		if err != nil {
			if len(live) == 1 {
				return nil, nil, err
			}
			ch.err = err // its plan changed nothing: the others go on
			continue
		}
		added, removed := diffRoots(prev, entries)
		t.prefetch(append(added[:len(added):len(added)], removed...))
		from := len(c.Freed)
		// An image is a manifest, its config and a few layers.
		c.Reserve(4 * (len(added) + len(removed)))
		for _, d := range added {
			if err = c.Inc(d); err != nil {
				break
			}
		}
		for _, d := range removed {
			if err != nil {
				break
			}
			err = c.Dec(d)
		}
		if err != nil {
			if len(live) == 1 {
				return nil, nil, err
			}
			return nil, nil, errSolo{solo: indexOf(changes, ch)}
		}
		for range c.Freed[from:] {
			freedBy = append(freedBy, ch)
		}
		prev = entries
		p.ops = append(p.ops, ch.op)
	}
	return prev, freedBy, nil
}

// planFreed decides what the transaction frees: what its changes freed,
// but a blob one change freed and a later one (of a group) uses again, a
// blob a live lease holds (until it ends: GC), and anything at all while a
// closure is unknown (pinned: p.kept).
func planFreed(t *txn, c *refcount.Counter, freedBy []*change, group bool, p *planned) error {
	var gone []v1.Descriptor
	p.owner = make(map[digest.Digest]*change, len(c.Freed))
	for i, f := range c.Freed {
		p.owner[f.Digest] = freedBy[i] // the last change to free it
	}
	seen := make(map[digest.Digest]bool, len(c.Freed))
	for _, f := range c.Freed {
		if seen[f.Digest] {
			continue
		}
		seen[f.Digest] = true
		if group {
			r, err := t.tx.GetRef(f.Digest)
			if err != nil {
				return err
			}
			if r.Count > 0 {
				continue
			}
		}
		gone = append(gone, f)
	}
	var err error
	if p.freed, err = withoutLeased(t.tx, gone, t.now); err != nil {
		return err
	}
	if t.inUse != nil {
		p.freed = slices.DeleteFunc(p.freed, func(f v1.Descriptor) bool { return t.inUse(f.Digest) })
	}
	if len(p.freed) > 0 {
		if p.pinned = pinReason(t.tx, t.now); p.pinned != "" {
			p.kept, p.freed = p.freed, nil
		}
	}
	if t.linger > 0 && len(p.freed) > 0 {
		return lingerFreed(t, p)
	}
	return nil
}

// lingerFreed puts what the transaction frees in a new lease that ends
// t.linger from now, in the transaction: nothing is unlinked now, and GC
// frees the blobs once the lease has ended (unless something references
// them again by then).
func lingerFreed(t *txn, p *planned) error {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	l := journal.Lease{ID: lingerLeasePrefix + hex.EncodeToString(raw[:]), Created: t.now, Expires: t.now.Add(t.linger)}
	if err := t.tx.PutLease(l); err != nil {
		return err
	}
	ds := make([]digest.Digest, len(p.freed))
	for i, f := range p.freed {
		ds[i] = f.Digest
	}
	if err := t.tx.AddLeaseBlobs(l.ID, ds...); err != nil {
		return err
	}
	p.lingering, p.freed = p.freed, nil
	return nil
}

// lingerLeasePrefix starts the ID of a lease that holds what a
// transaction freed for a while (Policy.Linger).
const lingerLeasePrefix = "linger-"

// journal is step 2, in the same bbolt transaction: the record (what it
// frees, the new index's bytes) and the new index.json, written and synced
// under a temp name before the commit, so that a full disk or a failed
// write fails the transaction while nothing is committed: an error means
// nothing changed.
func (s *Store) journal(tx *journal.Tx, p *planned) error {
	p.rec = journal.Record{Op: groupOp(p.ops), Time: time.Now().UTC(), OldIndex: p.cur.Digest, NewIndex: p.newDigest, Deltas: p.deltas}
	for _, f := range p.freed {
		p.rec.Unlink = append(p.rec.Unlink, f.Digest)
	}
	var base []byte
	if tx.IndexDigest() == p.cur.Digest {
		base = p.cur.Bytes // stored as a delta against it
	}
	var err error
	p.prepared, err = protocol.Journal(tx, s.lay.FS, &p.rec, p.newBytes, base)
	return err
}

// failed settles a transaction that committed nothing: errNoChange is a
// success that changed nothing; a single change gets its error; a group
// returns it (or errSolo) for commit to share out or retry.
func (s *Store) failed(live []*change, err error) error {
	if errors.Is(err, errNoChange) {
		for _, c := range live {
			if c.err == nil {
				c.res = &Result{}
			}
		}
		return nil
	}
	var es errSolo
	if errors.As(err, &es) {
		return err
	}
	err = s.check(err)
	if len(live) == 1 {
		live[0].err = err
		return nil
	}
	return err
}

// apply is steps 3 to 5 (protocol.Apply): index.json renamed into place,
// the freed blobs unlinked or trashed, the record cleared. It returns the
// freed blobs that were on disk to unlink (a foreign layer never was).
func (s *Store) apply(db *journal.DB, p *planned) (map[digest.Digest]bool, error) {
	byPath := make(map[string]digest.Digest, len(p.freed))
	for _, f := range p.freed {
		byPath[layout.BlobPath(f.Digest)] = f.Digest
	}
	present := make(map[digest.Digest]bool, len(p.freed))
	env := s.env()
	env.Unlinked = func(path string) { present[byPath[path]] = true }
	stamp, err := protocol.Apply(env, db, &p.rec, p.prepared, p.cur)
	if err != nil {
		return nil, err
	}
	s.snap.Store(&snapshot{ix: p.next, raw: p.newBytes, digest: p.newDigest, stamp: stamp, hasher: p.hasher})
	return present, nil
}

// results gives each change its result: its transaction, what it freed
// (what was on disk) and what a pin kept.
func (s *Store) results(live []*change, p *planned, present map[digest.Digest]bool, start time.Time) {
	for _, c := range live {
		if c.err == nil {
			c.res = &Result{Txn: p.rec.ID}
		}
	}
	for _, f := range p.kept {
		res := p.owner[f.Digest].res
		res.Pinned = p.pinned
		res.Kept = append(res.Kept, Blob{Digest: f.Digest.String(), Size: f.Size})
	}
	if p.pinned != "" {
		s.log.Warn("transaction freed nothing", "op", p.rec.Op, attrTxn, p.rec.ID, "kept", len(p.kept), "why", p.pinned)
	}
	for _, f := range p.lingering {
		res := p.owner[f.Digest].res
		res.Lingering = append(res.Lingering, Blob{Digest: f.Digest.String(), Size: f.Size})
	}
	var bytes int64
	for _, f := range p.freed {
		if !present[f.Digest] {
			continue // never on disk (a foreign layer): nothing was freed
		}
		res := p.owner[f.Digest].res
		res.Freed = append(res.Freed, Blob{Digest: f.Digest.String(), Size: f.Size})
		res.BytesFreed += f.Size
		bytes += f.Size
	}
	s.log.Debug("transaction committed", "op", p.rec.Op, attrTxn, p.rec.ID, "changes", len(p.ops), "freed", len(p.freed), "bytes", bytes, "took", time.Since(start))
}

// sameEntries reports whether a and b are the same entries, byte for byte:
// then a transaction has nothing to commit (and index.json written by
// another tool is not rewritten in ocistore's form for nothing).
func sameEntries(a, b []layout.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i].Raw, b[i].Raw) {
			return false
		}
	}
	return true
}

func indexOf(changes []*change, c *change) int {
	for i, x := range changes {
		if x == c {
			return i
		}
	}
	return -1
}

// groupOp names a transaction of several changes in its journal record.
func groupOp(ops []string) string {
	if len(ops) == 1 {
		return ops[0]
	}
	const show = 4
	out := fmt.Sprintf("group of %d: %s", len(ops), strings.Join(ops[:min(show, len(ops))], "; "))
	if len(ops) > show {
		out += fmt.Sprintf("; and %d more", len(ops)-show)
	}
	return out
}

// updateGrouped is update for the small changes many goroutines make at
// once (Tag, Untag, Delete): calls that arrive while a transaction runs are
// queued, and the next writer to get the lock commits them all in one
// transaction (group commit, in the spirit of bbolt's Batch, with no added
// delay: an uncontended call runs alone at once). Each caller gets its own
// result: its error when its plan fails (the others still commit), the
// blobs its change freed.
func (s *Store) updateGrouped(ctx context.Context, op string, plan planFunc) (*Result, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	c := &change{ctx: ctx, op: op, plan: plan, done: make(chan struct{})}
	s.group.Lock()
	s.group.queue = append(s.group.queue, c)
	s.group.Unlock()

	// Every queued change has its caller here or leading: whoever gets wmu
	// commits the whole queue, so no change waits for a leader that left.
	// A caller whose context ends while it waits withdraws its change
	// (unless a leader holding the lock claimed it) and returns.
	start := time.Now()
	if err := s.wmu.LockContext(ctx); err != nil {
		return c.withdraw()
	}
	s.group.Lock()
	batch := s.group.queue
	s.group.queue = nil
	s.group.Unlock()
	if len(batch) == 0 {
		s.wmu.Unlock() // a leader took c
	} else {
		// The commit runs for the whole batch: it goes on when this
		// caller leaves, and waits for the lock as long as any caller
		// of the batch does.
		bctx, stop := batchContext(batch)
		released := s.lockedAt(start)
		go func() {
			defer s.wmu.Unlock()
			defer released()
			defer stop()
			s.commit(bctx, batch)
			for _, b := range batch {
				close(b.done)
			}
		}()
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return c.withdraw()
	}
}

// manifestCache remembers what load returned for each manifest, for the
// length of one transaction (a plan and the refcounts read the same ones);
// Prefetch fills it on every core.
type manifestCache struct {
	load refcount.Loader
	mu   sync.Mutex
	m    map[manifestKey]manifestResult
}

type manifestKey struct {
	d    digest.Digest
	size int64 // a descriptor with another size must fail as it would uncached
}

type manifestResult struct {
	c   layout.Children
	err error
}

func newManifestCache(load refcount.Loader) *manifestCache {
	return &manifestCache{load: load, m: map[manifestKey]manifestResult{}}
}

// Load returns what load returns for d, reading it once.
func (c *manifestCache) Load(d v1.Descriptor) (layout.Children, error) {
	k := manifestKey{d.Digest, d.Size}
	c.mu.Lock()
	r, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return r.c, r.err
	}
	kids, err := c.load(d)
	c.mu.Lock()
	c.m[k] = manifestResult{kids, err}
	c.mu.Unlock()
	return kids, err
}

// prefetchMin is the batch below which reading manifests in parallel is
// not worth its goroutines.
const prefetchMin = 64

// Prefetch reads the manifests among ds (the roots a batch adds or
// removes) in parallel, so that the refcount walk that follows, which is
// sequential, finds them parsed. Errors are cached, to be met by the walk
// where it would have met them.
func (c *manifestCache) Prefetch(ds []v1.Descriptor) {
	forEachManifest(ds, func(d v1.Descriptor) { _, _ = c.Load(d) })
}

// forEachManifest calls fn for each root of ds that is read for children
// (layout.Parsed), on every core; nothing for fewer than prefetchMin or on
// one core (the caller's sequential work then reads them).
func forEachManifest(ds []v1.Descriptor, fn func(v1.Descriptor)) {
	workers := runtime.GOMAXPROCS(0)
	if len(ds) < prefetchMin || workers < 2 {
		return
	}
	next := make(chan v1.Descriptor)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for d := range next {
				fn(d)
			}
		})
	}
	for _, d := range ds {
		if layout.Parsed(d, true) {
			next <- d
		}
	}
	close(next)
	wg.Wait()
}

// withoutLeased returns freed without the blobs that leases live at now hold.
func withoutLeased(tx *journal.Tx, freed []v1.Descriptor, now time.Time) ([]v1.Descriptor, error) {
	if len(freed) == 0 {
		return nil, nil
	}
	leased, err := tx.Leased(now)
	if err != nil || len(leased) == 0 {
		return freed, err
	}
	out := make([]v1.Descriptor, 0, len(freed))
	for _, f := range freed {
		if !leased[f.Digest] {
			out = append(out, f)
		}
	}
	return out, nil
}

// present checks that a blob that becomes referenced is on disk with the
// right size. Descriptors with URLs (foreign layers) may be absent.
func (s *Store) present(d v1.Descriptor) error {
	p := layout.BlobPath(d.Digest)
	fi, err := s.lay.FS.Lstat(p)
	if err != nil {
		if len(d.URLs) > 0 && errorsIsNotExist(err) {
			return nil
		}
		return fmt.Errorf("blob %s (%s): %w", d.Digest, p, errdef.ErrMissingDependency)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("blob %s (%s) is not a regular file: %w", d.Digest, p, errdef.ErrCorrupt)
	}
	if fi.Size() != d.Size {
		return fmt.Errorf("blob %s (%s): %d bytes on disk, descriptor says %d: %w", d.Digest, p, fi.Size(), d.Size, errdef.ErrSizeMismatch)
	}
	// The transaction references it from now on: its name must outlive a
	// power cut, whoever renamed it in.
	return s.durableBlobName(p, fi)
}

func errorsIsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// diffRoots compares two entry lists as multisets of root descriptors.
func diffRoots(old, new []layout.Entry) (added, removed []v1.Descriptor) {
	// Plans keep the order of the entries they keep: skip the common prefix
	// and suffix, so that a change of one entry costs no map of them all.
	p := 0
	for p < len(old) && p < len(new) && old[p].Desc.Digest == new[p].Desc.Digest {
		p++
	}
	q := 0
	for q < len(old)-p && q < len(new)-p && old[len(old)-1-q].Desc.Digest == new[len(new)-1-q].Desc.Digest {
		q++
	}
	old, new = old[p:len(old)-q], new[p:len(new)-q]
	count := make(map[digest.Digest]int, len(old))
	for _, e := range old {
		count[e.Desc.Digest]++
	}
	for _, e := range new {
		k := e.Desc.Digest
		if count[k] > 0 {
			count[k]--
			continue
		}
		added = append(added, e.Desc)
	}
	for _, e := range old {
		k := e.Desc.Digest
		if count[k] > 0 {
			count[k]--
			removed = append(removed, e.Desc)
		}
	}
	return added, removed
}
