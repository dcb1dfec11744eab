package fsck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// Building blocks of `ocistore fsck --repair` (store.Repair): they never
// delete data. What cannot be kept in place is moved to the quarantine
// folder inside the layout, durably.

// ParseIndexLenient parses index.json like layout.ParseIndex, but sets the
// entries that do not validate aside instead of failing on the first: the
// index it returns holds the others. err is set when the file as a whole is
// not an image index (nothing can be kept then).
func ParseIndexLenient(b []byte) (*layout.Index, []recovery.BadEntry, error) {
	ix, err := layout.ParseIndex(b)
	if err == nil {
		return ix, nil, nil
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(b, &top) != nil || top == nil {
		return nil, nil, err
	}
	// The entries are where every tool reads them: the last member whose
	// key is "manifests" under case folding ("Manifests", "\u006danifests"
	// unescaped), as encoding/json decodes a v1.Index.
	var doc struct {
		Manifests []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return nil, nil, err
	}
	raws := doc.Manifests
	for k := range top {
		if strings.EqualFold(k, "manifests") {
			delete(top, k)
		}
	}
	var good []json.RawMessage
	var bad []recovery.BadEntry
	for i, r := range raws {
		one, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []json.RawMessage{r}})
		if _, eerr := layout.ParseIndex(one); eerr != nil {
			raw := string(r)
			if len(raw) > 512 {
				raw = raw[:512] + "..."
			}
			bad = append(bad, recovery.BadEntry{Pos: i, Raw: raw, Err: eerr.Error()})
			continue
		}
		good = append(good, r)
	}
	if len(bad) == 0 {
		return nil, nil, err // the entries are fine: the file is not
	}
	if good == nil {
		good = []json.RawMessage{}
	}
	top["manifests"], _ = json.Marshal(good)
	rebuilt, _ := json.Marshal(top)
	if bytes.HasSuffix(b, []byte("\n")) {
		rebuilt = append(rebuilt, '\n') // the file written keeps its end
	}
	ix, err2 := layout.ParseIndex(rebuilt)
	if err2 != nil {
		return nil, nil, err
	}
	return ix, bad, nil
}

// BrokenEntries walks the graph of every entry of ix and returns those
// whose closure is not whole. Blob contents are not hashed (a quick
// check), except manifests, which are read and verified.
func BrokenEntries(ctx context.Context, fsys fsio.FS, ix *layout.Index) ([]recovery.Broken, error) {
	type key struct {
		d    digest.Digest
		size int64
		node bool // read as a manifest
	}
	memo := map[key]string{}
	load := layout.LoadChildren(fsys)
	var reason func(d v1.Descriptor, depth int) (string, error)
	reason = func(d v1.Descriptor, depth int) (string, error) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		node := layout.Parsed(d, depth == 0)
		k := key{d.Digest, d.Size, node}
		if r, ok := memo[k]; ok {
			return r, nil
		}
		memo[k] = "" // a (hostile) cycle ends here; depth bounds it anyway
		r, err := func() (string, error) {
			if depth > layout.MaxDepth {
				return fmt.Sprintf("%s: nested deeper than %d", d.Digest, layout.MaxDepth), nil
			}
			p := layout.BlobPath(d.Digest)
			fi, err := fsys.Lstat(p)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if len(d.URLs) > 0 {
					return "", nil // a foreign layer
				}
				return fmt.Sprintf("blob %s (%s) is missing", d.Digest, p), nil
			case err != nil:
				return fmt.Sprintf("blob %s (%s): %v", d.Digest, p, err), nil
			case !fi.Mode().IsRegular():
				return fmt.Sprintf("blob %s (%s) is %s", d.Digest, p, protocol.KindOf(fi.Mode().Type())), nil
			case fi.Size() != d.Size:
				return fmt.Sprintf("blob %s (%s) is %d bytes, its descriptor says %d", d.Digest, p, fi.Size(), d.Size), nil
			}
			if !node {
				if depth == 0 && layout.TooLargeToSniff(d) {
					return fmt.Sprintf("%s: %s root of %d bytes, over the %d-byte limit of a manifest: what it references is unknown", d.Digest, orUnknownType(d.MediaType), d.Size, layout.MaxManifestSize), nil
				}
				return "", nil
			}
			c, err := load(d)
			if err != nil {
				if layout.Sniffed(d, err) {
					return "", nil
				}
				return fmt.Sprintf("manifest %s: %v", d.Digest, err), nil
			}
			for _, kid := range c.Refs {
				r, err := reason(kid, depth+1)
				if err != nil || r != "" {
					return r, err
				}
			}
			return "", nil
		}()
		if err != nil {
			return "", err
		}
		memo[k] = r
		return r, nil
	}
	var out []recovery.Broken
	for i, e := range ix.Entries {
		r, err := reason(e.Desc, 0)
		if err != nil {
			return nil, err
		}
		if r != "" {
			out = append(out, recovery.Broken{Pos: i, Name: e.Name(), Digest: e.Desc.Digest, Reason: r})
		}
	}
	return out, nil
}

// HashBlob hashes the blob file of d (not following a symlink) and
// returns what its content hashes to, with the file's stamp from before
// it was read: if the file still has that stamp, it still holds what was
// hashed.
func HashBlob(ctx context.Context, fsys fsio.FS, d digest.Digest) (digest.Digest, fsio.Stamp, error) {
	if err := layout.ValidateDigest(d); err != nil {
		return "", fsio.Stamp{}, err
	}
	p := layout.BlobPath(d)
	fi, err := fsys.Lstat(p)
	if err != nil {
		return "", fsio.Stamp{}, err
	}
	if !fi.Mode().IsRegular() {
		return "", fsio.Stamp{}, &fs.PathError{Op: "hash", Path: p, Err: fsio.ErrNotRegular}
	}
	stamp := fsio.StampOf(fi)
	got, err := hashFile(ctx, fsys, blobFile{d: d, path: p, size: fi.Size()}, make([]byte, 256<<10), func(int) {})
	if errors.Is(err, errStopped) {
		err = ctx.Err()
	}
	if err != nil {
		return "", fsio.Stamp{}, fmt.Errorf("hash %s: %w", p, err)
	}
	return got, stamp, nil
}

func orUnknownType(mt string) string {
	if mt == "" {
		return "a media-type-less"
	}
	return "a " + mt
}
