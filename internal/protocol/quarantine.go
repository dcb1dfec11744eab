package protocol

import (
	"fmt"
	"io/fs"
	"strconv"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
)

// The quarantine: what repair takes out of the layout is moved here,
// durably, never deleted.

// QuarantineDir holds what repair took out of the layout, relative to the
// layout root: blobs whose bytes do not match their digest (as
// <alg>/<hex>), entries of blobs/ that are not regular files, unreadable
// index.json files. Nothing in it is read by ocistore or by other tools.
const QuarantineDir = layout.StateDir + "/quarantine"

// CrashQuarantineRenamed is the crash point of a move (or copy) into the
// quarantine folder: renamed, directories not synced yet.
const CrashQuarantineRenamed = "quarantine-renamed"

// quarantineName returns a free name for as under the quarantine folder:
// as itself, or as.1, as.2, ... when taken (a second repair never
// overwrites what the first kept).
func quarantineName(fsys fsio.FS, as string) (string, error) {
	base := QuarantineDir + "/" + as
	for i := 0; i < 10000; i++ {
		name := base
		if i > 0 {
			name += "." + strconv.Itoa(i)
		}
		ok, err := fsio.Exists(fsys, name)
		if err != nil {
			return "", err
		}
		if !ok {
			return name, nil
		}
	}
	return "", fmt.Errorf("quarantine %s: %w", base, fs.ErrExist)
}

// quarantineDir makes the directory of a quarantine name, each new level
// durable.
func quarantineDir(fsys fsio.FS, name string) error {
	dir := fsio.Dir(name)
	var chain []string
	for d := dir; d != "." && d != layout.StateDir; d = fsio.Dir(d) {
		chain = append([]string{d}, chain...)
	}
	for _, d := range append([]string{layout.StateDir}, chain...) {
		if _, err := fsio.MkdirDurable(fsys, d); err != nil {
			return err
		}
	}
	return nil
}

// Quarantine moves name (a file, or a symlink or directory, which is
// moved as it is: a symlink is never followed) into the quarantine folder
// as as (e.g. "sha256/<hex>", "index.json"), under a free name, and
// returns that name. The move is one rename, made durable by syncing the
// quarantine directory and then name's directory: after a crash the entry
// is in one place or the other, never lost.
func Quarantine(fsys fsio.FS, name, as string) (string, error) {
	dest, err := quarantineName(fsys, as)
	if err != nil {
		return "", err
	}
	if err := quarantineDir(fsys, dest); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", name, err)
	}
	if err := fsys.Rename(name, dest); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", name, err)
	}
	crash.Point(CrashQuarantineRenamed)
	for _, d := range []string{fsio.Dir(dest), fsio.Dir(name)} {
		if err := fsys.SyncDir(d); err != nil {
			return "", &fsio.SyncError{Path: d, Err: err}
		}
	}
	return dest, nil
}

// partialPrefix starts the name of a copy KeepCopy is writing.
const partialPrefix = ".partial-"

// KeepCopy writes data durably into the quarantine folder as as (under a
// free name) and returns that name: a copy of a file that is about to be
// replaced.
func KeepCopy(fsys fsio.FS, as string, data []byte) (string, error) {
	dest, err := quarantineName(fsys, as)
	if err != nil {
		return "", err
	}
	if err := quarantineDir(fsys, dest); err != nil {
		return "", fmt.Errorf("keep a copy of %s: %w", as, err)
	}
	tmp, err := fsys.CreateTemp(fsio.Dir(dest), partialPrefix)
	if err != nil {
		return "", fmt.Errorf("keep a copy of %s: %w", as, err)
	}
	_, werr := tmp.Write(data)
	if werr == nil {
		if serr := tmp.Sync(); serr != nil {
			werr = &fsio.SyncError{Path: tmp.Name(), Err: serr}
		}
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = fsys.Rename(tmp.Name(), dest)
		crash.Point(CrashQuarantineRenamed)
	}
	if werr != nil {
		_ = fsys.Remove(tmp.Name())
		return "", fmt.Errorf("keep a copy of %s: %w", as, werr)
	}
	if err := fsys.SyncDir(fsio.Dir(dest)); err != nil {
		return "", &fsio.SyncError{Path: fsio.Dir(dest), Err: err}
	}
	return dest, nil
}
