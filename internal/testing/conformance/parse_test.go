package conformance

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testdata/junit.xml and testdata/stdout.txt are a real run of the suite
// at Version with Everything against docker-registry 2.8.2, trimmed: 10 of
// its 805 test cases (passed, skipped, failed), their outputs cut to 400
// bytes, and the middle of the printed tree. The counts are the run's.
func readSample(t *testing.T) ([]byte, string) {
	t.Helper()
	junit, err := os.ReadFile(filepath.Join("testdata", "junit.xml"))
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := os.ReadFile(filepath.Join("testdata", "stdout.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return junit, string(stdout)
}

func TestParseSample(t *testing.T) {
	junit, stdout := readSample(t)
	s, err := parse(junit, stdout)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "pass=776 fail=153 skip=61 disabled=0 error=0 of 990 (FAIL)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	var names []string
	for _, c := range s.Failed {
		names = append(names, c.Name)
		if c.Status != "failure" || c.Message == "" || c.Output == "" {
			t.Errorf("failed test %s: status %q, message %q, %d bytes of output: want failure, a message, an output", c.Name, c.Status, c.Message, len(c.Output))
		}
	}
	wantNames := []string{
		"OCI Conformance Test/empty/referrers",
		"OCI Conformance Test/sha256 blobs/range requests/range 500-0",
		"OCI Conformance Test/sha512 blobs/post+put/blob-post-put",
		"OCI Conformance Test/invalid-digest-format/manifest-put",
	}
	if !slices.Equal(names, wantNames) {
		t.Errorf("failed tests %q, want %q", names, wantNames)
	}
	ref := s.Failed[0]
	if ref.Category() != "empty" || !strings.Contains(ref.Message, `received ["text/plain; charset=utf-8"]`) || !strings.Contains(ref.Output, "~~~ REQUEST ~~~") {
		t.Errorf("first failed test: category %q, message %q, output %.80q", ref.Category(), ref.Message, ref.Output)
	}
	if got := s.Failed[2].Category(); got != "sha512 blobs" {
		t.Errorf("category of %s: %q, want %q", s.Failed[2].Name, got, "sha512 blobs")
	}
	for table, want := range map[string]map[string]string{
		"APIs": {"Referrers": "FAIL", "Blob upload cancel": "Pass", "Manifest put with tag params": "FAIL", "Tag delete": "Skip", "Ping": "Pass"},
		"Data": {"Digest Algorithm sha512": "FAIL", "Sparse Manifests": "Disabled", "Image": "Pass", "Tag Param sha512": "FAIL"},
	} {
		got := s.APIs
		if table == "Data" {
			got = s.Data
		}
		for name, status := range want {
			if got[name] != status {
				t.Errorf("%s[%q] = %q, want %q", table, name, got[name], status)
			}
		}
	}
	if len(s.APIs) != 28 || len(s.Data) != 24 {
		t.Errorf("%d APIs and %d data sets, want 28 and 24", len(s.APIs), len(s.Data))
	}
	d := s.Details()
	for _, want := range []string{
		"4 failed tests in 4 categories:\n",
		"sha256 blobs (1):\n  range requests/range 500-0 [failure] blob get failed: ",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("Details() lacks %q:\n%s", want, d)
		}
	}
}

// TestParseDisagreement checks that results that do not add up are
// refused, not summarized.
func TestParseDisagreement(t *testing.T) {
	junit, stdout := readSample(t)
	for _, tc := range []struct {
		name          string
		junit, stdout string
		want          string
	}{
		{
			name:   "count",
			junit:  string(junit),
			stdout: strings.Replace(stdout, "  Pass..........................:        776", "  Pass..........................:        775", 1),
			want:   "the suite counts Pass=775, its junit.xml 776",
		},
		{
			name:   "result",
			junit:  string(junit),
			stdout: strings.Replace(stdout, "OCI Conformance Result: FAIL", "OCI Conformance Result: Pass", 1),
			want:   "the suite's result is Pass, its junit.xml's counts say FAIL",
		},
		{
			name:   "no summary",
			junit:  string(junit),
			stdout: "Test results\n",
			want:   `no "OCI Conformance Result:" line`,
		},
		{
			name:   "missing count",
			junit:  string(junit),
			stdout: strings.Replace(stdout, "  Skip..........................:         61\n", "", 1),
			want:   "counts for 5 of the statuses",
		},
		{
			name:   "no failed case",
			junit:  strings.ReplaceAll(string(junit), `status="failure"`, `status="passed"`),
			stdout: stdout,
			want:   "153 failures and 0 errors, but 0 failed test cases",
		},
		{
			name:   "unknown status",
			junit:  strings.Replace(string(junit), `status="skipped"`, `status="flaky"`, 1),
			stdout: stdout,
			want:   `has status "flaky"`,
		},
		{
			name:   "counts",
			junit:  strings.Replace(string(junit), `tests="990" failures="153" errors="0"`, `tests="100" failures="153" errors="0"`, 1),
			stdout: stdout,
			want:   "100 tests but 153 failures",
		},
		{
			name:   "not junit",
			junit:  "<html></html>",
			stdout: stdout,
			want:   "parse junit.xml",
		},
		{
			name:   "table",
			junit:  string(junit),
			stdout: strings.Replace(stdout, "  Referrers.....................:       FAIL", "  Referrers.....................:       maybe", 1),
			want:   `API conformance:: unexpected line "  Referrers`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.junit == string(junit) && tc.stdout == stdout {
				t.Fatal("the case changes nothing: the sample's text moved")
			}
			s, err := parse([]byte(tc.junit), tc.stdout)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parse: %v (summary %v), want an error containing %q", err, s, tc.want)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	c := Everything("127.0.0.1:5000")
	env := c.Env()
	if len(env) != 4+1+31 {
		t.Errorf("%d variables, want 36: %q", len(env), env)
	}
	for _, want := range []string{
		"OCI_REGISTRY=127.0.0.1:5000", "OCI_TLS=disabled", "OCI_REPO1=conformance/repo1", "OCI_VERSION=1.1+dev",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true", "OCI_API_BLOBS_DIGEST_HEADER=true", "OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_TAG_PARAM=true", "OCI_DATA_SHA512=true", "OCI_DATA_SPARSE=false",
	} {
		if !slices.Contains(env, want) {
			t.Errorf("Env() lacks %s", want)
		}
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "OCI_USERNAME=") || strings.HasPrefix(kv, "OCI_PASSWORD=") || strings.HasPrefix(kv, "OCI_FILTER_TEST=") {
			t.Errorf("Env() sets %s, an empty string it should leave out", kv)
		}
		if strings.HasSuffix(kv, "=false") && kv != "OCI_DATA_SPARSE=false" {
			t.Errorf("Everything sets %s", kv)
		}
	}
	d := Defaults("127.0.0.1:5000").Env()
	for _, want := range []string{"OCI_VERSION=1.1", "OCI_API_BLOBS_UPLOAD_CANCEL=false", "OCI_API_MANIFESTS_TAG_PARAM=false", "OCI_API_REFERRER=true"} {
		if !slices.Contains(d, want) {
			t.Errorf("Defaults().Env() lacks %s", want)
		}
	}
	for _, bad := range []Config{{}, {Registry: "x:1"}, {Registry: "x:1", Repo1: "a", Repo2: "b", TLS: "yes"}} {
		if err := bad.check(); err == nil {
			t.Errorf("check(%+v) = nil, want an error", bad)
		}
	}
	if err := c.check(); err != nil {
		t.Errorf("check(Everything) = %v", err)
	}
}

// TestCheckBinary checks that a cached file that is not the suite at
// Version is refused (Build then builds it again).
func TestCheckBinary(t *testing.T) {
	dir := t.TempDir()
	if err := checkBinary(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v, want not-exist", err)
	}
	text := filepath.Join(dir, "text")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkBinary(text); err == nil || !strings.Contains(err.Error(), "no Go build information") {
		t.Errorf("a shell script: %v, want no Go build information", err)
	}
	if err := os.Chmod(text, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkBinary(text); err == nil || !strings.Contains(err.Error(), "not an executable file") {
		t.Errorf("a file without x: %v, want not an executable file", err)
	}
	// The test binary is a Go program, of another main module.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkBinary(self); err == nil || !strings.Contains(err.Error(), "want "+Module+"@"+Version) {
		t.Errorf("the test binary: %v, want a wrong module", err)
	}
}
