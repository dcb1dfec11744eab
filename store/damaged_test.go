package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/damaged (fsck.json, repaired.txt)")

const damagedRoot = "../testdata/damaged"

// golden compares got with the case's golden file, or writes it with -update.
func golden(t *testing.T, c testutil.DamagedCase, name, got string) {
	t.Helper()
	p := filepath.Join(c.Dir, name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./store -run TestDamagedCorpus -update)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file %s (run go test ./store -run TestDamagedCorpus -update and review the diff)\n--- got:\n%s\n--- want:\n%s", name, p, got, want)
	}
}

// contents maps every regular file under dir to the sha256 of its content
// (large files by size only).
func contents(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Size() > 1<<20 {
			out[filepath.ToSlash(rel)] = "size:" + string(rune(fi.Size()))
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		out[filepath.ToSlash(rel)] = hex.EncodeToString(h[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDamagedCorpus runs the deep check and the repair of every layout of
// testdata/damaged (one per kind of damage, written by
// internal/testing/mkdamaged) and compares the report and the repaired state
// with the golden files. It also checks that: nothing outside the layout
// is touched; a second repair does nothing; a repaired layout that reports
// no problem opens and checks clean; and nothing is lost: every file of
// the damaged layout is still there, or was moved (same bytes elsewhere in
// the layout: quarantine, journal aside), or is a temp file or a blob the
// repair removed as unreferenced (never with --keep-orphans).
func TestDamagedCorpus(t *testing.T) {
	for _, c := range testutil.DamagedCases(t, damagedRoot) {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dir, outside := c.Materialize(t)
			before := contents(t, dir)
			rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: 10 * time.Second, Deep: true})
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			golden(t, c, "fsck.json", testutil.ReportJSON(t, dir, rep))
			testutil.CheckProblemList(t, rep.Problems)
			// The quick check finds the same, but what only hashing finds,
			// and reads no blob but manifests (TestQuickReadsNoLayer).
			quick, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: 10 * time.Second})
			if err != nil {
				t.Fatalf("quick check: %v", err)
			}
			if got, want := testutil.ProblemLines(quick.Problems), testutil.ProblemLines(testutil.WithoutDeepOnly(rep.Problems)); got != want {
				t.Errorf("the quick check reports:\n%s\nthe deep check, less what only hashing finds:\n%s", got, want)
			}
			if quick.Deep != nil || quick.Images != rep.Images || quick.Blobs != rep.Blobs || quick.Bytes != rep.Bytes {
				t.Errorf("quick check %+v, deep %+v", quick, rep)
			}
			// Findings, notices included (orphan, external-change...).
			if c.Name == "clean" && len(rep.Problems) != 0 {
				t.Errorf("the clean layout has findings: %v", rep.Problems)
			}
			if c.Name != "clean" && len(rep.Problems) == 0 {
				t.Errorf("the damage is not reported")
			}

			// Grace -1: the corpus was just written, and its orphans are
			// for the repair to remove (the default grace is tested apart).
			opts := &store.RepairOptions{Check: recovery.CheckOptions{Deep: true}, DropBroken: c.Spec.Repair.DropBroken, KeepOrphans: c.Spec.Repair.KeepOrphans, Grace: -1}
			res, err := store.Repair(ctx, dir, opts)
			if c.Spec.Repair.Refused {
				if !errors.Is(err, store.ErrRefused) {
					t.Fatalf("repair: %v, want ErrRefused", err)
				}
				golden(t, c, "repaired.txt", "refused: "+testutil.NormalizeDamaged(err.Error(), dir)+"\n")
				if after := contents(t, dir); !maps.Equal(before, after) {
					t.Errorf("a refused repair changed files:\n%v\nwas\n%v", after, before)
				}
				outside()
				return
			}
			if err != nil {
				t.Fatalf("repair: %v", err)
			}
			golden(t, c, "repaired.txt", testutil.RenderRepair(t, dir, res))
			testutil.CheckProblemList(t, res.Report.Problems)
			outside()

			after := contents(t, dir)
			moved := map[string]bool{}
			for _, h := range after {
				moved[h] = true
			}
			for p, h := range before {
				if after[p] == h || moved[h] {
					continue
				}
				switch {
				case strings.HasPrefix(p, "blobs/") && !c.Spec.Repair.KeepOrphans:
				case strings.HasPrefix(p, ".index.json") || strings.HasPrefix(p, ".ocistore/ingest/") || strings.HasPrefix(p, ".ocistore/owners/"): // temp files
				case p == ".ocistore/journal.db": // derived state, written by every transaction
				case p == "index.json" && (c.Spec.Repair.DropBroken || pending(rep)): // a journaled transaction
				default:
					t.Errorf("%s was lost", p)
				}
			}

			state := testutil.LayoutState(t, dir)
			again, err := store.Repair(ctx, dir, opts)
			if err != nil {
				t.Fatalf("second repair: %v", err)
			}
			if len(again.Actions) != 0 {
				t.Errorf("a second repair did more: %v", again.Actions)
			}
			if got := testutil.LayoutState(t, dir); got != state {
				t.Errorf("a second repair changed the layout:\n%s\nwas:\n%s", got, state)
			}
			if again.OK() != res.OK() || len(again.Report.Problems) != len(res.Report.Problems) {
				t.Errorf("a second repair reports %v, the first %v", again.Report.Problems, res.Report.Problems)
			}
			if len(res.Report.Problems) == 0 {
				s, err := store.Open(ctx, dir, &store.Options{NoCreate: true})
				if err != nil {
					t.Fatalf("open after repair: %v", err)
				}
				testutil.MustCheck(t, s)
				s.Close()
			}
			outside()
		})
	}
}

func pending(r *recovery.Report) bool {
	for _, p := range r.Problems {
		if p.Kind == recovery.KindPending || p.Kind == recovery.KindJournalCorrupt {
			return true
		}
	}
	return false
}
