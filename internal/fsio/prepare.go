package fsio

import (
	"errors"
	"fmt"
	"io/fs"
	"path"

	"github.com/ocistore/ocistore/internal/crash"
)

// Prepared is a file written and synced under a temp name in the layout
// root, not yet renamed over its final name. It splits ReplaceFile in two,
// so that the part that needs space and can fail for want of it (writing
// and syncing the data) runs before a journal commit, and the part after
// the commit is a rename, which needs none (DESIGN.md §4.2, steps 2 and 3).
type Prepared struct {
	fsys FS
	tmp  string
	name string
}

// PrepareFile writes data to a new temp file in the layout root, named
// "."+base(name)+"-"+suffix (recovery removes such leftovers), and syncs
// it for purpose (see SyncFileFor). On error nothing is left.
func PrepareFile(fsys FS, name string, data []byte, purpose string) (*Prepared, error) {
	f, err := fsys.CreateTemp(".", "."+path.Base(name)+"-")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	p := &Prepared{fsys: fsys, tmp: f.Name(), name: name}
	_, err = f.Write(data)
	crash.Point(crash.IndexTempWritten)
	if err == nil {
		err = SyncFileFor(fsys, purpose, f)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		_ = fsys.Remove(p.tmp)
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	return p, nil
}

// Commit renames the prepared file over its name. The rename is durable
// once the root is synced.
func (p *Prepared) Commit() error {
	if err := p.fsys.Rename(p.tmp, p.name); err != nil {
		return fmt.Errorf("rename %s over %s: %w", p.tmp, p.name, err)
	}
	return nil
}

// Abort removes the prepared file (a transaction that did not commit).
func (p *Prepared) Abort() error {
	if p == nil {
		return nil
	}
	if err := p.fsys.Remove(p.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p.tmp, err)
	}
	return nil
}
