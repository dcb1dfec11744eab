package main

import (
	"context"
	"fmt"

	"github.com/ocistore/ocistore/store"
)

var importCmd = &command{
	name:    "import",
	args:    "SRC-LAYOUT [REF...]",
	summary: "copy images from another OCI layout",
	help: `Copies the images named by each REF (a tag or a digest in SRC-LAYOUT's
index.json), or every image when no REF is given, from the OCI image layout
SRC-LAYOUT into this one, keeping their tags. Blobs are copied first
(verified against their digest and size, synced); then every image is added
to index.json in one transaction, so a crash or Ctrl-C leaves either all of
them or none. Blobs already here are not copied again.

JSON output (docs/JSON.md): {images: [{ref, repository, tag, untagged,
digest, mediaType, size}], blobsCopied, bytesCopied}: images are the entries
added to index.json.

Exit status 2 when a REF is not in SRC-LAYOUT.`,
	minArgs: 1,
	maxArgs: -1,
	format:  true,
	run:     runImport,
}

type importOutput struct {
	Images      []entryRow `json:"images"` // the entries added to index.json
	BlobsCopied int        `json:"blobsCopied"`
	BytesCopied int64      `json:"bytesCopied"`
}

func runImport(ctx context.Context, a *app, args []string) error {
	src, refs := args[0], args[1:]
	if err := checkRefs(refs); err != nil {
		return err
	}
	return a.withStore(ctx, func(s *store.Store) error {
		p := startProgress(a.stderr, isTerminal(a.stderr), "importing from "+src)
		res, err := s.ImportWith(ctx, src, refs, &store.ImportOptions{
			Progress: func(done, total int) { p.Set(int64(done), int64(total)) },
		})
		p.Stop()
		if err != nil {
			return err
		}
		if a.json() {
			out := importOutput{Images: []entryRow{}, BlobsCopied: res.BlobsCopied, BytesCopied: res.BytesCopied}
			for _, im := range res.Images {
				out.Images = append(out.Images, rowOf(im))
			}
			return a.printJSON(out)
		}
		tw := a.table()
		for _, im := range res.Images {
			fmt.Fprintf(tw, "imported\t%s\t%s\n", displayName(im.Name), im.Descriptor.Digest)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "imported %s from %s: %s copied, %s\n", plural(len(res.Images), "image", "images"), src,
			plural(res.BlobsCopied, "blob", "blobs"), sizeWithBytes(res.BytesCopied))
		return err
	})
}
