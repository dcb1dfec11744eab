package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/lmittmann/tint"
	"golang.org/x/term"

	"github.com/ocistore/ocistore/store"
)

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2 // also: a reference or blob was not found
	exitProblems = 3 // fsck found problems
	// exitIncomplete: the change was made (its new index.json is in
	// place, or journaled for recovery to put there) but its cleanup is
	// pending (store.ErrIncomplete). Every other failure of a write
	// means that nothing changed.
	exitIncomplete = 4
)

// Log attribute keys.
const (
	attrCommand = "command"
	attrLayout  = "layout"
)

// EnvLayout names the environment variable that gives the default --layout.
const EnvLayout = "OCISTORE_LAYOUT"

// EnvSharedBlobDir names the environment variable that gives the default
// --shared-blob-dir.
const EnvSharedBlobDir = "OCISTORE_SHARED_BLOB_DIR"

// command is one subcommand: its usage text and what it runs.
type command struct {
	name    string
	args    string // argument synopsis for the usage line, "" for none
	summary string // one line, for the command list
	help    string // the body of "ocistore NAME -h"
	minArgs int
	maxArgs int  // -1: no upper limit
	format  bool // takes --format text|json (and --json)
	// flags, when set, defines the command's own flags on fs, storing
	// their values in a.opts; flagHelp documents them for -h.
	flags    func(fs *flag.FlagSet, a *app)
	flagHelp string
	run      func(ctx context.Context, a *app, args []string) error
}

// commands lists every subcommand in the order "ocistore help" shows them.
// "help" itself is handled by run.
var commands = []*command{
	initCmd, lsCmd, inspectCmd, tagCmd, untagCmd, rmCmd, importCmd,
	pruneCmd, gcCmd, duCmd, fsckCmd, recoverCmd, journalCmd, versionCmd,
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// app is the state a command runs with: the global flags, the output
// streams and the logger.
type app struct {
	layout      string
	sharedBlobs string // --shared-blob-dir
	logLevel    slog.Level
	logFormat   string
	lockTimeout time.Duration

	format outputFormat // the command's --format
	opts   cmdOpts      // the command's other flags
	fsck   fsckOpts     // fsck's flags

	stdout, stderr io.Writer
	getenv         func(string) string
	log            *slog.Logger
}

// run is the whole program: it parses args, runs the command and returns the
// exit code. Command output goes to stdout; logs, progress and errors to
// stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv, log: slog.New(slog.DiscardHandler), format: formatText}
	gfs := a.globalFlags()
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.usage(stdout)
			return exitOK
		}
		return a.fail(nil, &usageError{err})
	}
	if a.layout == "" {
		return a.fail(nil, usagef("--layout: empty directory name"))
	}
	if a.lockTimeout == 0 {
		// The store reads 0 as its default, the read-only journal opens of
		// fsck and journal as "forever": make every command wait the same.
		a.lockTimeout = store.DefaultLockTimeout
	}
	rest := gfs.Args()
	if len(rest) == 0 {
		a.usage(stderr)
		return exitUsage
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		return a.help(rest)
	}
	c := lookup(name)
	if c == nil {
		return a.fail(nil, usagef("unknown command %q", name))
	}
	fs := a.commandFlags(c)
	pos, err := parseInterspersed(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		a.commandUsage(stdout, c)
		return exitOK
	}
	if err != nil {
		return a.fail(c, &usageError{err})
	}
	if err := checkArgCount(c, pos); err != nil {
		return a.fail(c, err)
	}
	a.log = newLogger(stderr, a.logLevel, a.logFormat, isTerminal(stderr) && getenv("NO_COLOR") == "")
	start := time.Now()
	a.log.Debug("running", attrCommand, c.name, attrLayout, a.layout, "args", pos)
	err = c.run(ctx, a, pos)
	a.log.Debug("finished", attrCommand, c.name, "took", time.Since(start), "exit", exitCode(err))
	return a.fail(c, err)
}

func (a *app) globalFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("ocistore", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	def := a.getenv(EnvLayout)
	if def == "" {
		def = "."
	}
	fs.StringVar(&a.layout, "layout", def, "layout directory")
	fs.StringVar(&a.layout, "l", def, "layout directory")
	fs.StringVar(&a.sharedBlobs, "shared-blob-dir", a.getenv(EnvSharedBlobDir), "blob directory shared by several layouts")
	a.logLevel = slog.LevelWarn
	fs.Func("log-level", "debug|info|warn|error", func(s string) error {
		switch strings.ToLower(s) {
		case "debug":
			a.logLevel = slog.LevelDebug
		case "info":
			a.logLevel = slog.LevelInfo
		case "warn", "warning":
			a.logLevel = slog.LevelWarn
		case "error":
			a.logLevel = slog.LevelError
		default:
			return errors.New("want debug, info, warn or error")
		}
		return nil
	})
	a.logFormat = "text"
	fs.Func("log-format", "text|json", func(s string) error {
		if s != "text" && s != "json" {
			return errors.New("want text or json")
		}
		a.logFormat = s
		return nil
	})
	fs.DurationVar(&a.lockTimeout, "lock-timeout", store.DefaultLockTimeout, "writer lock wait")
	return fs
}

func (a *app) commandFlags(c *command) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if c.format {
		fs.Var(&a.format, "format", "output format: text or json")
		fs.BoolFunc("json", "same as --format json", func(string) error {
			a.format = formatJSON
			return nil
		})
	}
	if c.flags != nil {
		c.flags(fs, a)
	}
	return fs
}

// parseInterspersed parses fs from args, allowing flags after positional
// arguments (`rm a b --format json`), and returns the positional arguments.
// Everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func checkArgCount(c *command, args []string) error {
	n := len(args)
	switch {
	case n >= c.minArgs && (c.maxArgs < 0 || n <= c.maxArgs):
		return nil
	case c.maxArgs == 0:
		return usagef("takes no arguments, got %d", n)
	case c.minArgs == c.maxArgs:
		return usagef("want %d argument(s) (%s), got %d", c.minArgs, c.args, n)
	case n < c.minArgs:
		return usagef("want at least %d argument(s) (%s), got %d", c.minArgs, c.args, n)
	default:
		return usagef("want at most %d argument(s) (%s), got %d", c.maxArgs, c.args, n)
	}
}

// newLogger makes the stderr logger: tint for text (coloured on a
// terminal), slog's JSON handler for json.
func newLogger(w io.Writer, level slog.Level, format string, color bool) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: !color}))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// storeOptions are the store.Options the global flags ask for. Only init
// creates a layout; every other command fails on a directory that is not one.
func (a *app) storeOptions(create bool) *store.Options {
	return &store.Options{Logger: a.log, LockTimeout: a.lockTimeout, NoCreate: !create, SharedBlobDir: a.sharedBlobs}
}

// withStore opens the layout (running recovery), runs fn and closes it.
func (a *app) withStore(ctx context.Context, fn func(s *store.Store) error) error {
	return a.withStoreOpts(ctx, a.storeOptions(false), fn)
}

// withReadStore opens the layout read-only: no lock, no recovery, so reading
// commands never wait for a writer (they see index.json as it is on disk).
func (a *app) withReadStore(ctx context.Context, fn func(s *store.Store) error) error {
	o := a.storeOptions(false)
	o.ReadOnly = true
	return a.withStoreOpts(ctx, o, fn)
}

// withWriteOrDry is withStore, or for a dry run withReadStore: a dry run
// takes no lock, runs no recovery and changes no byte (it says what
// recovery would do).
func (a *app) withWriteOrDry(dry bool) func(context.Context, func(*store.Store) error) error {
	if dry {
		return a.withReadStore
	}
	return a.withStore
}

func (a *app) withStoreOpts(ctx context.Context, o *store.Options, fn func(s *store.Store) error) error {
	s, err := store.Open(ctx, a.layout, o)
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// Errors and exit codes ------------------------------------------------------

// usageError is a mistake on the command line: exit code 2 and a pointer to
// the help.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// exitStatus is returned by a command that printed its whole outcome and only
// sets the exit code (fsck with problems).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func exitCode(err error) int {
	var st exitStatus
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &st):
		return int(st)
	case errors.Is(err, store.ErrIncomplete):
		return exitIncomplete
	case errors.As(err, &ue), errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalidArgument):
		return exitUsage
	}
	return exitError
}

// fail prints err as "ocistore: COMMAND: ERROR" and returns its exit code.
func (a *app) fail(c *command, err error) int {
	code := exitCode(err)
	var st exitStatus
	if err == nil || errors.As(err, &st) {
		return code
	}
	prefix := "ocistore: "
	if c != nil {
		prefix += c.name + ": "
	}
	if errors.Is(err, context.Canceled) {
		prefix += "interrupted: "
	}
	fmt.Fprintf(a.stderr, "%s%v\n", prefix, err)
	if code == exitIncomplete {
		fmt.Fprintln(a.stderr, "ocistore: the change was made; its cleanup is pending: run 'ocistore recover' (any later ocistore command also finishes it)")
	}
	var ue *usageError
	if errors.As(err, &ue) {
		if c != nil {
			fmt.Fprintf(a.stderr, "Run 'ocistore %s -h' for usage.\n", c.name)
		} else {
			fmt.Fprintln(a.stderr, "Run 'ocistore help' for usage.")
		}
	}
	return code
}
