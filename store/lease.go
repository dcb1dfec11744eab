package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
)

// Lease protects blobs that nothing references yet: while it has not been
// released and has not expired, no transaction (Delete, Prune) and no GC
// deletes a blob added to it, in this process or any other. A pull writes
// its layers under a lease, tags the manifest, then releases the lease.
//
// Leases are stored in the journal: they survive a restart, and a process
// that knows a lease's ID keeps using it with WithLease. Expired leases are
// swept by the next write (docs/DESIGN.md §8.3).
type Lease struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`

	s *Store
}

type leaseCtxKey struct{}

// WithLease returns a context under which PutBlob, PutManifest and Import
// add every blob they write, or find already present, to the lease id
// (before the blob becomes visible). A lease that does not exist or has
// expired makes them fail with ErrNotFound.
func WithLease(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, leaseCtxKey{}, id)
}

// LeaseFromContext returns the lease id WithLease put in ctx.
func LeaseFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(leaseCtxKey{}).(string)
	return id, ok && id != ""
}

// knownLease is what a handle knows is durable in a lease.
type knownLease struct {
	expires time.Time
	blobs   map[digest.Digest]bool
}

// Lease creates a lease that expires after ttl (which must be positive), in
// one journal commit.
func (s *Store) Lease(ctx context.Context, ttl time.Duration) (*Lease, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("lease: ttl %s: %w", ttl, errdef.ErrInvalidArgument)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	now := s.now()
	l := journal.Lease{ID: hex.EncodeToString(raw[:]), Created: now, Expires: now.Add(ttl)}
	if err := s.journalWrite(ctx, func(tx *journal.Tx) error { return tx.PutLease(l) }); err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	s.leaseMu.Lock()
	if s.leaseMu.known == nil {
		s.leaseMu.known = map[string]*knownLease{}
	}
	s.leaseMu.known[l.ID] = &knownLease{expires: l.Expires, blobs: map[digest.Digest]bool{}}
	s.leaseMu.Unlock()
	s.log.Debug("lease created", attrLease, l.ID, "expires", l.Expires)
	return s.leaseOf(l), nil
}

func (s *Store) leaseOf(l journal.Lease) *Lease {
	return &Lease{ID: l.ID, Created: l.Created, Expires: l.Expires, s: s}
}

// Leases lists the stored leases that have not expired.
func (s *Store) Leases(ctx context.Context) ([]*Lease, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	var out []*Lease
	now := s.now()
	err := s.journalRead(func(tx *journal.Tx) error {
		ls, err := tx.Leases()
		for _, l := range ls {
			if !l.Expired(now) {
				out = append(out, s.leaseOf(l))
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("leases: %w", err)
	}
	return out, nil
}

// Context returns ctx carrying the lease (see WithLease).
func (l *Lease) Context(ctx context.Context) context.Context { return WithLease(ctx, l.ID) }

// Add adds the blobs of descs to the lease, in one commit, whether they are
// in the layout yet or not: a pull can protect every blob of a manifest
// before it looks which ones it has.
func (l *Lease) Add(ctx context.Context, descs ...v1.Descriptor) error {
	ds := make([]digest.Digest, 0, len(descs))
	for _, d := range descs {
		if err := layout.ValidateDigest(d.Digest); err != nil {
			return fmt.Errorf("lease %s: add: %w", l.ID, err)
		}
		ds = append(ds, d.Digest)
	}
	if err := l.s.leaseBlobs(ctx, l.ID, ds); err != nil {
		return fmt.Errorf("lease %s: add: %w", l.ID, err)
	}
	return nil
}

// Renew makes the lease expire ttl from now. An expired lease cannot be
// renewed (it may have been swept, and what it protected deleted).
func (l *Lease) Renew(ctx context.Context, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("lease %s: renew: ttl %s: %w", l.ID, ttl, errdef.ErrInvalidArgument)
	}
	var exp time.Time
	err := l.s.journalWrite(ctx, func(tx *journal.Tx) error {
		cur, err := liveLease(tx, l.ID, l.s.now())
		if err != nil {
			return err
		}
		cur.Expires = l.s.now().Add(ttl)
		exp = cur.Expires
		return tx.PutLease(cur)
	})
	if err != nil {
		return fmt.Errorf("lease %s: renew: %w", l.ID, err)
	}
	l.Expires = exp
	l.s.leaseMu.Lock()
	if k := l.s.leaseMu.known[l.ID]; k != nil {
		k.expires = exp
	}
	l.s.leaseMu.Unlock()
	return nil
}

// Release ends the lease: its blobs are no longer protected (a blob that
// nothing references is then GC's). Releasing a lease that is gone is no
// error.
func (l *Lease) Release(ctx context.Context) error {
	l.s.leaseMu.Lock()
	delete(l.s.leaseMu.known, l.ID)
	l.s.leaseMu.Unlock()
	if err := l.s.journalWrite(ctx, func(tx *journal.Tx) error { return tx.DeleteLease(l.ID) }); err != nil {
		return fmt.Errorf("lease %s: release: %w", l.ID, err)
	}
	l.s.log.Debug("lease released", attrLease, l.ID)
	return nil
}

// liveLease returns the lease id unless it is missing or expired at now.
func liveLease(tx *journal.Tx, id string, now time.Time) (journal.Lease, error) {
	l, ok, err := tx.GetLease(id)
	switch {
	case err != nil:
		return l, err
	case !ok:
		return l, fmt.Errorf("lease %s: %w", id, errdef.ErrNotFound)
	case l.Expired(now):
		return l, fmt.Errorf("lease %s expired at %s: %w", id, l.Expires.Format(time.RFC3339), errdef.ErrNotFound)
	}
	return l, nil
}

// leaseBlobs makes ds durable in the lease id, skipping the commit when
// this handle already made all of them durable in it.
func (s *Store) leaseBlobs(ctx context.Context, id string, ds []digest.Digest) error {
	if err := journal.ValidLeaseID(id); err != nil {
		return err
	}
	now := s.now()
	var need []digest.Digest
	s.leaseMu.Lock()
	k := s.leaseMu.known[id]
	for _, d := range ds {
		if k == nil || !now.Before(k.expires) || !k.blobs[d] {
			need = append(need, d)
		}
	}
	s.leaseMu.Unlock()
	if len(need) == 0 {
		return nil
	}
	var l journal.Lease
	err := s.journalWrite(ctx, func(tx *journal.Tx) error {
		var err error
		if l, err = liveLease(tx, id, now); err != nil {
			return err
		}
		return tx.AddLeaseBlobs(id, need...)
	})
	if err != nil {
		return err
	}
	s.leaseMu.Lock()
	if s.leaseMu.known == nil {
		s.leaseMu.known = map[string]*knownLease{}
	}
	k = s.leaseMu.known[id]
	if k == nil {
		k = &knownLease{blobs: map[digest.Digest]bool{}}
		s.leaseMu.known[id] = k
	}
	k.expires = l.Expires
	for _, d := range need {
		k.blobs[d] = true
	}
	s.leaseMu.Unlock()
	return nil
}

// sweepLeases deletes the leases expired at now, in tx, and returns them.
func (s *Store) sweepLeases(tx *journal.Tx, now time.Time) ([]journal.Lease, error) {
	gone, err := tx.SweepLeases(now)
	if err != nil {
		return nil, fmt.Errorf("sweep leases: %w", err)
	}
	return gone, nil
}

// logSwept reports leases swept by a committed transaction.
func (s *Store) logSwept(gone []journal.Lease) {
	for _, l := range gone {
		s.log.Info("expired lease swept", attrLease, l.ID, "expired", l.Expires)
	}
	if len(gone) == 0 {
		return
	}
	s.leaseMu.Lock()
	for _, l := range gone {
		delete(s.leaseMu.known, l.ID)
	}
	s.leaseMu.Unlock()
}

// journalWrite runs fn in one journal commit under the writer lock, after
// recovery (so that no pending record is left to finish under a lease it
// did not know about). Expired leases are swept in the same commit.
func (s *Store) journalWrite(ctx context.Context, fn func(tx *journal.Tx) error) error {
	return s.withWriter(ctx, sectionLazy, func(db *journal.DB, _ *protocol.State) error {
		var gone []journal.Lease
		err := db.Update(func(tx *journal.Tx) error {
			var err error
			if gone, err = s.sweepLeases(tx, s.now()); err != nil {
				return err
			}
			return fn(tx)
		})
		if err != nil {
			return s.check(err)
		}
		s.logSwept(gone)
		return nil
	})
}

// journalRead runs fn in a read transaction of a copy of the journal as
// its last commit left it (journal.Options.Snapshot): it neither waits for
// a writer of another process nor blocks one. The copy is shared by the
// reads that find the journal at the same commit (journalCopies), so a
// server's reads copy it once per commit, not once per request.
func (s *Store) journalRead(fn func(tx *journal.Tx) error) error {
	// bbolt opens the journal by path: a .ocistore or journal.db that is
	// not what it should be (a symlink) is refused, never followed.
	if bad, detail := protocol.JournalNotRegular(s.lay.FS); bad != "" {
		return fmt.Errorf("%s: %w", detail, errdef.ErrCorrupt)
	}
	c, err := s.copies.acquire(s.journalPath(), func(path string) (*journal.DB, error) {
		return journal.Open(path, journal.Options{Snapshot: true, ReadOnly: true, LockTimeout: s.opts.LockTimeout, Scope: s.lay.Scope})
	})
	if err != nil {
		err = s.lay.Locked(s.opts.LockTimeout, err)
	}
	if errors.Is(err, errdef.ErrNotFound) {
		return nil // a layout not adopted yet (read-only handle): no state
	}
	if err != nil {
		return err
	}
	defer s.copies.release(c)
	return c.db.View(fn)
}

// journalCopies shares one reader's copy of the journal between the reads
// that find the journal at the same commit (its last txid, read from the
// meta pages: a commit changes it).
type journalCopies struct {
	mu  sync.Mutex
	cur *journalCopy
}

type journalCopy struct {
	db    *journal.DB
	txid  uint64
	ino   uint64 // the file's: a rebuilt journal starts its txids again
	refs  int    // reads using it (under journalCopies.mu)
	stale bool   // replaced: closed by its last release
}

// acquire returns the copy for the journal's current commit, opening a new
// one with open when the journal committed since the last (or has no
// commit: then no copy is kept).
func (j *journalCopies) acquire(path string, open func(string) (*journal.DB, error)) (*journalCopy, error) {
	txid := journal.LastTxID(path)
	var ino uint64
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if c := j.cur; c != nil && txid != 0 && c.txid == txid && c.ino == ino {
		c.refs++
		return c, nil
	}
	db, err := open(path)
	if err != nil {
		return nil, err
	}
	// Labelled with the commit seen before the copy: a copy of a later
	// one is only taken again at the next read, never kept as current
	// past its commit.
	c := &journalCopy{db: db, txid: txid, ino: ino, refs: 1}
	if old := j.cur; old != nil {
		old.stale = true
		if old.refs == 0 {
			old.db.Close()
		}
	}
	j.cur = c
	return c, nil
}

func (j *journalCopies) release(c *journalCopy) {
	j.mu.Lock()
	defer j.mu.Unlock()
	c.refs--
	if c.stale && c.refs == 0 {
		c.db.Close()
	}
}

// close closes the current copy once no read uses it.
func (j *journalCopies) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if c := j.cur; c != nil {
		c.stale = true
		if c.refs == 0 {
			c.db.Close()
		}
		j.cur = nil
	}
}

// now is the store's clock.
func (s *Store) now() time.Time { return s.opts.now() }

// importLeaseTTL is the life of the lease an operation takes for itself; it
// is renewed at half-life while the operation runs, and released at its end
// (or, after a crash, expires).
const importLeaseTTL = time.Hour

// heldBlobs protects blobs for the length of one operation.
type heldBlobs struct {
	s       *Store
	lease   *Lease // nil: the caller's lease holds them
	renewed time.Time
}

// holdBlobs puts ds in the lease of ctx, or in a new lease of its own, in
// one commit.
func (s *Store) holdBlobs(ctx context.Context, ds []digest.Digest) (*heldBlobs, error) {
	if id, ok := LeaseFromContext(ctx); ok {
		if err := s.leaseBlobs(ctx, id, ds); err != nil {
			return nil, err
		}
		return &heldBlobs{s: s}, nil
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	now := s.now()
	l := journal.Lease{ID: "op-" + hex.EncodeToString(raw[:]), Created: now, Expires: now.Add(importLeaseTTL)}
	err := s.journalWrite(ctx, func(tx *journal.Tx) error {
		if err := tx.PutLease(l); err != nil {
			return err
		}
		return tx.AddLeaseBlobs(l.ID, ds...)
	})
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	return &heldBlobs{s: s, lease: s.leaseOf(l), renewed: now}, nil
}

// keepAlive renews the operation's own lease when half its life is gone.
func (h *heldBlobs) keepAlive(ctx context.Context) error {
	if h.lease == nil || h.s.now().Before(h.renewed.Add(importLeaseTTL/2)) {
		return nil
	}
	h.renewed = h.s.now()
	return h.lease.Renew(ctx, importLeaseTTL)
}

// release ends the operation's own lease. A failure is logged: the lease
// then expires by itself.
func (h *heldBlobs) release() {
	if h.lease == nil {
		return
	}
	if err := h.lease.Release(context.Background()); err != nil {
		h.s.log.Warn("cannot release an operation's lease; it will expire", attrLease, h.lease.ID, "expires", h.lease.Expires, "err", err)
	}
}

// holdWindow is how long one hold lease takes the holds of (Hold): a new
// one starts each window, and each lives ttl past the last hold it took,
// so that a store holding blobs all day keeps a handful of leases, not
// one per blob.
const holdWindow = 10 * time.Minute

// holdLeasePrefix starts the ID of a hold lease.
const holdLeasePrefix = "hold-"

// Hold keeps the blobs of descs from GC and prune for at least ttl, with
// no lease for the caller to keep or release: they go into a lease the
// store shares between the holds of a time window, extended to end ttl
// from now. One commit. A registry holds what a client uploaded this way
// until a manifest references it.
func (s *Store) Hold(ctx context.Context, ttl time.Duration, descs ...v1.Descriptor) error {
	if ttl <= 0 {
		return fmt.Errorf("hold: ttl %s: %w", ttl, errdef.ErrInvalidArgument)
	}
	ds := make([]digest.Digest, 0, len(descs))
	for _, d := range descs {
		if err := layout.ValidateDigest(d.Digest); err != nil {
			return fmt.Errorf("hold: %w", err)
		}
		ds = append(ds, d.Digest)
	}
	if err := s.journalWrite(ctx, func(tx *journal.Tx) error { return s.hold(tx, ttl, ds) }); err != nil {
		return fmt.Errorf("hold: %w", err)
	}
	return nil
}

// hold adds ds to the hold lease of the current window, in tx.
func (s *Store) hold(tx *journal.Tx, ttl time.Duration, ds []digest.Digest) error {
	now := s.now()
	id := holdLeasePrefix + strconv.FormatInt(now.Truncate(holdWindow).Unix(), 10)
	l, ok, err := tx.GetLease(id)
	if err != nil {
		return err
	}
	if !ok || l.Expired(now) {
		l = journal.Lease{ID: id, Created: now}
	}
	if exp := now.Add(ttl); exp.After(l.Expires) {
		l.Expires = exp
		if err := tx.PutLease(l); err != nil {
			return err
		}
	}
	return tx.AddLeaseBlobs(id, ds...)
}
