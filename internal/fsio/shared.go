package fsio

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// Shared is the file system of a layout whose blobs live in a directory
// that several layouts share (what skopeo calls --shared-blob-dir: the
// directory holds <alg>/<hex>, in place of the layout's blobs/). Paths are
// the layout's, as everywhere else: "blobs/<alg>/<hex>" goes to the shared
// directory's "<alg>/<hex>", and the state directory ".ocistore" (the
// journal, whose refcounts must live with the blobs they count, the ingest
// temp files, which must be renamed into the blob directory on the same
// file system, the quarantine) to the shared directory's ".ocistore";
// everything else (index.json, oci-layout) to the layout. See DESIGN.md
// §2.3 for the routing and §10 for what the store makes of it.
type Shared struct {
	Layout FS // the layout root
	Blobs  FS // the shared blob directory
}

var _ FS = (*Shared)(nil)

const (
	blobsDir = "blobs"
	stateDir = ".ocistore"
)

// route returns the file system that holds name and name in it.
func (s *Shared) route(name string) (FS, string) {
	switch {
	case name == blobsDir:
		return s.Blobs, "."
	case strings.HasPrefix(name, blobsDir+"/"):
		return s.Blobs, name[len(blobsDir)+1:]
	case name == stateDir || strings.HasPrefix(name, stateDir+"/"):
		return s.Blobs, name
	}
	return s.Layout, name
}

// back maps a name of the shared directory back to the layout's names.
func back(rel string) string {
	if rel == stateDir || strings.HasPrefix(rel, stateDir+"/") {
		return rel
	}
	if rel == "." {
		return blobsDir
	}
	return blobsDir + "/" + rel
}

func (s *Shared) Root() string { return s.Layout.Root() }

// BlobRoot is the absolute path of the shared blob directory.
func (s *Shared) BlobRoot() string { return s.Blobs.Root() }

func (s *Shared) Open(name string) (File, error) {
	f, rel := s.route(name)
	return f.Open(rel)
}

func (s *Shared) Lstat(name string) (fs.FileInfo, error) {
	f, rel := s.route(name)
	return f.Lstat(rel)
}

// ReadDir lists a directory; the listing of blobs/ leaves out the shared
// directory's state directory.
func (s *Shared) ReadDir(name string) ([]fs.DirEntry, error) {
	f, rel := s.route(name)
	ents, err := f.ReadDir(rel)
	if err != nil || name != blobsDir {
		return ents, err
	}
	out := ents[:0]
	for _, e := range ents {
		if e.Name() != stateDir {
			out = append(out, e)
		}
	}
	return out, nil
}

func (s *Shared) Mkdir(name string, perm fs.FileMode) error {
	f, rel := s.route(name)
	if f == s.Blobs && rel == "." {
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrExist}
	}
	return f.Mkdir(rel, perm)
}

type sharedTemp struct {
	TempFile
	name string
}

func (t sharedTemp) Name() string { return t.name }

func (s *Shared) CreateTemp(dir, prefix string) (TempFile, error) {
	f, rel := s.route(dir)
	t, err := f.CreateTemp(rel, prefix)
	if err != nil || f == s.Layout {
		return t, err
	}
	return sharedTemp{TempFile: t, name: back(t.Name())}, nil
}

// errCrossDevice: a rename between the layout and the shared directory.
var errCrossDevice = errors.New("rename between the layout and the shared blob directory")

func (s *Shared) ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error {
	f, rel := s.route(name)
	tf, trel := s.route(tmpDir)
	if f != tf {
		return &fs.PathError{Op: "replace", Path: name, Err: errors.Join(errCrossDevice, syscall.EXDEV)}
	}
	return f.ReplaceFile(rel, trel, data, perm)
}

func (s *Shared) Rename(oldname, newname string) error {
	f, orel := s.route(oldname)
	nf, nrel := s.route(newname)
	if f != nf {
		return &fs.PathError{Op: "rename", Path: oldname, Err: errors.Join(errCrossDevice, syscall.EXDEV)}
	}
	return f.Rename(orel, nrel)
}

// Link gives a file a second name in the same directory tree (Linker).
func (s *Shared) Link(oldname, newname string) error {
	f, orel := s.route(oldname)
	nf, nrel := s.route(newname)
	l, ok := f.(Linker)
	if f != nf || !ok {
		return &os.LinkError{Op: "link", Old: oldname, New: newname, Err: errors.Join(errCrossDevice, syscall.EXDEV)}
	}
	return l.Link(orel, nrel)
}

func (s *Shared) Remove(name string) error {
	f, rel := s.route(name)
	return f.Remove(rel)
}

// SyncDir syncs a directory. "." is the parent of both index.json (in the
// layout) and .ocistore (in the shared directory): both are synced.
func (s *Shared) SyncDir(name string) error {
	if name == "." || name == "" {
		return errors.Join(s.Layout.SyncDir("."), s.Blobs.SyncDir("."))
	}
	f, rel := s.route(name)
	return f.SyncDir(rel)
}

// SkipSync leaves out the fsyncs of purpose when the layout's or the
// shared directory's file system does (SyncSkipper: tests).
func (s *Shared) SkipSync(purpose string) bool {
	return skipSync(s.Layout, purpose) || skipSync(s.Blobs, purpose)
}

// OpenDir opens a directory for a batch, when the file system it is on can.
func (s *Shared) OpenDir(name string) (DirHandle, error) {
	f, rel := s.route(name)
	op, ok := f.(DirOpener)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return op.OpenDir(rel)
}

func (s *Shared) Close() error {
	return errors.Join(s.Layout.Close(), s.Blobs.Close())
}
