package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/ocistore/ocistore/internal/testing/testutil"
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
			// The text output lists the same problems, one a line.
			text := cli(t, "-l", dir, "fsck", "--deep")
			if text.code != r.code {
				t.Errorf("fsck --deep: exit %d, with --json %d", text.code, r.code)
			}
			if got, want := problemLinesOf(text.stdout), textLines(rep.Problems); got != want {
				t.Errorf("fsck --deep lists:\n%s\n--json lists:\n%s", got, want)
			}
			// The quick check: the same, but what only hashing finds.
			qr := cli(t, "-l", dir, "fsck", "--format", "json")
			quick := decodeJSON[recovery.Report](t, qr)
			if got, want := testutil.ProblemLines(quick.Problems), testutil.ProblemLines(testutil.WithoutDeepOnly(rep.Problems)); got != want {
				t.Errorf("fsck --json reports:\n%s\nfsck --deep --json, less what only hashing finds:\n%s", got, want)
			}
			if want := map[bool]int{true: 0, false: 3}[quick.OK()]; qr.code != want || quick.Deep != nil {
				t.Errorf("fsck: exit %d, want %d (deep %+v)", qr.code, want, quick.Deep)
			}
			args := []string{"-l", dir, "fsck", "--repair", "--deep", "--json", "--grace", "0s"}
			if c.Spec.Repair.DropBroken {
				args = append(args, "--drop-broken")
			}
			if c.Spec.Repair.KeepOrphans {
				args = append(args, "--keep-orphans")
			}
			r = cli(t, args...)
			if c.Spec.Repair.Refused {
				want := strings.TrimPrefix(strings.TrimSpace(string(readFile(t, c.Dir+"/repaired.txt"))), "refused: ")
				if got := testutil.NormalizeDamaged(r.stderr, dir); r.code != 1 || !strings.Contains(got, want) {
					t.Errorf("fsck --repair: want exit 1 and the refusal of %s/repaired.txt:\n%s\n--- want:\n%s", c.Dir, r, want)
				}
				outside()
				return
			}
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

// problemLinesOf keeps the problem lines of fsck's text output: all but
// the deep check's figures and the summary.
func problemLinesOf(stdout string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(stdout, "\n") {
		if l == "" || strings.HasPrefix(l, "deep: ") || summaryLine.MatchString(l) {
			continue
		}
		b.WriteString(l)
	}
	return b.String()
}

var summaryLine = regexp.MustCompile(`^[0-9]+ images?, [0-9]+ blobs?, .*, [0-9]+ problems?(, [1-9][0-9]* notices?)?\n$`)

// textLines renders findings as fsck's text output does: a notice's line
// starts with "notice: ".
func textLines(ps []recovery.Problem) string {
	var b strings.Builder
	for _, p := range ps {
		line := p.Kind
		switch p.Severity {
		case recovery.SeverityNotice:
			line = "notice: " + line
		case recovery.SeverityProblem:
		default:
			line = "(no severity) " + line
		}
		if p.Digest != "" {
			line += " " + p.Digest
		}
		if p.Path != "" {
			line += " " + p.Path
		}
		fmt.Fprintf(&b, "%s: %s\n", line, p.Detail)
	}
	return b.String()
}
