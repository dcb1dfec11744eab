package protocol

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/recovery"
)

// Owners of temp and trash files (docs/DESIGN.md §12).
//
// An ingest's temp file in IngestDir, and the files a transaction puts in
// TrashDir, are their writer's to remove for as long as it lives: a
// cleaner (recovery, fsck) must tell a writer that is gone from one that
// is alive, in another process, another PID namespace (a container that
// shares the layout) or on another host. Each writer (a Store handle,
// from its first such file on) is an owner (fsio.Owner): it holds an
// exclusive flock on OwnersDir/<token> while it lives and names its files
// TempPrefix(token)+"...". The owner of a file is gone when the lock of
// its owner file is free (a cleaner that takes it holds it while it
// removes the owner's files, then the owner file), or when there is no
// owner file (the owner makes it and checks it is locked before it names a
// file after it, and keeps it as long as it has files; tokens are never
// used twice). A file that cannot be judged (a lock that fails otherwise,
// a file system without locks) is kept.
//
// Names without a token (older versions named these files after their
// process ID, which another PID namespace cannot check; or a name ocistore
// never made) are left for LegacyAge after their last modification, then
// removed: an older version writes its ingest temp file as the data comes
// and unlinks its trash within seconds (a trash file removed early costs
// nothing: it is out of the layout, and whoever unlinks it last frees it).

// OwnersDir holds an owner file per live owner of temp or trash files,
// relative to the layout root (with a shared blob directory, in that
// directory's, with the ingest directory and the trash).
const OwnersDir = layout.StateDir + "/owners"

// LegacyAge is how long a temp or trash file whose name has no owner token
// is kept after its last modification.
const LegacyAge = 24 * time.Hour

// TempPrefix is the prefix of the names of the ingest temp files and the
// trash files of the owner whose token is tok.
func TempPrefix(tok string) string { return tok + "-" }

// ownerState tells, from a temp or trash file's name, whether its owner is
// the caller, another that is alive (or cannot be judged), or gone.
type ownerState int

const (
	ownerAlive ownerState = iota
	ownerSelf
	ownerGone
)

// sweep judges the owners of the files it lists, each once, and holds the
// locks of the owners it found gone until release.
type sweep struct {
	fsys  fsio.FS
	self  string
	now   time.Time
	seen  map[string]ownerState
	locks []fsio.FileLock
}

func newSweep(fsys fsio.FS, self string) *sweep {
	return &sweep{fsys: fsys, self: self, now: time.Now(), seen: map[string]ownerState{}}
}

// release drops the locks of the owners found gone.
func (w *sweep) release() {
	for _, l := range w.locks {
		_ = l.Unlock()
	}
	w.locks = nil
}

// owner judges the owner whose token is tok.
func (w *sweep) owner(tok string) ownerState {
	if tok == w.self {
		return ownerSelf
	}
	if st, ok := w.seen[tok]; ok {
		return st
	}
	st := ownerAlive
	l, err := w.fsys.Lock(OwnersDir+"/"+tok, false)
	switch {
	case err == nil:
		st = ownerGone
		w.locks = append(w.locks, l)
	case errors.Is(err, fs.ErrNotExist):
		st = ownerGone
	}
	// ErrHeld: alive. Any other error: not known, so kept.
	w.seen[tok] = st
	return st
}

// file judges the owner of the regular file e of a temp or trash
// directory.
func (w *sweep) file(e fs.DirEntry) ownerState {
	if tok, _, ok := strings.Cut(e.Name(), "-"); ok && fsio.IsToken(tok) {
		return w.owner(tok)
	}
	fi, err := e.Info()
	if err == nil && w.now.Sub(fi.ModTime()) >= LegacyAge {
		return ownerGone
	}
	return ownerAlive
}

// leftovers lists the files that no live owner will remove: renameio's
// temp files in the root, ingest temp files of owners gone, partial copies
// of an interrupted repair (temps); with withTrash, the trash of owners
// gone, and with self the caller's own (trash: listed only when asked, as
// it may hold a large transaction's blobs until they are unlinked); the
// owner files of owners gone (owners).
func (w *sweep) leftovers(withTrash, self bool) (temps, trash, owners []string, err error) {
	ents, err := w.fsys.ReadDir(".")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("list layout root: %w", err)
	}
	for _, e := range ents {
		if IsIndexTemp(e.Name()) && e.Type().IsRegular() {
			temps = append(temps, e.Name())
		}
	}
	// A .ocistore that is not a directory (a symlink) is not ours to list:
	// fsck reports it.
	if fi, err := w.fsys.Lstat(layout.StateDir); err != nil || !fi.IsDir() {
		return temps, nil, nil, nil
	}
	list := func(dir string) ([]fs.DirEntry, error) {
		if fi, err := w.fsys.Lstat(dir); err != nil || !fi.IsDir() {
			return nil, nil // missing, or not a directory: fsck reports it
		}
		ents, err := w.fsys.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		return ents, nil
	}
	if ents, err = list(IngestDir); err != nil {
		return nil, nil, nil, err
	}
	for _, e := range ents {
		if e.Type().IsRegular() && w.file(e) == ownerGone {
			temps = append(temps, IngestDir+"/"+e.Name())
		}
	}
	// Copies repair was keeping when it was interrupted (KeepCopy; written
	// under the writer lock, which whoever removes temps holds).
	if ents, err = list(QuarantineDir); err != nil {
		return nil, nil, nil, err
	}
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), partialPrefix) {
			temps = append(temps, QuarantineDir+"/"+e.Name())
		}
	}
	ents = nil
	if withTrash {
		if ents, err = list(TrashDir); err != nil {
			return nil, nil, nil, err
		}
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if o := w.file(e); o == ownerGone || self && o == ownerSelf {
			trash = append(trash, TrashDir+"/"+e.Name())
		}
	}
	if ents, err = list(OwnersDir); err != nil {
		return nil, nil, nil, err
	}
	for _, e := range ents {
		if e.Type().IsRegular() && fsio.IsToken(e.Name()) && w.owner(e.Name()) == ownerGone {
			owners = append(owners, OwnersDir+"/"+e.Name())
		}
	}
	return temps, trash, owners, nil
}

// Temps lists the leftover temp files: renameio's in the root, ingest temp
// files and owner files of owners that are gone, and partial copies of an
// interrupted repair.
func Temps(fsys fsio.FS) ([]string, error) {
	w := newSweep(fsys, "")
	defer w.release()
	temps, _, owners, err := w.leftovers(false, false)
	return append(temps, owners...), err
}

// Trash lists the files of the trash that no live owner will unlink.
func Trash(fsys fsio.FS) ([]string, error) {
	w := newSweep(fsys, "")
	defer w.release()
	_, trash, _, err := w.leftovers(true, false)
	return trash, err
}

// sweepLeftovers removes the leftover temp files and the owner files of
// owners that are gone (holding their locks meanwhile) and, with
// withTrash, hands their trash and the caller's own to env.Reclaim (or
// unlinks it now).
func sweepLeftovers(env Env, st *State, withTrash bool) error {
	w := newSweep(env.FS, env.Self)
	defer w.release()
	temps, trash, owners, err := w.leftovers(withTrash, true)
	if err != nil {
		return err
	}
	if len(temps) > 0 {
		if err := fsio.RemoveFiles(env.FS, "temp-files", temps, nil); err != nil {
			return fmt.Errorf("remove temp files: %w", err)
		}
		for _, t := range temps {
			env.Log.Info("recovery: removed temp file", attrPath, t)
			st.Actions = append(st.Actions, recovery.Action{Kind: "temp-removed", Detail: t})
		}
	}
	if len(trash) > 0 {
		st.Actions = append(st.Actions, recovery.Action{Kind: "trash-emptied", Detail: fmt.Sprintf("%d files in %s", len(trash), TrashDir)})
		if env.Reclaim != nil {
			env.Reclaim(trash)
		} else if err := fsio.RemoveFiles(env.FS, "trash", trash, nil); err != nil {
			return fmt.Errorf("empty %s: %w", TrashDir, err)
		}
	}
	if len(owners) > 0 {
		// Last: an owner file's removal says its files are anyone's to
		// remove, which they are anyway once its lock is free.
		if err := fsio.RemoveFiles(env.FS, "owners", owners, nil); err != nil {
			return fmt.Errorf("remove owner files: %w", err)
		}
		for _, o := range owners {
			env.Log.Info("recovery: removed the owner file of an owner that is gone", attrPath, o)
			st.Actions = append(st.Actions, recovery.Action{Kind: "temp-removed", Detail: o})
		}
	}
	return nil
}
