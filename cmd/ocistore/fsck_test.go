package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/ocistore/ocistore/internal/testing/testutil"
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

// damagedCase materializes one case of testdata/damaged.
func damagedCase(t *testing.T, name string) (string, func()) {
	t.Helper()
	for _, c := range testutil.DamagedCases(t, "../../testdata/damaged") {
		if c.Name == name {
			return c.Materialize(t)
		}
	}
	t.Fatalf("no damaged case %s", name)
	return "", nil
}

// TestFsckRepairText: the text output of fsck --repair says what was done,
// which entries are broken and how to remove them, then the check after;
// exit 3 while a problem is left, 0 once none is.
func TestFsckRepairText(t *testing.T) {
	t.Parallel()
	dir, outside := damagedCase(t, "dangling-layer")
	r := must(t, 3, "-l", dir, "fsck", "--repair")
	wantContains(t, "stdout", r.stdout, "nothing to repair\n", "broken app:2 sha256:", "(--drop-broken removes it)\n",
		"after repair:\ndangling sha256:", "1 problem\n")
	r = must(t, 0, "-l", dir, "fsck", "--repair", "--drop-broken")
	wantContains(t, "stdout", r.stdout, "entry-dropped txn ", "app:2", "orphans-removed txn ", "after repair:\n3 images, ", "0 problems\n")
	wantNotContains(t, "stdout", r.stdout, "broken ")
	r = must(t, 0, "-l", dir, "fsck", "--repair")
	wantContains(t, "stdout", r.stdout, "nothing to repair\n", "0 problems\n")
	outside()
}

// openPty opens a pseudo-terminal pair; a machine without one fails the
// test (the progress bar is only drawn on a terminal: it must be tested).
func openPty(t *testing.T) (ptmx, pts *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pts: %v", err)
	}
	return ptmx, pts
}

// runWithTerminalStderr runs the binary with args, its stderr on a
// pseudo-terminal, and returns its stdout, what the terminal showed and
// its error.
func runWithTerminalStderr(t *testing.T, args ...string) (stdout, tty string, err error) {
	t.Helper()
	ptmx, pts := openPty(t)
	cmd := exec.Command(bin, args...)
	cmd.Env = childEnv(nil)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, pts
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	var term bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			term.Write(buf[:n])
			if err != nil {
				return // EIO once the child is gone
			}
		}
	}()
	err = cmd.Wait()
	<-done
	return out.String(), term.String(), err
}

// TestFsckDeepProgress: with stderr on a terminal, fsck --deep draws a
// progress line (the label, the seconds, MiB hashed of the total) over and
// over and clears it at the end; on a pipe it draws nothing. The layout
// holds a 4 GiB blob (sparse: no disk used) that --max stops hashing.
func TestFsckDeepProgress(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	big := digest.FromString("a big sparse orphan")
	bf, err := os.Create(f.blobPath(big))
	if err != nil {
		t.Fatal(err)
	}
	if err := bf.Truncate(4 << 30); err != nil {
		t.Fatal(err)
	}
	bf.Close()

	stdout, out, err := runWithTerminalStderr(t, "-l", f.dir, "fsck", "--deep", "--max", "1s", "--workers", "1")
	if err != nil { // the orphan is a notice: exit 0
		t.Fatalf("fsck: %v\n%s", err, stdout)
	}
	draws := regexp.MustCompile(`\r\x1b\[Kfsck: hashing blobs \(MiB\) [0-9.]+s [0-9]+/[0-9]+`).FindAllString(out, -1)
	if len(draws) < 2 || !strings.HasSuffix(out, "\r\x1b[K") || !strings.Contains(draws[len(draws)-1], "/4096") {
		t.Errorf("progress on the terminal: %q", out)
	}
	wantContains(t, "stdout", stdout, "STOPPED EARLY (--max 1s)")

	r := must(t, 0, "-l", f.dir, "fsck", "--deep", "--max", "300ms", "--workers", "1")
	if r.stderr != "" {
		t.Errorf("progress drawn on a pipe: %q", r.stderr)
	}
}

// TestFsckRepairRefusals: --drop-broken refuses to remove every image of a
// layout unless --force (exit 1, an error naming the layout and how many
// images would go, nothing changed); a layout whose blobs live in a shared
// blob directory it was not given is reported as blobs-elsewhere (first,
// with the hint) and not repaired, and with OCISTORE_SHARED_BLOB_DIR (or
// --shared-blob-dir) fsck and fsck --repair find its blobs before
// ocistore adopted it.
func TestFsckRepairRefusals(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	blobs := map[digest.Digest][]byte{}
	base := []byte("base layer of both images\n")
	a := testutil.RawImage(blobs, []byte(`{"os":"linux","n":1}`), base, []byte("a"))
	b := testutil.RawImage(blobs, []byte(`{"os":"linux","n":2}`), base, []byte("b"))
	entries := []v1.Descriptor{testutil.Named(a, "a:1"), testutil.Named(b, "b:1")}

	t.Run("drop-all", func(t *testing.T) {
		dir := testutil.WriteRawLayout(t, filepath.Join(root, "all-broken"), blobs, entries)
		if err := os.Remove(testutil.BlobFile(dir, digest.FromBytes(base))); err != nil {
			t.Fatal(err)
		}
		must(t, 2, "-l", dir, "fsck", "--force")
		before := testutil.Snapshot(t, dir)
		r := must(t, 1, "-l", dir, "fsck", "--repair", "--drop-broken")
		wantContains(t, "stderr", r.stderr, "--drop-broken would remove every image of the layout "+dir, "2 images", "--force")
		if after := testutil.Snapshot(t, dir); !maps.Equal(before, after) {
			t.Fatalf("a refused repair changed files:\n%v\n%v", before, after)
		}
		r = must(t, 0, "-l", dir, "fsck", "--repair", "--drop-broken", "--force")
		wantContains(t, "stdout", r.stdout, "entry-dropped", "after repair:\n0 images, ", "0 problems\n")
	})

	t.Run("blobs-elsewhere", func(t *testing.T) {
		shared := filepath.Join(root, "shared")
		dir := testutil.WriteRawLayout(t, filepath.Join(root, "x"), nil, entries)
		testutil.WriteBlobs(t, shared, blobs)
		r := must(t, 3, "-l", dir, "fsck")
		first, _, _ := strings.Cut(r.stdout, "\n")
		wantContains(t, "first line", first, recovery.KindBlobsElsewhere+" blobs: "+recovery.BlobsElsewhereHint)
		wantNotContains(t, "stdout", r.stdout, recovery.KindDangling)
		before := testutil.Snapshot(t, root)
		for _, args := range [][]string{{"--repair"}, {"--repair", "--drop-broken"}} {
			r = must(t, 1, append([]string{"-l", dir, "fsck"}, args...)...)
			wantContains(t, "stderr", r.stderr, recovery.BlobsElsewhereHint, "nothing was changed", "--force")
		}
		if after := testutil.Snapshot(t, root); !maps.Equal(before, after) {
			t.Fatalf("a refused repair changed files:\n%v\n%v", before, after)
		}
		env := runOpts{env: []string{"OCISTORE_SHARED_BLOB_DIR=" + shared}}
		r = cliWith(t, env, "-l", dir, "fsck")
		if r.code != 0 || strings.TrimSpace(strings.Split(r.stdout, "\n")[0]) != "notice: journal-missing .ocistore/journal.db: no journal: the layout was not adopted by ocistore yet" {
			t.Fatalf("fsck with OCISTORE_SHARED_BLOB_DIR before adoption: want only journal-missing, a notice (exit 0):\n%s", r)
		}
		r = cliWith(t, env, "-l", dir, "fsck", "--repair", "--drop-broken")
		if r.code != 0 {
			t.Fatalf("fsck --repair with OCISTORE_SHARED_BLOB_DIR:\n%s", r)
		}
		wantContains(t, "stdout", r.stdout, "after repair:\n2 images, 7 blobs")
		r = must(t, 0, "-l", dir, "fsck") // the layout names its directory now
		wantContains(t, "stdout", r.stdout, "2 images, 7 blobs")
	})
}
