package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

// Commands on the images of index.json: ls, inspect, tag, untag, rm.

var lsCmd = &command{
	name:    "ls",
	summary: "list the images of the layout",
	help: `Prints one row per index.json entry: its tag (<none> when untagged), digest,
media type and size. SIZE is the size of the image's whole graph: for an image
manifest, manifest + config + layers; for an index, the index and every
platform's graph, a blob shared by several counted once. It is computed from
the descriptors; only manifests are read.

JSON output (docs/JSON.md) is an array of {ref, repository, tag, untagged,
digest, mediaType, size, totalSize}: ref is the tag, null when untagged, and
repository and tag its parts; size is the manifest's own size, totalSize the
graph's (null when a manifest of the graph cannot be read; run ocistore
fsck).`,
	maxArgs: 0,
	format:  true,
	run:     runLs,
}

// entryRow is an index.json entry in JSON: its name (entryRef) and its
// descriptor's digest, media type and size.
type entryRow struct {
	entryRef
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
}

func rowOf(im store.Image) entryRow {
	d := im.Descriptor
	return entryRow{entryRef: refOf(im.Name), Digest: d.Digest.String(), MediaType: d.MediaType, Size: d.Size}
}

type lsRow struct {
	entryRow
	TotalSize *int64 `json:"totalSize"` // null when the graph cannot be read
}

func runLs(ctx context.Context, a *app, _ []string) error {
	return a.withReadStore(ctx, func(s *store.Store) error {
		imgs, err := s.List(ctx)
		if err != nil {
			return err
		}
		sz := newSizer(s)
		descs := make([]v1.Descriptor, len(imgs))
		for i, im := range imgs {
			descs[i] = im.Descriptor
		}
		sz.sizeAll(ctx, descs)
		rows := make([]lsRow, 0, len(imgs))
		for _, im := range imgs {
			d := im.Descriptor
			r := lsRow{entryRow: rowOf(im)}
			if _, total, err := sz.size(ctx, d); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				a.log.Warn("cannot size image", "image", displayName(im.Name), "digest", d.Digest, "err", err)
			} else {
				r.TotalSize = &total
			}
			rows = append(rows, r)
		}
		if a.json() {
			return a.printJSON(rows)
		}
		tw := a.table()
		fmt.Fprintln(tw, "TAG\tDIGEST\tMEDIA TYPE\tSIZE")
		for _, r := range rows {
			size := "?"
			if r.TotalSize != nil {
				size = humanSize(*r.TotalSize)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", displayName(r.name()), r.Digest, r.MediaType, size)
		}
		return tw.Flush()
	})
}

func displayName(name string) string {
	if name == "" {
		return "<none>"
	}
	return name
}

var inspectCmd = &command{
	name:    "inspect",
	args:    "REF",
	summary: "show an image: its descriptor, config, layers or platforms, totals",
	help: `REF is a tag or a digest (sha256:...). Prints the index.json descriptor, every
tag of the same manifest, and the manifest summarized: for an image, its
config and layers with sizes; for an index, its manifests with platform and
the size of each one's graph. Totals count the distinct blobs of the graph.

JSON output (docs/JSON.md): {reference, refs, untagged, descriptor, then the
manifest's own mediaType, artifactType, config, layers, manifests, blobs,
subject and annotations (each present when the manifest has it),
manifestSizes (an index only), totalBlobs, totalSize}.

Exit status 2 when REF is not in index.json.`,
	minArgs: 1,
	maxArgs: 1,
	format:  true,
	run:     runInspect,
}

type inspectOutput struct {
	Reference string `json:"reference"` // REF as given
	// Refs are the ref names of every entry of the manifest; Untagged is
	// set when it has none.
	Refs       []string      `json:"refs"`
	Untagged   bool          `json:"untagged"`
	Descriptor v1.Descriptor `json:"descriptor"`
	manifestDoc
	// Sizes of each manifest's graph, for an index: digest -> total size.
	ManifestSizes map[string]int64 `json:"manifestSizes,omitempty"`
	TotalBlobs    int              `json:"totalBlobs"`
	TotalSize     int64            `json:"totalSize"`
}

// withResolved opens the layout with open (a.withStore or a.withReadStore)
// and runs fn with the descriptor ref resolves to. A malformed digest is a
// usage error before the layout is opened.
func (a *app) withResolved(ctx context.Context, open func(context.Context, func(*store.Store) error) error, ref string,
	fn func(s *store.Store, desc v1.Descriptor) error) error {
	if err := checkRef(ref); err != nil {
		return err
	}
	return open(ctx, func(s *store.Store) error {
		desc, err := s.Resolve(ctx, ref)
		if err != nil {
			return err
		}
		return fn(s, desc)
	})
}

func runInspect(ctx context.Context, a *app, args []string) error {
	ref := args[0]
	return a.withResolved(ctx, a.withReadStore, ref, func(s *store.Store, desc v1.Descriptor) error {
		imgs, err := s.List(ctx)
		if err != nil {
			return err
		}
		out := inspectOutput{Reference: ref, Refs: []string{}, Descriptor: desc}
		for _, im := range imgs {
			if im.Descriptor.Digest == desc.Digest && im.Name != "" {
				out.Refs = append(out.Refs, im.Name)
			}
		}
		out.Untagged = len(out.Refs) == 0
		sz := newSizer(s)
		if store.IsManifest(desc.MediaType) {
			b, err := readManifest(ctx, s, desc)
			if err != nil {
				return err
			}
			doc, err := parseManifestDoc(desc, b)
			if err != nil {
				return err
			}
			out.manifestDoc = *doc
		}
		for _, m := range out.Manifests {
			_, n, err := sz.size(ctx, m)
			if err != nil {
				return err
			}
			if out.ManifestSizes == nil {
				out.ManifestSizes = map[string]int64{}
			}
			out.ManifestSizes[m.Digest.String()] = n
		}
		if out.TotalBlobs, out.TotalSize, err = sz.size(ctx, desc); err != nil {
			return err
		}
		if a.json() {
			return a.printJSON(out)
		}
		return printInspect(a, &out)
	})
}

func printInspect(a *app, o *inspectOutput) error {
	tw := a.table()
	d := o.Descriptor
	fmt.Fprintf(tw, "Reference:\t%s\n", o.Reference)
	tags := strings.Join(o.Refs, ", ")
	if tags == "" {
		tags = "<none>"
	}
	fmt.Fprintf(tw, "Tags:\t%s\n", tags)
	fmt.Fprintf(tw, "Digest:\t%s\n", d.Digest)
	fmt.Fprintf(tw, "Media type:\t%s\n", d.MediaType)
	if o.ArtifactType != "" {
		fmt.Fprintf(tw, "Artifact type:\t%s\n", o.ArtifactType)
	}
	fmt.Fprintf(tw, "Size:\t%s\n", sizeWithBytes(d.Size))
	if p := platformString(d.Platform); p != "" {
		fmt.Fprintf(tw, "Platform:\t%s\n", p)
	}
	if o.Subject != nil {
		fmt.Fprintf(tw, "Subject:\t%s\n", o.Subject.Digest)
	}
	if o.Config != nil {
		fmt.Fprintf(tw, "Config:\t%s\t%s\t%s\n", o.Config.Digest, humanSize(o.Config.Size), o.Config.MediaType)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	list := func(title string, ds []v1.Descriptor, row func(v1.Descriptor) string) error {
		if len(ds) == 0 {
			return nil
		}
		fmt.Fprintf(a.stdout, "%s (%d):\n", title, len(ds))
		tw := a.table()
		for _, d := range ds {
			fmt.Fprintf(tw, "  %s\n", row(d))
		}
		return tw.Flush()
	}
	blobRow := func(d v1.Descriptor) string {
		return fmt.Sprintf("%s\t%s\t%s", d.Digest, humanSize(d.Size), d.MediaType)
	}
	if err := list("Layers", o.Layers, blobRow); err != nil {
		return err
	}
	if err := list("Blobs", o.Blobs, blobRow); err != nil {
		return err
	}
	err := list("Manifests", o.Manifests, func(d v1.Descriptor) string {
		p := platformString(d.Platform)
		if p == "" {
			p = "-"
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s", d.Digest, p, humanSize(o.ManifestSizes[d.Digest.String()]), d.MediaType)
	})
	if err != nil {
		return err
	}
	if len(o.Annotations) > 0 {
		keys := make([]string, 0, len(o.Annotations))
		for k := range o.Annotations {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintln(a.stdout, "Annotations:")
		for _, k := range keys {
			fmt.Fprintf(a.stdout, "  %s=%s\n", k, o.Annotations[k])
		}
	}
	_, err = fmt.Fprintf(a.stdout, "Total: %s, %s\n", plural(o.TotalBlobs, "blob", "blobs"), sizeWithBytes(o.TotalSize))
	return err
}

// checkRef rejects a reference that is meant as a digest but is malformed, as
// a usage error, before the store is opened.
func checkRef(ref string) error {
	if ref == "" {
		return usagef("empty reference")
	}
	alg, _, ok := strings.Cut(ref, ":")
	if ok && digest.Algorithm(alg).Available() {
		if err := digest.Digest(ref).Validate(); err != nil {
			return usagef("%q is not a valid digest: %v", ref, err)
		}
	}
	return nil
}

func checkRefs(refs []string) error {
	for _, r := range refs {
		if err := checkRef(r); err != nil {
			return err
		}
	}
	return nil
}

var tagCmd = &command{
	name:    "tag",
	args:    "SRC DST...",
	summary: "add tags to an image",
	help: `SRC is a tag or a digest already in index.json; each DST becomes a tag of the
same manifest, in one transaction. A DST that named another manifest moves;
that manifest stays in index.json as an untagged entry (ocistore rm deletes it).`,
	minArgs: 2,
	maxArgs: -1,
	run:     runTag,
}

func runTag(ctx context.Context, a *app, args []string) error {
	src, dsts := args[0], args[1:]
	return a.withResolved(ctx, a.withStore, src, func(s *store.Store, desc v1.Descriptor) error {
		if err := s.Tag(ctx, desc, dsts...); err != nil {
			return err
		}
		for _, d := range dsts {
			fmt.Fprintf(a.stdout, "tagged %s as %s\n", desc.Digest, d)
		}
		return nil
	})
}

var untagCmd = &command{
	name:    "untag",
	args:    "TAG...",
	summary: "remove tags (never deletes data)",
	help: `Removes each TAG from index.json, in one transaction; every TAG must exist or
nothing changes. A manifest left without a tag stays in index.json as an
untagged entry: use ocistore rm to delete images and free their blobs.`,
	minArgs: 1,
	maxArgs: -1,
	run:     runUntag,
}

func runUntag(ctx context.Context, a *app, args []string) error {
	return a.withStore(ctx, func(s *store.Store) error {
		if err := s.Untag(ctx, args...); err != nil {
			return err
		}
		for _, t := range args {
			fmt.Fprintf(a.stdout, "untagged %s\n", t)
		}
		return nil
	})
}

var rmCmd = &command{
	name:    "rm",
	args:    "REF...",
	summary: "delete images and the blobs only they used",
	help: `Removes each REF from index.json and unlinks every blob that no remaining
image uses, in one transaction: all of it or nothing. A tag removes that entry
(a manifest still named by another tag keeps its blobs); a digest removes
every entry of that manifest. Every REF must exist: if one is not found,
exit status is 2 and nothing is deleted.

The OCI 1.1 referrers of every image that leaves the layout (signatures,
SBOMs: manifests whose subject it is) are removed with it, and theirs, unless
--keep-referrers.

Prints the removed references, each freed blob with its size, and the total.
JSON output (docs/JSON.md): {removed, referrers: [{ref, repository, tag,
untagged, digest, mediaType, size}], txn, freed: [{digest, size}],
bytesFreed, pinned, kept}.`,
	flagHelp: `      --keep-referrers  keep the referrers (signatures, SBOMs) of removed images`,
	minArgs:  1,
	maxArgs:  -1,
	format:   true,
	flags: func(fs *flag.FlagSet, a *app) {
		fs.BoolVar(&a.opts.keepReferrers, "keep-referrers", false, "keep referrers")
	},
	run: runRm,
}

type rmOutput struct {
	Removed   []string   `json:"removed"`   // the REF arguments, as given
	Referrers []entryRow `json:"referrers"` // removed with their subjects
	freedJSON
}

func runRm(ctx context.Context, a *app, args []string) error {
	if err := checkRefs(args); err != nil {
		return err
	}
	return a.withStore(ctx, func(s *store.Store) error {
		res, err := s.DeleteWith(ctx, args, &store.DeleteOptions{KeepReferrers: a.opts.keepReferrers})
		if err != nil {
			return err
		}
		if a.json() {
			out := rmOutput{Removed: args, Referrers: []entryRow{}, freedJSON: freedOf(res)}
			for _, r := range res.Referrers {
				out.Referrers = append(out.Referrers, rowOf(r))
			}
			return a.printJSON(out)
		}
		for _, r := range args {
			fmt.Fprintf(a.stdout, "removed %s\n", r)
		}
		for _, r := range res.Referrers {
			fmt.Fprintf(a.stdout, "removed referrer %s (%s)\n", displayName(r.Name), r.Descriptor.Digest)
		}
		tw := a.table()
		for _, b := range res.Freed {
			fmt.Fprintf(tw, "freed\t%s\t%s\n", b.Digest, humanSize(b.Size))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "freed %s, %s\n", plural(len(res.Freed), "blob", "blobs"), sizeWithBytes(res.BytesFreed))
		a.warnPinned(res.Pinned, len(res.Kept))
		return err
	})
}

// warnPinned says on stderr why blobs were kept that the command would
// have freed (store.Result.Pinned); kept is how many, -1 when unknown.
func (a *app) warnPinned(why string, kept int) {
	if why == "" {
		return
	}
	what := "nothing freed"
	if kept > 0 {
		what = fmt.Sprintf("kept %s that would have been freed", plural(kept, "blob", "blobs"))
	}
	fmt.Fprintf(a.stderr, "ocistore: warning: %s: %s\n", what, why)
}
