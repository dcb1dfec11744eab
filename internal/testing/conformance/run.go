package conformance

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Summary is the outcome of one run of the suite.
//
// The counts are the suite's checks, as its own summary counts them (its
// "Total" is their sum). A check is one assertion: most tests make one, a
// delete makes two (the DELETE, then that the thing is gone), so the
// checks outnumber the tests (junit.xml's test cases) and one failed test
// may hold a passed check and a failed one.
type Summary struct {
	Pass, Fail, Skip, Disabled, Error int
	// Total is the number of checks: the sum of the five counts.
	Total int
	// Result is the suite's verdict: "Pass" when no check failed or
	// errored and one passed, otherwise the worst status ("FAIL", "Error",
	// or "Skip" when nothing ran).
	Result string
	// Failed are the tests that hold a failed or errored check, in the
	// suite's order.
	Failed []Check
	// APIs and Data are the suite's verdict on each API ("Blob get
	// range", "Referrers", "Manifest put with tag params", ...) and each
	// data set ("Digest Algorithm sha512", "Non-distributable Layers",
	// ...): "Pass", "FAIL", "Skip", "Disabled", "Error" or "Unknown", the
	// worst status of the checks that used it.
	APIs, Data map[string]string
	// Report is what the suite printed: the tree of its tests with their
	// status and errors, its configuration, the counts, and the status of
	// each API and data set.
	Report string
	// Stderr is the suite's log (warnings for each failed check).
	Stderr string
	// Dir is the results directory: results.yaml, junit.xml, report.html
	// (every request and response). It is the test's temporary directory,
	// removed when the test ends; OCISTORE_CONFORMANCE_OUT keeps a copy.
	Dir string
	// Elapsed is how long the suite ran.
	Elapsed time.Duration
}

// Check is a failed test of the suite.
type Check struct {
	// Name is the test's full name, its path in the suite's tree:
	// "OCI Conformance Test/sha512 blobs/post only/blob-post-only".
	Name string
	// Status is "failure" or "error" (an error of the suite itself, or of
	// the exchange, rather than a wrong answer).
	Status string
	// Message is the suite's error text.
	Message string
	// Output is the test's requests and responses, as the suite recorded
	// them.
	Output string
}

// Category is the top-level part of the suite the test belongs to, the
// second element of its name: a data set ("image", "sha512",
// "artifacts-with-subject", ...), "sha256 blobs" or "sha512 blobs",
// "empty", "ping", or "missing-manifest".
func (c Check) Category() string {
	parts := strings.SplitN(c.Name, "/", 3)
	if len(parts) < 2 {
		return c.Name
	}
	return parts[1]
}

// String is a one-line summary: "pass=703 fail=99 skip=0 disabled=0
// error=0 of 848 (FAIL)".
func (s *Summary) String() string {
	return fmt.Sprintf("pass=%d fail=%d skip=%d disabled=%d error=%d of %d (%s)",
		s.Pass, s.Fail, s.Skip, s.Disabled, s.Error, s.Total, s.Result)
}

// Details lists the failed tests, one per line with the first line of
// their error, grouped by category, for a test's log.
func (s *Summary) Details() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", s)
	if len(s.Failed) == 0 {
		return b.String()
	}
	var order []string
	byCat := map[string][]Check{}
	for _, c := range s.Failed {
		cat := c.Category()
		if _, ok := byCat[cat]; !ok {
			order = append(order, cat)
		}
		byCat[cat] = append(byCat[cat], c)
	}
	fmt.Fprintf(&b, "%d failed tests in %d categories:\n", len(s.Failed), len(order))
	for _, cat := range order {
		fmt.Fprintf(&b, "%s (%d):\n", cat, len(byCat[cat]))
		for _, c := range byCat[cat] {
			msg, _, _ := strings.Cut(c.Message, "\n")
			fmt.Fprintf(&b, "  %s [%s] %s\n", strings.TrimPrefix(c.Name, rootName+"/"+cat+"/"), c.Status, msg)
		}
	}
	return b.String()
}

// rootName is the name of the suite's root test, the first element of
// every test's name.
const rootName = "OCI Conformance Test"

// OutEnv names the environment variable that, set to a directory, makes
// Run keep each run's results there, in DIR/<test name>/: summary.txt
// (String and Details), stdout.txt, stderr.txt, and the suite's
// junit.xml, results.yaml and report.html.
const OutEnv = "OCISTORE_CONFORMANCE_OUT"

// Run runs the suite's binary bin (from Build) against the registry of
// cfg and returns its summary. It fails the test when cfg is unusable,
// when the suite does not finish within cfg.Timeout or before the test's
// deadline, or when its results cannot be read; failed checks do not fail
// the test: asserting on the Summary is the caller's.
//
// The suite runs with a clean environment (PATH and HOME, then cfg.Env()
// and OCI_RESULTS_DIR), in a temporary directory that is also its results
// directory.
func Run(t testing.TB, bin string, cfg Config) *Summary {
	t.Helper()
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	// Stop before go test's own deadline panics the test: a timeout then
	// says what timed out, with what the suite printed so far.
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok {
			if left := time.Until(deadline) - 30*time.Second; left < timeout {
				timeout = max(left, time.Second)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = dir
	cmd.Env = suiteEnv(cfg, dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("conformance: the suite against %s did not finish within %s (%v)\nstdout:\n%s\nstderr:\n%s",
			cfg.Registry, timeout, err, tail(stdout.Bytes()), tail(stderr.Bytes()))
	}
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("conformance: run %s: %v", bin, err)
		}
		code = ee.ExitCode()
	}
	// The suite exits 1 when it found failures, 0 otherwise, and also 0
	// when it could not start (a bad configuration): the results decide.
	junit, rerr := os.ReadFile(filepath.Join(dir, "junit.xml"))
	if rerr != nil || (code != 0 && code != 1) {
		t.Fatalf("conformance: the suite against %s exited with status %d and wrote no results (%v)\nstdout:\n%s\nstderr:\n%s",
			cfg.Registry, code, rerr, tail(stdout.Bytes()), tail(stderr.Bytes()))
	}
	s, err := parse(junit, stdout.String())
	if err != nil {
		t.Fatalf("conformance: the suite's results in %s: %v\nstdout:\n%s", dir, err, tail(stdout.Bytes()))
	}
	s.Stderr, s.Dir, s.Elapsed = stderr.String(), dir, elapsed
	if (code == 0) != (s.Result == "Pass") {
		t.Fatalf("conformance: the suite exited with status %d but its result is %s\nstderr:\n%s", code, s, tail(stderr.Bytes()))
	}
	t.Logf("conformance: %s against %s in %s", s, cfg.Registry, elapsed.Round(time.Millisecond))
	if out := os.Getenv(OutEnv); out != "" {
		if err := s.save(filepath.Join(out, fileName(t.Name()))); err != nil {
			t.Errorf("conformance: %s=%s: %v", OutEnv, out, err)
		}
	}
	return s
}

// suiteEnv is the suite's whole environment.
func suiteEnv(cfg Config, resultsDir string) []string {
	var env []string
	for _, name := range []string{"PATH", "HOME"} {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	env = append(env, cfg.Env()...)
	return append(env, "OCI_RESULTS_DIR="+resultsDir)
}

// parse reads a run's results: the counts and the failed tests from
// junit.xml, checked against the summary the suite printed (stdout), and
// the status of each API and data set from that summary.
func parse(junit []byte, stdout string) (*Summary, error) {
	s, err := parseJUnit(junit)
	if err != nil {
		return nil, err
	}
	s.Report = stdout
	if err := s.checkReport(); err != nil {
		return nil, fmt.Errorf("the suite's summary and its junit.xml disagree: %w", err)
	}
	if s.APIs, err = statusTable(stdout, "API conformance:"); err != nil {
		return nil, err
	}
	if s.Data, err = statusTable(stdout, "Data conformance:"); err != nil {
		return nil, err
	}
	return s, nil
}

// junit.xml, as the suite writes it: one suite whose counts are the
// checks', and a test case per leaf test. The status attribute is passed,
// skipped (skipped or disabled), failure or error; system-out holds the
// errors, system-err the requests and responses.
type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Disabled int         `xml:"disabled,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string `xml:"name,attr"`
	Status    string `xml:"status,attr"`
	SystemOut string `xml:"system-out"`
	SystemErr string `xml:"system-err"`
}

// parseJUnit reads the counts and the failed tests from the suite's
// junit.xml. Result is left to checkReport, which reads it from the
// suite's summary; here it is derived from the counts the way the suite
// derives it.
func parseJUnit(b []byte) (*Summary, error) {
	var js junitSuites
	if err := xml.Unmarshal(b, &js); err != nil {
		return nil, fmt.Errorf("parse junit.xml: %w", err)
	}
	if len(js.Suites) != 1 {
		return nil, fmt.Errorf("junit.xml has %d test suites, want 1", len(js.Suites))
	}
	su := js.Suites[0]
	if su.Name != rootName {
		return nil, fmt.Errorf("junit.xml: test suite %q, want %q", su.Name, rootName)
	}
	s := &Summary{
		Fail:     su.Failures,
		Error:    su.Errors,
		Skip:     su.Skipped,
		Disabled: su.Disabled,
		Total:    su.Tests,
	}
	s.Pass = s.Total - s.Fail - s.Error - s.Skip - s.Disabled
	if s.Pass < 0 {
		return nil, fmt.Errorf("junit.xml: %d tests but %d failures, %d errors, %d skipped, %d disabled", s.Total, s.Fail, s.Error, s.Skip, s.Disabled)
	}
	switch {
	case s.Error > 0:
		s.Result = "Error"
	case s.Fail > 0:
		s.Result = "FAIL"
	case s.Pass > 0:
		s.Result = "Pass"
	case s.Skip > 0:
		s.Result = "Skip"
	case s.Disabled > 0:
		s.Result = "Disabled"
	default:
		s.Result = "Unknown"
	}
	for _, c := range su.Cases {
		switch c.Status {
		case "passed", "skipped":
		case "failure", "error":
			s.Failed = append(s.Failed, Check{Name: c.Name, Status: c.Status, Message: c.SystemOut, Output: c.SystemErr})
		default:
			return nil, fmt.Errorf("junit.xml: test case %q has status %q", c.Name, c.Status)
		}
	}
	if (s.Fail+s.Error > 0) != (len(s.Failed) > 0) {
		return nil, fmt.Errorf("junit.xml: %d failures and %d errors, but %d failed test cases", s.Fail, s.Error, len(s.Failed))
	}
	return s, nil
}

// The suite's printed summary: "OCI Conformance Result: FAIL", then a
// line per status and the total, "  Pass.........................:        703".
var (
	resultLine = regexp.MustCompile(`(?m)^OCI Conformance Result: (\S+)$`)
	countLine  = regexp.MustCompile(`(?m)^  (Disabled|Skip|Pass|FAIL|Error|Total)\.*: +([0-9]+)$`)
)

// checkReport compares s's counts with the summary the suite printed
// (s.Report), and takes the suite's result from it.
func (s *Summary) checkReport() error {
	m := resultLine.FindStringSubmatch(s.Report)
	if m == nil {
		return fmt.Errorf("no %q line in the suite's output", "OCI Conformance Result:")
	}
	if m[1] != s.Result {
		return fmt.Errorf("the suite's result is %s, its junit.xml's counts say %s", m[1], s.Result)
	}
	want := map[string]int{"Disabled": s.Disabled, "Skip": s.Skip, "Pass": s.Pass, "FAIL": s.Fail, "Error": s.Error, "Total": s.Total}
	seen := map[string]bool{}
	for _, m := range countLine.FindAllStringSubmatch(s.Report, -1) {
		if seen[m[1]] {
			continue // the first of each is the summary's
		}
		seen[m[1]] = true
		n, err := strconv.Atoi(m[2])
		if err != nil {
			return fmt.Errorf("count %s %q: %v", m[1], m[2], err)
		}
		if n != want[m[1]] {
			return fmt.Errorf("the suite counts %s=%d, its junit.xml %d", m[1], n, want[m[1]])
		}
	}
	if len(seen) != len(want) {
		return fmt.Errorf("the suite's output has counts for %d of the statuses (%v), want all of %d", len(seen), seen, len(want))
	}
	return nil
}

// A line of the suite's API and data tables:
// "  Blob get range................:       FAIL".
var tableLine = regexp.MustCompile(`^  (.*[^.])\.*: +(Unknown|Disabled|Skip|Pass|FAIL|Error)$`)

// statusTable reads the table under the line title in the suite's output,
// up to the first blank line.
func statusTable(stdout, title string) (map[string]string, error) {
	_, table, ok := strings.Cut(stdout, "\n"+title+"\n")
	if !ok {
		return nil, fmt.Errorf("no %q table in the suite's output", title)
	}
	table, _, _ = strings.Cut(table, "\n\n")
	m := map[string]string{}
	for _, line := range strings.Split(table, "\n") {
		f := tableLine.FindStringSubmatch(line)
		if f == nil {
			return nil, fmt.Errorf("%s: unexpected line %q", title, line)
		}
		m[f[1]] = f[2]
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s: empty table", title)
	}
	return m, nil
}

// save writes the summary and the suite's output and reports into dir.
func (s *Summary) save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string][]byte{
		"summary.txt": []byte(s.Details()),
		"stdout.txt":  []byte(s.Report),
		"stderr.txt":  []byte(s.Stderr),
	}
	for _, name := range []string{"junit.xml", "results.yaml", "report.html"} {
		b, err := os.ReadFile(filepath.Join(s.Dir, name))
		if err != nil {
			return err
		}
		files[name] = b
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// fileName makes a test's name a directory name.
func fileName(testName string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '/', '\\', ':', ' ':
			return '_'
		}
		return r
	}, testName)
}

// tail returns the end of a long output, for failure messages.
func tail(b []byte) []byte {
	const max = 16 << 10
	if len(b) > max {
		return append([]byte("...\n"), b[len(b)-max:]...)
	}
	return b
}
