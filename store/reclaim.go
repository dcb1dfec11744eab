package store

import (
	"context"
	"fmt"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/protocol"
)

// The trash. A transaction that frees at least protocol.DefaultTrashMin blobs
// takes them out of the layout into .ocistore/trash (a hard link there,
// then the unlink of the blob's name, which frees nothing; then syncs
// blobs/<alg> and the trash): that is step 4 of the protocol, durable when
// the call returns, and cheaper than unlinking them, which also frees each
// inode and its blocks (BENCHMARKS.md; docs/DESIGN.md §11). The handle's reclaimer
// unlinks the trash in the background. Nothing ever leaves the trash but
// by unlink, and the trash is no part of the layout: whatever a crash
// leaves there is unlinked by the next open (protocol.Trash).

// reclaimer unlinks the files of the trash this handle filled, one
// goroutine at a time, while there are any.
type reclaimer struct {
	queue   []string
	queued  map[string]bool
	running bool
	idle    chan struct{} // closed once the queue is empty and no worker runs
	err     error         // the first failure since the last WaitReclaimed
}

// reclaim queues trash files to unlink and starts the worker if it is not
// running.
func (s *Store) reclaim(trashed []string) {
	s.rec.Lock()
	defer s.rec.Unlock()
	r := &s.rec.r
	if r.queued == nil {
		r.queued = map[string]bool{}
	}
	for _, p := range trashed {
		if !r.queued[p] {
			r.queued[p] = true
			r.queue = append(r.queue, p)
		}
	}
	if r.running || len(r.queue) == 0 {
		return
	}
	r.running = true
	r.idle = make(chan struct{})
	go s.reclaimLoop(r.idle)
}

func (s *Store) reclaimLoop(idle chan struct{}) {
	for {
		s.rec.Lock()
		r := &s.rec.r
		batch := r.queue
		r.queue = nil
		if len(batch) == 0 {
			r.running = false
			close(idle)
			s.rec.Unlock()
			return
		}
		s.rec.Unlock()
		s.reclaimNow(batch)
		s.rec.Lock()
		for _, p := range batch {
			delete(r.queued, p)
		}
		s.rec.Unlock()
	}
}

// reclaimNow unlinks trash files and syncs the trash. A failure is kept
// for WaitReclaimed and logged; what it left in the trash the next open
// (of any process, once this one is gone) unlinks.
func (s *Store) reclaimNow(batch []string) {
	err := fsio.RemoveFiles(s.lay.FS, "trash", batch, func(string, bool) { crash.Point(crash.TrashUnlinked) })
	if err == nil {
		s.log.Debug("trash unlinked", "files", len(batch))
		return
	}
	err = fmt.Errorf("empty %s: %w", protocol.TrashDir, err)
	s.rec.Lock()
	if s.rec.r.err == nil {
		s.rec.r.err = err
	}
	s.rec.Unlock()
	s.log.Warn("cannot unlink the trash; the next open tries again", "err", err)
	s.check(err) // a failed sync of the trash poisons, as any does
}

// WaitReclaimed waits until the blobs this handle's transactions took out
// of the layout are unlinked: their space is back in the file system. A
// transaction that frees fewer than a few dozen blobs unlinks them before
// it returns; a larger one (a prune) returns once they are out of the
// layout, durably, and leaves the unlinks to a background worker (Close
// waits for it too). It returns the first error that stopped the worker
// since the last call; the files it could not unlink stay in
// .ocistore/trash, and the next open unlinks them.
func (s *Store) WaitReclaimed(ctx context.Context) error {
	s.rec.Lock()
	idle := s.rec.r.idle
	s.rec.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.rec.Lock()
	defer s.rec.Unlock()
	err := s.rec.r.err
	s.rec.r.err = nil
	return err
}
