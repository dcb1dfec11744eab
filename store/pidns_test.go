package store_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// The liveness of temp and trash files across PID namespaces: a writer in
// a container that shares the layout (here: a new PID namespace made by
// unshare(1)) pauses with files only it may remove, and recovery and fsck
// run in this namespace, where its process ID means nothing.

const (
	envNSRole = "OCISTORE_TEST_PIDNS_ROLE" // "init" (pid 1 of the new namespace) or "worker"
	envNSDir  = "OCISTORE_TEST_PIDNS_DIR"
	envNSOp   = "OCISTORE_TEST_PIDNS_OP"  // "ingest" or "trash"
	envNSPid  = "OCISTORE_TEST_PIDNS_PID" // the pid the worker should get in its namespace

	nsPaused = "pidns: paused at "
	nsWorker = "pidns: worker pid "
	// nsKilledExit is the init's exit status when it killed the worker.
	nsKilledExit = 9
)

// nsContent is what the worker ingests.
var nsContent = bytes.Repeat([]byte("a layer written from another PID namespace\n"), 512)

// TestPidNSChild is the child side of TestLivenessAcrossPIDNamespaces: it
// does nothing unless started by it.
func TestPidNSChild(t *testing.T) {
	switch os.Getenv(envNSRole) {
	case "init":
		nsInit()
	case "worker":
		nsWorkerMain(t)
	}
}

// nsInit is pid 1 of the new namespace: it starts the worker with the pid
// asked for (so that the pid in the worker's file names is one that no
// process of the parent namespace has: the old rule, kill(pid, 0) there,
// would say it is gone), then passes "go" on to it, or kills it with
// SIGKILL on "kill", and exits with its fate.
func nsInit() {
	fail := func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "pidns init: "+f+"\n", a...)
		os.Exit(1)
	}
	if os.Getpid() != 1 {
		fail("pid %d, want 1: not in a new PID namespace", os.Getpid())
	}
	want, err := strconv.Atoi(os.Getenv(envNSPid))
	if err != nil {
		fail("%v", err)
	}
	w := exec.Command(os.Args[0], "-test.run=^TestPidNSChild$", "-test.count=1")
	w.Env = append(os.Environ(), envNSRole+"=worker")
	w.Stdout, w.Stderr = os.Stderr, os.Stderr
	in, err := w.StdinPipe()
	if err != nil {
		fail("%v", err)
	}
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(want-1)), 0o644); err != nil {
		fail("%v", err)
	}
	if err := w.Start(); err != nil {
		fail("%v", err)
	}

	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "go":
			if _, err := in.Write([]byte("go\n")); err != nil {
				fail("%v", err)
			}
		case "kill":
			if err := w.Process.Signal(syscall.SIGKILL); err != nil {
				fail("%v", err)
			}
		}
	}
	err = w.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
		os.Exit(nsKilledExit)
	}
	fail("worker: %v", err)
}

// nsWorkerMain ingests a blob, pausing once it is written in its temp file
// (op ingest), or deletes an image through the trash, pausing after the
// first unlink of the trash (op trash), until "go" comes on stdin.
func nsWorkerMain(t *testing.T) {
	fail := func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "pidns worker: "+f+"\n", a...)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "%s%d\n", nsWorker, os.Getpid())
	ctx := context.Background()
	op := os.Getenv(envNSOp)
	dir := os.Getenv(envNSDir)
	osfs, err := fsio.OpenOS(dir)
	if err != nil {
		fail("open: %v", err)
	}
	pause := func(ev errorfs.Event) {
		fmt.Fprintf(os.Stderr, "%s%s\n", nsPaused, ev)
		if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "go\n" {
			fail("resume: %q, %v", line, err)
		}
	}
	o := &store.Options{}
	efs := errorfs.New(osfs)
	if op == "trash" {
		// After the first unlink of a file of the trash.
		store.SetTestTrashMin(o, 2)
		efs.Add(errorfs.Rule{Op: errorfs.OpRemove, Path: protocol.TrashDir + "/*", Nth: 1, After: true, Hook: pause})
	} else {
		// The ingest temp file written, synced and closed, not renamed.
		efs.Add(errorfs.Rule{Op: errorfs.OpRename, From: protocol.IngestDir + "/*", Nth: 1, Hook: pause})
	}
	store.SetTestFS(o, efs)
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		fail("open: %v", err)
	}
	switch op {
	case "ingest":
		err = s.PutBlob(ctx, v1.Descriptor{Digest: digest.FromBytes(nsContent), Size: int64(len(nsContent))}, bytes.NewReader(nsContent))
	case "trash":
		_, err = s.Delete(ctx, "victim")
	default:
		err = fmt.Errorf("unknown op %q", op)
	}
	if err != nil {
		fail("%s: %v", op, err)
	}
	if err := s.Close(); err != nil {
		fail("close: %v", err)
	}
	os.Exit(0)
}

// nsFreePid returns a pid that no process of this namespace has, nor the
// 63 after it (the worker's runtime may start threads before it, which
// take pids in its namespace), away from the pids this namespace hands
// out next.
func nsFreePid(t *testing.T) int {
	t.Helper()
	read := func(p string) int {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	max, last := read("/proc/sys/kernel/pid_max"), read("/proc/sys/kernel/ns_last_pid")
	const span = 64
	for i := 0; i < max; i += span {
		p := (last+max/2+i)%(max-2*span) + span
		free := true
		for q := p; q < p+span && free; q++ {
			_, err := os.Stat("/proc/" + strconv.Itoa(q))
			free = errors.Is(err, os.ErrNotExist)
		}
		if free {
			return p
		}
	}
	t.Fatal("no free range of pids")
	return 0
}

// nsChild is a worker running in a new PID namespace.
type nsChild struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	out   *bytes.Buffer // all its output, once lines is closed
}

// startNSChild starts unshare(1) with a new PID namespace (and a proc
// file system of its own, to choose the worker's pid) around nsInit, and
// waits until the worker paused; it returns the worker's pid in its
// namespace.
func startNSChild(t *testing.T, dir, op string) (*nsChild, int) {
	t.Helper()
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed to test liveness across PID namespaces: %v", err)
	}
	want := nsFreePid(t)
	cmd := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "--kill-child", os.Args[0], "-test.run=^TestPidNSChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envNSRole+"=init", envNSDir+"="+dir, envNSOp+"="+op, envNSPid+"="+strconv.Itoa(want))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	c := &nsChild{cmd: cmd, in: in, lines: make(chan string, 64), out: &bytes.Buffer{}}
	t.Cleanup(func() {
		// A test that failed half-way: unshare's end kills the
		// namespace (--kill-child). Nothing when it has exited.
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c.out.WriteString(sc.Text() + "\n")
			c.lines <- sc.Text()
		}
		r.Close()
	}()
	pid := 0
	for line := range c.lines {
		if p, ok := strings.CutPrefix(line, nsWorker); ok {
			pid, _ = strconv.Atoi(p)
		}
		if strings.HasPrefix(line, nsPaused) {
			if pid <= 1 {
				t.Fatalf("worker pid %d in its namespace", pid)
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the worker's pid in its namespace, %d, is a process of this one too (%v): the range chosen was not free", pid, err)
			}
			return c, pid
		}
	}
	err = cmd.Wait()
	t.Fatalf("the worker ended before its pause: %v\n%s", err, c.out)
	return nil, 0
}

// finish tells the worker to go on ("go") or has it killed ("kill") and
// returns unshare's exit status (that of the namespace's init).
func (c *nsChild) finish(t *testing.T, how string) int {
	t.Helper()
	if _, err := c.in.Write([]byte(how + "\n")); err != nil {
		t.Fatal(err)
	}
	c.in.Close() // the init's commands end
	for range c.lines {
	}
	err := c.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode()
	}
	t.Fatalf("unshare: %v\n%s", err, c.out)
	return -1
}

// tempProblems runs fsck and returns the paths it reports as temp files;
// any other problem fails the test but the blob the worker ingested, which
// no tag reaches (an orphan).
func tempProblems(t *testing.T, dir string) []string {
	t.Helper()
	rep, err := store.CheckDir(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range rep.Problems {
		if p.Kind == recovery.KindOrphan && p.Digest == digest.FromBytes(nsContent).String() {
			continue
		}
		if p.Kind == recovery.KindInFlight {
			continue // the paused worker holds the journal: a notice, right
		}
		if p.Kind != recovery.KindTempFile {
			t.Errorf("fsck: %s", p)
			continue
		}
		out = append(out, p.Path)
	}
	slices.Sort(out)
	return out
}

// recoverHere runs recovery in this namespace: an open (which recovers)
// and an explicit Recover.
func recoverHere(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// prefixed returns rel+"/"+name for each name.
func prefixed(rel string, names []string) []string {
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, rel+"/"+n)
	}
	return out
}

// TestLivenessAcrossPIDNamespaces: a worker in another PID namespace
// pauses with an ingest temp file (or files in the trash that it is
// unlinking) in the layout. From this namespace, fsck does not report
// them and recovery keeps them; the worker then finishes its ingest (or
// its unlinks) and the layout is clean. Killed with SIGKILL instead, it
// leaves them: fsck reports them, with its owner file, and recovery
// removes them all. (The old rule, kill(pid, 0) on the pid in the names,
// removed the live worker's files here: its pid is no process of this
// namespace.)
func TestLivenessAcrossPIDNamespaces(t *testing.T) {
	for _, op := range []string{"ingest", "trash"} {
		for _, end := range []string{"go", "kill"} {
			t.Run(op+"-"+end, func(t *testing.T) {
				ctx := context.Background()
				dir := t.TempDir()
				l := libOpen(t, dir, 7)
				l.tag(l.image(nil, 1), "keep")
				var victim []digest.Digest
				if op == "trash" {
					d := l.image(nil, 3)
					l.tag(d, "victim")
					victim = testutil.Graph(t, dir, d)
				}
				l.s.Close()
				watched := protocol.IngestDir
				if op == "trash" {
					watched = protocol.TrashDir
				}

				c, pid := startNSChild(t, dir, op)
				live := filesIn(t, dir, watched)
				if len(live) == 0 {
					t.Fatalf("the worker paused with nothing in %s", watched)
				}
				t.Logf("worker pid %d in its namespace (none here); its files: %v", pid, live)
				if got := tempProblems(t, dir); len(got) != 0 {
					t.Errorf("fsck reports the live worker's files: %v", got)
				}
				recoverHere(t, dir)
				if got := filesIn(t, dir, watched); !slices.Equal(got, live) {
					t.Fatalf("recovery in another PID namespace changed the live worker's files in %s: %v, were %v", watched, got, live)
				}
				owners := filesIn(t, dir, protocol.OwnersDir)
				if len(owners) != 1 {
					t.Fatalf("owner files %v, want the worker's", owners)
				}

				switch end {
				case "go":
					if code := c.finish(t, "go"); code != 0 {
						t.Fatalf("the worker failed (status %d):\n%s", code, c.out)
					}
					switch op {
					case "ingest":
						if !testutil.HasBlob(t, dir, digest.FromBytes(nsContent)) {
							t.Fatalf("the ingested blob is not in the layout:\n%s", c.out)
						}
					case "trash":
						for _, d := range victim {
							if testutil.HasBlob(t, dir, d) {
								t.Errorf("blob %s of the deleted image is still in the layout", d)
							}
						}
					}
				case "kill":
					if code := c.finish(t, "kill"); code != nsKilledExit {
						t.Fatalf("init's status %d, want %d (worker killed):\n%s", code, nsKilledExit, c.out)
					}
					want := append(prefixed(watched, live), prefixed(protocol.OwnersDir, owners)...)
					slices.Sort(want)
					if got := tempProblems(t, dir); !slices.Equal(got, want) {
						t.Fatalf("fsck after the worker was killed reports temp files %v, want %v", got, want)
					}
					recoverHere(t, dir)
				}
				for _, rel := range []string{protocol.IngestDir, protocol.TrashDir, protocol.OwnersDir} {
					if got := filesIn(t, dir, rel); len(got) != 0 {
						t.Errorf("left in %s: %v", rel, got)
					}
				}
				if got := tempProblems(t, dir); len(got) != 0 {
					t.Errorf("fsck at the end: %v", got)
				}
				s, err := store.Open(ctx, dir, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				if _, err := s.Resolve(ctx, "keep"); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
