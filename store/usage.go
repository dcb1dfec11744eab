package store

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// UntaggedRepository is the repository of index.json entries without a
// name (Repository's result for ""). It is a Go value, for grouping: the
// JSON of the command line never carries it (an untagged entry has no
// repository there, and "untagged": true).
const UntaggedRepository = "<none>"

// Repository returns the repository an index.json entry's name belongs to:
// the part before the tag ("example.com/app" for "example.com/app:1.0"),
// "" for a name without a tag part ("latest", "localhost:5000/app": a ':'
// before the last '/' is a port), and UntaggedRepository for an untagged
// entry. Names without a tag part form one group, the layout's own. A
// digest reference ("app@sha256:...") belongs to the repository before '@'.
func Repository(name string) string {
	if name == "" {
		return UntaggedRepository
	}
	repo, _ := SplitRef(name)
	return repo
}

// SplitRef splits an index.json entry's name (its
// org.opencontainers.image.ref.name) into its repository, as Repository
// returns it, and its tag: "example.com/app:1.0" is "example.com/app" and
// "1.0"; a name with no ':', '/' or '@' is a tag alone, as OCI layouts
// usually name their entries ("latest": "" and "latest"); a name with no
// tag part has the tag "" ("localhost:5000/app", "app@sha256:..."). An
// untagged entry ("") has neither: "" and "".
func SplitRef(name string) (repository, tag string) {
	if name == "" {
		return "", ""
	}
	repo, _, byDigest := strings.Cut(name, "@")
	if byDigest && repo != "" {
		name = repo // a digest reference, "app@sha256:...", maybe "app:1@sha256:..."
	}
	i := strings.LastIndexByte(name, ':')
	switch {
	case i >= 0 && i > strings.LastIndexByte(name, '/'):
		return name[:i], name[i+1:]
	case byDigest && repo != "":
		return repo, ""
	case !strings.ContainsAny(name, ":/@"):
		return "", name
	}
	return "", ""
}

// UsageOptions tune Usage.
type UsageOptions struct {
	// Grace is GC's grace period, for ReclaimableBytes.
	Grace time.Duration
}

// Usage is the space a layout takes, by blob file.
type Usage struct {
	// Images are the entries of index.json, tagged or not, as
	// recovery.Report.Images counts them (and ls lists them); Manifests
	// the distinct manifests they name (two tags of one manifest are two
	// images, one manifest).
	Images    int `json:"images"`
	Manifests int `json:"manifests"`
	Blobs     int `json:"blobs"` // blob files on disk
	// TotalBytes is the size of every blob file: ReferencedBytes +
	// OrphanBytes (+ OtherLayoutsBytes with a shared blob directory).
	TotalBytes      int64 `json:"totalBytes"`
	ReferencedBytes int64 `json:"referencedBytes"` // blobs reachable from index.json
	// UniqueBytes are reachable blobs used by exactly one image (manifest),
	// SharedBytes those used by several: they sum to ReferencedBytes.
	UniqueBytes int64 `json:"uniqueBytes"`
	SharedBytes int64 `json:"sharedBytes"`
	// OrphanBytes are blobs nothing reachable uses; of them, LeasedBytes a
	// live lease holds, YoungBytes are within the grace period, and the
	// rest, ReclaimableBytes, is what GC with that grace removes.
	OrphanBytes int64 `json:"orphanBytes"`
	// OtherLayoutsBytes are blobs of a shared blob directory that this
	// layout does not use and other layouts sharing it do (not orphans).
	OtherLayoutsBytes int64             `json:"otherLayoutsBytes,omitempty"`
	LeasedBytes       int64             `json:"leasedBytes"`
	YoungBytes        int64             `json:"youngBytes"`
	ReclaimableBytes  int64             `json:"reclaimableBytes"`
	Repositories      []RepositoryUsage `json:"repositories"`
	// Unreadable lists manifests that could not be read (fsck tells why):
	// their children are not counted.
	Unreadable []string `json:"unreadable,omitempty"`
}

// RepositoryUsage is the space of one repository's images.
type RepositoryUsage struct {
	Name string `json:"name"` // see Repository; UntaggedRepository for the untagged entries
	// Untagged is set for the group of the untagged entries (Name is
	// UntaggedRepository), not for names without a repository part (Name
	// is "").
	Untagged  bool `json:"untagged"`
	Images    int  `json:"images"`    // index.json entries
	Manifests int  `json:"manifests"` // distinct manifests
	// TotalBytes counts each blob of its images once; UniqueBytes only the
	// blobs no other repository uses (what removing the repository frees);
	// SharedBytes the rest.
	TotalBytes  int64 `json:"totalBytes"`
	UniqueBytes int64 `json:"uniqueBytes"`
	SharedBytes int64 `json:"sharedBytes"`
}

// Usage measures the layout: every manifest reachable from index.json is
// read (as ls does), the blob directories are listed, no other blob is read.
// It takes no lock: it describes the last committed index.json.
func (s *Store) Usage(ctx context.Context, o UsageOptions) (*Usage, error) {
	u, err := s.usage(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	return u, nil
}

// blobUse is what the walk knows of one reachable blob.
type blobUse struct {
	image, repo      int // first image and repository that use it
	images, repos    bool
	imageSeen, repoS int // last image / repository that counted it (1-based)
}

func (s *Store) usage(ctx context.Context, o UsageOptions) (*Usage, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	sn, err := s.current()
	if err != nil {
		return nil, err
	}
	now := s.now()
	var gr GCResult
	files, err := s.listBlobs(ctx, now.Add(-o.Grace), &gr)
	if err != nil {
		return nil, err
	}
	onDisk := make(map[digest.Digest]gcCandidate, len(files))
	u := &Usage{Blobs: len(files), Repositories: []RepositoryUsage{}}
	for _, f := range files {
		onDisk[f.d] = f
		u.TotalBytes += f.size
	}
	images := usageImages(u, sn.ix.Entries)
	uses, kids, err := s.usageWalk(ctx, u, images)
	if err != nil {
		return nil, err
	}
	usageTotals(u, images, uses, kids, onDisk)
	if err := s.usageOrphans(u, files, uses, now); err != nil {
		return nil, err
	}
	sort.SliceStable(u.Repositories, func(i, j int) bool { return u.Repositories[i].Name < u.Repositories[j].Name })
	return u, nil
}

// usageImage is a distinct image of a repository.
type usageImage struct {
	desc v1.Descriptor
	repo int // index in Usage.Repositories
}

// usageImages counts u's images and manifests, fills its repositories with
// theirs, and returns the distinct manifests of each repository, in index
// order.
func usageImages(u *Usage, entries []layout.Entry) []usageImage {
	// Repositories and their distinct images, in index order.
	repoIdx := map[string]int{}
	var images []usageImage
	seenImage := map[string]bool{} // repo index + digest
	seenDigest := map[digest.Digest]bool{}
	u.Images = len(entries)
	for _, e := range entries {
		name := Repository(e.Name())
		ri, ok := repoIdx[name]
		if !ok {
			ri = len(u.Repositories)
			repoIdx[name] = ri
			u.Repositories = append(u.Repositories, RepositoryUsage{Name: name, Untagged: e.Name() == ""})
		}
		u.Repositories[ri].Images++
		k := fmt.Sprintf("%d %s", ri, e.Desc.Digest)
		if seenImage[k] {
			continue
		}
		seenImage[k] = true
		u.Repositories[ri].Manifests++
		images = append(images, usageImage{desc: e.Desc, repo: ri})
		if !seenDigest[e.Desc.Digest] {
			seenDigest[e.Desc.Digest] = true
			u.Manifests++
		}
	}
	return images
}

// usageWalk walks each image's graph once: a blob remembers the first
// image and repository that used it and whether another did. It returns
// the blobs' uses and the children of each manifest it read.
func (s *Store) usageWalk(ctx context.Context, u *Usage, images []usageImage) (map[digest.Digest]*blobUse, map[digest.Digest][]v1.Descriptor, error) {
	uses := map[digest.Digest]*blobUse{}
	kids := map[digest.Digest][]v1.Descriptor{}
	load := readAheadChildren(ctx, layout.LoadChildren(s.lay.FS), images)
	imageNo := map[digest.Digest]int{} // an image tagged in two repositories is one image
	for i, im := range images {
		no, ok := imageNo[im.desc.Digest]
		if !ok {
			no = i + 1
			imageNo[im.desc.Digest] = no
		}
		rno := im.repo + 1
		var walk func(d v1.Descriptor, depth int) error
		walk = func(d v1.Descriptor, depth int) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := uses[d.Digest]
			if b == nil {
				b = &blobUse{image: no, repo: rno}
				uses[d.Digest] = b
			}
			if b.imageSeen == no && b.repoS == rno {
				return nil // this image already went through here
			}
			if b.image != no {
				b.images = true
			}
			if b.repo != rno {
				b.repos = true
			}
			b.imageSeen, b.repoS = no, rno
			if depth > layout.MaxDepth || !layout.Parsed(d, depth == 0) {
				return nil
			}
			ks, ok := kids[d.Digest]
			if !ok {
				c, err := load(d)
				if err != nil && !layout.Sniffed(d, err) {
					u.Unreadable = append(u.Unreadable, d.Digest.String())
					s.log.Warn("usage: cannot read a manifest; its children are not counted", attrDigest, d.Digest, "err", err)
				}
				ks = c.Refs
				kids[d.Digest] = ks
			}
			for _, k := range ks {
				if err := walk(k, depth+1); err != nil {
					return err
				}
			}
			return nil
		}
		if err := walk(im.desc, 0); err != nil {
			return nil, nil, err
		}
	}
	return uses, kids, nil
}

// usageTotals adds up the bytes of each repository (each blob once per
// repository: a second pass over the graphs, from the cached children) and
// of the layout: referenced, shared, unique.
func usageTotals(u *Usage, images []usageImage, uses map[digest.Digest]*blobUse, kids map[digest.Digest][]v1.Descriptor, onDisk map[digest.Digest]gcCandidate) {
	perRepo := make([]map[digest.Digest]bool, len(u.Repositories))
	for i := range perRepo {
		perRepo[i] = map[digest.Digest]bool{}
	}
	for _, im := range images {
		seen := perRepo[im.repo]
		var walk func(d v1.Descriptor, depth int)
		walk = func(d v1.Descriptor, depth int) {
			if seen[d.Digest] || depth > layout.MaxDepth {
				return
			}
			seen[d.Digest] = true
			for _, k := range kids[d.Digest] {
				walk(k, depth+1)
			}
		}
		walk(im.desc, 0)
	}
	for ri, blobs := range perRepo {
		r := &u.Repositories[ri]
		for d := range blobs {
			f, ok := onDisk[d]
			if !ok {
				continue // a foreign layer, or missing (fsck says so)
			}
			r.TotalBytes += f.size
			if uses[d].repos {
				r.SharedBytes += f.size
			} else {
				r.UniqueBytes += f.size
			}
		}
	}
	for d, b := range uses {
		f, ok := onDisk[d]
		if !ok {
			continue
		}
		u.ReferencedBytes += f.size
		if b.images {
			u.SharedBytes += f.size
		} else {
			u.UniqueBytes += f.size
		}
	}
}

// usageOrphans adds up the blobs nothing in the layout references: those
// other layouts of a shared blob directory use, and of the rest (orphans)
// what a lease holds, what is too young, and what GC would take.
func (s *Store) usageOrphans(u *Usage, files []gcCandidate, uses map[digest.Digest]*blobUse, now time.Time) error {
	var leased map[digest.Digest]bool
	others := map[digest.Digest]bool{} // used by other layouts sharing the blob directory
	if err := s.journalRead(func(tx *journal.Tx) error {
		var err error
		if leased, err = tx.Leased(now); err != nil || s.lay.Scope == "" {
			return err
		}
		for _, f := range files {
			if _, ok := uses[f.d]; ok {
				continue
			}
			r, err := tx.GetRef(f.d)
			if err != nil {
				return err
			}
			others[f.d] = r.Count > 0
		}
		return nil
	}); err != nil {
		return fmt.Errorf("leases: %w", err)
	}
	for _, f := range files {
		if _, ok := uses[f.d]; ok {
			continue
		}
		if others[f.d] {
			u.OtherLayoutsBytes += f.size
			continue
		}
		u.OrphanBytes += f.size
		switch {
		case leased[f.d]:
			u.LeasedBytes += f.size
		case f.young:
			u.YoungBytes += f.size
		default:
			u.ReclaimableBytes += f.size
		}
	}
	return nil
}

// childrenKey names a descriptor as a read of its children depends on it
// (the read checks the size; the media type decides how it parses).
type childrenKey struct {
	d    digest.Digest
	size int64
	mt   string
}

type childrenRead struct {
	c      layout.Children
	err    error
	loaded bool // false: queued, not read (the walk reads it)
}

// readAheadChildren reads, on every core, the children of the manifests
// and indexes the walk of images will read, level by level (a level is
// the children of the one before, as the walk's rules pick them: roots
// as roots, the others by media type), and returns a load that answers
// from what was read, and reads anything else itself. The walk itself
// stays sequential; it read 100,000 manifests one by one (2.5 s).
func readAheadChildren(ctx context.Context, load func(v1.Descriptor) (layout.Children, error), images []usageImage) func(v1.Descriptor) (layout.Children, error) {
	done := make(map[childrenKey]childrenRead, len(images))
	var level []v1.Descriptor
	for _, im := range images {
		if k := (childrenKey{im.desc.Digest, im.desc.Size, im.desc.MediaType}); layout.Parsed(im.desc, true) {
			if _, ok := done[k]; !ok {
				done[k] = childrenRead{}
				level = append(level, im.desc)
			}
		}
	}
	workers := runtime.GOMAXPROCS(0)
	for depth := 0; len(level) > 0 && depth <= layout.MaxDepth && ctx.Err() == nil; depth++ {
		got := make([]childrenRead, len(level))
		per := (len(level) + workers - 1) / workers
		var wg sync.WaitGroup
		for w := range workers {
			lo, hi := min(w*per, len(level)), min((w+1)*per, len(level))
			wg.Go(func() {
				for i := lo; i < hi && ctx.Err() == nil; i++ {
					got[i].c, got[i].err = load(level[i])
					got[i].loaded = true
				}
			})
		}
		wg.Wait()
		var next []v1.Descriptor
		for i, d := range level {
			if !got[i].loaded {
				continue // ctx ended
			}
			done[childrenKey{d.Digest, d.Size, d.MediaType}] = got[i]
			for _, k := range got[i].c.Refs {
				key := childrenKey{k.Digest, k.Size, k.MediaType}
				if _, ok := done[key]; !ok && layout.Parsed(k, false) {
					done[key] = childrenRead{}
					next = append(next, k)
				}
			}
		}
		level = next
	}
	if ctx.Err() != nil {
		return load
	}
	return func(d v1.Descriptor) (layout.Children, error) {
		if r := done[childrenKey{d.Digest, d.Size, d.MediaType}]; r.loaded {
			return r.c, r.err
		}
		return load(d)
	}
}
