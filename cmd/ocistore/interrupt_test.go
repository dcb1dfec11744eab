//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ocistore/ocistore/internal/crash"
)

// ptyRun is the binary running on a pseudo-terminal, as a user runs it: the
// session leader, the terminal its controlling one, so that the interrupt
// character written to the terminal's master (Ctrl-C) sends it SIGINT.
type ptyRun struct {
	cmd    *exec.Cmd
	master *os.File
	done   chan struct{} // closed when the process has exited
	err    error         // of Wait, once done
	read   chan struct{} // closed when all the output is read
	mu     sync.Mutex
	out    bytes.Buffer
}

// openTerminal opens a new pseudo-terminal: its master and its slave.
func openTerminal(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	rc, err := m.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) {
			if ierr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ierr == nil { // unlock the slave
				n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
			}
		})
	}
	if err = errors.Join(err, ierr); err != nil {
		m.Close()
		t.Fatalf("pty: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	return m, s
}

func startOnPty(t *testing.T, env []string, args ...string) *ptyRun {
	t.Helper()
	master, slave := openTerminal(t)
	p := &ptyRun{cmd: exec.Command(bin, args...), master: master, done: make(chan struct{}), read: make(chan struct{})}
	p.cmd.Env = childEnv(env)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = slave, slave, slave
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err := p.cmd.Start()
	slave.Close()
	if err != nil {
		master.Close()
		t.Fatal(err)
	}
	go func() {
		defer close(p.read)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			p.mu.Lock()
			p.out.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return // EIO once the process and its terminal are gone
			}
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		master.Close()
	})
	return p
}

func (p *ptyRun) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// ctrlC types the interrupt character on the terminal.
func (p *ptyRun) ctrlC(t *testing.T) {
	t.Helper()
	if _, err := p.master.Write([]byte{0x03}); err != nil {
		t.Fatal(err)
	}
}

func (p *ptyRun) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitFor polls until cond holds; it fails the test after a minute (the
// process never got there).
func waitFor(t *testing.T, p *ptyRun, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("never %s; output:\n%s", what, p.output())
		}
	}
}

// hasOpen reports whether process pid has path open.
func hasOpen(pid int, path string) bool {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}

// TestCtrlCDuringLockWait: every command that writes, waiting for the lock
// another process holds (30 s --lock-timeout), stops on Ctrl-C at once:
// exit 130, the one line "ocistore: CMD: interrupted", index.json and the
// journal byte for byte as they were. A second Ctrl-C kills a command that
// does not stop (one paused at a crash point).
func TestCtrlCDuringLockWait(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	src := newFixture(t)
	index, journal := filepath.Join(f.dir, "index.json"), filepath.Join(f.dir, ".ocistore", "journal.db")
	// Another process's writer: the journal's file lock, held (bbolt's
	// flock, as ocistore takes it).
	held, err := os.Open(journal)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	beforeIndex, beforeJournal := readFile(t, index), readFile(t, journal)

	for _, args := range [][]string{
		{"rm", "b"},
		{"tag", "a", "x"},
		{"untag", "a"},
		{"prune", "--keep-last", "1"},
		{"gc"},
		{"gc", "--json"},
		{"recover"},
		{"fsck", "--repair"},
		{"import", src.dir},
		{"init"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			p := startOnPty(t, nil, append([]string{"-l", f.dir, "--lock-timeout", "30s"}, args...)...)
			// It waits for the lock: it tries, in slices, to open and lock
			// the journal.
			waitFor(t, p, "opened the journal", func() bool { return hasOpen(p.cmd.Process.Pid, journal) })
			start := time.Now()
			p.ctrlC(t)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				t.Fatalf("still running 5 s after Ctrl-C (the lock timeout is 30 s); output:\n%s", p.output())
			}
			// The 100 ms of the requirement, with a margin for a loaded
			// machine: well under the lock timeout.
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("exited %s after Ctrl-C", took)
			}
			<-p.read
			var ee *exec.ExitError
			if !errors.As(p.err, &ee) || ee.ExitCode() != exitInterrupted {
				t.Errorf("exit %v, want %d; output:\n%s", p.err, exitInterrupted, p.output())
			}
			want := "ocistore: " + args[0] + ": interrupted"
			if args[len(args)-1] == "--json" {
				want = `{"error":"interrupted","kind":"interrupted","exit":130}`
			}
			// The terminal echoes ^C and ends lines with \r\n.
			if got := strings.TrimSpace(strings.ReplaceAll(strings.ReplaceAll(p.output(), "^C", ""), "\r\n", "\n")); got != want {
				t.Errorf("output %q, want the one line %q", got, want)
			}
			if got := readFile(t, index); !bytes.Equal(got, beforeIndex) {
				t.Error("index.json changed")
			}
			if got := readFile(t, journal); !bytes.Equal(got, beforeJournal) {
				t.Error("the journal changed")
			}
		})
	}

	t.Run("second Ctrl-C kills", func(t *testing.T) {
		g := newFixture(t)
		// rm paused at a crash point: it no longer looks at its context.
		p := startOnPty(t, []string{crash.EnvVar + "=" + crash.TxnJournaled + ":pause"}, "-l", g.dir, "rm", "b")
		waitFor(t, p, "paused", func() bool {
			return strings.Contains(p.output(), strings.TrimSuffix(fmt.Sprintf(crash.PausedMessage, crash.TxnJournaled), "\n"))
		})
		p.ctrlC(t)
		// The first Ctrl-C cancels the command, which does not stop (give
		// it the time to see the signal: not an assertion on time).
		time.Sleep(300 * time.Millisecond)
		if p.exited() {
			t.Fatalf("the first Ctrl-C ended the paused command: %v\n%s", p.err, p.output())
		}
		// The next one kills it. (Sent again until it does: one sent while
		// the first was still being handled would go to the handler.)
		for i := 0; i < 50 && !p.exited(); i++ {
			p.ctrlC(t)
			select {
			case <-p.done:
			case <-time.After(200 * time.Millisecond):
			}
		}
		<-p.done
		var ee *exec.ExitError
		if !errors.As(p.err, &ee) {
			t.Fatalf("exit %v, want killed by SIGINT", p.err)
		}
		if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
			t.Errorf("exit %v, want killed by SIGINT; output:\n%s", p.err, p.output())
		}
	})
}
