package fsck

import (
	"context"
	"errors"
	"io/fs"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
)

// node is what the check knows of one blob of the closure: what was read
// of it (ahead of the walk, on every core, or by the walk itself), then
// what the walk made of it.
type node struct {
	// Read ahead, or by the walk.
	statted  bool
	st       statResult
	loaded   bool // c and loadErr are LoadChildren's, read with loadSize
	loadSize int64
	c        layout.Children
	loadErr  error
	queued   bool // in the level being read ahead

	// The walk.
	reached  bool
	size     int64 // of the first descriptor the walk met
	ok       bool  // on disk, a regular file of that size
	expanded bool  // kids were walked
	kids     layout.Children
	failed   bool // bad is why it could not be read as a manifest
	bad      error
}

// statResult is what Lstat said of a blob path (the mode and size are all
// the walk looks at).
type statResult struct {
	mode fs.FileMode
	size int64
	err  error
}

// lstat describes the blob file of d without following a symlink.
func (n *node) lstat(fsys fsio.FS, d digest.Digest) (statResult, error) {
	if !n.statted {
		n.st = lstatIn(fsys, nil, d)
		n.statted = true
	}
	return n.st, n.st.err
}

// load reads and parses the manifest or index d, once for each size.
func (n *node) load(fsys fsio.FS, d v1.Descriptor) (layout.Children, error) {
	if n.loaded && n.loadSize == d.Size {
		return n.c, n.loadErr
	}
	return layout.LoadChildren(fsys)(d)
}

// readAheadClosure reads, on every core, what the walk of the closure of
// ix will ask for: the Lstat of every blob it reaches and the children of
// every manifest and index. It goes level by level (a level is the
// children of the one before), each level's reads spread over
// GOMAXPROCS goroutines, and follows the walk's rules: a blob is read for
// children when a descriptor's media type says so, or when it is an entry,
// at most layout.MaxDepth deep, when it is a regular file of the
// descriptor's size. The walk itself stays sequential (its problems come
// out in a fixed order); what it does not find here it reads itself.
func readAheadClosure(ctx context.Context, fsys fsio.FS, ix *layout.Index) (map[digest.Digest]*node, error) {
	// Room for about four blobs per entry (a manifest, its config, two
	// layers): the map does not rehash its way up to 400,000.
	nodes := make(map[digest.Digest]*node, min(4*len(ix.Entries), 1<<20))
	workers := runtime.GOMAXPROCS(0)
	dirs := openAlgDirs(fsys)
	defer func() {
		for _, h := range dirs {
			h.Close()
		}
	}()
	type job struct {
		n          *node
		d          *v1.Descriptor
		stat, load bool
	}
	level := make([]*v1.Descriptor, len(ix.Entries))
	for i := range ix.Entries {
		level[i] = &ix.Entries[i].Desc
	}
	var jobs []job
	for depth := 0; len(level) > 0 && depth <= layout.MaxDepth; depth++ {
		jobs = jobs[:0]
		for _, d := range level {
			n := nodes[d.Digest]
			if n == nil {
				n = &node{}
				nodes[d.Digest] = n
			}
			if n.queued {
				continue
			}
			j := job{n: n, d: d, stat: !n.statted, load: !n.loaded && layout.Parsed(*d, depth == 0)}
			if j.stat || j.load {
				n.queued = true
				jobs = append(jobs, j)
			}
		}
		// Each node is in one job at most: a worker writes its own.
		var next atomic.Int64
		var wg sync.WaitGroup
		for range max(1, min(workers, len(jobs))) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= len(jobs) || ctx.Err() != nil {
						return
					}
					j := jobs[i]
					n := j.n
					if j.stat {
						n.st, n.statted = lstatIn(fsys, dirs, j.d.Digest), true
					}
					if j.load && n.st.err == nil && n.st.mode.IsRegular() && n.st.size == j.d.Size {
						n.c, n.loadErr = layout.LoadChildren(fsys)(*j.d)
						n.loaded, n.loadSize = true, j.d.Size
					}
				}
			}()
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		level = level[:0]
		for _, j := range jobs {
			j.n.queued = false
			if j.load && j.n.loaded && j.n.loadErr == nil {
				for i := range j.n.c.Refs {
					level = append(level, &j.n.c.Refs[i])
				}
			}
		}
	}
	return nodes, nil
}

// openAlgDirs opens blobs/<alg> for each algorithm the layout may hold, as
// directory handles: an Lstat through one is one system call, not one per
// path element. Those that cannot be opened are left out (lstatIn then
// takes the path).
func openAlgDirs(fsys fsio.FS) map[digest.Algorithm]fsio.DirHandle {
	out := map[digest.Algorithm]fsio.DirHandle{}
	op, ok := fsys.(fsio.DirOpener)
	if !ok {
		return out
	}
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512} {
		dir := layout.BlobsDir + "/" + alg.String()
		// Only a real directory: the walk reports blobs/<alg> when it is not.
		if fi, err := fsys.Lstat(dir); err != nil || !fi.IsDir() {
			continue
		}
		if h, err := op.OpenDir(dir); err == nil {
			out[alg] = h
		}
	}
	return out
}

// lstatIn is Lstat of the blob file of d, through its directory's handle
// when there is one. Errors other than "does not exist" are taken again
// by path, so that they read as the walk's own would.
func lstatIn(fsys fsio.FS, dirs map[digest.Algorithm]fsio.DirHandle, d digest.Digest) statResult {
	if h, ok := dirs[d.Algorithm()]; ok && h != nil {
		fi, err := h.Lstat(d.Encoded())
		switch {
		case err == nil:
			return statResult{mode: fi.Mode(), size: fi.Size()}
		case errors.Is(err, fs.ErrNotExist):
			return statResult{err: &fs.PathError{Op: "lstat", Path: layout.BlobPath(d), Err: fs.ErrNotExist}}
		}
	}
	fi, err := fsys.Lstat(layout.BlobPath(d))
	if err != nil {
		return statResult{err: err}
	}
	return statResult{mode: fi.Mode(), size: fi.Size()}
}
