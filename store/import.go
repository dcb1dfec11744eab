package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
)

// ImportResult describes an Import.
type ImportResult struct {
	Images      []Image `json:"images"`      // entries added to index.json
	BlobsCopied int     `json:"blobsCopied"` // blobs that were not here yet
	BytesCopied int64   `json:"bytesCopied"`
}

// ImportOptions tune ImportWith. A nil *ImportOptions means the defaults.
type ImportOptions struct {
	// Progress, when set, is called before the first copy and after each
	// blob with the number of blobs copied so far and the number to copy.
	Progress func(done, total int)
}

// Import copies images from the OCI layout in src: the entries named by refs
// (tags or digests), or every entry when refs is empty. Blobs are copied
// (verified and synced) first; then all the entries are added in one
// transaction, keeping their names. Untagged entries of src stay untagged.
// A crash leaves either all of them or none in index.json (blobs already
// copied stay, unreferenced, until GC). Until the transaction commits, the
// blobs are held by the lease of ctx (WithLease) or by a lease of the
// import's own, so that a concurrent GC does not take them.
func (s *Store) Import(ctx context.Context, src string, refs ...string) (*ImportResult, error) {
	return s.ImportWith(ctx, src, refs, nil)
}

// ImportWith is Import with options.
func (s *Store) ImportWith(ctx context.Context, src string, refs []string, o *ImportOptions) (*ImportResult, error) {
	var opts ImportOptions
	if o != nil {
		opts = *o
	}
	res, err := s.importLayout(ctx, src, refs, opts)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	return res, nil
}

func (s *Store) importLayout(ctx context.Context, src string, refs []string, opts ImportOptions) (*ImportResult, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	sfs, err := fsio.OpenOS(src)
	if err != nil {
		return nil, err
	}
	defer sfs.Close()
	if b, err := fsio.ReadFile(sfs, layout.LayoutFile, 4096); err != nil {
		return nil, fmt.Errorf("%s: %w", layout.LayoutFile, err)
	} else if err := layout.CheckLayoutFile(b); err != nil {
		return nil, err
	}
	_, six, err := protocol.ReadIndex(sfs)
	if err != nil {
		return nil, err
	}
	var picked []layout.Entry
	if len(refs) == 0 {
		picked = six.Entries
	}
	for _, r := range refs {
		pos, err := find(six, r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r, err)
		}
		for _, p := range pos {
			picked = append(picked, six.Entries[p])
		}
	}
	// A name is copied as it is: one that the other tools on the layout
	// would refuse is not written here either (validTag).
	for _, e := range picked {
		if n := e.Name(); n != "" {
			if err := validTag(n); err != nil {
				return nil, fmt.Errorf("entry %s of %s: %w", e.Desc.Digest, layout.IndexFile, err)
			}
		}
	}
	// Walk the graphs first (manifests are read and verified), children
	// before parents, then copy what is missing here.
	seen := map[string]bool{}
	var todo []v1.Descriptor
	load := layout.LoadChildren(sfs)
	var walk func(d v1.Descriptor, depth int) error
	walk = func(d v1.Descriptor, depth int) error {
		if seen[d.Digest.String()] {
			return nil
		}
		seen[d.Digest.String()] = true
		if depth > layout.MaxDepth {
			return fmt.Errorf("blob %s: nested deeper than %d: %w", d.Digest, layout.MaxDepth, errdef.ErrCorrupt)
		}
		if layout.Parsed(d, depth == 0) {
			kids, err := load(d)
			if err != nil && !layout.Sniffed(d, err) {
				return err
			}
			for _, k := range kids.Refs {
				if err := walk(k, depth+1); err != nil {
					return err
				}
			}
		}
		if ok, err := s.Exists(ctx, d); err != nil || ok {
			return err
		}
		todo = append(todo, d)
		return nil
	}
	for _, e := range picked {
		if err := walk(e.Desc, 0); err != nil {
			return nil, err
		}
	}
	// Every blob of the picked graphs is leased until the transaction has
	// committed: a concurrent GC must not remove what was copied, or found
	// here unreferenced, before index.json references it.
	ds := make([]digest.Digest, 0, len(seen))
	for k := range seen {
		ds = append(ds, digest.Digest(k))
	}
	hold, err := s.holdBlobs(ctx, ds)
	if err != nil {
		return nil, err
	}
	defer hold.release()
	res := &ImportResult{}
	if opts.Progress != nil {
		opts.Progress(0, len(todo))
	}
	for i, d := range todo {
		if err := hold.keepAlive(ctx); err != nil {
			return nil, err
		}
		copied, err := s.copyBlob(ctx, sfs, d)
		if err != nil {
			return nil, err
		}
		if copied {
			res.BlobsCopied++
			res.BytesCopied += d.Size
		}
		if opts.Progress != nil {
			opts.Progress(i+1, len(todo))
		}
	}
	_, err = s.update(ctx, fmt.Sprintf("import %d from %s", len(picked), src), func(cur *layout.Index, _ *txn) ([]layout.Entry, error) {
		out := cur.Entries
		for _, e := range picked {
			if n := e.Name(); n != "" {
				out = withTags(out, e, []string{n})
				continue
			}
			if !holds(out, e.Desc) {
				out = append(out, e)
			}
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	for _, e := range picked {
		res.Images = append(res.Images, Image{Name: e.Name(), Descriptor: e.Desc})
	}
	return res, nil
}

// copyBlob copies one blob of the layout sfs into the store. It reports
// false for a foreign layer that the source does not have either.
func (s *Store) copyBlob(ctx context.Context, sfs fsio.FS, d v1.Descriptor) (bool, error) {
	f, err := sfs.Open(layout.BlobPath(d.Digest))
	if err != nil {
		if len(d.URLs) > 0 && errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("source blob %s: %w", d.Digest, err)
	}
	defer f.Close()
	return true, s.PutBlob(ctx, d, f)
}
