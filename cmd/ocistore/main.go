// Command ocistore manages an OCI image layout through the crash-safe store
// of package store: list, inspect, tag, import and delete images, check the
// layout and finish interrupted transactions.
//
// Usage:
//
//	ocistore [global flags] COMMAND [flags] [args]
//
// Global flags may also come after COMMAND (ocistore ls -l DIR); a flag
// given twice takes its last value. Run "ocistore help" for the commands and
// "ocistore COMMAND -h" for one command; "ocistore completion bash|zsh|fish"
// prints a shell completion script, "ocistore version" (or --version) the
// version and VCS commit the binary was built from.
//
// Exit codes, one per situation, the same for every command:
//
//	0    success
//	1    error: nothing changed (among them a journal written by a newer
//	     ocistore, which every command refuses and leaves as it is)
//	2    usage error, or a reference or digest not found
//	3    fsck found problems
//	4    the change was made but its cleanup is pending (ocistore recover)
//	5    the layout directory does not exist
//	6    the directory is not an OCI image layout (no oci-layout file)
//	75   another process held the layout's lock past --lock-timeout: try
//	     again later (EX_TEMPFAIL of sysexits.h)
//	130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: nothing changed
//
// Each error is one line on stderr, "ocistore: COMMAND: MESSAGE"; with
// --format json (or --json) it is one JSON object instead:
// {"error": MESSAGE, "kind": KIND, "exit": CODE}, KIND one of usage,
// not-found, layout-missing, not-layout, locked, incomplete, interrupted,
// error.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	watchSignals(cancel)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

// watchSignals cancels the command's context, with an *interrupted as its
// cause, at the first SIGINT or SIGTERM, and then lets the next one take
// its default action: a second Ctrl-C kills the process. A signal ignored
// when the process started (SIGINT for a background job of a
// non-interactive shell) stays ignored.
func watchSignals(cancel context.CancelCauseFunc) {
	var sigs []os.Signal
	for _, s := range []os.Signal{syscall.SIGINT, syscall.SIGTERM} {
		if !signal.Ignored(s) {
			sigs = append(sigs, s)
		}
	}
	if len(sigs) == 0 {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	go func() {
		s := <-ch
		signal.Stop(ch)
		cancel(&interrupted{sig: s.(syscall.Signal)})
	}()
}

// interrupted is the cause of a context cancelled by a signal.
type interrupted struct{ sig syscall.Signal }

func (e *interrupted) Error() string {
	if e.sig == syscall.SIGINT {
		return "interrupted"
	}
	return fmt.Sprintf("interrupted by %s", signalName(e.sig))
}

// exitCode is the shell's convention for a process ended by the signal:
// 128 + its number (130 for SIGINT, 143 for SIGTERM).
func (e *interrupted) exitCode() int { return 128 + int(e.sig) }

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}
