package store_test

// Tier 1 with faults: the crash enumeration of runTier1 over a scenario
// whose operations meet a failed rename of index.json (the transaction is
// rolled back in process: protocol.Apply and its roll back) and a full file system
// (the space reserve is released and the transaction run again: store's
// freeing). The memfs holds a space reserve (EnableReserve) and, from the
// "fill" ops on, has no space left (SetCapacity); a crash keeps its
// capacity, so the recoveries of those crash states run on a full disk too.

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/testing/memfs"
	"github.com/ocistore/ocistore/store"
)

// t1FaultScenario is t1Scenario's starting layout (images >= 5) with its
// own operations.
func t1FaultScenario(t *testing.T, mem *memfs.FS, importSrc string, images int) []t1Op {
	adopt := t1Scenario(t, mem, importSrc, images)[0]
	if adopt.name != "adopt" || images < 5 {
		t.Fatalf("t1FaultScenario needs t1Scenario's adopt op first and 5 images, not %s and %d", adopt.name, images)
	}
	mem.EnableReserve()
	index, reserve := layout.IndexFile, fsio.ReserveFile
	if t1Shared {
		index, reserve = "layout/"+index, "shared/"+reserve
	}
	hasReserve := func() bool {
		fi, err := mem.Lstat(reserve)
		return err == nil && fi.Size() == t1ReserveSize
	}
	// fill leaves no space: with hide, statfs cannot tell (the store meets
	// ENOSPC before it releases the reserve), else it tells (the store
	// releases it before it starts).
	fill := func(hide bool) func(context.Context, *store.Store) (*store.Result, error) {
		return func(context.Context, *store.Store) (*store.Result, error) {
			if !hasReserve() {
				return nil, errors.New("no space reserve before the disk fills")
			}
			mem.HideAvail(hide)
			mem.SetCapacity(mem.Used())
			return nil, nil
		}
	}
	unfill := func(context.Context, *store.Store) (*store.Result, error) {
		mem.SetCapacity(0)
		mem.HideAvail(false)
		return nil, nil
	}
	// deleteFull deletes on the full disk: it must succeed by releasing
	// the reserve. With statfs, the store sees that the space it frees is
	// too little to make the reserve again; without, it makes it again
	// (a new file).
	deleteFull := func(ref string) func(context.Context, *store.Store) (*store.Result, error) {
		return func(ctx context.Context, s *store.Store) (*store.Result, error) {
			fi, err := mem.Lstat(reserve)
			if err != nil {
				return nil, err
			}
			res, err := s.Delete(ctx, ref)
			if err != nil {
				return nil, fmt.Errorf("delete on a full disk: %w", err)
			}
			if now, err := mem.Lstat(reserve); err == nil && now.ModTime().Equal(fi.ModTime()) {
				return nil, errors.New("delete on a full disk kept the space reserve")
			}
			return res, nil
		}
	}
	return []t1Op{
		adopt, // makes the reserve
		// Item 7: the rename of the prepared index.json fails after the
		// journal commit; Apply rolls the transaction back in process
		// (drop the record, recount from the old index). Then the retry.
		{name: "delete-rename-fails", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			mem.FailNextRename(index, syscall.EIO)
			return s.Delete(ctx, "img2")
		}, wantErr: func(err error) bool {
			return errors.Is(err, syscall.EIO) && !errors.Is(err, store.ErrIncomplete)
		}},
		{name: "delete-retried", run: func(ctx context.Context, s *store.Store) (*store.Result, error) {
			return s.Delete(ctx, "img2")
		}},
		// Item 8: a delete on a full disk whose statfs tells: the reserve
		// is released before the transaction.
		{name: "fill", run: fill(false)},
		{name: "delete-full", run: deleteFull("img3")},
		{name: "unfill", run: unfill},
		{name: "reopen-reserve", reopen: true}, // makes the reserve again
		// A full disk whose statfs cannot tell: the transaction's temp
		// index.json meets ENOSPC, the reserve is released and the
		// transaction runs again.
		{name: "fill-blind", run: fill(true)},
		{name: "delete-enospc", run: deleteFull("img4")},
		{name: "unfill-blind", run: unfill},
		{name: "reopen", reopen: true},
	}
}

// TestTier1Fault is the enumeration of t1FaultScenario, with the layout's
// own blob directory (tier1-fault) and a shared one (tier1-fault-shared).
func TestTier1Fault(t *testing.T) {
	t1Build = t1FaultScenario
	t.Cleanup(func() { t1Build = t1Scenario })
	reportTier1(t, "tier1-fault", runTier1(t, t1Size(), 6))
	t1Shared = true
	t.Cleanup(func() { t1Shared = false })
	reportTier1(t, "tier1-fault-shared", runTier1(t, t1Size(), 7))
}
