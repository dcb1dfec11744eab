package powercut

// A full disk must not stop the operations that free space (the space
// reserve, fsio.ReserveFile). On a small ext4 made with no blocks reserved
// for root (mkfs.ext4 -m 0: this test runs as root, which would otherwise
// write into them), filled to its last block, the real binary runs `rm`,
// `prune --keep-last 1`, `gc --grace 0s` and `recover` (of a record left
// pending by a crash), each on a full disk, and each must succeed and leave
// fsck clean. A binary built with the reserve turned off
// (fsio.DisableReserve) must fail there: that shows the test can tell.
// `fsck --repair` (removing orphans) runs there too, and `rm` once with
// statfs not looked at (fsio.DisableAvailable): it meets ENOSPC first.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/gen"
)

const fullDiskMiB = 32

// fullDisk is a rig and the binaries that run on it.
type fullDisk struct {
	rig  *Rig
	bin  string
	bare string // built with the reserve turned off
	// blind is built with fsio.Available turned off: it releases the
	// reserve only once a transaction failed with ENOSPC, then runs it
	// again (as on a file system over its quota: statfs does not tell).
	blind string
}

func TestFullDisk(t *testing.T) {
	if err := CheckHost(); err != nil {
		t.Fatal(err)
	}
	if did := ReapStale(); len(did) > 0 {
		t.Logf("cleaned up after an earlier run: %s", strings.Join(did, "; "))
	}
	tmp := t.TempDir()
	fd := &fullDisk{}
	for _, d := range []string{"reserve", "bare", "blind"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fd.bin = buildBinaryWith(t, filepath.Join(tmp, "reserve"), nil)
	fd.bare = buildBinaryWith(t, filepath.Join(tmp, "bare"), func(root string) string {
		return fsioOverlay(t, filepath.Join(tmp, "bare"), root, "DisableReserve()")
	})
	fd.blind = buildBinaryWith(t, filepath.Join(tmp, "blind"), func(root string) string {
		return fsioOverlay(t, filepath.Join(tmp, "blind"), root, "DisableAvailable()")
	})
	rig, err := NewRig(fullDiskMiB, "", "-m", "0", "-b", "4096")
	if err != nil {
		t.Fatalf("ext4 rig: %v", err)
	}
	t.Cleanup(func() {
		if err := rig.Close(); err != nil {
			t.Errorf("rig cleanup: %v", err)
		}
		if m, l := Leftovers(os.Getpid()); len(m)+len(l) > 0 {
			t.Errorf("left behind: mounts %v, loop devices %v", m, l)
		}
	})
	fd.rig = rig
	spec := gen.Spec{Images: 24, Repos: 4, LayerSize: 16 << 10, Seed: 5}

	t.Run("without-reserve", func(t *testing.T) {
		dir := fd.layout(t, "bare", fd.bare, spec)
		if fi, err := os.Lstat(filepath.Join(dir, fsio.ReserveFile)); err == nil {
			t.Fatalf("the binary without a reserve made one (%d bytes)", fi.Size())
		}
		fd.fill(t)
		_, errOut, code := fd.run(t, fd.bare, "", "-l", dir, "rm", "example.com/repo0:v0")
		if code == 0 || !strings.Contains(errOut, "no space left on device") {
			t.Errorf("rm on a full disk without a reserve: exit %d, want a failure for want of space:\n%s", code, errOut)
		}
		fd.unfill(t)
		fd.mustRun(t, fd.bare, "-l", dir, "recover") // whatever rm left
		fd.crashRm(t, fd.bare, dir, "example.com/repo1:v0")
		fd.fill(t)
		// A transaction writes its new index.json before its journal
		// commit: the crashed rm left it as a temp file, which recovery
		// removes before it replays, so the replay finds the space it
		// needs even without a reserve.
		_, errOut, code = fd.run(t, fd.bare, "", "-l", dir, "recover")
		if code != 0 {
			t.Errorf("recover on a full disk without a reserve, of an rm that crashed after its commit: exit %d:\n%s", code, errOut)
		}
		fd.unfill(t)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	})

	dir := fd.layout(t, "layout", fd.bin, spec)
	tags := func() map[string]string {
		st, err := ReadState(dir)
		if err != nil {
			t.Fatal(err)
		}
		return st.Tags
	}
	// Each step: space back and the reserve made again (by a read-write
	// open), its set-up, the disk filled to the last block, the command.
	fd.step(t, fd.bin, dir, "rm", nil, []string{"rm", "example.com/repo0:v0"}, func() {
		if _, ok := tags()["example.com/repo0:v0"]; ok {
			t.Error("rm: the tag is still there")
		}
	})
	// Statfs not looked at: the rm meets ENOSPC (its journal commit, or
	// the temp file of index.json after it), releases the reserve, and
	// runs again, or has recovery finish what it journaled.
	fd.step(t, fd.blind, dir, "rm-after-enospc", nil, []string{"rm", "example.com/repo1:v0"}, func() {
		if _, ok := tags()["example.com/repo1:v0"]; ok {
			t.Error("rm: the tag is still there")
		}
	})
	fd.step(t, fd.bin, dir, "prune", nil, []string{"prune", "--keep-last", "1"}, func() {
		if got := tags(); len(got) != spec.Repos {
			t.Errorf("prune --keep-last 1: %d tags left, want one per repository (%d): %v", len(got), spec.Repos, got)
		}
	})
	var orphans []string
	fd.step(t, fd.bin, dir, "gc", func() { orphans = fd.orphans(t, dir, 3) }, []string{"gc", "--grace", "0s"}, func() {
		for _, o := range orphans {
			if _, err := os.Lstat(o); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("gc: orphan %s still there (%v)", o, err)
			}
		}
	})
	fd.step(t, fd.bin, dir, "fsck-repair", func() { orphans = fd.orphans(t, dir, 3) }, []string{"fsck", "--repair", "--grace", "0s"}, func() {
		for _, o := range orphans {
			if _, err := os.Lstat(o); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("fsck --repair: orphan %s still there (%v)", o, err)
			}
		}
	})
	var victim string
	fd.step(t, fd.bin, dir, "recover", func() {
		names := slices.Sorted(maps.Keys(tags()))
		if len(names) == 0 {
			t.Fatal("no tag left to remove")
		}
		victim = names[0]
		fd.crashRm(t, fd.bin, dir, victim)
	}, []string{"recover"}, func() {
		if _, ok := tags()[victim]; ok {
			t.Errorf("recover: the pending rm of %s was not finished", victim)
		}
	})
	// Space back: the next read-write open makes the reserve again.
	fd.unfill(t)
	fd.mustRun(t, fd.bin, "-l", dir, "recover")
	fd.checkReserve(t, dir)
}

// layout writes a generated layout in the rig under name and adopts it
// with bin.
func (fd *fullDisk) layout(t *testing.T, name, bin string, spec gen.Spec) string {
	t.Helper()
	dir := filepath.Join(fd.rig.Mnt, name)
	if _, err := gen.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	fd.mustRun(t, bin, "-l", dir, "recover")
	fd.mustClean(t, bin, dir, "adopted")
	return dir
}

// step runs one command on a full disk and checks what it left.
func (fd *fullDisk) step(t *testing.T, bin, dir, name string, setup func(), args []string, check func()) {
	t.Run(name, func(t *testing.T) {
		fd.unfill(t)
		fd.mustRun(t, fd.bin, "-l", dir, "recover")
		fd.checkReserve(t, dir)
		if setup != nil {
			setup()
		}
		fd.fill(t)
		out, errOut, code := fd.run(t, bin, "", append([]string{"-l", dir}, args...)...)
		if bin == fd.blind {
			if !strings.Contains(errOut, "no space left on device") {
				t.Errorf("%s did not meet ENOSPC before it released the reserve:\n%s", strings.Join(args, " "), errOut)
			}
			if code != 0 && strings.Contains(errOut, "recovery finished the transaction") {
				code = 0 // failed after its journal commit: finished by recovery
			}
		}
		if code != 0 {
			t.Fatalf("%s on a full disk: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
		}
		t.Logf("%s on a full disk:\n%s", strings.Join(args, " "), errOut)
		if !strings.Contains(errOut, "space reserve released") {
			t.Errorf("%s on a full disk did not say that it released the reserve:\n%s", strings.Join(args, " "), errOut)
		}
		fd.mustClean(t, fd.bin, dir, name) // read-only: runs on the disk as the command left it
		check()
	})
}

// checkReserve fails unless the layout has a reserve of at least
// fsio.ReserveMin allocated bytes.
func (fd *fullDisk) checkReserve(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(dir, fsio.ReserveFile))
	if err != nil {
		t.Fatalf("no space reserve: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Blocks*512 < fsio.ReserveMin || fi.Size() < fsio.ReserveMin {
		t.Fatalf("space reserve: %d bytes, %d allocated; want at least %d", fi.Size(), st.Blocks*512, fsio.ReserveMin)
	}
}

// crashRm runs rm with the process killed right after its journal commit:
// a pending record whose index.json recovery has to write.
func (fd *fullDisk) crashRm(t *testing.T, bin, dir, ref string) {
	t.Helper()
	_, errOut, code := fd.run(t, bin, crash.TxnJournaled, "-l", dir, "rm", ref)
	if code == 0 {
		t.Fatalf("rm with crash point %s armed finished: %s", crash.TxnJournaled, errOut)
	}
	out, errOut, code := fd.run(t, bin, "", "-l", dir, "journal")
	if code != 0 || !strings.Contains(out, "delete "+ref) {
		t.Fatalf("no pending record after the crash: exit %d\n%s%s", code, out, errOut)
	}
}

// orphans writes n blobs that nothing references, as another tool would.
func (fd *fullDisk) orphans(t *testing.T, dir string, n int) []string {
	t.Helper()
	var out []string
	for range n {
		b := make([]byte, 8<<10)
		rand.Read(b)
		sum := sha256.Sum256(b)
		p := filepath.Join(dir, "blobs", "sha256", hex.EncodeToString(sum[:]))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

const fillerPrefix = "filler-"

// fill writes files outside the layouts until the file system has no
// block left: one large file until ENOSPC, then small ones, then
// (after a sync) small ones again; it fails unless statfs then says that
// nothing is available.
func (fd *fullDisk) fill(t *testing.T) {
	t.Helper()
	n := 0
	next := func() string {
		n++
		return filepath.Join(fd.rig.Mnt, fmt.Sprintf("%s%d", fillerPrefix, n))
	}
	f, err := os.Create(next())
	if err != nil {
		t.Fatalf("fill: %v", err)
	}
	big := make([]byte, 1<<20)
	for {
		if _, err = f.Write(big); err != nil {
			break
		}
	}
	if cerr := f.Close(); !noSpace(err) || cerr != nil && !noSpace(cerr) {
		t.Fatalf("fill: the large file stopped with %v (close: %v), not ENOSPC", err, cerr)
	}
	for round := 0; round < 2; round++ {
		for {
			err := os.WriteFile(next(), []byte("x"), 0o644)
			if noSpace(err) {
				break
			}
			if err != nil {
				t.Fatalf("fill: %v", err)
			}
		}
		if err := fd.rig.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(fd.rig.Mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bavail != 0 {
		t.Fatalf("fill: %d blocks still available", st.Bavail)
	}
}

// unfill removes what fill wrote.
func (fd *fullDisk) unfill(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(fd.rig.Mnt)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), fillerPrefix) {
			if err := os.Remove(filepath.Join(fd.rig.Mnt, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := fd.rig.Sync(); err != nil {
		t.Fatal(err)
	}
}

func noSpace(err error) bool { return errors.Is(err, syscall.ENOSPC) }

// run runs bin to completion (with a crash point armed when point is set)
// and returns stdout, stderr and the exit code (-1 when killed).
func (fd *fullDisk) run(t *testing.T, bin, point string, args ...string) (string, string, int) {
	cmd := exec.Command(bin, args...)
	cmd.Env = childEnv("")
	if point != "" {
		cmd.Env = append(cmd.Env, crash.EnvVar+"="+point)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee) && ee.Exited():
		return stdout.String(), stderr.String(), ee.ExitCode()
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), -1
	}
	t.Fatalf("%s: %v", bin, err)
	return "", "", -1
}

func (fd *fullDisk) mustRun(t *testing.T, bin string, args ...string) {
	t.Helper()
	if out, errOut, code := fd.run(t, bin, "", args...); code != 0 {
		t.Fatalf("ocistore %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
}

// mustClean fails unless fsck (read-only) and ReadState find dir sound.
func (fd *fullDisk) mustClean(t *testing.T, bin, dir, what string) {
	t.Helper()
	out, errOut, code := fd.run(t, bin, "", "-l", dir, "fsck")
	if code != 0 {
		t.Fatalf("%s: fsck exit %d\n%s%s", what, code, out, errOut)
	}
	st, err := ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Problems)+len(st.Strays) > 0 {
		t.Fatalf("%s: %v %v", what, st.Problems, st.Strays)
	}
}
