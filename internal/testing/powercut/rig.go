// Package powercut cuts the power under the real ocistore binary on a real
// ext4 file system (Tier 2 of the README's "How crash safety is
// proven").
//
// A Rig is a small ext4 image on a loop device, mounted in a private work
// directory. Cut shuts the file system down with EXT4_IOC_SHUTDOWN and
// EXT4_GOING_FLAGS_NOLOGFLUSH: the journal is not flushed, so everything that
// was not made durable (fsync, fdatasync, syncfs) before the cut is lost, as
// on a power failure; every later access fails with EIO. Unmounting and
// mounting again replays the ext4 journal, as a reboot would.
//
// The tests in this package (powercut_test.go) run `ocistore rm` and
// `ocistore import` with a crash point armed in pause mode
// (OCISTORE_CRASHPOINT=NAME[@K]:pause, see internal/crash), cut the power
// when the process reports the point, kill it, remount, run `ocistore
// recover` and `ocistore fsck`, and check that the layout is the baseline or
// the baseline with the whole operation applied. They need root, losetup,
// mkfs.ext4, mount and umount (Debian: mount, e2fsprogs), and fail without
// them.
package powercut

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// From linux/fs/ext4/ext4.h (also include/uapi/linux/fs.h as FS_IOC_SHUTDOWN).
const (
	ext4IocShutdown          = 0x8004587D // _IOR('X', 125, __u32)
	ext4GoingFlagsNoLogFlush = 0x2        // do not flush the journal: a power cut
)

// WorkPrefix starts the name of every rig's work directory, followed by the
// pid of the process that owns it: ReapStale uses it to find what a killed
// test run left behind.
const WorkPrefix = "ocistore-powercut-"

// Tools is the external programs a rig runs.
var Tools = []string{"losetup", "mkfs.ext4", "mount", "umount"}

// CheckHost reports why this host cannot run power-cut tests: not root, or a
// tool missing.
func CheckHost() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("power-cut tests need root (loop devices, mount, EXT4_IOC_SHUTDOWN); running as uid %d", os.Geteuid())
	}
	var missing []string
	for _, t := range Tools {
		if _, err := lookTool(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("power-cut tests need %s (Debian packages mount and e2fsprogs)", strings.Join(missing, ", "))
	}
	return nil
}

// lookTool finds a tool in PATH or in the sbin directories a non-login root
// shell may lack.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

func run(name string, args ...string) (string, error) {
	p, err := lookTool(name)
	if err != nil {
		return "", err
	}
	out, err := exec.Command(p, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

// Rig is an ext4 file system on a loop device, mounted at Mnt.
type Rig struct {
	Work  string // private directory: Image and Mnt
	Image string // the ext4 image file
	Dev   string // /dev/loopN
	Mnt   string // mount point

	// Options are the mount options ("" for ext4's defaults); see
	// StrictOptions. A change takes effect at the next Mount.
	Options string

	mounted bool
	// Mounts counts the mounts, Cuts the power cuts.
	Mounts, Cuts int
}

// StrictOptions make the file system keep nothing that was not synced: no
// periodic journal commit within a test's lifetime (commit=300: ext4
// commits every 5 s by default, which would make some unsynced writes
// durable by luck) and no flush of a file's data when it is renamed over
// another (noauto_da_alloc: by default ext4 starts writing a file renamed
// over an existing one, which hides a missing fsync before a rename).
const StrictOptions = "commit=300,noauto_da_alloc"

// NewRig creates an ext4 image of sizeMiB MiB (mkfs.ext4 given mkfsArgs
// too), attaches it to a loop device and mounts it with options. On error
// it undoes what it did.
func NewRig(sizeMiB int, options string, mkfsArgs ...string) (r *Rig, err error) {
	work, err := os.MkdirTemp("", WorkPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, err
	}
	r = &Rig{Work: work, Image: filepath.Join(work, "ext4.img"), Mnt: filepath.Join(work, "mnt"), Options: options}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
			r = nil
		}
	}()
	if err := os.Mkdir(r.Mnt, 0o755); err != nil {
		return r, err
	}
	f, err := os.Create(r.Image)
	if err != nil {
		return r, err
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return r, err
	}
	args := append([]string{"-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"}, mkfsArgs...)
	if _, err := run("mkfs.ext4", append(args, r.Image)...); err != nil {
		return r, err
	}
	dev, err := run("losetup", "--find", "--show", r.Image)
	if err != nil {
		return r, err
	}
	if !strings.HasPrefix(dev, "/dev/") {
		return r, fmt.Errorf("losetup printed %q, not a device", dev)
	}
	r.Dev = dev
	return r, r.Mount()
}

// Mount mounts the file system (ext4 replays its journal).
func (r *Rig) Mount() error {
	if r.mounted {
		return nil
	}
	args := []string{"-t", "ext4"}
	if r.Options != "" {
		args = append(args, "-o", r.Options)
	}
	if _, err := run("mount", append(args, r.Dev, r.Mnt)...); err != nil {
		return err
	}
	r.mounted = true
	r.Mounts++
	return nil
}

// Unmount unmounts the file system, lazily when it stays busy.
func (r *Rig) Unmount() error {
	if !r.mounted {
		return nil
	}
	var err error
	for i := 0; i < 20; i++ {
		if _, err = run("umount", r.Mnt); err == nil {
			r.mounted = false
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	if _, lerr := run("umount", "-l", r.Mnt); lerr != nil {
		return errors.Join(err, lerr)
	}
	r.mounted = false
	// A lazy unmount only detaches the mount point: the file system lives
	// on while something holds it, and a mount of the same device meanwhile
	// gets that file system back (shut down by a cut: every access EIO),
	// not a fresh one that replays its journal. Wait until the device is
	// free.
	return waitFree(r.Dev, 10*time.Second)
}

// waitFree waits until no mounted file system holds dev: an exclusive
// open of a block device fails with EBUSY while one does.
func waitFree(dev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err == nil {
			return unix.Close(fd)
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("%s still held by a file system %s after its lazy unmount: %w", dev, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Remount unmounts then mounts: a reboot of the file system.
func (r *Rig) Remount() error {
	if err := r.Unmount(); err != nil {
		return err
	}
	return r.Mount()
}

// Cut shuts the file system down without flushing its journal: what was not
// synced is lost, and every access fails until Remount.
func (r *Rig) Cut() error {
	fd, err := unix.Open(r.Mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", r.Mnt, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetPointerInt(fd, ext4IocShutdown, ext4GoingFlagsNoLogFlush); err != nil {
		return fmt.Errorf("EXT4_IOC_SHUTDOWN %s: %w", r.Mnt, err)
	}
	r.Cuts++
	return nil
}

// SelfTest checks that a cut loses what was not synced and keeps what was:
// else a test on the rig proves nothing. Run it with StrictOptions (with the
// default options a periodic journal commit may save the unsynced file).
// It leaves the file system mounted.
func (r *Rig) SelfTest() error {
	dir := filepath.Join(r.Mnt, "selftest")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	kept, lost := filepath.Join(dir, "kept"), filepath.Join(dir, "lost")
	f, err := os.Create(kept)
	if err != nil {
		return err
	}
	_, err = f.WriteString("kept\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := os.WriteFile(lost, []byte("lost\n"), 0o644); err != nil {
		return err
	}
	if err := r.Cut(); err != nil {
		return err
	}
	if _, err := os.ReadFile(kept); err == nil {
		return fmt.Errorf("%s still readable after EXT4_IOC_SHUTDOWN: the file system was not shut down", kept)
	}
	if err := r.Remount(); err != nil {
		return err
	}
	if b, err := os.ReadFile(kept); err != nil || string(b) != "kept\n" {
		return fmt.Errorf("a synced file did not survive the cut: %q, %v", b, err)
	}
	if b, err := os.ReadFile(lost); err == nil && len(b) > 0 {
		return fmt.Errorf("an unsynced file survived the cut with its data (%q): the cut is not a power cut", b)
	}
	return os.RemoveAll(dir)
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

// Sync makes everything written to the file system durable (syncfs, as
// `sync -f`).
func (r *Rig) Sync() error {
	fd, err := unix.Open(r.Mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// Close unmounts (lazily if needed), detaches the loop device and removes
// the work directory. It is safe to call more than once and after a
// partial NewRig.
func (r *Rig) Close() error {
	if r == nil {
		return nil
	}
	var errs []error
	if err := r.Unmount(); err != nil {
		errs = append(errs, err)
	}
	if r.Dev != "" {
		if _, err := run("losetup", "-d", r.Dev); err != nil {
			errs = append(errs, err)
		} else {
			r.Dev = ""
		}
	}
	if len(errs) == 0 && r.Work != "" {
		// Never remove a work directory that might still have a mount in it.
		if isMountPoint(r.Mnt) {
			errs = append(errs, fmt.Errorf("%s is still a mount point; not removing %s", r.Mnt, r.Work))
		} else if err := os.RemoveAll(r.Work); err != nil {
			errs = append(errs, err)
		} else {
			r.Work = ""
		}
	}
	return errors.Join(errs...)
}

// mountPoints lists the mount points of this mount namespace.
func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMountPoint(p string) bool {
	for _, m := range mountPoints() {
		if m == p {
			return true
		}
	}
	return false
}

// Leftovers lists the mounts and loop devices of rigs whose owner is pid
// (0: any owner): what a clean run leaves is nothing.
func Leftovers(pid int) (mounts, loops []string) {
	tag := "/" + WorkPrefix
	if pid > 0 {
		tag += strconv.Itoa(pid) + "-"
	}
	for _, m := range mountPoints() {
		if strings.Contains(m, tag) {
			mounts = append(mounts, m)
		}
	}
	out, _ := run("losetup", "-a")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, tag) {
			loops = append(loops, l)
		}
	}
	return mounts, loops
}

// ownerAlive reports whether the pid in a path's WorkPrefix component is a
// live process.
func ownerAlive(p string) bool {
	i := strings.Index(p, WorkPrefix)
	if i < 0 {
		return true
	}
	rest := p[i+len(WorkPrefix):]
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return true
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ReapStale unmounts and detaches what rigs of dead processes left (a test
// binary killed by its timeout runs no cleanup). Rigs of live processes are
// left alone. It returns what it did.
func ReapStale() []string {
	var did []string
	for _, m := range mountPoints() {
		if strings.Contains(m, "/"+WorkPrefix) && !ownerAlive(m) {
			if _, err := run("umount", "-l", m); err == nil {
				did = append(did, "unmounted "+m)
			}
		}
	}
	out, _ := run("losetup", "-a")
	for _, l := range strings.Split(out, "\n") {
		dev, rest, ok := strings.Cut(l, ":")
		if !ok || !strings.Contains(rest, "/"+WorkPrefix) || ownerAlive(rest) {
			continue
		}
		if _, err := run("losetup", "-d", dev); err == nil {
			did = append(did, "detached "+dev)
		}
	}
	ents, _ := os.ReadDir(os.TempDir())
	for _, e := range ents {
		p := filepath.Join(os.TempDir(), e.Name())
		if !e.IsDir() || !strings.HasPrefix(e.Name(), WorkPrefix) || ownerAlive(p) || isMountPoint(filepath.Join(p, "mnt")) {
			continue
		}
		if err := os.RemoveAll(p); err == nil {
			did = append(did, "removed "+p)
		}
	}
	return did
}
