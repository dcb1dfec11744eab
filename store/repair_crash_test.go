//go:build crashpoints

package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

const (
	envRepairDir   = "OCISTORE_TEST_REPAIR_DIR"
	envRepairFlags = "OCISTORE_TEST_REPAIR_FLAGS"
)

// TestRepairChild is the child side of TestCrashRepair: it does nothing
// unless started by it.
func TestRepairChild(t *testing.T) {
	dir := os.Getenv(envRepairDir)
	if dir == "" {
		return
	}
	flags := os.Getenv(envRepairFlags)
	_, err := store.Repair(context.Background(), dir, &store.RepairOptions{Check: recovery.CheckOptions{Deep: true},
		DropBroken: strings.Contains(flags, "drop"), KeepOrphans: strings.Contains(flags, "keep"), Grace: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child repair:", err)
		os.Exit(11)
	}
	os.Exit(0)
}

// repairChild runs a repair of dir in a child process killed at point (the
// k-th time it is reached); it reports whether the child was killed.
func repairChild(t *testing.T, dir, flags, point string, k int) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRepairChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envRepairDir+"="+dir, envRepairFlags+"="+flags, fmt.Sprintf("%s=%s@%d", crash.EnvVar, point, k))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	if err != nil {
		t.Fatalf("child repair at %s@%d: %v\n%s", point, k, err, out)
	}
	return false
}

// stateParts splits a LayoutState into what must be exactly as an
// uninterrupted repair leaves it (blobs, index.json, oci-layout, the
// journals' names) and the contents kept in quarantine, as a set: a repair
// interrupted after keeping a copy keeps another on its second run, under
// another name.
func stateParts(state string) (exact string, kept map[string]bool) {
	kept = map[string]bool{}
	var lines []string
	quarantined := regexp.MustCompile(`^[fld] \.ocistore/quarantine/(\S*?)(\.[0-9]+)?(/| |$)`)
	for _, l := range strings.Split(state, "\n") {
		if m := quarantined.FindStringSubmatch(l); m != nil {
			kept[quarantined.ReplaceAllString(l, "$1$3")] = true
			continue
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n"), kept
}

// TestCrashRepair kills a repair at every crash point it reaches (each
// time it reaches it), on layouts that exercise each of its steps; a
// second repair must then end in the state an uninterrupted repair leaves
// (golden), keep everything the first one had moved to quarantine, touch
// nothing outside the layout, and a third must do nothing.
func TestCrashRepair(t *testing.T) {
	points := append(append([]string(nil), crash.All...), protocol.CrashQuarantineRenamed)
	for _, name := range []string{
		"journal-bad-freelist-pending-torn-index", // salvage, quarantine, replay, journal aside, recount, GC
		"digest-mismatch-manifest",                // recount, quarantine, drop-broken, GC
		"index-invalid-entries-drop",              // copy kept, journaled drop
		"index-garbage",                           // quarantine, restore from the journal
		"oci-layout-garbage",                      // quarantine, oci-layout written
		"pending-replay",                          // recovery
	} {
		c := testutil.DamagedCaseNamed(t, damagedRoot, name)
		golden, err := os.ReadFile(c.Dir + "/repaired.txt")
		if err != nil {
			t.Fatal(err)
		}
		want, wantKept := stateParts(string(golden[strings.Index(string(golden), "--- files\n")+len("--- files\n"):]))
		flags := ""
		if c.Spec.Repair.DropBroken {
			flags += "drop "
		}
		if c.Spec.Repair.KeepOrphans {
			flags += "keep"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			kills := 0
			for _, p := range points {
				for k := 1; ; k++ {
					dir, outside := c.Materialize(t)
					if !repairChild(t, dir, flags, p, k) {
						break
					}
					kills++
					opts := &store.RepairOptions{Check: recovery.CheckOptions{Deep: true}, DropBroken: c.Spec.Repair.DropBroken, KeepOrphans: c.Spec.Repair.KeepOrphans, Grace: -1}
					if _, err := store.Repair(context.Background(), dir, opts); err != nil {
						t.Fatalf("%s@%d: repair after the crash: %v", p, k, err)
					}
					got, gotKept := stateParts(testutil.LayoutState(t, dir))
					if got != want {
						t.Errorf("%s@%d: after a crash and a second repair:\n%s\nwant (uninterrupted):\n%s", p, k, got, want)
					}
					for f := range wantKept {
						if !gotKept[f] {
							t.Errorf("%s@%d: %s is not in quarantine: %v", p, k, f, gotKept)
						}
					}
					again, err := store.Repair(context.Background(), dir, opts)
					if err != nil || len(again.Actions) != 0 {
						t.Errorf("%s@%d: a third repair: %v, %v", p, k, again, err)
					}
					outside()
				}
			}
			t.Logf("%s: killed %d times", name, kills)
			if kills == 0 {
				t.Error("no crash point was reached")
			}
		})
	}
}
