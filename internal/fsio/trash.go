package fsio

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// TrashFiles takes each of names out of its directory into the directory
// trash (on the same file system: a hard link there, then the unlink of
// the name, or a rename; see move), under trashPrefix followed by the name
// with "/" turned to "-". A missing file counts as taken out. It then
// syncs each directory it took a file out of, and the trash, once.
// Taking a file into the trash frees nothing; an unlink of its last name
// also frees the inode and blocks, which costs several times as long (see
// BENCHMARKS.md, "Figures behind design choices"), and on a file system
// mounted with discard makes the next commit wait for the device. The
// trash is emptied later (RemoveFiles) by whoever the caller gives the
// returned trash paths to. The trash's part in the protocol: DESIGN.md
// §11.
//
// When the trash directory cannot be made, every name is unlinked in place.
// A name that cannot be taken into the trash for a reason of the trash
// or of the file system (see trashRefused: another file system, no space,
// hard links refused, the name taken in the trash) is unlinked in place
// instead, as RemoveFiles would. after(name, existed)
// is called once per name, as in RemoveFiles. It stops at the first other
// error; the directories touched so far are still synced.
func TrashFiles(fsys FS, purpose string, names []string, trash, trashPrefix string, after func(name string, existed bool)) ([]string, error) {
	return TrashFilesGuarded(fsys, purpose, names, trash, trashPrefix, nil, after)
}

// TrashFilesGuarded is TrashFiles asking guard (when not nil) as it goes
// (see Guard).
func TrashFilesGuarded(fsys FS, purpose string, names []string, trash, trashPrefix string, guard Guard, after func(name string, existed bool)) ([]string, error) {
	if _, err := MkdirDurable(fsys, trash); err != nil {
		var se *SyncError
		if errors.As(err, &se) {
			return nil, err
		}
		// No trash to be had (its name taken by a file or a symlink, no
		// space for it): unlink in place.
		return nil, RemoveFilesGuarded(fsys, purpose, names, guard, after)
	}
	dirs := newDirCache(fsys)
	defer dirs.close()
	order := dirs.openAll(names)
	dirs.dir(trash + "/x") // the trash's own handle, also before the workers
	trashed := make([]string, 0, len(names))
	workers := 1
	if len(names) >= parallelRemoveMin {
		workers = removeWorkers
	}
	firstErr := eachName(names, workers, guard, func(n string) (func(), error) {
		to := trash + "/" + trashPrefix + trashName(n)
		err := dirs.move(n, to)
		moved := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) && trashRefused(err) {
			err = dirs.remove(n)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return func() {
			if moved {
				trashed = append(trashed, to)
			}
			if after != nil {
				after(n, err == nil)
			}
		}, nil
	})
	for _, d := range order {
		// As in RemoveFiles: synced even when nothing was found there.
		if err := SyncDirFor(fsys, purpose, d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return trashed, err
		}
	}
	if len(trashed) > 0 {
		// Not needed for the layout (the files are out of it once their
		// directories are synced), but without it a crash could leave a
		// file in neither directory, its space lost until fsck.ext4.
		if err := SyncDirFor(fsys, purpose, trash); err != nil {
			return trashed, err
		}
	}
	return trashed, firstErr
}

// trashRefused reports whether taking a file into the trash failed because
// of the trash or of the file system (then the file is unlinked where it
// is instead): another file system, the trash's directory or disk full,
// hard links not supported, a name the trash holds already.
func trashRefused(err error) bool {
	return errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.ENOSPC) ||
		errors.Is(err, syscall.EMLINK) || errors.Is(err, syscall.EDQUOT) ||
		errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOTSUP) ||
		errors.Is(err, fs.ErrExist) || errors.Is(err, errCrossDevice)
}

// Linker is implemented by a file system that can give a file a second
// name (a hard link); not durable until the new name's directory is synced.
type Linker interface {
	Link(oldname, newname string) error
}

// DirLinker is implemented by a DirHandle that can link one of its
// entries into another directory handle of the same file system.
type DirLinker interface {
	LinkTo(name string, to DirHandle, newname string) error
}

// move takes oldname to newname: a hard link, then the unlink of
// oldname, where the file system has them, else a rename. A link and an
// unlink of a file that keeps a name free nothing and each lock one
// directory; a rename between two directories is serialized with every
// other in the file system (the kernel's per-file-system rename lock), so
// the workers of TrashFiles overlap links and unlinks but not renames
// (figures: BENCHMARKS.md, "Figures behind design choices"). Between the
// two steps the file has both names; either is a state recovery handles
// (the blob is still in the layout, or it is out of it: DESIGN.md §5.3).
func (c *dirCache) move(oldname, newname string) error {
	oh, ob := c.dir(oldname)
	nh, nb := c.dir(newname)
	var err error
	if l, ok := oh.(DirLinker); ok && nh != nil {
		if err = l.LinkTo(ob, nh, nb); err != nil {
			err = &os.LinkError{Op: "link", Old: oldname, New: newname, Err: cause(err)}
		}
	} else if l, ok := c.fsys.(Linker); ok {
		err = l.Link(oldname, newname)
	} else {
		return c.fsys.Rename(oldname, newname)
	}
	if err != nil {
		return err
	}
	if err := c.remove(oldname); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err // both names are left: the caller's error stops the batch
	}
	return nil // out of its directory (perhaps by another's unlink), in the trash
}

// osDir is a directory of the OS file system opened for a batch: its
// entries through an os.Root of its own (confined to it), and a
// descriptor for linkat between two such directories. Names given to
// LinkTo are single path elements: linkat (without AT_SYMLINK_FOLLOW)
// neither follows a symlink in them nor leaves the two directories.
type osDir struct {
	*os.Root
	f  *os.File
	fd int
}

// openOSDir opens directory name of root as an osDir: the descriptor is
// that of the new root's ".", so both are the same directory.
func openOSDir(root *os.Root, name string) (*osDir, error) {
	r, err := root.OpenRoot(name)
	if err != nil {
		return nil, err
	}
	f, err := r.Open(".")
	if err != nil {
		r.Close()
		return nil, err
	}
	return &osDir{Root: r, f: f, fd: int(f.Fd())}, nil
}

func (d *osDir) LinkTo(name string, to DirHandle, newname string) error {
	dst, ok := to.(*osDir)
	if !ok || !singleElement(name) || !singleElement(newname) {
		return &os.LinkError{Op: "link", Old: name, New: newname, Err: errors.ErrUnsupported}
	}
	for {
		err := unix.Linkat(d.fd, name, dst.fd, newname, 0)
		if err != unix.EINTR {
			if err != nil {
				return &os.LinkError{Op: "link", Old: name, New: newname, Err: err}
			}
			return nil
		}
	}
}

func (d *osDir) Close() error { return errors.Join(d.Root.Close(), d.f.Close()) }

// Lstat of a name in the directory is one fstatat on its descriptor (the
// os.Root's walks the name element by element: 400,000 of them in fsck's
// blob stats); other names go through the root.
func (d *osDir) Lstat(name string) (fs.FileInfo, error) {
	if !singleElement(name) {
		return d.Root.Lstat(name)
	}
	var st syscall.Stat_t
	if err := fstatatRetry(d.f, name, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: name, Err: err}
	}
	return newFileInfo(name, &st), nil
}

func singleElement(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsRune(name, '/')
}

// trashName is the name a file of the layout takes in the trash, after its
// owner's prefix: its path with "/" turned to "-" (blobs/sha256/<hex> is
// blobs-sha256-<hex>).
func trashName(name string) string { return strings.ReplaceAll(name, "/", "-") }

// TrashedBlob returns the blob path (blobs/<alg>/<hex>) that the trash file
// p, a path TrashFiles returned, was taken from; false when p's name is not
// one of a blob's.
func TrashedBlob(p string) (string, bool) {
	name := path.Base(p)
	i := strings.LastIndex(name, trashName("blobs/"))
	if i < 0 {
		return "", false
	}
	alg, hex, ok := strings.Cut(name[i+len("blobs-"):], "-")
	if !ok || alg == "" || hex == "" || strings.Contains(hex, "-") {
		return "", false
	}
	return "blobs/" + alg + "/" + hex, true
}
