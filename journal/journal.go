// Package journal reads ocistore's journal (.ocistore/journal.db, a bbolt
// database) for inspection: its schema version, the records of
// transactions that have not finished (none between the transactions of a
// healthy store), and the leases that protect blobs from freeing.
//
// Reading never changes the journal and runs no recovery; it reads a copy
// of the journal as its last commit left it, taken without a lock, so it
// neither waits for a writer nor blocks one. Everything that
// changes the journal does so through package store, under its writer lock:
// the schema is described in docs/DESIGN.md §7.
package journal

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	ij "github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
)

// SchemaVersion is the newest journal schema this build reads and writes.
// A journal of a newer one is refused by every command (ErrJournalNewer).
const SchemaVersion = 4

// This fails to compile when the journal's schema moves on without this
// package.
const _ = uint64(SchemaVersion-ij.SchemaVersion) + uint64(ij.SchemaVersion-SchemaVersion)

// Record is a transaction the journal records before changing index.json:
// the index it replaces and the one it writes, and the blobs it frees.
type Record struct {
	ID       uint64          `json:"id"`
	Op       string          `json:"op"`
	Time     time.Time       `json:"time"`
	OldIndex digest.Digest   `json:"oldIndex"` // index.json's digest when the transaction was planned
	NewIndex digest.Digest   `json:"newIndex"` // the digest of the index.json it writes
	Unlink   []digest.Digest `json:"unlink,omitempty"`
	// Deltas are the refcount changes committed with the record.
	Deltas map[digest.Digest]int64 `json:"deltas,omitempty"`
}

// Lease protects the blobs added to it from freeing until it expires or is
// released (store.Store.Lease).
type Lease struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	Blobs   int       `json:"blobs"` // how many blobs it holds
}

// Contents is what the journal of one layout holds.
type Contents struct {
	// Path is the journal's file: in the layout, or in its shared blob
	// directory.
	Path          string `json:"path"`
	SchemaVersion uint64 `json:"schemaVersion"`
	// Pending are the layout's unfinished transactions, oldest first.
	Pending []Record `json:"pending"`
	// Leases are the leases of the journal (on a shared blob directory,
	// those of every layout sharing it).
	Leases []Lease `json:"leases"`
	// InFlight is true when a writer held the journal as it was read: its
	// pending records may be a transaction in flight, not one a crash
	// interrupted.
	InFlight bool `json:"inFlight"`
}

// Read reads the journal of the layout in dir as its last commit left it,
// without waiting for a writer; only when a writer commits during every
// one of its copies does it wait for one, up to lockTimeout (zero: 30 s).
// A layout ocistore has not adopted has no
// journal: Read returns an error wrapping errdef's not-found sentinel
// (store.ErrNotFound). A journal a newer ocistore wrote is refused with
// store.ErrJournalNewer.
func Read(dir string, lockTimeout time.Duration) (*Contents, error) {
	if lockTimeout == 0 {
		lockTimeout = 30 * time.Second
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	shared, err := protocol.SharedBlobDirOf(abs)
	if err != nil {
		return nil, err
	}
	path, scope := filepath.Join(abs, protocol.JournalFile), ""
	if shared == "" {
		// bbolt opens the file by path: a .ocistore or a journal.db that
		// is a symlink (out of the layout) is refused, never followed.
		fsys, err := fsio.OpenOS(abs)
		if err != nil {
			return nil, err
		}
		bad, detail := protocol.JournalNotRegular(fsys)
		fsys.Close()
		if bad != "" {
			return nil, fmt.Errorf("%s: %w", detail, errdef.ErrCorrupt)
		}
	} else {
		if scope, err = filepath.EvalSymlinks(abs); err != nil {
			return nil, err
		}
		path = filepath.Join(shared, protocol.JournalFile)
	}
	busy, err := ij.Busy(path)
	if err != nil {
		return nil, err
	}
	db, err := ij.Open(path, ij.Options{Snapshot: true, ReadOnly: true, LockTimeout: lockTimeout, Scope: scope})
	if errors.Is(err, errdef.ErrLocked) {
		return nil, fmt.Errorf("layout %s is locked by another process (waited %s for %s): %w", abs, lockTimeout, protocol.JournalFile, err)
	}
	if err != nil {
		return nil, err
	}
	defer db.Close()
	c := &Contents{Path: path, Pending: []Record{}, Leases: []Lease{}, InFlight: busy}
	err = db.View(func(tx *ij.Tx) error {
		c.SchemaVersion = tx.SchemaVersion()
		recs, err := tx.Pending()
		if err != nil {
			return err
		}
		for _, r := range recs {
			c.Pending = append(c.Pending, Record{ID: r.ID, Op: r.Op, Time: r.Time, OldIndex: r.OldIndex, NewIndex: r.NewIndex, Unlink: r.Unlink, Deltas: r.Deltas})
		}
		leases, err := tx.Leases()
		if err != nil {
			return err
		}
		for _, l := range leases {
			blobs, err := tx.LeaseBlobs(l.ID)
			if err != nil {
				return err
			}
			c.Leases = append(c.Leases, Lease{ID: l.ID, Created: l.Created, Expires: l.Expires, Blobs: len(blobs)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return c, nil
}
