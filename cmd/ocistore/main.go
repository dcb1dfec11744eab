// Command ocistore manages an OCI image layout through the crash-safe store
// of package store: list, inspect, tag, import and delete images, check the
// layout and finish interrupted transactions.
//
// Usage:
//
//	ocistore [global flags] COMMAND [flags] [args]
//
// Run "ocistore help" for the commands and "ocistore COMMAND -h" for one
// command. Exit codes: 0 ok, 1 error (nothing changed; among them a journal
// written by a newer ocistore, which every command refuses and leaves as it
// is), 2 not found or usage error, 3 fsck found problems, 4 change made but
// its cleanup pending.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, let a second one kill the process.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
