package memfs

import (
	"io/fs"
	"path"
	"strings"

	"github.com/ocistore/ocistore/internal/fsio"
)

// Sub is the directory dir of f as a file system of its own (its names
// relative to dir), sharing f's state and crash snapshots: tests put a
// layout and a shared blob directory side by side in one FS, so that one
// crash state covers both.
func (f *FS) Sub(dir string) fsio.FS { return &sub{f: f, dir: dir} }

type sub struct {
	f   *FS
	dir string
}

func (s *sub) in(name string) string {
	if name == "" || name == "." {
		return s.dir
	}
	return path.Join(s.dir, name)
}

func (s *sub) out(name string) string {
	return strings.TrimPrefix(strings.TrimPrefix(name, s.dir), "/")
}

func (s *sub) Root() string                               { return path.Join(s.f.Root(), s.dir) }
func (s *sub) Open(name string) (fsio.File, error)        { return s.f.Open(s.in(name)) }
func (s *sub) Lstat(name string) (fs.FileInfo, error)     { return s.f.Lstat(s.in(name)) }
func (s *sub) ReadDir(name string) ([]fs.DirEntry, error) { return s.f.ReadDir(s.in(name)) }
func (s *sub) Mkdir(name string, perm fs.FileMode) error  { return s.f.Mkdir(s.in(name), perm) }
func (s *sub) Rename(oldname, newname string) error {
	return s.f.Rename(s.in(oldname), s.in(newname))
}
func (s *sub) Link(oldname, newname string) error {
	return s.f.Link(s.in(oldname), s.in(newname))
}
func (s *sub) Remove(name string) error  { return s.f.Remove(s.in(name)) }
func (s *sub) SyncDir(name string) error { return s.f.SyncDir(s.in(name)) }
func (s *sub) Close() error              { return nil }
func (s *sub) Lock(name string, create bool) (fsio.FileLock, error) {
	return s.f.Lock(s.in(name), create)
}

func (s *sub) ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error {
	return s.f.ReplaceFile(s.in(name), s.in(tmpDir), data, perm)
}

type subTemp struct {
	fsio.TempFile
	name string
}

func (t subTemp) Name() string { return t.name }

func (s *sub) CreateTemp(dir, prefix string) (fsio.TempFile, error) {
	t, err := s.f.CreateTemp(s.in(dir), prefix)
	if err != nil {
		return nil, err
	}
	return subTemp{TempFile: t, name: s.out(t.Name())}, nil
}
