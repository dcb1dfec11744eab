package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestQuickRunOutputs: a quick run writes quick.md and quick.json; only a
// full run writes BENCHMARKS.md and results.json, and a quick run refuses
// to be pointed at them.
func TestQuickRunOutputs(t *testing.T) {
	o, err := chooseOutputs(false, nil)
	if err != nil || o != (outputs{report: quickReport, json: quickJSON}) {
		t.Errorf("quick defaults = %+v, %v", o, err)
	}
	o, err = chooseOutputs(true, nil)
	if err != nil || o != (outputs{report: "../BENCHMARKS.md", json: "results.json", analysis: "analysis.md"}) {
		t.Errorf("full defaults = %+v, %v", o, err)
	}
	abs, err := filepath.Abs("../BENCHMARKS.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range []map[string]string{
		{"out": "../BENCHMARKS.md"},
		{"out": abs},
		{"out": "elsewhere/BENCHMARKS.md"},
		{"out": "x.md", "json": "results.json"},
		{"out": "x.md", "json": "./results.json"},
		{"out": ""},
	} {
		if o, err := chooseOutputs(false, set); err == nil {
			t.Errorf("quick run with %v: writes %+v, want an error", set, o)
		}
	}
	o, err = chooseOutputs(false, map[string]string{"out": "/tmp/q.md", "json": ""})
	if err != nil || o.report != "/tmp/q.md" || o.json != "" {
		t.Errorf("quick run with its own paths = %+v, %v", o, err)
	}
	if _, err := chooseOutputs(true, map[string]string{"out": "../BENCHMARKS.md", "json": "results.json"}); err != nil {
		t.Errorf("full run to BENCHMARKS.md: %v", err)
	}
}

// TestQuickReportLeavesBenchmarksMD: the commands, run from a bench
// directory next to a BENCHMARKS.md: `bench report` of a quick run writes
// quick.md and leaves BENCHMARKS.md alone; a quick `bench -out
// ../BENCHMARKS.md` fails before it measures anything.
func TestQuickReportLeavesBenchmarksMD(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "bench")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	published := []byte("# Benchmarks\n\nthe full-size tables\n")
	bm := filepath.Join(root, "BENCHMARKS.md")
	if err := os.WriteFile(bm, published, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	raw, _ := json.Marshal(savedRun{Full: false, Runs: 1})
	if err := os.WriteFile(quickJSON, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := reportMain([]string{"-from", quickJSON}); err != nil {
		t.Fatalf("bench report -from %s: %v", quickJSON, err)
	}
	if got, err := os.ReadFile(bm); err != nil || string(got) != string(published) {
		t.Errorf("a quick report changed BENCHMARKS.md (%v):\n%s", err, got)
	}
	q, err := os.ReadFile(quickReport)
	if err != nil {
		t.Fatalf("quick report not written: %v", err)
	}
	if !strings.Contains(string(q), "A quick run") {
		t.Errorf("%s does not say it is a quick run:\n%.400s", quickReport, q)
	}
	if err := reportMain([]string{"-from", quickJSON, "-out", "../BENCHMARKS.md"}); err == nil {
		t.Error("bench report of a quick run to ../BENCHMARKS.md succeeded")
	}
	t.Setenv("BENCH_FULL", "")
	if err := benchMain([]string{"-out", "../BENCHMARKS.md", "-work", "w"}); err == nil || !strings.Contains(err.Error(), "quick run") {
		t.Errorf("quick bench -out ../BENCHMARKS.md = %v, want the refusal", err)
	}
	if _, err := os.Stat("w"); !os.IsNotExist(err) {
		t.Errorf("the refused run started (its scratch directory exists: %v)", err)
	}
	if got, _ := os.ReadFile(bm); string(got) != string(published) {
		t.Error("BENCHMARKS.md changed")
	}
}

// issueRef matches a citation of an issue by number ("issue 6", "issues 4
// and 6", "#12"): the repository holds no issue tracker, so a reader of
// BENCHMARKS.md cannot follow one. Say what the issue asked for instead.
var issueRef = regexp.MustCompile(`(?i)\bissues?\s*#?\s*\d+|(^|[\s(])#\d+\b`)

// TestNoIssueNumbers: BENCHMARKS.md, the analysis it includes and the
// sources that write its text cite no issue number.
func TestNoIssueNumbers(t *testing.T) {
	files := []string{"../BENCHMARKS.md", "analysis.md"}
	srcs, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range srcs {
		if !strings.HasSuffix(f, "_test.go") {
			files = append(files, f)
		}
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(raw), "\n") {
			if m := issueRef.FindString(line); m != "" {
				t.Errorf("%s:%d cites %q: say what it means, the repository has no issue %s:\n%s", f, i+1, strings.TrimSpace(m), strings.TrimSpace(m), line)
			}
		}
	}
	for _, s := range []string{"issue 6", "(issues 4 and 6)", "Issue 12 (safety fixes)", "see #12"} {
		if !issueRef.MatchString(s) {
			t.Errorf("issueRef misses %q", s)
		}
	}
	for _, s := range []string{"## 1. Delete one image", "[Machine](#machine)", "no issues found", "C# 12"} {
		if issueRef.MatchString(s) {
			t.Errorf("issueRef matches %q", s)
		}
	}
}
