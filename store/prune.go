package store

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/recovery"
)

// Policy says what Prune removes. Filters (Refs, Labels) choose the
// candidates; rules (KeepLast, OlderThan/Until, MaxSize, Untagged) choose
// among them. At least one rule must be given. An image is a manifest:
// entries of one manifest (several tags) share its age, labels and last use.
//
//   - KeepLast without OlderThan, Until or MaxSize removes every candidate
//     but the KeepLast newest images of each repository (see Repository).
//     With one of them it only protects those: the other rules remove what
//     they choose among the rest.
//   - OlderThan or Until removes the candidates created before the cutoff
//     (both given: before both).
//   - MaxSize then removes more candidates, untagged ones first, then least
//     recently used first, until the bytes index.json keeps are at most
//     MaxSize. What KeepLast protects stays, so the budget may stay unmet
//     (PruneResult.OverBudget).
//   - Untagged removes every untagged candidate, as podman image prune
//     does, whatever the other rules choose.
//
// Untagged entries go first, as Docker's and podman's dangling images do:
// an untagged root (an index.json entry without a ref name, whose manifest
// no tagged entry names, that no other manifest of the layout references,
// and that is not a referrer) is never protected by KeepLast, and MaxSize
// evicts the untagged roots before any tagged image. An untagged entry that
// a manifest staying in the layout references (a platform manifest of an
// index also listed in index.json) is not a root: it is an image like the
// others. Leases still keep their blobs, and a pin (see PruneResult.Pinned)
// still stops everything.
//
// An image's age is its config's "created" (or its
// org.opencontainers.image.created annotation), else when the store first
// saw it; its last use is the last Resolve or manifest Fetch, else when the
// store first saw it. Ties go to the position in index.json: a later entry
// is newer.
//
// OCI 1.1 referrers (manifests with a subject: signatures, SBOMs) are never
// chosen by a rule: they go with their subject (cascade), and a candidate
// referrer whose subject is no longer in the layout goes too, unless
// KeepReferrers.
type Policy struct {
	KeepLast  int           // keep the newest N images per repository; 0: no such rule
	OlderThan time.Duration // remove images older than this; 0: no such rule
	Until     time.Time     // remove images created before this; zero: no such rule
	MaxSize   int64         // keep the referenced bytes at most this; 0: no budget
	Untagged  bool          // remove every untagged root

	// Refs are globs (path.Match) on tags: an entry whose tag matches none
	// is not a candidate, and untagged entries match none. Empty: every
	// entry is a candidate.
	Refs []string
	// Labels are "key=value" (or "key": present with any value) that the
	// image config's labels must all match.
	Labels []string

	KeepReferrers bool // do not remove referrers with their subjects
	DryRun        bool // report what would go, change nothing

	// Limit, when positive, makes the prune remove at most about that many
	// images (those the rules choose first; the referrers that go with
	// them come on top) and set PruneResult.More when it stopped there:
	// run it again for the rest. A registry prunes in such batches, so
	// that a push never waits for the writer lock longer than one batch.
	Limit int

	// Linger keeps the blobs the prune frees for this long, in a lease
	// of their own (Result.Lingering), before GC may remove them: a
	// client that read a pruned image's manifest just before (a pull
	// through `ocistore serve`) can still fetch every blob it names. The
	// budget counts the bytes index.json keeps, so it is met at once;
	// the disk gets the space back at the first GC after Linger.
	Linger time.Duration
}

// Reasons a prune removes an entry.
const (
	ReasonKeepLast         = "keep-last"         // not among the newest KeepLast of its repository
	ReasonOlderThan        = "older-than"        // created before the cutoff
	ReasonMaxSize          = "max-size"          // evicted to meet the size budget
	ReasonUntagged         = "untagged"          // an untagged root (Policy.Untagged)
	ReasonReferrer         = "referrer"          // its subject was removed
	ReasonDanglingReferrer = "dangling-referrer" // its subject is not in the layout
)

// PrunedImage is an entry a prune removed.
type PrunedImage struct {
	Name       string `json:"name"` // "" for an untagged entry
	Digest     string `json:"digest"`
	Repository string `json:"repository"`
	Reason     string `json:"reason"`
}

// PruneResult describes a prune. Freed lists the blobs unlinked (or, for a
// dry run, that would be); blobs a lease holds are not among them.
type PruneResult struct {
	Result
	DryRun  bool          `json:"dryRun"`
	Removed []PrunedImage `json:"removed"`
	// SizeBefore and SizeAfter are the bytes index.json keeps (what
	// MaxSize budgets) before and after.
	SizeBefore int64 `json:"sizeBefore"`
	SizeAfter  int64 `json:"sizeAfter"`
	// OverBudget is set when MaxSize could not be met by removing what
	// the policy allows.
	OverBudget bool `json:"overBudget,omitempty"`
	// More is set when Policy.Limit stopped the prune before it removed
	// all it would have: another prune removes more.
	More bool `json:"more,omitempty"`
	// Recovery, for a dry run only, is what the recovery that a real run
	// does first would do (recount after another tool's write, finish an
	// interrupted transaction): the plan is of the layout after it.
	Recovery []recovery.Action `json:"recovery,omitempty"`
}

// errDryRun rolls back a dry run after its plan.
var errDryRun = errors.New("dry run")

// Validate checks that p can be applied.
func (p *Policy) Validate() error {
	switch {
	case p.KeepLast < 0:
		return fmt.Errorf("KeepLast %d: %w", p.KeepLast, errdef.ErrInvalidArgument)
	case p.OlderThan < 0:
		return fmt.Errorf("OlderThan %s: %w", p.OlderThan, errdef.ErrInvalidArgument)
	case p.MaxSize < 0:
		return fmt.Errorf("MaxSize %d: %w", p.MaxSize, errdef.ErrInvalidArgument)
	case p.Limit < 0:
		return fmt.Errorf("policy Limit %d: %w", p.Limit, errdef.ErrInvalidArgument)
	case p.Linger < 0:
		return fmt.Errorf("policy Linger %s: %w", p.Linger, errdef.ErrInvalidArgument)
	case p.KeepLast == 0 && p.OlderThan == 0 && p.Until.IsZero() && p.MaxSize == 0 && !p.Untagged:
		return fmt.Errorf("no rule: set KeepLast, OlderThan, Until, MaxSize or Untagged: %w", errdef.ErrInvalidArgument)
	}
	for _, r := range p.Refs {
		if _, err := path.Match(r, ""); err != nil {
			return fmt.Errorf("ref filter %q: %w: %v", r, errdef.ErrInvalidArgument, err)
		}
	}
	for _, l := range p.Labels {
		if k, _, _ := strings.Cut(l, "="); k == "" {
			return fmt.Errorf("label filter %q: no key: %w", l, errdef.ErrInvalidArgument)
		}
	}
	return nil
}

// Prune removes the images the policy chooses, with every blob only they
// used, in ONE transaction whatever their number: one journal record, one
// index.json write, one sync per touched directory. It reads the journal's
// image metadata, not the manifests, except those of the images it removes.
func (s *Store) Prune(ctx context.Context, p Policy) (res *PruneResult, err error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	err = s.freeing(ctx, "prune", p.DryRun, func() error {
		res, err = s.prune(ctx, p)
		return err
	})
	return res, err
}

func (s *Store) prune(ctx context.Context, p Policy) (*PruneResult, error) {
	out := &PruneResult{DryRun: p.DryRun, Removed: []PrunedImage{}}
	plan := func(cur *layout.Index, t *txn) ([]layout.Entry, error) {
		*out = PruneResult{DryRun: p.DryRun, Removed: []PrunedImage{}} // a retry starts over
		// A prune is for space: while freeing is not allowed (pinReason)
		// it would free nothing, so it removes nothing either; its plan
		// (and a dry run's estimate) never runs pinned.
		if out.Pinned = pinReason(t.tx, t.now); out.Pinned != "" {
			return nil, errDryRun
		}
		t.linger = p.Linger
		entries, err := s.planPrune(cur, t, &p, out)
		if err != nil {
			return nil, err
		}
		if p.DryRun {
			return nil, errDryRun
		}
		return entries, nil
	}
	var res *Result
	var err error
	if p.DryRun {
		var acts []recovery.Action
		acts, err = s.updateDry(ctx, "prune", plan)
		if err == nil {
			out.Recovery, err = acts, errDryRun
		}
	} else {
		res, err = s.update(ctx, "prune", plan)
	}
	switch {
	case errors.Is(err, errDryRun):
		if out.Pinned != "" {
			s.log.Warn("prune: nothing removed", "why", out.Pinned)
		}
		return out, nil
	case err != nil:
		return nil, fmt.Errorf("prune: %w", err)
	}
	out.Result = *res
	if out.SizeAfter < 0 {
		out.SizeAfter = out.SizeBefore - res.BytesFreed
		if err := s.journalRead(func(tx *journal.Tx) error {
			live, err := tx.LiveBytes()
			if err == nil {
				out.SizeAfter = live
			}
			return err
		}); err != nil {
			s.log.Debug("prune: live bytes after the commit not read", "err", err)
		}
	}
	if len(out.Removed) > 0 {
		s.log.Info("pruned", attrTxn, res.Txn, "images", len(out.Removed), "blobs", len(res.Freed), "bytes", res.BytesFreed, "lingering", len(res.Lingering))
	}
	return out, nil
}

// pruneEntry is what the plan knows of one index.json entry.
type pruneEntry struct {
	repo      string
	meta      journal.ImageMeta
	age, used time.Time
	candidate bool // matches the filters
	untagged  bool // an untagged root: goes first (see Policy)
}

func (s *Store) planPrune(cur *layout.Index, t *txn, p *Policy, out *PruneResult) ([]layout.Entry, error) {
	entries := cur.Entries
	info, err := s.pruneInfo(t, entries, p)
	if err != nil {
		return nil, err
	}
	if err := s.markUntaggedRoots(t, entries, info); err != nil {
		return nil, err
	}
	protected := keepLastProtected(entries, info, p.KeepLast)
	isProtected := func(i int) bool { return protected[info[i].repo+" "+entries[i].Desc.Digest.String()] }

	dr := newDropper(t, entries, !p.KeepReferrers)
	dr.limit = p.Limit
	// The refcount simulation tells what the removals free: the budget
	// needs it as it goes, a dry run for its report, the cascade to find
	// the referrers of what goes. Otherwise the transaction's own count
	// says it (SizeAfter is read after the commit).
	dr.simulate = p.MaxSize > 0 || p.DryRun || dr.cascade
	if err := pruneByRules(t, dr, entries, info, p, isProtected); err != nil {
		return nil, err
	}
	if !p.KeepReferrers {
		if err := pruneDanglingReferrers(t, dr, info); err != nil {
			return nil, err
		}
	}
	if err := dr.follow(); err != nil {
		return nil, err
	}
	live, err := pruneToBudget(t, dr, info, p, isProtected, out)
	if err != nil {
		return nil, err
	}
	out.SizeBefore, out.SizeAfter = live, live-dr.freedBytes()
	if !dr.simulate {
		out.SizeAfter = -1 // read after the commit
	}
	for i, e := range entries {
		if dr.drop[i] {
			out.Removed = append(out.Removed, PrunedImage{Name: e.Name(), Digest: e.Desc.Digest.String(), Repository: info[i].repo, Reason: dr.reason[i]})
		}
	}
	if p.DryRun {
		if err := s.wouldFree(t, dr.sim.Freed, &out.Result); err != nil {
			return nil, err
		}
	}
	return dr.kept(), nil
}

// pruneInfo gives each entry its repository, its image metadata, its age
// and last use, and whether the policy's refs and labels select it.
func (s *Store) pruneInfo(t *txn, entries []layout.Entry, p *Policy) ([]pruneEntry, error) {
	info := make([]pruneEntry, len(entries))
	metas := make(map[digest.Digest]journal.ImageMeta, len(entries))
	if len(entries) > 64 {
		// One walk of the image metadata rather than a lookup per entry.
		// A damaged record stops the walk: then each entry is looked up,
		// and only a damaged record of an image in the index fails.
		if err := t.tx.ForEachImage(func(d digest.Digest, m journal.ImageMeta) error {
			metas[d] = m
			return nil
		}); err != nil {
			clear(metas)
		}
	}
	for i, e := range entries {
		m, ok := metas[e.Desc.Digest]
		if !ok {
			var err error
			if m, ok, err = t.tx.GetImage(e.Desc.Digest); err != nil {
				return nil, err
			}
			if !ok {
				m = s.describeImage(t, e.Desc) // cannot happen: the writer keeps them
			}
			metas[e.Desc.Digest] = m
		}
		pe := pruneEntry{repo: Repository(e.Name()), meta: m, age: m.Created, used: m.LastUsed}
		if pe.age.IsZero() {
			pe.age = m.FirstSeen
		}
		if pe.used.IsZero() {
			pe.used = m.FirstSeen
		}
		pe.candidate = matchRefs(p.Refs, e.Name()) && matchLabels(p.Labels, m.Labels)
		info[i] = pe
	}
	return info, nil
}

// keepLastProtected returns the newest keepLast images (distinct
// manifests) of each repository, among the candidates that are neither
// referrers nor untagged roots, as repo + " " + digest.
func keepLastProtected(entries []layout.Entry, info []pruneEntry, keepLast int) map[string]bool {
	protected := map[string]bool{} // repo + " " + digest
	if keepLast > 0 {
		type img struct {
			d   digest.Digest
			age time.Time
			pos int // last position in index.json
		}
		byRepo := map[string][]*img{}
		seen := map[string]*img{}
		for i, e := range entries {
			pe := &info[i]
			if !pe.candidate || pe.meta.Subject != "" || pe.untagged {
				continue
			}
			k := pe.repo + " " + e.Desc.Digest.String()
			if im := seen[k]; im != nil {
				im.pos = i
				continue
			}
			im := &img{d: e.Desc.Digest, age: pe.age, pos: i}
			seen[k] = im
			byRepo[pe.repo] = append(byRepo[pe.repo], im)
		}
		for repo, ims := range byRepo {
			sort.Slice(ims, func(a, b int) bool {
				if !ims[a].age.Equal(ims[b].age) {
					return ims[a].age.After(ims[b].age)
				}
				return ims[a].pos > ims[b].pos
			})
			for _, im := range ims[:min(keepLast, len(ims))] {
				protected[repo+" "+im.d.String()] = true
			}
		}
	}
	return protected
}

// pruneByRules removes the candidates the untagged rule, the age rule
// (older than the cutoff) or, alone, the keep-last rule selects.
func pruneByRules(t *txn, dr *dropper, entries []layout.Entry, info []pruneEntry, p *Policy, isProtected func(int) bool) error {
	hasAge := p.OlderThan > 0 || !p.Until.IsZero()
	var cutoff time.Time
	if p.OlderThan > 0 {
		cutoff = t.now.Add(-p.OlderThan)
	}
	if !p.Until.IsZero() && (cutoff.IsZero() || p.Until.Before(cutoff)) {
		cutoff = p.Until
	}
	var chosen []int
	var reasons []string
	for i := range entries {
		pe := &info[i]
		if !pe.candidate || pe.meta.Subject != "" {
			continue
		}
		switch {
		case p.Untagged && pe.untagged:
			chosen, reasons = append(chosen, i), append(reasons, ReasonUntagged)
		case isProtected(i):
		case hasAge && pe.age.Before(cutoff):
			chosen, reasons = append(chosen, i), append(reasons, ReasonOlderThan)
		case !hasAge && p.MaxSize == 0 && p.KeepLast > 0:
			chosen, reasons = append(chosen, i), append(reasons, ReasonKeepLast)
		}
	}
	if dr.simulate {
		descs := make([]v1.Descriptor, len(chosen))
		for j, i := range chosen {
			descs[j] = entries[i].Desc
		}
		t.prefetch(descs)
	}
	for j, i := range chosen {
		if dr.full() {
			break
		}
		if err := dr.remove(i, reasons[j]); err != nil {
			return err
		}
	}
	return nil
}

// pruneDanglingReferrers removes the referrers whose subject was gone
// before this prune.
func pruneDanglingReferrers(t *txn, dr *dropper, info []pruneEntry) error {
	for i := range info {
		pe := &info[i]
		if !pe.candidate || pe.meta.Subject == "" || dr.drop[i] {
			continue
		}
		r, err := t.tx.GetRef(pe.meta.Subject)
		if err != nil {
			return err
		}
		if r.Count == 0 {
			if err := dr.remove(i, ReasonDanglingReferrer); err != nil {
				return err
			}
		}
	}
	return nil
}

// pruneToBudget removes the untagged roots, then the least recently used
// candidates, while the layout is over p.MaxSize. It returns the live bytes before the prune.
func pruneToBudget(t *txn, dr *dropper, info []pruneEntry, p *Policy, isProtected func(int) bool, out *PruneResult) (int64, error) {
	live, err := t.tx.LiveBytes()
	if err != nil {
		return 0, err
	}
	if p.MaxSize > 0 && live-dr.freedBytes() > p.MaxSize {
		var lru []int
		for i := range info {
			pe := &info[i]
			if pe.candidate && pe.meta.Subject == "" && !isProtected(i) && !dr.drop[i] {
				lru = append(lru, i)
			}
		}
		sort.SliceStable(lru, func(a, b int) bool {
			x, y := &info[lru[a]], &info[lru[b]]
			if x.untagged != y.untagged {
				return x.untagged // untagged roots first
			}
			if !x.used.Equal(y.used) {
				return x.used.Before(y.used)
			}
			if !x.age.Equal(y.age) {
				return x.age.Before(y.age)
			}
			return lru[a] < lru[b]
		})
		for _, i := range lru {
			if live-dr.freedBytes() <= p.MaxSize || dr.full() {
				break
			}
			if err := dr.remove(i, ReasonMaxSize); err != nil {
				return 0, err
			}
			if err := dr.follow(); err != nil {
				return 0, err
			}
		}
		out.OverBudget = !dr.more && live-dr.freedBytes() > p.MaxSize
	}
	out.More = dr.more
	return live, nil
}

// markUntaggedRoots marks the untagged roots among entries (see Policy):
// untagged candidates, not referrers, their manifest named by no tagged
// entry and referenced by no manifest that stays. An untagged index and the untagged
// entries of its own platform manifests are roots together. It reads the
// children the journal recorded for each manifest of the layout (a
// manifest only when a Ref does not record them), and only when there is
// an untagged entry.
func (s *Store) markUntaggedRoots(t *txn, entries []layout.Entry, info []pruneEntry) error {
	tagged := map[digest.Digest]bool{}
	for _, e := range entries {
		if e.Name() != "" {
			tagged[e.Desc.Digest] = true
		}
	}
	roots := map[digest.Digest]bool{} // untagged roots, so far
	for i, e := range entries {
		if e.Name() == "" && info[i].candidate && info[i].meta.Subject == "" && !tagged[e.Desc.Digest] {
			roots[e.Desc.Digest] = true
		}
	}
	if len(roots) == 0 {
		return nil
	}
	// parents[d]: the entries' manifests whose graph reaches the untagged
	// entry d below its root.
	parents := map[digest.Digest]map[digest.Digest]bool{}
	kids := map[digest.Digest][]v1.Descriptor{}
	walked := map[digest.Digest]bool{}
	for _, e := range entries {
		root := e.Desc
		if walked[root.Digest] {
			continue
		}
		walked[root.Digest] = true
		seen := map[digest.Digest]bool{root.Digest: true}
		stack := []v1.Descriptor{root}
		for len(stack) > 0 {
			d := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			ks, ok := kids[d.Digest]
			if !ok {
				var err error
				if ks, err = s.recordedChildren(t, d, d.Digest == root.Digest); err != nil {
					return err
				}
				kids[d.Digest] = ks
			}
			for _, k := range ks {
				if seen[k.Digest] {
					continue
				}
				seen[k.Digest] = true
				if roots[k.Digest] {
					if parents[k.Digest] == nil {
						parents[k.Digest] = map[digest.Digest]bool{}
					}
					parents[k.Digest][root.Digest] = true
				}
				if layout.IsManifest(k.MediaType) {
					stack = append(stack, k)
				}
			}
		}
	}
	// An untagged entry that a manifest staying in the layout references
	// is not a root; what only untagged roots reference is one.
	for changed := true; changed; {
		changed = false
		for d := range roots {
			for p := range parents[d] {
				if !roots[p] {
					delete(roots, d)
					changed = true
					break
				}
			}
		}
	}
	for i, e := range entries {
		info[i].untagged = e.Name() == "" && roots[e.Desc.Digest]
	}
	return nil
}

// recordedChildren returns the children of d, a live manifest or index (or
// a root, which may be one whatever its media type): those its Ref
// records, else read from the blob. A leaf has none.
func (s *Store) recordedChildren(t *txn, d v1.Descriptor, root bool) ([]v1.Descriptor, error) {
	r, err := t.tx.GetRef(d.Digest)
	if err != nil {
		return nil, err
	}
	switch {
	case r.Expanded && r.Children != nil:
		return r.Children, nil
	case !r.Expanded || !layout.Parsed(d, root):
		return nil, nil // a leaf (a closure that is unknown pins the prune before its plan)
	}
	c, err := t.load(d)
	switch {
	case err == nil:
		return c.Refs, nil
	case layout.Sniffed(d, err):
		return nil, nil
	}
	return nil, err
}

// wouldFree fills res with what unlinking freed would free: not the blobs
// a lease holds, nor those not on disk.
func (s *Store) wouldFree(t *txn, freed []v1.Descriptor, res *Result) error {
	kept, err := withoutLeased(t.tx, freed, t.now)
	if err != nil {
		return err
	}
	res.Freed = nil
	paths := make([]string, len(kept))
	for i, f := range kept {
		paths[i] = layout.BlobPath(f.Digest)
	}
	infos := fsio.LstatFiles(s.lay.FS, paths)
	for i, f := range kept {
		if infos[i] == nil {
			continue
		}
		res.Freed = append(res.Freed, Blob{Digest: f.Digest.String(), Size: f.Size})
		res.BytesFreed += f.Size
	}
	return nil
}

func matchRefs(globs []string, name string) bool {
	if len(globs) == 0 {
		return true
	}
	if name == "" {
		return false
	}
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

func matchLabels(filters []string, labels map[string]string) bool {
	for _, f := range filters {
		k, v, hasValue := strings.Cut(f, "=")
		got, ok := labels[k]
		if !ok || hasValue && got != v {
			return false
		}
	}
	return true
}

// dropper removes entries from an index plan and simulates the refcount
// decrements on an overlay of the journal, so that the plan knows what the
// removals free: for the size budget, and to find the referrers whose
// subject goes with them.
type dropper struct {
	t        *txn
	entries  []layout.Entry
	drop     []bool
	reason   []string
	byDigest map[digest.Digest][]int
	sim      *refcount.Counter
	simulate bool // run the refcount decrements on sim (else only mark)
	cascade  bool
	followed int   // sim.Freed entries already looked at for referrers
	counted  int   // sim.Freed entries summed into freed
	freed    int64 // bytes of sim.Freed[:counted]
	removed  int   // entries dropped
	limit    int   // Policy.Limit: stop choosing at this many (0: no limit)
	more     bool  // the limit stopped a choice
}

// full reports whether the limit of entries to drop is reached (and notes
// that a choice stopped there).
func (d *dropper) full() bool {
	if d.limit > 0 && d.removed >= d.limit {
		d.more = true
	}
	return d.more
}

func newDropper(t *txn, entries []layout.Entry, cascade bool) *dropper {
	return &dropper{
		t: t, entries: entries, drop: make([]bool, len(entries)), reason: make([]string, len(entries)),
		sim:      &refcount.Counter{T: &refcount.Overlay{Base: t.tx}, Load: t.load},
		simulate: true,
		cascade:  cascade && t.tx.HasReferrers(),
	}
}

// remove drops entry i for reason.
func (d *dropper) remove(i int, reason string) error {
	if d.drop[i] {
		return nil
	}
	d.drop[i], d.reason[i] = true, reason
	d.removed++
	if !d.simulate {
		return nil
	}
	return d.sim.Dec(d.entries[i].Desc)
}

// follow drops the referrers of every manifest freed so far (and theirs),
// when cascading.
func (d *dropper) follow() error {
	if !d.cascade {
		return nil
	}
	for ; d.followed < len(d.sim.Freed); d.followed++ {
		refs := d.t.tx.Referrers(d.sim.Freed[d.followed].Digest)
		if len(refs) == 0 {
			continue
		}
		if d.byDigest == nil {
			d.byDigest = map[digest.Digest][]int{}
			for i, e := range d.entries {
				d.byDigest[e.Desc.Digest] = append(d.byDigest[e.Desc.Digest], i)
			}
		}
		for _, r := range refs {
			for _, i := range d.byDigest[r] {
				if err := d.remove(i, ReasonReferrer); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// freedBytes is the size of what the removals so far free.
func (d *dropper) freedBytes() int64 {
	for ; d.counted < len(d.sim.Freed); d.counted++ {
		d.freed += d.sim.Freed[d.counted].Size
	}
	return d.freed
}

// kept returns the entries not dropped, in order.
func (d *dropper) kept() []layout.Entry {
	out := make([]layout.Entry, 0, len(d.entries))
	for i, e := range d.entries {
		if !d.drop[i] {
			out = append(out, e)
		}
	}
	return out
}
