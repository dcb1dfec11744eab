package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
)

// Image metadata (journal images/ and referrers/): for every root manifest
// of index.json, when the store first saw it, its creation time and labels
// from its config, its last use, and its subject. It is kept with every
// transaction (added roots are described, roots that leave index.json are
// forgotten), so that a prune reads no manifest but those it removes.
// When the journal's images-index is not the index on disk (adoption,
// another tool's change, a journal from before), the next writer fills it
// in: first-seen is then that moment.

// Limits on what is kept of a config.
const (
	maxLabels     = 256
	maxLabelBytes = 4096
)

// imageConfig is what a config (OCI or Docker) says that prune uses.
type imageConfig struct {
	Created string `json:"created"`
	Config  struct {
		Labels map[string]string `json:"Labels"`
	} `json:"config"`
}

// describeImage builds the metadata of a new root. What cannot be read is
// left out: the image is then aged from now.
func (s *Store) describeImage(t *txn, d v1.Descriptor) journal.ImageMeta {
	m := journal.ImageMeta{FirstSeen: t.now.UTC()}
	if !layout.Parsed(d, true) {
		return m
	}
	c, err := t.load(d)
	if err != nil {
		return m
	}
	if c.Subject != nil {
		m.Subject = c.Subject.Digest
	}
	if c.Created != "" {
		if ts, err := time.Parse(time.RFC3339Nano, c.Created); err == nil {
			m.Created = ts.UTC()
		}
	}
	if c.Config == nil || c.Config.Size > layout.MaxManifestSize {
		return m
	}
	cfg, ok := t.configs[c.Config.Digest]
	if !ok {
		cfg = s.readConfig(*c.Config)
	}
	if cfg == nil {
		return m
	}
	if ts, err := time.Parse(time.RFC3339Nano, cfg.Created); err == nil && cfg.Created != "" {
		m.Created = ts.UTC() // the config's created wins over the annotation
	}
	for k, v := range cfg.Config.Labels {
		if len(m.Labels) >= maxLabels || len(k)+len(v) > maxLabelBytes {
			continue
		}
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[k] = v
	}
	return m
}

// trackImages keeps the image metadata with a transaction from index old to
// index new (entries): added roots are described, roots that are gone
// forgotten. When the metadata did not describe old, it is rebuilt for new.
func (s *Store) trackImages(t *txn, old, new digest.Digest, entries []layout.Entry, added, removed []v1.Descriptor) error {
	if t.tx.ImagesIndex() != old {
		return s.reconcileImages(t, entries, new)
	}
	// Is d still a root? Not when nothing counts it any more (the usual
	// case: no scan); else a few removals scan the entries, many build a
	// set.
	var roots map[digest.Digest]bool
	stillRoot := func(d digest.Digest) bool {
		if r, err := t.tx.GetRef(d); err == nil && r.Count == 0 {
			return false
		}
		if len(removed) <= 8 {
			return slices.ContainsFunc(entries, func(e layout.Entry) bool { return e.Desc.Digest == d })
		}
		if roots == nil {
			roots = make(map[digest.Digest]bool, len(entries))
			for _, e := range entries {
				roots[e.Desc.Digest] = true
			}
		}
		return roots[d]
	}
	for _, d := range removed {
		if stillRoot(d.Digest) {
			continue
		}
		if err := t.tx.DeleteImage(d.Digest); err != nil {
			return err
		}
	}
	for _, d := range added {
		if _, ok, err := t.tx.GetImage(d.Digest); err != nil || ok {
			if err != nil {
				return err
			}
			continue
		}
		if err := t.tx.PutImage(d.Digest, s.describeImage(t, d)); err != nil {
			return err
		}
	}
	return t.tx.SetImagesIndex(new)
}

// reconcileImages makes the metadata describe the roots of entries (index
// ix): roots without metadata are described, metadata of other manifests
// dropped.
func (s *Store) reconcileImages(t *txn, entries []layout.Entry, ix digest.Digest) error {
	var fresh []v1.Descriptor
	for _, e := range entries {
		_, ok, err := t.tx.GetImage(e.Desc.Digest)
		if err != nil {
			return err
		}
		if !ok {
			fresh = append(fresh, e.Desc)
		}
	}
	t.configs = s.prefetchConfigs(t, fresh)
	defer func() { t.configs = nil }()
	roots := make(map[digest.Digest]bool, len(entries))
	for _, e := range entries {
		roots[e.Desc.Digest] = true
	}
	// Put in key order: bbolt inserts into a node that stays whole until
	// the commit, so keys in random order each move the node's tail
	// (quadratic: 5.4 s for the 100,000 images of a first open), and in
	// order append.
	seen := make(map[digest.Digest]bool, len(fresh))
	fresh = slices.DeleteFunc(fresh, func(d v1.Descriptor) bool {
		dup := seen[d.Digest]
		seen[d.Digest] = true
		return dup
	})
	slices.SortFunc(fresh, func(a, b v1.Descriptor) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	if len(fresh) >= prefetchMin {
		t.tx.FillImages()
	}
	for _, d := range fresh {
		if err := t.tx.PutImage(d.Digest, s.describeImage(t, d)); err != nil {
			return err
		}
	}
	added := len(fresh)
	var stale []digest.Digest
	if err := t.tx.ForEachImage(func(d digest.Digest, _ journal.ImageMeta) error {
		if !roots[d] {
			stale = append(stale, d)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, d := range stale {
		if err := t.tx.DeleteImage(d); err != nil {
			return err
		}
	}
	if added > 0 || len(stale) > 0 {
		s.log.Info("image metadata brought up to date with index.json", "described", added, "dropped", len(stale))
	}
	return t.tx.SetImagesIndex(ix)
}

// syncImages brings the image metadata up to date with the index on disk,
// when it is not (run by the writer after recovery).
func (s *Store) syncImages(db *journal.DB, st *protocol.State, mc *manifestCache) error {
	if inSync, err := s.imagesInSync(db, st.Digest); err != nil || inSync {
		return err
	}
	err := db.Update(func(tx *journal.Tx) error {
		t := s.newTxnWith(tx, mc)
		return s.reconcileImages(t, st.Index.Entries, st.Digest)
	})
	if err != nil {
		return fmt.Errorf("image metadata: %w", err)
	}
	return nil
}

// imagesInSync reports whether the image metadata describes the index d.
func (s *Store) imagesInSync(db *journal.DB, d digest.Digest) (bool, error) {
	inSync := false
	err := db.View(func(tx *journal.Tx) error {
		inSync = tx.ImagesIndex() == d
		return nil
	})
	return inSync, err
}

// recordUse notes that the image d was used now (Resolve, Fetch of a
// manifest). Nothing is written: uses go to the journal with the next
// transaction, or on Close.
func (s *Store) recordUse(d digest.Digest) {
	if s.opts.ReadOnly {
		return
	}
	now := s.now().UTC()
	s.lastUse.Lock()
	if s.lastUse.m == nil {
		s.lastUse.m = map[digest.Digest]time.Time{}
	}
	if now.After(s.lastUse.m[d]) {
		s.lastUse.m[d] = now
	}
	s.lastUse.Unlock()
}

// flushLastUse writes the recorded uses of root manifests into tx and
// returns what it wrote (forget it with flushedLastUse once committed).
func (s *Store) flushLastUse(tx *journal.Tx) (map[digest.Digest]time.Time, error) {
	s.lastUse.Lock()
	if len(s.lastUse.m) == 0 {
		s.lastUse.Unlock()
		return nil, nil
	}
	used := make(map[digest.Digest]time.Time, len(s.lastUse.m))
	for d, t := range s.lastUse.m {
		used[d] = t
	}
	s.lastUse.Unlock()
	for d, t := range used {
		m, ok, err := tx.GetImage(d)
		if err != nil {
			return nil, err
		}
		if !ok || !t.After(m.LastUsed) {
			continue // not a root (a platform manifest), or nothing new
		}
		m.LastUsed = t
		if err := tx.PutImage(d, m); err != nil {
			return nil, err
		}
	}
	return used, nil
}

// flushedLastUse forgets the uses a committed transaction wrote, unless a
// newer use came meanwhile.
func (s *Store) flushedLastUse(used map[digest.Digest]time.Time) {
	if len(used) == 0 {
		return
	}
	s.lastUse.Lock()
	for d, t := range used {
		if s.lastUse.m[d].Equal(t) {
			delete(s.lastUse.m, d)
		}
	}
	s.lastUse.Unlock()
}

// closeLockTimeout bounds how long Close waits for another process's lock
// to persist the last uses; they are a hint, dropped when it is busy.
const closeLockTimeout = time.Second

// persistLastUse writes the recorded uses on Close, in one commit, without
// recovery (it touches nothing but image metadata). The caller holds wmu.
func (s *Store) persistLastUse() {
	s.lastUse.Lock()
	n := len(s.lastUse.m)
	s.lastUse.Unlock()
	if n == 0 || s.opts.ReadOnly {
		return
	}
	s.mu.Lock()
	poisoned := s.mu.poisoned != nil
	s.mu.Unlock()
	if poisoned {
		return
	}
	path := s.journalPath()
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return
	}
	db, err := journal.Open(path, s.journalOptions(min(s.opts.LockTimeout, closeLockTimeout)))
	if err != nil {
		s.log.Debug("last uses not persisted on close", "images", n, "err", err)
		return
	}
	defer db.Close()
	var used map[digest.Digest]time.Time
	if err := db.Update(func(tx *journal.Tx) error {
		var err error
		used, err = s.flushLastUse(tx)
		return err
	}); err != nil {
		s.log.Warn("last uses not persisted on close", "images", n, "err", err)
		return
	}
	s.flushedLastUse(used)
}

// prefetchConfigs reads the configs of the manifests of roots on every
// core (their manifests first, through t.load), for describeImage: an
// adoption describes every image. Nothing for a few roots; a config that
// cannot be read is left out (describeImage meets the error itself).
func (s *Store) prefetchConfigs(t *txn, roots []v1.Descriptor) map[digest.Digest]*imageConfig {
	out := map[digest.Digest]*imageConfig{}
	var mu sync.Mutex
	forEachManifest(roots, func(d v1.Descriptor) {
		c, err := t.load(d)
		if err != nil || c.Config == nil || c.Config.Size > layout.MaxManifestSize {
			return
		}
		cfg := s.readConfig(*c.Config)
		mu.Lock()
		out[c.Config.Digest] = cfg
		mu.Unlock()
	})
	return out
}

// readConfig reads and decodes the config d, nil when it cannot be read
// or decoded (the image is then described without it). Only what prune
// uses is kept: an adoption holds the configs of every image at once.
func (s *Store) readConfig(d v1.Descriptor) *imageConfig {
	b, err := layout.ReadBlob(s.lay.FS, d, layout.MaxManifestSize)
	if err != nil {
		return nil
	}
	var cfg imageConfig
	if json.Unmarshal(b, &cfg) != nil {
		return nil
	}
	return &cfg
}
