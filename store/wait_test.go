package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/store"
)

// waitResult waits for a result of a writer that must come before the
// test releases what blocks the others (a liveness guard, not a timing).
func waitResult(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not return when its context ended: it waits for the writer before it", what)
		return nil
	}
}

// A writer queued behind another writer of the same handle (the group
// commit's wait for wmu), which itself waits for another process's lock,
// returns when its context ends, and its change is not made; the writers
// queued with it are not affected.
func TestGroupWaitHonoursContext(t *testing.T) {
	l := newLib(t)
	d := l.image(nil, 1)
	l.tag(d, "app:1")
	held, err := journal.Open(filepath.Join(l.dir, protocol.JournalFile), journal.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	tag := func(ctx context.Context, name string) <-chan error {
		ch := make(chan error, 1)
		go func() { ch <- l.s.Tag(ctx, d, name) }()
		return ch
	}
	first := tag(context.Background(), "x:1") // leads, waits for the lock
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	short := tag(ctx, "a:1")
	later := tag(context.Background(), "d:1")
	if err := waitResult(t, "a queued Tag", short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued Tag, its context ending = %v, want DeadlineExceeded", err)
	}
	held.Close()
	for _, ch := range []<-chan error{first, later} {
		if err := waitResult(t, "a Tag after the lock was released", ch); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]bool{"x:1": true, "d:1": true, "a:1": false} {
		_, err := l.s.Resolve(context.Background(), name)
		if got := err == nil; got != want {
			t.Errorf("%s tagged = %v, want %v (%v)", name, got, want, err)
		}
		if !want && !errors.Is(err, store.ErrNotFound) {
			t.Errorf("resolve %s: %v", name, err)
		}
	}
}
