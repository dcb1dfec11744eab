package store

import (
	"context"
	"sync"
	"sync/atomic"
)

// Waits that honour the context (DESIGN.md §17.4): a caller waiting for
// this process's writer (wmu), for the leader of its group commit or for
// another process's lock returns when its context ends, and its change is
// then not made.

// ctxMutex is a mutex whose Lock can give up when a context ends.
type ctxMutex struct {
	once sync.Once
	ch   chan struct{} // holds one token while locked
}

func (m *ctxMutex) init() { m.once.Do(func() { m.ch = make(chan struct{}, 1) }) }

// Lock locks m, waiting as long as it takes.
func (m *ctxMutex) Lock() {
	m.init()
	m.ch <- struct{}{}
}

// LockContext locks m, or returns ctx's error when ctx ends first.
func (m *ctxMutex) LockContext(ctx context.Context) error {
	m.init()
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case m.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unlock unlocks m.
func (m *ctxMutex) Unlock() { <-m.ch }

// The life of a change of a group commit: waiting (queued, or in a batch
// whose leader has not the journal's lock yet), then claimed by the
// leader that holds the lock (its outcome is that commit's), or withdrawn
// by its caller, whose context ended first (it changes nothing).
const (
	changeWaiting int32 = iota
	changeClaimed
	changeWithdrawn
)

// claim marks c as committed by its leader, unless its caller withdrew it
// or its context has ended (then it withdraws it, and c.err says why).
func (c *change) claim() bool {
	if c.state.Load() == changeClaimed {
		return true // a retry of the same group
	}
	if err := c.ctx.Err(); err != nil && c.state.CompareAndSwap(changeWaiting, changeWithdrawn) {
		c.err = err
		return false
	}
	if c.state.CompareAndSwap(changeWaiting, changeClaimed) {
		return true
	}
	if c.err == nil {
		c.err = c.ctx.Err()
	}
	return false
}

// withdraw is the caller's side of claim, when its context has ended:
// unless its leader claimed it, the change is withdrawn and the caller
// returns at once with the context's error; a claimed one is being
// committed under the lock, and its caller waits for that outcome.
func (c *change) withdraw() (*Result, error) {
	if c.state.CompareAndSwap(changeWaiting, changeWithdrawn) {
		return nil, c.ctx.Err()
	}
	<-c.done
	return c.res, c.err
}

// batchContext is a context for a batch's leader, that waits for the
// journal's lock on behalf of all of them: it ends when every change's
// context has ended (no one waits any more), or when stop is called.
func batchContext(changes []*change) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var left atomic.Int64
	left.Store(int64(len(changes)))
	stops := make([]func() bool, 0, len(changes))
	for _, c := range changes {
		stops = append(stops, context.AfterFunc(c.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		}))
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel()
	}
}
