package testutil

import (
	"errors"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Watch reports every open, read, write, attribute change, removal or
// rename of the files it watches (and, for a directory, of the files in
// it), by any process, through inotify: "nothing outside the layout is
// read" is checked, not assumed. Events are queued by the kernel during the
// system call that causes them, so Check sees all that happened before it.
type Watch struct {
	fd    int
	paths map[int]string // watch descriptor -> path
}

const watchMask = unix.IN_OPEN | unix.IN_ACCESS | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE |
	unix.IN_DELETE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_CREATE

// WatchFiles starts watching paths; it is closed when the test ends.
func WatchFiles(t testing.TB, paths ...string) *Watch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	w := &Watch{fd: fd, paths: map[int]string{}}
	t.Cleanup(func() { unix.Close(fd) })
	for _, p := range paths {
		wd, err := unix.InotifyAddWatch(fd, p, watchMask|unix.IN_DONT_FOLLOW)
		if err != nil {
			t.Fatalf("inotify watch %s: %v", p, err)
		}
		w.paths[wd] = p
	}
	return w
}

// events drains what happened since the last call, one line each.
func (w *Watch) events(t testing.TB) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if err != nil {
			t.Fatalf("inotify read: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := ""
			if ev.Len > 0 {
				name = "/" + strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			}
			out = append(out, maskName(ev.Mask)+" "+w.paths[int(ev.Wd)]+name)
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// Check fails the test if anything touched the watched files since the
// last Check or Ignore.
func (w *Watch) Check(t testing.TB) {
	t.Helper()
	if evs := w.events(t); len(evs) > 0 {
		t.Errorf("files outside the layout were touched:\n%s", strings.Join(evs, "\n"))
	}
}

// Ignore runs fn (the test looking at the watched files itself) and
// forgets what it did to them.
func (w *Watch) Ignore(t testing.TB, fn func()) {
	t.Helper()
	w.Check(t)
	fn()
	w.events(t)
}

func maskName(m uint32) string {
	var names []string
	for _, f := range []struct {
		bit  uint32
		name string
	}{
		{unix.IN_OPEN, "open"}, {unix.IN_ACCESS, "read"}, {unix.IN_MODIFY, "write"}, {unix.IN_ATTRIB, "attrib"},
		{unix.IN_CLOSE_WRITE, "close-write"}, {unix.IN_DELETE, "delete"}, {unix.IN_DELETE_SELF, "delete-self"},
		{unix.IN_MOVE_SELF, "move-self"}, {unix.IN_MOVED_FROM, "moved-from"}, {unix.IN_MOVED_TO, "moved-to"},
		{unix.IN_CREATE, "create"}, {unix.IN_IGNORED, "ignored"}, {unix.IN_Q_OVERFLOW, "overflow"},
	} {
		if m&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	return strings.Join(names, "|")
}
