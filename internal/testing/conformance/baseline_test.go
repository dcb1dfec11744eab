package conformance_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/ocistore/ocistore/internal/testing/conformance"
	"github.com/ocistore/ocistore/internal/testing/registry"
)

// A family is a reason docker-registry 2.8 fails checks of the suite: a
// feature it lacks or a case it answers wrongly. match says whether a
// failed test is one of its failures.
type family struct {
	name  string
	match func(c conformance.Check) bool
}

func leaf(c conformance.Check) string { return c.Name[strings.LastIndex(c.Name, "/")+1:] }

// families are what docker-registry 2.8.2 fails, every failure of both
// configurations below in one of them (the first that matches), and each
// of them failing at least once in each configuration.
var families = []family{
	// No referrers API: GET /v2/<name>/referrers/<digest> is a 404 in
	// text/plain, in "empty" and in each data set with a subject.
	{"referrers API", func(c conformance.Check) bool {
		return leaf(c) == "referrers" && strings.Contains(c.Message, `"Content-Type"`)
	}},
	// A manifest PUT with a subject gets no OCI-Subject header.
	{"OCI-Subject header", func(c conformance.Check) bool {
		return strings.HasPrefix(leaf(c), "manifest-by-") && strings.Contains(c.Message, `header value mismatch for "OCI-Subject"`)
	}},
	// Chunks sent out of order are accepted (202) instead of refused (416).
	{"out-of-order chunks", func(c conformance.Check) bool {
		return leaf(c) == "blob-patch-chunked" && strings.Contains(c.Message, "blob out of order chunk")
	}},
	// Ranges that cannot be satisfied (500-0, 5000-10000 of 2048 bytes)
	// are not answered 416: the connection ends early.
	{"unsatisfiable ranges", func(c conformance.Check) bool {
		return leaf(c) == "range 500-0" || leaf(c) == "range 5000-10000"
	}},
	// GET /v2/<name>/tags/list?last= ignores last: data sets with two tags
	// or more fail their tag list.
	{"tags list last=", func(c conformance.Check) bool {
		return leaf(c) == "tag-list" && strings.Contains(c.Message, "returned when last set to")
	}},
	// An image with non-distributable layers is refused with a 500, and is
	// then missing from every later check of its data set.
	{"non-distributable layers", func(c conformance.Check) bool {
		return c.Category() == "non-distributable-layers"
	}},
	// A malformed digest in a manifest reference is a 500, not a 400/404.
	{"invalid digest format", func(c conformance.Check) bool {
		return c.Category() == "invalid-digest-format"
	}},
	// No sha512: blobs are answered with a sha256 Docker-Content-Digest,
	// manifests by sha512 digest are refused; tags of sha512 manifests
	// are pushed, listed, fetched only in sha512 data sets.
	{"sha512", func(c conformance.Check) bool {
		switch c.Category() {
		case "sha512 blobs", "sha512", "tag-param-sha512":
			return true
		}
		return false
	}},
}

// TestDockerRegistryBaseline runs the suite against Debian's
// docker-registry (distribution 2.8.2), the registry the other tests use,
// as a baseline for `ocistore serve`: in the configuration its test uses
// (Everything: every workflow, sha512, the switches the suite leaves off
// by default) and in the suite's own defaults. It checks that the suite
// ran (its checks in the numbers measured with Version, within a few),
// that docker-registry fails some, and that each failure is one of the
// families above, each family failing: a change of the suite, the
// registry or the harness shows up as a failure here, naming what moved.
func TestDockerRegistryBaseline(t *testing.T) {
	bin := conformance.Build(t)
	if out, err := exec.Command(registry.Binary, "--version").CombinedOutput(); err == nil {
		t.Logf("%s", strings.TrimSpace(string(out)))
	}
	for _, tc := range []struct {
		name   string
		config func(registry string) conformance.Config
		// want are the counts measured on this machine with docker-registry
		// 2.8.2+ds1-1 and the suite at conformance.Version: pass, fail,
		// skip, disabled, error, total.
		want [6]int
	}{
		{"everything", conformance.Everything, [6]int{776, 153, 61, 0, 0, 990}},
		{"suite-defaults", conformance.Defaults, [6]int{703, 99, 44, 2, 0, 848}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := registry.Start(t, registry.Options{})
			s := conformance.Run(t, bin, tc.config(reg.Host))
			t.Logf("%s", s.Details())

			got := [6]int{s.Pass, s.Fail, s.Skip, s.Disabled, s.Error, s.Total}
			// The suite's checks depend only on its version, its
			// configuration and the registry's answers: runs here gave the
			// same counts each time. The slack is for a registry answer
			// that varies (a push method that fails and is retried).
			const slack = 5
			for i, name := range []string{"pass", "fail", "skip", "disabled", "error", "total"} {
				if d := got[i] - tc.want[i]; d < -slack || d > slack {
					t.Errorf("%s=%d, want %d±%d (measured with docker-registry 2.8.2 and the suite at %s): the suite, the registry or the harness changed; measure again and update this test and the README",
						name, got[i], tc.want[i], slack, conformance.Version)
				}
			}
			if s.Pass <= 600 || s.Fail == 0 || s.Error != 0 {
				t.Errorf("%s: want more than 600 passed checks, some failed ones, no errors", s)
			}

			hits := map[string]int{}
			for _, c := range s.Failed {
				name := ""
				for _, f := range families {
					if f.match(c) {
						name = f.name
						break
					}
				}
				if name == "" {
					t.Errorf("failure outside the known families: %s [%s]: %s", c.Name, c.Status, c.Message)
					continue
				}
				hits[name]++
			}
			for _, f := range families {
				if hits[f.name] == 0 {
					t.Errorf("family %q: no failure; docker-registry fixed it, or the suite no longer checks it", f.name)
				}
			}
			t.Logf("failed tests per family: %v", hits)

			// The headline of each family, in the suite's own verdict per
			// API and data set.
			for _, want := range []struct{ table, name, status string }{
				{"APIs", "Referrers", "FAIL"},
				{"APIs", "Manifest put with subject", "FAIL"},
				{"APIs", "Blob get range", "FAIL"},
				{"APIs", "Tag listing", "FAIL"},
				{"Data", "Digest Algorithm sha512", "FAIL"},
				{"Data", "Blobs sha512", "FAIL"},
				{"Data", "Non-distributable Layers", "FAIL"},
				{"Data", "Image", "Pass"},
				{"Data", "Index", "Pass"},
				{"Data", "Sparse Manifests", "Disabled"},
			} {
				m := s.APIs
				if want.table == "Data" {
					m = s.Data
				}
				if got := m[want.name]; got != want.status {
					t.Errorf("%s[%q] = %q, want %q", want.table, want.name, got, want.status)
				}
			}
		})
	}
}
