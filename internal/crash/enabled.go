//go:build crashpoints

package crash

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Enabled reports whether this build has crash points (the build tag
// crashpoints): here it does.
const Enabled = true

// This file is the build with crash points (go build -tags crashpoints):
// OCISTORE_CRASHPOINT is read at start, and Point costs one
// atomic load unless armed.

var (
	armed atomic.Bool
	mu    sync.Mutex
	name  string
	left  int
	hook  func(string)
)

func init() {
	if v := os.Getenv(EnvVar); v != "" {
		var fn func(string)
		if p, ok := strings.CutSuffix(v, ":pause"); ok {
			v, fn = p, pause
		}
		n, k := v, 1
		if i := strings.LastIndexByte(v, '@'); i >= 0 {
			if c, err := strconv.Atoi(v[i+1:]); err == nil && c > 0 {
				n, k = v[:i], c
			}
		}
		arm(n, k, fn)
	}
}

func pause(name string) {
	fmt.Fprintf(os.Stderr, PausedMessage, name)
	// The test cuts the power, then kills us. Not select {}: in a program
	// with no other goroutine the runtime would report a deadlock and exit.
	for {
		time.Sleep(time.Hour)
	}
}

// arm makes the k-th call of Point(n) run fn (or kill the process when fn
// is nil).
func arm(n string, k int, fn func(string)) {
	mu.Lock()
	defer mu.Unlock()
	name, left, hook = n, k, fn
	armed.Store(true)
}

// Point marks a named step. It does nothing unless that point is armed.
func Point(n string) {
	if !armed.Load() {
		return
	}
	mu.Lock()
	if n != name {
		mu.Unlock()
		return
	}
	left--
	if left > 0 {
		mu.Unlock()
		return
	}
	fn := hook
	name = ""
	armed.Store(false)
	mu.Unlock()
	if fn != nil {
		fn(n)
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late; never return into the protocol
}
