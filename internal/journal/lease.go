package journal

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/errdef"
)

// Lease is a stored lease: while it has not expired, the blobs added to it
// are not deleted by a transaction or by GC, whether anything references
// them or not (DESIGN.md §8.3).
type Lease struct {
	ID      string
	Created time.Time
	Expires time.Time
}

// Expired reports whether the lease has ended at now.
func (l Lease) Expired(now time.Time) bool { return !now.Before(l.Expires) }

var (
	kCreated    = []byte("created")
	kExpires    = []byte("expires")
	bLeaseBlobs = []byte("blobs")
)

// MaxLeaseID is the longest lease id accepted.
const MaxLeaseID = 128

// ValidLeaseID checks that id can name a lease: 1 to MaxLeaseID printable
// ASCII characters.
func ValidLeaseID(id string) error {
	if id == "" || len(id) > MaxLeaseID {
		return fmt.Errorf("lease id of %d bytes (want 1 to %d): %w", len(id), MaxLeaseID, errdef.ErrInvalidArgument)
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= 0x20 || id[i] >= 0x7f {
			return fmt.Errorf("lease id %q: not printable ASCII: %w", id, errdef.ErrInvalidArgument)
		}
	}
	return nil
}

// leases returns the leases bucket, nil in a read-only version 1 database.
func (t *Tx) leases() *bolt.Bucket { return t.tx.Bucket(bLeases) }

// PutLease creates the lease l or updates its times (its blobs are kept).
func (t *Tx) PutLease(l Lease) error {
	if err := ValidLeaseID(l.ID); err != nil {
		return err
	}
	lb := t.leases()
	if lb == nil {
		return fmt.Errorf("no leases bucket: %w", errdef.ErrReadOnly)
	}
	b, err := lb.CreateBucketIfNotExists([]byte(l.ID))
	if err != nil {
		return err
	}
	if err := b.Put(kCreated, i64(l.Created.UnixNano())); err != nil {
		return err
	}
	if err := b.Put(kExpires, i64(l.Expires.UnixNano())); err != nil {
		return err
	}
	_, err = b.CreateBucketIfNotExists(bLeaseBlobs)
	return err
}

func decodeLease(id []byte, b *bolt.Bucket) (Lease, error) {
	c, e := b.Get(kCreated), b.Get(kExpires)
	if len(c) != 8 || len(e) != 8 || b.Bucket(bLeaseBlobs) == nil {
		return Lease{}, fmt.Errorf("lease %q: %w", id, errdef.ErrCorrupt)
	}
	return Lease{
		ID:      string(id),
		Created: time.Unix(0, int64(binary.BigEndian.Uint64(c))).UTC(),
		Expires: time.Unix(0, int64(binary.BigEndian.Uint64(e))).UTC(),
	}, nil
}

// GetLease returns the lease id, and whether it exists.
func (t *Tx) GetLease(id string) (Lease, bool, error) {
	lb := t.leases()
	if lb == nil {
		return Lease{}, false, nil
	}
	b := lb.Bucket([]byte(id))
	if b == nil {
		return Lease{}, false, nil
	}
	l, err := decodeLease([]byte(id), b)
	return l, err == nil, err
}

// Leases returns every stored lease, expired or not, in id order.
func (t *Tx) Leases() ([]Lease, error) {
	lb := t.leases()
	if lb == nil {
		return nil, nil
	}
	var out []Lease
	err := lb.ForEachBucket(func(k []byte) error {
		l, err := decodeLease(k, lb.Bucket(k))
		if err != nil {
			return err
		}
		out = append(out, l)
		return nil
	})
	return out, err
}

// DeleteLease removes a lease and its blob list; a missing lease is no error.
func (t *Tx) DeleteLease(id string) error {
	lb := t.leases()
	if lb == nil || lb.Bucket([]byte(id)) == nil {
		return nil
	}
	return lb.DeleteBucket([]byte(id))
}

// AddLeaseBlobs adds blobs to the lease id, which must exist.
func (t *Tx) AddLeaseBlobs(id string, ds ...digest.Digest) error {
	lb := t.leases()
	var b *bolt.Bucket
	if lb != nil {
		b = lb.Bucket([]byte(id))
	}
	if b == nil {
		return fmt.Errorf("lease %q: %w", id, errdef.ErrNotFound)
	}
	blobs := b.Bucket(bLeaseBlobs)
	if blobs == nil {
		return fmt.Errorf("lease %q: %w", id, errdef.ErrCorrupt)
	}
	for _, d := range ds {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("lease %q: blob %q: %w", id, string(d), errdef.ErrInvalidDigest)
		}
	}
	if len(ds) > 1 && !slices.IsSorted(ds) {
		// In key order, bbolt appends to its pages instead of splitting
		// them at random: a prune's lingering blobs (tens of thousands)
		// go in several times faster.
		ds = slices.Clone(ds)
		slices.Sort(ds)
	}
	for _, d := range ds {
		if err := blobs.Put([]byte(d), nil); err != nil {
			return err
		}
	}
	return nil
}

// UnleaseBlob removes d from every lease that holds it.
func (t *Tx) UnleaseBlob(d digest.Digest) error {
	lb := t.leases()
	if lb == nil {
		return nil
	}
	return lb.ForEachBucket(func(id []byte) error {
		blobs := lb.Bucket(id).Bucket(bLeaseBlobs)
		if blobs == nil {
			return nil
		}
		return blobs.Delete([]byte(d)) // a key it does not hold: no-op
	})
}

// LeaseBlobs returns the blobs of the lease id, in digest order.
func (t *Tx) LeaseBlobs(id string) ([]digest.Digest, error) {
	lb := t.leases()
	if lb == nil || lb.Bucket([]byte(id)) == nil {
		return nil, fmt.Errorf("lease %q: %w", id, errdef.ErrNotFound)
	}
	blobs := lb.Bucket([]byte(id)).Bucket(bLeaseBlobs)
	if blobs == nil {
		return nil, fmt.Errorf("lease %q: %w", id, errdef.ErrCorrupt)
	}
	var out []digest.Digest
	err := blobs.ForEach(func(k, _ []byte) error {
		out = append(out, digest.Digest(k))
		return nil
	})
	return out, err
}

// Leased returns the blobs that leases not yet expired at now protect.
func (t *Tx) Leased(now time.Time) (map[digest.Digest]bool, error) {
	ls, err := t.Leases()
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest]bool{}
	for _, l := range ls {
		if l.Expired(now) {
			continue
		}
		ds, err := t.LeaseBlobs(l.ID)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			out[d] = true
		}
	}
	return out, nil
}

// SweepLeases deletes the leases expired at now and returns them.
func (t *Tx) SweepLeases(now time.Time) ([]Lease, error) {
	ls, err := t.Leases()
	if err != nil {
		return nil, err
	}
	var gone []Lease
	for _, l := range ls {
		if !l.Expired(now) {
			continue
		}
		if err := t.DeleteLease(l.ID); err != nil {
			return nil, err
		}
		gone = append(gone, l)
	}
	return gone, nil
}

func i64(v int64) []byte { return u64(uint64(v)) }
