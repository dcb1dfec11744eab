package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

const globalHelp = `Global flags (before or after COMMAND; a flag given twice: the last wins):
  -l, --layout DIR          the OCI image layout to work on
                            (default $OCISTORE_LAYOUT, or "." when it is unset)
      --shared-blob-dir DIR the blobs (<alg>/<hex>) are in DIR, which other
                            layouts may share, as skopeo's --shared-blob-dir;
                            refcounts and the writer lock live there (default
                            $OCISTORE_SHARED_BLOB_DIR; a layout opened with it
                            once remembers it)
      --log-level LEVEL     debug, info, warn or error (default warn)
      --log-format FORMAT   text or json (default text); logs go to stderr
      --lock-timeout DUR    how long to wait for another process's writer lock,
                            e.g. 200ms, 1m (default 30s; 0 means the default,
                            a negative value fails at once)
      --version             print the version
  -h, --help                show this help

Exit codes (the same for every command):
  0    success
  1    error; nothing changed (among them a journal written by a newer
       ocistore: refused by every command, left as it is)
  2    usage error, or a reference or digest not found
  3    fsck found problems
  4    the change was made but its cleanup is pending (run ocistore recover)
  5    the layout directory does not exist
  6    the directory is not an OCI image layout (no oci-layout file)
  75   another process held the layout's lock past --lock-timeout: try again
  130  interrupted (Ctrl-C; 143: SIGTERM): nothing changed. A second Ctrl-C
       kills the process at once
  Any failure of a command that writes, other than 4, means nothing changed.

Errors: one line on stderr, "ocistore: COMMAND: MESSAGE"; with --format json
(or --json), one JSON object {"error", "kind", "exit"} instead, kind one of
usage, not-found, layout-missing, not-layout, locked, incomplete,
interrupted, error.
`

// usage prints the program's help.
func (a *app) usage(w io.Writer) {
	fmt.Fprint(w, `Usage: ocistore [global flags] COMMAND [flags] [args]

ocistore manages an OCI image layout (index.json, blobs/) with crash-safe
transactions: every change of index.json is journaled, so a crash at any
point is finished or undone by the next command.

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(tw, "  %s\t%s\n", "help", "show help for a command")
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprint(w, globalHelp)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'ocistore COMMAND -h' for the flags and arguments of a command.")
}

// commandUsage prints the help of one command.
func (a *app) commandUsage(w io.Writer, c *command) {
	line := "ocistore [global flags] " + c.name
	if c.flags != nil {
		line += " [flags]"
	}
	if c.format {
		line += " [--format text|json]"
	}
	if c.args != "" {
		line += " " + c.args
	}
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", line, c.summary)
	if h := strings.TrimSpace(c.help); h != "" {
		fmt.Fprintf(w, "\n%s\n", h)
	}
	if c.format || c.flagHelp != "" {
		fmt.Fprint(w, "\nFlags:\n")
		if c.flagHelp != "" {
			fmt.Fprint(w, strings.TrimRight(c.flagHelp, "\n")+"\n")
		}
	}
	if c.format {
		fmt.Fprint(w, `      --format FORMAT   text (default) or json
      --json            same as --format json
`)
	}
	fmt.Fprintln(w, "\nRun 'ocistore help' for the global flags and exit codes.")
}

// help runs "ocistore help [COMMAND]".
func (a *app) help(ctx context.Context, args []string) int {
	switch len(args) {
	case 0:
		a.usage(a.stdout)
		return exitOK
	case 1:
		c := lookup(args[0])
		if c == nil {
			return a.fail(ctx, nil, usagef("help: unknown command %q", args[0]))
		}
		a.commandUsage(a.stdout, c)
		return exitOK
	}
	return a.fail(ctx, nil, usagef("help: want at most one command, got %d", len(args)))
}
