package main

import (
	"encoding/json"
	"os"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/recovery"
)

// flipLastLayer flips one bit of b's last layer (same size: only a deep
// check can see it) and returns its path and digest.
func flipLastLayer(t *testing.T, f *fixture) (string, string) {
	t.Helper()
	var m v1.Manifest
	if err := json.Unmarshal(readFile(t, f.blobPath(f.b.Digest)), &m); err != nil {
		t.Fatal(err)
	}
	layer := m.Layers[len(m.Layers)-1].Digest
	p := f.blobPath(layer)
	b := readFile(t, p)
	b[len(b)/2] ^= 0x80
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, layer.String()
}

func TestFsckDeep(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	clean := must(t, 0, "-l", f.dir, "fsck", "--deep")
	wantContains(t, "stdout", clean.stdout, "deep: ", " hashed", "0 problems\n")

	_, layer := flipLastLayer(t, f)
	must(t, 0, "-l", f.dir, "fsck") // the quick check reads no layer
	r := must(t, 3, "-l", f.dir, "fsck", "--deep", "--workers", "2")
	wantContains(t, "stdout", r.stdout, recovery.KindDigestMismatch+" "+layer+" blobs/sha256/", "1 problem\n")
	rep := decodeJSON[recovery.Report](t, must(t, 3, "-l", f.dir, "fsck", "--deep", "--json"))
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != recovery.KindDigestMismatch || rep.Problems[0].Digest != layer {
		t.Errorf("problems %+v", rep.Problems)
	}
	if rep.Deep == nil || rep.Deep.Stopped || rep.Deep.HashedFiles != rep.Deep.Files || rep.Deep.Files == 0 {
		t.Errorf("deep %+v", rep.Deep)
	}

	// --max stops the hashing and says so; what was not hashed is not a problem.
	r = must(t, 0, "-l", f.dir, "fsck", "--deep", "--max", "1ns", "--workers", "1")
	wantContains(t, "stdout", r.stdout, "STOPPED EARLY (--max 1ns)")
	rep = decodeJSON[recovery.Report](t, must(t, 0, "-l", f.dir, "fsck", "--deep", "--max", "1ns", "--json"))
	if rep.Deep == nil || !rep.Deep.Stopped {
		t.Errorf("deep %+v", rep.Deep)
	}

	// Usage errors.
	for _, args := range [][]string{{"--max", "1s"}, {"--deep", "--max", "soon"}, {"--deep", "--max", "-1s"}, {"--deep", "--workers", "0"}} {
		r := cli(t, append([]string{"-l", f.dir, "fsck"}, args...)...)
		if r.code != 2 {
			t.Errorf("fsck %v: want exit 2:\n%s", args, r)
		}
	}
}
