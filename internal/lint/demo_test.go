package lint

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// demoNoise matches what reads like a failure in make demo's output: make's
// own error lines (an ignored error included) and the shell's notice of a
// process killed by a signal.
var demoNoise = regexp.MustCompile(`(?m)^make(\[\d+\])?: |\(ignored\)|^(Killed|Terminated)$|^sh: `)

// TestDemoReadsAsADemonstration runs make demo (binaries and layout in a
// temp directory) and fails if its output has a line that reads like a
// failure: the planned power cut and the fsck that reports it are scenes,
// labelled as such.
func TestDemoReadsAsADemonstration(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make is not installed: %v", err)
	}
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", moduleRoot(t), "demo",
		"DEMO="+filepath.Join(tmp, "layout"), "BIN="+filepath.Join(tmp, "ocistore"), "CRASHBIN="+filepath.Join(tmp, "ocistore-crashpoints"))
	// As a user types it: not as a sub-make of make test.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MAKEFLAGS=") && !strings.HasPrefix(kv, "MAKELEVEL=") && !strings.HasPrefix(kv, "MFLAGS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	s := string(out)
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, s)
	}
	for _, m := range demoNoise.FindAllString(s, -1) {
		t.Errorf("make demo prints %q, which reads like a failure", strings.TrimSpace(m))
	}
	for _, want := range []string{
		"== power cut:",
		"(rm was killed at the crash point, exit status 137 = 128 + SIGKILL, as planned",
		"as expected here: the killed rm left its transaction unfinished",
		"replay txn",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("make demo does not print %q", want)
		}
	}
	if t.Failed() {
		t.Logf("make demo printed:\n%s", s)
	}
}
