package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

const envWriterProc = "OCISTORE_TEST_WRITER"

// TestWriterProcess is the child side of TestTwoProcessesLoseNoUpdate: it
// tags and deletes through its own long-lived Store.
func TestWriterProcess(t *testing.T) {
	spec := os.Getenv(envWriterProc) // DIR PREFIX COUNT
	if spec == "" {
		return
	}
	var dir, prefix string
	var count int
	if _, err := fmt.Sscan(spec, &dir, &prefix, &count); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := testutil.NewBuilder(t, s, uint64(len(prefix))*7919+uint64(os.Getpid()))
	base, err := s.Resolve(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < count; i++ {
		// A new image of its own, tagged, plus a tag on the shared image.
		m := b.Manifest(nil, 1)
		b.Tag(m, prefix+"-own-"+strconv.Itoa(i))
		b.Tag(base, prefix+"-base-"+strconv.Itoa(i))
		if i%3 == 2 { // and delete an earlier image of its own
			if _, err := s.Delete(ctx, prefix+"-own-"+strconv.Itoa(i-2)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestTwoProcessesLoseNoUpdate runs two writer processes on one layout at
// once; every tag each of them added (and did not delete) must be there.
func TestTwoProcessesLoseNoUpdate(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s, 3)
	b.Tag(b.Manifest(nil, 2), "base")
	s.Close()

	const count = 30
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for p, prefix := range []string{"p1", "p2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestWriterProcess$", "-test.count=1")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d", envWriterProc, dir, prefix, count))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[p] = fmt.Errorf("%s: %v\n%s", prefix, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := tags(t, dir)
	for _, prefix := range []string{"p1", "p2"} {
		for i := 0; i < count; i++ {
			own := fmt.Sprintf("%s-own-%d", prefix, i)
			deleted := i+2 < count && (i+2)%3 == 2
			if _, ok := got[own]; ok == deleted {
				t.Errorf("%s present=%v, want %v", own, ok, !deleted)
			}
			if _, ok := got[fmt.Sprintf("%s-base-%d", prefix, i)]; !ok {
				t.Errorf("lost update: %s-base-%d", prefix, i)
			}
		}
	}
	checkClean(t, dir, false)
}

// TestLockedByAnotherProcess: a writer that cannot get the lock in time
// fails with ErrLocked, naming the layout, and changes nothing.
func TestLockedByAnotherProcess(t *testing.T) {
	dir := t.TempDir()
	before := fixture(t, dir)
	// bbolt's flock is per open file description: holding the database open
	// here locks out a store in this process exactly as another process would.
	holder, err := bolt.Open(filepath.Join(dir, protocol.JournalFile), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.Open(context.Background(), dir, &store.Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("open while locked: %v, want ErrLocked", err)
	}
	holder.Close()
	s, err := store.Open(context.Background(), dir, &store.Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	holder, err = bolt.Open(filepath.Join(dir, protocol.JournalFile), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Delete(context.Background(), "img0")
	if !errors.Is(err, store.ErrLocked) || !strings.Contains(err.Error(), "is locked by another process") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("delete while locked: %v, want ErrLocked naming the layout", err)
	}
	// Readers are not blocked by the lock.
	if _, err := s.Resolve(context.Background(), "img0"); err != nil {
		t.Fatal(err)
	}
	holder.Close()
	if got := tags(t, dir); !equalMaps(got, before) {
		t.Fatalf("a refused delete changed the layout")
	}
}
