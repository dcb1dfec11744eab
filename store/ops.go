package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/layout"
)

// Image is one entry of index.json.
type Image struct {
	// Name is the tag, "" for an untagged entry.
	Name       string        `json:"name"`
	Descriptor v1.Descriptor `json:"descriptor"`
}

// List returns the entries of index.json in file order.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	sn, err := s.current()
	if err != nil {
		return nil, err
	}
	out := make([]Image, 0, len(sn.ix.Entries))
	for _, e := range sn.ix.Entries {
		out = append(out, Image{Name: e.Name(), Descriptor: e.Desc})
	}
	return out, nil
}

// Resolve returns the descriptor a reference names: a tag, or the digest
// of an index.json entry (its descriptor there), or the digest of any
// other manifest or index the layout holds (a platform manifest of an
// index, a referrer without a tag: its descriptor from its content, see
// Stat).
func (s *Store) Resolve(ctx context.Context, ref string) (v1.Descriptor, error) {
	if err := s.reading(ctx); err != nil {
		return v1.Descriptor{}, err
	}
	sn, err := s.current()
	if err != nil {
		return v1.Descriptor{}, err
	}
	pos, err := find(sn.ix, ref)
	if errors.Is(err, errdef.ErrNotFound) {
		if d, isDigest, _ := isDigestRef(ref); isDigest {
			desc, herr := s.resolveHeld(d)
			if herr == nil {
				s.recordUse(d)
				return desc, nil
			}
			if !errors.Is(herr, errdef.ErrNotFound) {
				err = herr
			}
		}
	}
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	d := sn.ix.Entries[pos[0]].Desc
	s.recordUse(d.Digest)
	return d, nil
}

// isDigestRef reports whether ref is meant as a digest (it has an algorithm
// prefix), validating it.
func isDigestRef(ref string) (digest.Digest, bool, error) {
	alg, _, ok := strings.Cut(ref, ":")
	if !ok || !digest.Algorithm(alg).Available() {
		return "", false, nil
	}
	d := digest.Digest(ref)
	if err := layout.ValidateDigest(d); err != nil {
		return "", true, err
	}
	return d, true, nil
}

// find returns the positions of the entries ref names (at least one).
func find(ix *layout.Index, ref string) ([]int, error) {
	if ref == "" {
		return nil, fmt.Errorf("empty reference: %w", errdef.ErrInvalidArgument)
	}
	d, isDigest, err := isDigestRef(ref)
	if err != nil {
		return nil, err
	}
	var pos []int
	if isDigest {
		for i, e := range ix.Entries {
			if e.Desc.Digest == d {
				pos = append(pos, i)
			}
		}
	} else {
		pos = ix.Find(ref)
	}
	if len(pos) == 0 {
		return nil, errdef.ErrNotFound
	}
	return pos, nil
}

// finder returns find over ix, with the names and digests of ix mapped once
// when n references are to be looked up (a linear scan each is quadratic
// for a batch).
func finder(ix *layout.Index, n int) func(ref string) ([]int, error) {
	if n <= 8 {
		return func(ref string) ([]int, error) { return find(ix, ref) }
	}
	byName := make(map[string][]int, len(ix.Entries))
	byDigest := make(map[digest.Digest][]int, len(ix.Entries))
	for i, e := range ix.Entries {
		if name := e.Name(); name != "" {
			byName[name] = append(byName[name], i)
		}
		byDigest[e.Desc.Digest] = append(byDigest[e.Desc.Digest], i)
	}
	return func(ref string) ([]int, error) {
		if ref == "" {
			return nil, fmt.Errorf("empty reference: %w", errdef.ErrInvalidArgument)
		}
		d, isDigest, err := isDigestRef(ref)
		if err != nil {
			return nil, err
		}
		pos := byName[ref]
		if isDigest {
			pos = byDigest[d]
		}
		if len(pos) == 0 {
			return nil, errdef.ErrNotFound
		}
		return pos, nil
	}
}

// opName describes an operation on refs for its journal record: the
// references themselves when they are few, else their number and the first.
func opName(op string, refs []string) string {
	if len(refs) <= 8 {
		return op + " " + strings.Join(refs, ",")
	}
	return fmt.Sprintf("%s %s and %d more", op, refs[0], len(refs)-1)
}

// Reference names.
//
// A name ocistore writes into index.json (the annotation
// org.opencontainers.image.ref.name) must be one that the other tools on the
// layout accept back:
//
//   - every name matches the image-spec grammar of the annotation, which
//     skopeo's oci transport ("Invalid image") and umoci ("invalid
//     characters") enforce:
//     ref ::= component ("/" component)*, component ::= alphanum (separator
//     alphanum)*, alphanum ::= [A-Za-z0-9]+, separator ::= [-._:@+] | "--";
//   - a name with a colon is read as REPO:TAG, as skopeo writes
//     example.com/repo:v1: REPO must be a distribution-spec repository name
//     (lowercase; [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* components joined by
//     "/"), whose first component may be a registry HOST:PORT, and TAG a
//     distribution-spec tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}). A colon
//     followed later by a "/" is a port, not a tag (localhost:5000/repo).
//
// Reads, untag and rm take any name index.json holds, so that a name another
// tool wrote outside these rules can still be looked at and removed.
var (
	refNameRE = regexp.MustCompile(`^` + refComponent + `(?:/` + refComponent + `)*$`)
	repoRE    = regexp.MustCompile(`^` + repoComponent + `(?:/` + repoComponent + `)*$`)
	hostRE    = regexp.MustCompile(`^` + hostLabel + `(?:\.` + hostLabel + `)*:[0-9]+$`)
	tagRE     = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

const (
	refComponent  = `[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*`
	repoComponent = `[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*`
	hostLabel     = `[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?`

	ruleRefName = "invalid reference name: components joined by /, each letters and digits (A-Z, a-z, 0-9) joined by one of - . _ : @ + or --"
	ruleRepo    = "a name with a colon is REPO:TAG, and REPO must be lowercase letters and digits joined by . _ __ or dashes, in components joined by / (the first may be a registry HOST:PORT)"
	ruleTag     = "a name with a colon is REPO:TAG, and TAG must be 1 to 128 letters, digits, _ . or -, not starting with . or -"
)

// validTag reports whether name may be written as a tag (see Reference
// names above); the error, ErrInvalidArgument, states the rule broken.
func validTag(name string) error {
	if name == "" {
		return fmt.Errorf("empty tag: %w", errdef.ErrInvalidArgument)
	}
	if !refNameRE.MatchString(name) {
		return fmt.Errorf("%q: %s: %w", name, ruleRefName, errdef.ErrInvalidArgument)
	}
	if _, isDigest, _ := isDigestRef(name); isDigest {
		return fmt.Errorf("%q looks like a digest, not a tag: %w", name, errdef.ErrInvalidArgument)
	}
	repo, tag, ok := splitRepoTag(name)
	if !ok {
		return nil
	}
	if !validRepo(repo) {
		return fmt.Errorf("%q: repository %q: %s: %w", name, repo, ruleRepo, errdef.ErrInvalidArgument)
	}
	if tag != "" && !tagRE.MatchString(tag) {
		return fmt.Errorf("%q: tag part %q: %s: %w", name, tag, ruleTag, errdef.ErrInvalidArgument)
	}
	return nil
}

// splitRepoTag splits a name with a colon into REPO and TAG at its last
// colon; TAG is "" when a "/" follows that colon (then it is HOST:PORT/REPO).
// ok is false for a name without a colon, a plain tag.
func splitRepoTag(name string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(name, ':')
	if i < 0 {
		return "", "", false
	}
	if strings.Contains(name[i+1:], "/") {
		return name, "", true
	}
	return name[:i], name[i+1:], true
}

// validRepo reports whether repo is a distribution-spec repository name,
// after an optional HOST:PORT first component.
func validRepo(repo string) bool {
	if host, path, ok := strings.Cut(repo, "/"); ok && strings.Contains(host, ":") {
		return hostRE.MatchString(host) && repoRE.MatchString(path)
	}
	return repoRE.MatchString(repo)
}

// Tag names desc in index.json, in one transaction. desc must be a manifest
// or index whose whole graph is in the layout, or a descriptor of another
// media type (or none, as some tools write) that index.json already holds as
// an entry with that media type. A name that pointed elsewhere
// moves; the manifest it left stays as an untagged entry if nothing else
// holds it.
func (s *Store) Tag(ctx context.Context, desc v1.Descriptor, names ...string) error {
	if err := checkTagArgs(desc, names); err != nil {
		return err // it names the tag or the digest it refuses
	}
	_, err := s.updateGrouped(ctx, "tag "+strings.Join(names, ","), func(cur *layout.Index, _ *txn) ([]layout.Entry, error) {
		// The refcounts only look at a manifest's blob when it becomes live:
		// check desc against it here, or a second entry of a live manifest
		// could carry a wrong size into index.json.
		if !layout.IsManifest(desc.MediaType) && !holds(cur.Entries, desc) {
			return nil, fmt.Errorf("media type %q is not a manifest or index: %w", desc.MediaType, errdef.ErrInvalidArgument)
		}
		if err := s.present(desc); err != nil {
			return nil, err
		}
		return withTags(cur.Entries, layout.NewEntry(desc, ""), names), nil
	})
	if err != nil {
		return fmt.Errorf("tag %s as %s: %w", desc.Digest, strings.Join(names, ","), err)
	}
	return nil
}

// holds reports whether one of entries has d's digest and media type.
func holds(entries []layout.Entry, d v1.Descriptor) bool {
	for _, e := range entries {
		if e.Desc.Digest == d.Digest && e.Desc.MediaType == d.MediaType {
			return true
		}
	}
	return false
}

func checkTagArgs(desc v1.Descriptor, names []string) error {
	if err := layout.ValidateDigest(desc.Digest); err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("no tag given: %w", errdef.ErrInvalidArgument)
	}
	for _, n := range names {
		if err := validTag(n); err != nil {
			return err
		}
	}
	return nil
}

// withTags returns entries with each name on an entry like src (src's
// fields, the name set), appended at the end.
// already reports whether the only entry named name is of manifest d.
func already(entries []layout.Entry, name string, d digest.Digest) bool {
	found := false
	for _, e := range entries {
		if e.Name() == name {
			if e.Desc.Digest != d || found {
				return false
			}
			found = true
		}
	}
	return found
}

func withTags(entries []layout.Entry, src layout.Entry, names []string) []layout.Entry {
	out := entries
	for _, n := range names {
		if already(out, n, src.Desc.Digest) {
			continue // a tag that names this manifest already: nothing to do
		}
		out = dropName(out, n)
		// An untagged entry of the same manifest is now redundant.
		kept := make([]layout.Entry, 0, len(out)+1)
		for _, e := range out {
			if e.Name() == "" && e.Desc.Digest == src.Desc.Digest {
				continue
			}
			kept = append(kept, e)
		}
		out = append(kept, src.Renamed(n))
	}
	return out
}

// dropName removes name from entries. An entry that loses its name stays
// where it is, untagged with its other fields kept, unless another entry
// holds the same manifest (then it goes).
func dropName(entries []layout.Entry, name string) []layout.Entry {
	held := map[string]bool{}
	for _, e := range entries {
		if e.Name() != name {
			held[e.Desc.Digest.String()] = true
		}
	}
	out := make([]layout.Entry, 0, len(entries))
	for _, e := range entries {
		if e.Name() != name {
			out = append(out, e)
			continue
		}
		if d := e.Desc.Digest.String(); !held[d] {
			held[d] = true
			out = append(out, e.Renamed(""))
		}
	}
	return out
}

// Untag removes names from index.json in one transaction. It never deletes
// data: a manifest left without a name stays as an untagged entry. Every
// name must exist, or nothing changes.
func (s *Store) Untag(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		return fmt.Errorf("untag: no tag given: %w", errdef.ErrInvalidArgument)
	}
	_, err := s.updateGrouped(ctx, "untag "+strings.Join(names, ","), func(cur *layout.Index, _ *txn) ([]layout.Entry, error) {
		out := cur.Entries
		for _, n := range names {
			if _, isDigest, _ := isDigestRef(n); isDigest {
				return nil, fmt.Errorf("%s is a digest, not a tag: %w", n, errdef.ErrInvalidArgument)
			}
			if len(cur.Find(n)) == 0 {
				return nil, fmt.Errorf("tag %s: %w", n, errdef.ErrNotFound)
			}
			out = dropName(out, n)
		}
		return out, nil
	})
	if err != nil {
		return fmt.Errorf("untag %s: %w", strings.Join(names, ","), err)
	}
	return nil
}

// DeleteOptions tune DeleteWith. A nil *DeleteOptions means the defaults.
type DeleteOptions struct {
	// KeepReferrers keeps the OCI 1.1 referrers (signatures, SBOMs) of the
	// deleted images in index.json; by default they are deleted with them.
	KeepReferrers bool
}

// Delete removes references from index.json and unlinks every blob that only
// they used, in one transaction: all of it or nothing. A tag removes that
// entry (a manifest still named by another tag keeps its blobs); a digest
// removes every entry of that manifest. Every reference must exist.
// The referrers of every manifest that leaves the layout (entries whose
// subject it is: signatures, SBOMs) go too, and theirs; Result.Referrers
// lists them. DeleteWith can keep them.
func (s *Store) Delete(ctx context.Context, refs ...string) (*Result, error) {
	return s.DeleteWith(ctx, refs, nil)
}

// DeleteWith is Delete with options.
func (s *Store) DeleteWith(ctx context.Context, refs []string, o *DeleteOptions) (res *Result, err error) {
	err = s.freeing(ctx, "delete", false, func() error {
		res, err = s.deleteWith(ctx, refs, o)
		return err
	})
	return res, err
}

func (s *Store) deleteWith(ctx context.Context, refs []string, o *DeleteOptions) (*Result, error) {
	var opts DeleteOptions
	if o != nil {
		opts = *o
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("delete: no reference given: %w", errdef.ErrInvalidArgument)
	}
	var cascaded []Image
	res, err := s.updateGrouped(ctx, opName("delete", refs), func(cur *layout.Index, t *txn) ([]layout.Entry, error) {
		dr := newDropper(t, cur.Entries, !opts.KeepReferrers)
		lookup := finder(cur, len(refs))
		var chosen []int
		for _, r := range refs {
			pos, err := lookup(r)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", r, err)
			}
			chosen = append(chosen, pos...)
		}
		if dr.cascade {
			descs := make([]v1.Descriptor, len(chosen))
			for j, p := range chosen {
				descs[j] = cur.Entries[p].Desc
			}
			t.prefetch(descs)
		}
		for _, p := range chosen {
			if !dr.cascade {
				dr.drop[p] = true // no simulation needed
				continue
			}
			if err := dr.remove(p, ""); err != nil {
				return nil, err
			}
		}
		if err := dr.follow(); err != nil {
			return nil, err
		}
		cascaded = nil
		for i, e := range cur.Entries {
			if dr.reason[i] == ReasonReferrer {
				cascaded = append(cascaded, Image{Name: e.Name(), Descriptor: e.Desc})
			}
		}
		return dr.kept(), nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", strings.Join(refs, ","), err)
	}
	res.Referrers = cascaded
	return res, nil
}

// AddUntagged adds each manifest or index of descs to index.json as an
// untagged entry (a root with no name), in one transaction, unless
// index.json already has an entry for it; every blob it references must
// be in the layout. A referrer pushed without a tag (a signature, an SBOM)
// is kept this way: prune removes it with its subject, and untagged entries
// go first in every prune policy.
func (s *Store) AddUntagged(ctx context.Context, descs ...v1.Descriptor) error {
	if len(descs) == 0 {
		return nil
	}
	for _, d := range descs {
		if err := layout.ValidateDigest(d.Digest); err != nil {
			return fmt.Errorf("add untagged %s: %w", d.Digest, err)
		}
		if !layout.IsManifest(d.MediaType) {
			return fmt.Errorf("add untagged %s: media type %q is not a manifest or index: %w", d.Digest, d.MediaType, errdef.ErrInvalidArgument)
		}
	}
	_, err := s.updateGrouped(ctx, opName("add-untagged", digestStrings(descs)), func(cur *layout.Index, _ *txn) ([]layout.Entry, error) {
		out := cur.Entries
		for _, d := range descs {
			if holdsDigest(out, d.Digest) {
				continue
			}
			if err := s.present(d); err != nil {
				return nil, err
			}
			out = append(slices.Clip(out), layout.NewEntry(v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, ArtifactType: d.ArtifactType}, ""))
		}
		return out, nil
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("add untagged: %w", err)
	}
	return nil
}

func holdsDigest(entries []layout.Entry, d digest.Digest) bool {
	for _, e := range entries {
		if e.Desc.Digest == d {
			return true
		}
	}
	return false
}

func digestStrings(descs []v1.Descriptor) []string {
	out := make([]string, len(descs))
	for i, d := range descs {
		out[i] = d.Digest.String()
	}
	return out
}
