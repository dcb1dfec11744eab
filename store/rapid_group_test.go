package store_test

// Group commit in the model (rapid_test.go): changes that free and
// reference again the same blobs, committed as ONE transaction, in every
// order. Within a group each change sees the index and the refcounts the
// ones before it left; the blob files are unlinked only after the group's
// commit, so a change may reference again what an earlier one freed, and
// then those blobs stay. The model applies the members in order, each to
// the model the previous one left (a member that fails changes nothing and
// gets its error), and checks: each caller's error, that the successful
// members share one transaction, each caller's freed list (the group frees
// what a member freed and no later one used again, each blob reported by
// the last member that freed it), the journal record
// of the group (its unlink list is exactly the blobs the group frees:
// nothing a later member uses again), the crash state right after the
// journal commit (foreign-readable, and recovered to the group's result),
// then the model's invariants (Check).
//
// The crash state right after the group's journal commit is taken by an
// errorfs hook in this process (no crash point: every build has it).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"pgregory.net/rapid"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/testing/memfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// rpChange is one member of a group.
type rpChange struct {
	what string
	call func(ctx context.Context, s *store.Store) (*store.Result, error)
	// effect returns the model after the change, applied to cur (what the
	// members before it left), or the error the change must fail with.
	// present is the blob files at the start of the group: a group unlinks
	// nothing before its commit.
	effect func(m *rpMachine, cur rpModel, present map[digest.Digest]bool) (rpModel, error)
}

func rpDeleteChange(refs ...string) rpChange {
	return rpChange{
		what: fmt.Sprintf("Delete %v", rpShortRefs(refs)),
		call: func(ctx context.Context, s *store.Store) (*store.Result, error) { return s.Delete(ctx, refs...) },
		effect: func(_ *rpMachine, cur rpModel, _ map[digest.Digest]bool) (rpModel, error) {
			return rpDelete(cur, refs)
		},
	}
}

func rpTagChange(desc v1.Descriptor, names ...string) rpChange {
	return rpChange{
		what: fmt.Sprintf("Tag %s %v", rpShort(desc.Digest), names),
		call: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return nil, s.Tag(ctx, desc, names...)
		},
		effect: func(m *rpMachine, cur rpModel, present map[digest.Digest]bool) (rpModel, error) {
			if !m.graphIn(desc.Digest, present) {
				return cur, store.ErrMissingDependency
			}
			next := cur.clone()
			for _, n := range names {
				next.tag(desc.Digest, n)
			}
			return next, nil
		},
	}
}

func rpUntagChange(names ...string) rpChange {
	return rpChange{
		what: fmt.Sprintf("Untag %v", names),
		call: func(ctx context.Context, s *store.Store) (*store.Result, error) { return nil, s.Untag(ctx, names...) },
		effect: func(_ *rpMachine, cur rpModel, _ map[digest.Digest]bool) (rpModel, error) {
			for _, n := range names {
				if _, ok := cur.tags[n]; !ok {
					return cur, store.ErrNotFound
				}
			}
			next := cur.clone()
			for _, n := range names {
				next.untag(n)
			}
			return next, nil
		},
	}
}

// rpCommitGroup runs calls as ONE group commit, in this order: it holds the
// store's writer, starts each call and waits until its change is queued
// (or the call returned without queuing one: an invalid argument), then
// lets the writer go. Nothing is timed.
func rpCommitGroup(ctx context.Context, s *store.Store, changes []rpChange) ([]*store.Result, []error) {
	res := make([]*store.Result, len(changes))
	errs := make([]error, len(changes))
	release := store.HoldWriter(s)
	var wg sync.WaitGroup
	queued := 0
	for i, c := range changes {
		done := make(chan struct{})
		wg.Go(func() {
			defer close(done)
			res[i], errs[i] = c.call(ctx, s)
		})
		if rpWaitQueued(s, queued+1, done) {
			queued++
		}
	}
	release()
	wg.Wait()
	return res, errs
}

// rpWaitQueued waits until n changes are queued (true), or done is closed
// first (false).
func rpWaitQueued(s *store.Store, n int, done <-chan struct{}) bool {
	for store.QueuedChanges(s) < n {
		select {
		case <-done:
			return store.QueuedChanges(s) >= n
		default:
			runtime.Gosched()
		}
	}
	return true
}

// group commits changes as one group and checks the outcome against the
// model (see the file comment), then makes it the model.
func (m *rpMachine) group(t *rapid.T, changes []rpChange) {
	var whats []string
	for _, c := range changes {
		whats = append(whats, c.what)
	}
	m.step(t, "Group of %d: %v", len(changes), whats)

	// The model: each member applied to what the previous ones left.
	present := m.m.present
	states := []rpModel{m.m.clone()}
	wantErr := make([]error, len(changes))
	owner := map[digest.Digest]int{} // the last member to free each blob
	frees := map[digest.Digest]int{} // how many members free it
	for i, c := range changes {
		cur := states[len(states)-1]
		next, err := c.effect(m, cur, present)
		wantErr[i] = err
		if err != nil {
			rpStats.add("Group(member refused)")
			next = cur
		}
		before, after := m.closure(cur.roots()), m.closure(next.roots())
		for d := range before {
			if !after[d] {
				owner[d] = i
				frees[d]++
			}
		}
		states = append(states, next)
	}
	final := states[len(states)-1].clone()
	unchanged := rpSameTags(final.tags, m.m.tags) && rpSameSet(final.untagged, m.m.untagged)

	// The journal and the file system right after the group's journal
	// commit: a crash there must leave the whole group, once recovered.
	var journalAt []byte
	var crashAt *memfs.Crash
	mem := m.mem
	snap := func() {
		crashAt = mem.Snapshot()
		journalAt, _ = os.ReadFile(filepath.Join(m.dir, journalRel))
	}
	m.journaled.Store(&snap)
	res, errs := rpCommitGroup(m.ctx, m.s, changes)
	m.journaled.Store(nil)

	// The group unlinks what a member freed and no later member used
	// again (a blob may also enter and leave the closure within the
	// group), but for the blobs the lease holds; unless it commits
	// nothing: a group that leaves index.json as it was (same entries, in
	// the same order) is no transaction, and the blobs that passed through
	// it stay as they were (orphans).
	gone := map[digest.Digest]bool{}
	switch {
	case journalAt == nil && !unchanged:
		m.fail(t, "the group changed the tags (%v untagged %v, was %v untagged %v) without a journal commit", final.tags, rpSorted(final.untagged), m.m.tags, rpSorted(m.m.untagged))
	case journalAt == nil:
		rpStats.add("Group(no change)")
	default:
		after := m.closure(final.roots())
		again := false
		for d, n := range frees {
			switch {
			case after[d] || n > 1:
				again = true
			case m.m.leased[d]:
				rpStats.add("Group(kept a leased blob)")
			}
			if !after[d] && !m.m.leased[d] {
				gone[d] = true
				delete(final.present, d)
			}
		}
		if again {
			rpStats.add("Group(freed, then used again)")
		}
	}
	if len(gone) > 0 {
		rpStats.add("Group(frees)")
	}

	var txns []uint64
	for i := range changes {
		switch {
		case wantErr[i] != nil && !errors.Is(errs[i], wantErr[i]):
			m.fail(t, "group member %d (%s): got %v, want %v", i, changes[i].what, errs[i], wantErr[i])
		case wantErr[i] != nil:
			continue
		case errs[i] != nil:
			m.fail(t, "group member %d (%s): %v", i, changes[i].what, errs[i])
		}
		var want []digest.Digest
		for d := range gone {
			if owner[d] == i {
				want = append(want, d)
			}
		}
		got := freedList(res[i])
		if res[i] != nil {
			txns = append(txns, res[i].Txn)
		}
		sort.Slice(want, func(a, b int) bool { return want[a] < want[b] })
		if fmt.Sprint(got) != fmt.Sprint(want) && (res[i] != nil || len(want) > 0) {
			m.fail(t, "group member %d (%s) freed %v, want %v (the blobs the group frees that it was the last to free)", i, changes[i].what, got, want)
		}
	}
	for _, id := range txns {
		if id != txns[0] {
			m.fail(t, "the members of one group were committed in transactions %v, want one", txns)
		}
	}

	if journalAt != nil {
		m.checkGroupCrash(t, crashAt, journalAt, final, gone)
	}
	m.m = final
}

// checkGroupCrash checks the crash state right after a group's journal
// commit: its one pending record unlinks exactly gone (nothing a later
// member references again), a foreign reader can read the layout, and
// recovery ends with the group's result, want.
func (m *rpMachine) checkGroupCrash(t *rapid.T, c *memfs.Crash, jb []byte, want rpModel, gone map[digest.Digest]bool) {
	keep := make([]bool, c.Items()) // what was written, synced or not: index.json is not yet
	for i := range keep {
		keep[i] = true
	}
	dir := m.newDir(t)
	defer os.RemoveAll(dir)
	mem, err := materialize(dir, t1Event{crash: c, journal: jb}, keep)
	if err != nil {
		m.fail(t, "harness: %v", err)
	}
	db, err := journal.Open(filepath.Join(dir, journalRel), journal.Options{ReadOnly: true, LockTimeout: -1})
	if err != nil {
		m.fail(t, "crash after the group's journal commit: journal: %v", err)
	}
	var recs []*journal.Record
	err = db.View(func(tx *journal.Tx) error {
		var err error
		recs, err = tx.Pending()
		return err
	})
	db.Close()
	if err != nil || len(recs) != 1 {
		m.fail(t, "crash after the group's journal commit: %d pending records (%v), want 1", len(recs), err)
	}
	unlink := map[digest.Digest]bool{}
	for _, d := range recs[0].Unlink {
		unlink[d] = true
	}
	if !rpSameSet(unlink, gone) {
		m.fail(t, "the group's journal record (%s) unlinks %v, want exactly the blobs the group frees %v", recs[0].Op, rpSorted(unlink), rpSorted(gone))
	}
	if err := testutil.ForeignReadableFS(mem, nil); err != nil {
		m.fail(t, "crash after the group's journal commit: foreign reader, before recovery: %v", err)
	}
	o := &store.Options{LockTimeout: -1}
	store.SetTestFS(o, m.fs(mem))
	s, err := store.Open(m.ctx, dir, o)
	if err != nil {
		m.fail(t, "crash after the group's journal commit: recovery: %v", err)
	}
	defer s.Close()
	imgs, err := s.List(m.ctx)
	if err != nil {
		m.fail(t, "crash after the group's journal commit: list: %v", err)
	}
	tags, untagged := map[string]digest.Digest{}, map[digest.Digest]bool{}
	for _, im := range imgs {
		if im.Name == "" {
			untagged[im.Descriptor.Digest] = true
		} else {
			tags[im.Name] = im.Descriptor.Digest
		}
	}
	if !rpSameTags(tags, want.tags) || !rpSameSet(untagged, want.untagged) {
		m.fail(t, "crash after the group's journal commit, recovered: tags %v untagged %v, want the group's %v untagged %v", tags, rpSorted(untagged), want.tags, rpSorted(want.untagged))
	}
	if files := blobSet(mem); !rpSameSet(files, want.present) {
		m.fail(t, "crash after the group's journal commit, recovered: blob files %v, want %v", rpSorted(files), rpSorted(want.present))
	}
	rpStats.add("Group(crash after its journal commit)")
}

// Group commits two to four changes as one group, most of them about one
// manifest (the focus): deletes of its tags or its digest, tags of it
// (which reference again what an earlier member freed), untags, a tag of
// another manifest, a delete of a tag that may be missing (a member whose
// plan fails next to ones that succeed). The focus is first given zero,
// one or two tags (one acknowledged Tag outside the group).
func (m *rpMachine) Group(t *rapid.T) {
	if !slices.ContainsFunc(m.manifests, m.canTag) {
		t.Skip("no manifest whose graph is all present")
	}
	focus := m.blobs[m.drawWhere(t, m.manifests, m.canTag, "focus")].desc
	if k := rapid.SampledFrom([]int{0, 1, 1, 2, 2}).Draw(t, "pretags"); k > 0 && m.canTag(focus.Digest) {
		names := rapid.SliceOfNDistinct(rapid.SampledFrom(rpTags), k, k, rapid.ID[string]).Draw(t, "pretag names")
		m.step(t, "Tag %s %v (before the group)", rpShort(focus.Digest), names)
		if err := m.s.Tag(m.ctx, focus, names...); err != nil {
			m.fail(t, "Tag: %v", err)
		}
		for _, n := range names {
			m.m.tag(focus.Digest, n)
		}
	}
	tagOf := func(label string) string {
		var own []string
		for n, d := range m.m.tags {
			if d == focus.Digest {
				own = append(own, n)
			}
		}
		sort.Strings(own)
		if len(own) > 0 && rapid.IntRange(0, 3).Draw(t, label+" own") > 0 {
			return rapid.SampledFrom(own).Draw(t, label)
		}
		return rapid.SampledFrom(rpTags).Draw(t, label)
	}
	n := rapid.IntRange(2, 4).Draw(t, "members")
	var changes []rpChange
	for range n {
		switch rapid.IntRange(0, 8).Draw(t, "member") {
		case 0, 1, 2:
			changes = append(changes, rpDeleteChange(tagOf("delete")))
		case 3:
			changes = append(changes, rpDeleteChange(focus.Digest.String()))
		case 4, 5:
			names := rapid.SliceOfN(rapid.SampledFrom(rpTags), 1, 2).Draw(t, "tag names")
			changes = append(changes, rpTagChange(focus, names...))
		case 6:
			changes = append(changes, rpUntagChange(tagOf("untag")))
		case 7:
			other := m.blobs[m.drawWhere(t, m.manifests, m.canTag, "other")].desc
			changes = append(changes, rpTagChange(other, rapid.SampledFrom(rpTags).Draw(t, "other name")))
		default:
			changes = append(changes, rpDeleteChange(rapid.SampledFrom(rpTags).Draw(t, "any tag")))
		}
	}
	m.group(t, changes)
}

// TestRapidGroupInterleavings runs, once each, the interleavings of a group
// commit that free and reference again the same blobs, through the model's
// group check (rapid_group_test.go): a delete of tag a and a tag of the
// same manifest as b in both orders, an untag and a retag, the delete of
// one of two tags, of both, a member whose plan fails (a missing tag, a
// manifest freed earlier) or whose refcounts fail (a layer never stored:
// the group is retried without it) next to ones that succeed, a manifest
// freed, referenced again and freed again in one group.
func TestRapidGroupInterleavings(t *testing.T) {
	rpSetFlags(t, map[string]string{"rapid.checks": "1", "rapid.nofailfile": "true"})
	type scenario struct {
		name    string
		pretags []string // the image's tags before the group
		group   func(img, other, broken v1.Descriptor) []rpChange
	}
	for _, sc := range []scenario{
		{"delete-a-then-tag-b", []string{"a"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange("a"), rpTagChange(img, "b")}
		}},
		{"tag-b-then-delete-a", []string{"a"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpTagChange(img, "b"), rpDeleteChange("a")}
		}},
		{"delete-digest-then-tag", []string{"a", "b"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange(img.Digest.String()), rpTagChange(img, "c")}
		}},
		{"untag-then-retag", []string{"a"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpUntagChange("a"), rpTagChange(img, "a")}
		}},
		{"untag-delete-digest-retag", []string{"a"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpUntagChange("a"), rpDeleteChange(img.Digest.String()), rpTagChange(img, "a")}
		}},
		{"delete-one-of-two-tags", []string{"a", "b"}, func(_, other, _ v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange("a"), rpTagChange(other, "x")}
		}},
		{"delete-both-tags", []string{"a", "b"}, func(_, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange("a"), rpDeleteChange("b")}
		}},
		{"delete-tag-delete-free-again", []string{"a"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange("a"), rpTagChange(img, "b"), rpDeleteChange("b")}
		}},
		{"plan-error-in-the-middle", []string{"a"}, func(img, _, _ v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange("a"), rpDeleteChange("no-such-tag"), rpTagChange(img, "b"), rpUntagChange("no-such-tag")}
		}},
		{"refcount-error-in-the-middle", []string{"a"}, func(img, _, broken v1.Descriptor) []rpChange {
			return []rpChange{rpDeleteChange("a"), rpTagChange(broken, "broken"), rpTagChange(img, "b")}
		}},
		{"refcount-error-first", []string{"a"}, func(img, _, broken v1.Descriptor) []rpChange {
			return []rpChange{rpTagChange(broken, "broken"), rpDeleteChange("a"), rpTagChange(img, "b")}
		}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			base := rpTempDir(t)
			rapid.Check(t, func(rt *rapid.T) {
				m := rpNewMachine(rt, base, "")
				shared := m.rawBlob(rt, "shared layer")
				img := m.image(rt, shared, "img", sc.pretags...)
				other := m.image(rt, shared, "other", "other")
				// A manifest whose layer was never stored: tagging it
				// fails while its refcounts are applied.
				broken := m.manifest(rt, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromString("never stored"), Size: 12}, "broken")
				m.Check(rt)
				m.group(rt, sc.group(img, other, broken))
				m.Check(rt)
			})
		})
	}
}

// rawBlob puts a leaf blob with content s.
func (m *rpMachine) rawBlob(t *rapid.T, s string) v1.Descriptor {
	b := &rpBlob{desc: v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromString(s), Size: int64(len(s))}, content: []byte(s)}
	if err := m.s.PutBlob(m.ctx, b.desc, bytes.NewReader(b.content)); err != nil {
		m.fail(t, "PutBlob: %v", err)
	}
	m.remember(b)
	m.m.present[b.desc.Digest] = true
	return b.desc
}

// image puts an image of its own config and layer (by name) and shared,
// tagged names.
func (m *rpMachine) image(t *rapid.T, shared v1.Descriptor, name string, names ...string) v1.Descriptor {
	d := m.manifest(t, shared, name)
	if len(names) > 0 {
		if err := m.s.Tag(m.ctx, d, names...); err != nil {
			m.fail(t, "Tag: %v", err)
		}
		for _, n := range names {
			m.m.tag(d.Digest, n)
		}
	}
	return d
}

// manifest puts a manifest of a config and a layer of its own (by name)
// and layer, untagged. When layer is not stored, the manifest is put as a
// blob (PutManifest would refuse it).
func (m *rpMachine) manifest(t *rapid.T, layer v1.Descriptor, name string) v1.Descriptor {
	cfg := m.rawBlob(t, "config of "+name)
	cfg.MediaType = v1.MediaTypeImageConfig
	own := m.rawBlob(t, "layer of "+name)
	kids := []v1.Descriptor{cfg, own, layer}
	content := rpMarshal(t, v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: kids[1:]})
	desc := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(content), Size: int64(len(content))}
	var err error
	if m.m.present[layer.Digest] {
		_, err = m.s.PutManifest(m.ctx, v1.MediaTypeImageManifest, content)
	} else {
		err = m.s.PutBlob(m.ctx, desc, bytes.NewReader(content))
	}
	if err != nil {
		m.fail(t, "put manifest %s: %v", name, err)
	}
	m.remember(&rpBlob{desc: desc, content: content, kids: kids})
	m.m.present[desc.Digest] = true
	return desc
}
