package main

import (
	"testing"

	"github.com/ocistore/ocistore/internal/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// TestDamagedCorpusCLI runs `fsck --deep --json` and `fsck --repair --deep
// --json` on every layout of testdata/damaged and compares with the golden
// files the library's test keeps (store/damaged_test.go): the CLI reports
// and repairs exactly as the library does, with exit status 0 when nothing
// is (left) wrong and 3 otherwise, and touches nothing outside the layout.
func TestDamagedCorpusCLI(t *testing.T) {
	t.Parallel()
	for _, c := range testutil.DamagedCases(t, "../../testdata/damaged") {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			dir, outside := c.Materialize(t)
			r := cli(t, "-l", dir, "fsck", "--deep", "--json")
			rep := decodeJSON[recovery.Report](t, r)
			if want := map[bool]int{true: 0, false: 3}[rep.OK()]; r.code != want {
				t.Errorf("fsck --deep: exit %d, want %d", r.code, want)
			}
			if got, want := testutil.ReportJSON(t, dir, &rep), string(readFile(t, c.Dir+"/fsck.json")); got != want {
				t.Errorf("fsck --deep --json differs from %s/fsck.json:\n%s\n--- want:\n%s", c.Dir, got, want)
			}
			args := []string{"-l", dir, "fsck", "--repair", "--deep", "--json"}
			if c.Spec.Repair.DropBroken {
				args = append(args, "--drop-broken")
			}
			if c.Spec.Repair.KeepOrphans {
				args = append(args, "--keep-orphans")
			}
			r = cli(t, args...)
			res := decodeJSON[store.RepairResult](t, r)
			if res.Report == nil {
				t.Fatalf("no report:\n%s", r)
			}
			if want := map[bool]int{true: 0, false: 3}[res.OK()]; r.code != want {
				t.Errorf("fsck --repair: exit %d, want %d", r.code, want)
			}
			if got, want := testutil.RenderRepair(t, dir, &res), string(readFile(t, c.Dir+"/repaired.txt")); got != want {
				t.Errorf("the repair differs from %s/repaired.txt:\n%s\n--- want:\n%s", c.Dir, got, want)
			}
			outside()
		})
	}
}
