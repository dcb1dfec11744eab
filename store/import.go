package store

import (
	"context"
	"fmt"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/recovery"
)

// ImportResult describes an Import.
type ImportResult struct {
	Images      []Image `json:"images"`      // entries added to index.json
	BlobsCopied int     `json:"blobsCopied"` // blobs that were not here yet
	BytesCopied int64   `json:"bytesCopied"`
}

// Import copies images from the OCI layout in src: the entries named by refs
// (tags or digests), or every entry when refs is empty. Blobs are copied
// (verified and synced) first; then all the entries are added in one
// transaction, keeping their names. Untagged entries of src stay untagged.
// A crash leaves either all of them or none in index.json.
func (s *Store) Import(ctx context.Context, src string, refs ...string) (*ImportResult, error) {
	res, err := s.importLayout(ctx, src, refs)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	return res, nil
}

func (s *Store) importLayout(ctx context.Context, src string, refs []string) (*ImportResult, error) {
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
	_, six, err := recovery.ReadIndex(sfs)
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
	res := &ImportResult{}
	seen := map[string]bool{}
	load := layout.LoadChildren(sfs)
	var copyGraph func(d v1.Descriptor, depth int) error
	copyGraph = func(d v1.Descriptor, depth int) error {
		if seen[d.Digest.String()] {
			return nil
		}
		seen[d.Digest.String()] = true
		if depth > layout.MaxDepth {
			return fmt.Errorf("blob %s: nested deeper than %d: %w", d.Digest, layout.MaxDepth, errdef.ErrCorrupt)
		}
		if layout.IsManifest(d.MediaType) {
			kids, err := load(d)
			if err != nil {
				return err
			}
			for _, k := range kids.Refs {
				if err := copyGraph(k, depth+1); err != nil {
					return err
				}
			}
		}
		if ok, err := s.Exists(ctx, d); err != nil || ok {
			return err
		}
		f, err := sfs.Open(layout.BlobPath(d.Digest))
		if err != nil {
			if len(d.URLs) > 0 {
				return nil // a foreign layer the source does not have either
			}
			return fmt.Errorf("source blob %s: %w", d.Digest, err)
		}
		defer f.Close()
		if err := s.PutBlob(ctx, d, f); err != nil {
			return err
		}
		res.BlobsCopied++
		res.BytesCopied += d.Size
		return nil
	}
	for _, e := range picked {
		if err := copyGraph(e.Desc, 0); err != nil {
			return nil, err
		}
	}
	_, err = s.update(ctx, fmt.Sprintf("import %d from %s", len(picked), src), func(cur *layout.Index) ([]layout.Entry, error) {
		out := cur.Entries
		for _, e := range picked {
			if n := e.Name(); n != "" {
				out = withTags(out, e.Desc, []string{n})
				continue
			}
			held := false
			for _, o := range out {
				if o.Desc.Digest == e.Desc.Digest {
					held = true
				}
			}
			if !held {
				out = append(out, layout.NewEntry(e.Desc, ""))
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
