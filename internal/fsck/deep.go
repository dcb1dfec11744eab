package fsck

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/recovery"
)

// hashBufSize is the read size of a hashing worker: large enough that a
// read costs little next to hashing it, small enough that memory stays
// bounded (one buffer per worker).
const hashBufSize = 1 << 20

// blobFile is a blob file found under blobs/, named by a valid digest.
type blobFile struct {
	d    digest.Digest
	path string
	size int64
}

// hashOutcome is what hashing one blob file found.
type hashOutcome struct {
	done bool          // hashed to the end
	got  digest.Digest // when done
	err  error         // when it could not be read; nil when stopped
}

// errStopped ends a worker's file when the time limit runs out.
var errStopped = errors.New("deep check stopped")

// hashFiles hashes files in parallel and returns one outcome per file, in
// the same order. A file whose hashing was cut short by the time limit has
// a zero outcome. It returns ctx's error when ctx (not the limit) ends.
func hashFiles(ctx context.Context, fsys fsio.FS, files []blobFile, o *recovery.CheckOptions, st *recovery.DeepStats) ([]hashOutcome, error) {
	out := make([]hashOutcome, len(files))
	for _, f := range files {
		st.Files++
		st.Bytes += f.size
	}
	hctx := ctx
	if o.Max > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, o.Max)
		defer cancel()
	}
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, len(files)))
	// Largest first: the last blob to start is then a small one, so that no
	// worker is left hashing a big blob alone at the end.
	order := make([]int, len(files))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return files[order[a]].size > files[order[b]].size })

	var next atomic.Int64
	var hashed atomic.Int64
	progress := func(n int) {
		v := hashed.Add(int64(n))
		if o.Progress != nil {
			o.Progress(v, st.Bytes)
		}
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, hashBufSize)
			for {
				k := int(next.Add(1)) - 1
				if k >= len(order) || hctx.Err() != nil {
					return
				}
				i := order[k]
				got, err := hashFile(hctx, fsys, files[i], buf, progress)
				switch {
				case errors.Is(err, errStopped):
				case err != nil:
					out[i] = hashOutcome{err: err}
				default:
					out[i] = hashOutcome{done: true, got: got}
				}
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, r := range out {
		if r.done {
			st.HashedFiles++
			st.HashedBytes += files[i].size
		} else if r.err == nil {
			st.Stopped = true
		}
	}
	return out, nil
}

// hashFile streams one blob file through the hash of its digest's
// algorithm. The file is opened without following a symlink and must be a
// regular file.
func hashFile(ctx context.Context, fsys fsio.FS, f blobFile, buf []byte, progress func(int)) (digest.Digest, error) {
	r, err := fsys.Open(f.path)
	if err != nil {
		return "", err
	}
	defer r.Close()
	h := f.d.Algorithm().Hash()
	for {
		if ctx.Err() != nil {
			return "", errStopped
		}
		n, err := r.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			progress(n)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return digest.NewDigest(f.d.Algorithm(), h), nil
}

// deepCheck hashes every blob file and adds a problem for each whose bytes
// do not hash to its name, or that cannot be read. Digests in known already
// have a digest-mismatch problem (a manifest found bad by the walk).
func deepCheck(ctx context.Context, fsys fsio.FS, files []blobFile, known map[digest.Digest]bool, o *recovery.CheckOptions, r *recovery.Report) error {
	r.Deep = &recovery.DeepStats{}
	out, err := hashFiles(ctx, fsys, files, o, r.Deep)
	if err != nil {
		return err
	}
	for i, res := range out {
		f := files[i]
		switch {
		case errors.Is(res.err, fs.ErrNotExist):
			// Removed since it was listed (by another tool): not ours to report.
		case errors.Is(res.err, fsio.ErrNotRegular):
			add(r, recovery.KindNotRegular, f.d, f.path, "is no longer a regular file")
		case res.err != nil:
			add(r, recovery.KindUnreadable, f.d, f.path, "%v", res.err)
		case res.done && res.got != f.d && !known[f.d]:
			add(r, recovery.KindDigestMismatch, f.d, f.path, "content (%d bytes) hashes to %s", f.size, res.got)
		}
	}
	return nil
}
