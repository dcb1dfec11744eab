package journal

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
)

// Damaged is a journal held under its exclusive lock (the layout's writer
// lock) and judged under it, for a rebuild: no writer can commit to it, nor
// rebuild it, until Close. The caller replaces it (renaming a new journal
// over its path) before it closes it.
type Damaged struct {
	// Why says what is wrong with it: bbolt refuses to open it, its check
	// finds errors, or a pending record cannot be decoded; it wraps
	// ErrCorrupt, or ErrJournalNewer for a journal a newer ocistore
	// wrote. Nil: the journal is sound, and there is nothing to rebuild.
	Why error
	// Salvaged is what could be read from it (nil: nothing; also nil when
	// Why is).
	Salvaged *Salvaged

	path string
	f    *os.File // the journal, locked
	mem  *os.File // a copy of its bytes
}

// LockDamaged takes the exclusive lock of the journal at path, waiting up
// to lockTimeout (zero: forever; negative: not at all, ErrLocked), and
// judges the file under it. An open that found the journal damaged
// (ErrCorrupt) calls it before it rebuilds: the journal another process
// rebuilt meanwhile, or one a commit in progress made look damaged to a
// reader without the lock, is then found sound (Why nil), and the caller
// opens it again instead. A missing journal is fs.ErrNotExist.
func LockDamaged(path string, lockTimeout time.Duration) (*Damaged, error) {
	if lockTimeout < 0 {
		lockTimeout = time.Nanosecond
	}
	f, err := lockFile(path, os.O_RDWR, true, lockTimeout)
	if err != nil {
		return nil, classifyOpenErr(path, err)
	}
	mem, err := fsio.CopyToMem(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: copy: %w", path, err)
	}
	d := &Damaged{path: path, f: f, mem: mem}
	if err := d.judge(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// judge opens a copy of the journal as a writer's open would, then checks
// it as fsck does, and salvages it when it is damaged.
func (d *Damaged) judge() error {
	cp, err := fsio.DupFile(d.mem)
	if err != nil {
		return err
	}
	db, err := Open(d.path, Options{file: cp})
	switch {
	case err == nil:
		if errs := db.Check(); len(errs) > 0 {
			d.Why = fmt.Errorf("journal %s: %w: bbolt check: %w", d.path, errdef.ErrCorrupt, errors.Join(errs...))
		} else if perr := db.View(func(tx *Tx) error { _, err := tx.Pending(); return err }); perr != nil {
			d.Why = perr
		}
		if d.Why != nil {
			d.Salvaged = db.Salvage()
		}
		db.Close()
		return nil
	case errors.Is(err, errdef.ErrCorrupt), errors.Is(err, errdef.ErrJournalNewer):
		d.Why = err
	default:
		return err
	}
	if cp, err = fsio.DupFile(d.mem); err != nil {
		return err
	}
	if _, err := cp.Seek(0, io.SeekStart); err != nil {
		cp.Close()
		return err
	}
	d.Salvaged, _ = salvageFrom(cp, d.path) // nothing readable: nil
	return nil
}

// WriteTo writes the journal's bytes, as they were when it was judged, to
// w: the copy kept aside for a person to look at.
func (d *Damaged) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, io.NewSectionReader(d.mem, 0, 1<<62))
}

// Close releases the lock and the copy.
func (d *Damaged) Close() error {
	return errors.Join(d.mem.Close(), d.f.Close())
}
