package recovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
)

// KindUnreadable: a blob file could not be read to the end (an I/O error:
// the disk may be failing). Only the deep check reads blobs.
const KindUnreadable = "unreadable"

// CheckOptions tune CheckWith. A nil *CheckOptions is the quick check.
type CheckOptions struct {
	// Deep also re-hashes every blob file under blobs/, reachable or not,
	// and reports those whose bytes do not hash to their name
	// (digest-mismatch). Blobs are hashed in parallel, each streamed
	// through one buffer per worker: memory does not grow with blob size.
	Deep bool
	// Workers is how many blobs are hashed at once; zero means GOMAXPROCS.
	Workers int
	// Max bounds the time spent hashing. When it runs out the deep check
	// stops where it is and Report.Deep.Stopped says so; what was hashed
	// is reported. Zero means no limit.
	Max time.Duration
	// Progress, when set, is called as blob bytes are hashed with the
	// bytes hashed so far and the total, from several goroutines at once.
	Progress func(done, total int64)
	// Peers are the root entries of the other layouts sharing the blob
	// directory (set by the store): their graphs count in the refcounts
	// and their blobs are no orphans.
	Peers []layout.Entry
	// SharedBlobDir is the shared blob directory of a layout that keeps
	// its blobs there (skopeo's --shared-blob-dir). store.CheckDirWith
	// reads it, for a layout that ocistore has not adopted yet (an adopted
	// one names its directory in .ocistore/shared-blob-dir); this
	// package's CheckWith ignores it (its fsys already routes blobs/).
	SharedBlobDir string
}

// DeepStats describes the hashing of a deep check.
type DeepStats struct {
	Files       int   `json:"files"`       // blob files to hash
	Bytes       int64 `json:"bytes"`       // their total size
	HashedFiles int   `json:"hashedFiles"` // blob files hashed to the end
	HashedBytes int64 `json:"hashedBytes"` // bytes hashed (of those files)
	// Stopped is true when Max ran out before every blob was hashed.
	Stopped bool `json:"stopped,omitempty"`
}

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
func hashFiles(ctx context.Context, fsys fsio.FS, files []blobFile, o *CheckOptions, st *DeepStats) ([]hashOutcome, error) {
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
func deepCheck(ctx context.Context, fsys fsio.FS, files []blobFile, known map[digest.Digest]bool, o *CheckOptions, r *Report) error {
	r.Deep = &DeepStats{}
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
			r.add(KindNotRegular, f.d, f.path, "is no longer a regular file")
		case res.err != nil:
			r.add(KindUnreadable, f.d, f.path, "%v", res.err)
		case res.done && res.got != f.d && !known[f.d]:
			r.add(KindDigestMismatch, f.d, f.path, "content (%d bytes) hashes to %s", f.size, res.got)
		}
	}
	return nil
}

// stoppedNote words an incomplete deep check for people.
func (s *DeepStats) String() string {
	line := fmt.Sprintf("%d of %d blobs hashed (%d of %d bytes)", s.HashedFiles, s.Files, s.HashedBytes, s.Bytes)
	if s.Stopped {
		line += ": stopped early, the time limit ran out"
	}
	return line
}
