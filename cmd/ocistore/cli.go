package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/term"

	"github.com/ocistore/ocistore/store"
)

// Exit codes: one per situation, the same for every command (the package
// documentation and the README's table list them).
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2 // also: a reference or digest was not found
	exitProblems = 3 // fsck found problems
	// exitIncomplete: the change was made (its new index.json is in
	// place, or journaled for recovery to put there) but its cleanup is
	// pending (store.ErrIncomplete). Every other failure of a write
	// means that nothing changed.
	exitIncomplete    = 4
	exitLayoutMissing = 5 // the layout directory does not exist
	exitNotLayout     = 6 // the directory is not an OCI image layout
	// exitLocked: another process held the lock past --lock-timeout; the
	// command may succeed later (EX_TEMPFAIL of sysexits.h, which cron
	// wrappers and mail agents read as "try again").
	exitLocked = 75
	// A command interrupted by a signal exits 128 + the signal's number
	// (interrupted.exitCode): 130 for SIGINT, 143 for SIGTERM.
	exitInterrupted = 130
)

// Error kinds: the "kind" of an error printed as JSON, one per situation.
const (
	kindUsage         = "usage"
	kindNotFound      = "not-found"
	kindLayoutMissing = "layout-missing"
	kindNotLayout     = "not-layout"
	kindLocked        = "locked"
	kindIncomplete    = "incomplete"
	kindInterrupted   = "interrupted"
	kindError         = "error"
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
	hidden  bool // left out of the help and of shell completion
	layout  layoutUse
	// flags, when set, defines the command's own flags on fs, storing
	// their values in a.opts; flagHelp documents them for -h.
	flags    func(fs *flag.FlagSet, a *app)
	flagHelp string
	run      func(ctx context.Context, a *app, args []string) error
}

// layoutUse is what a command needs of the --layout directory, checked
// before it runs (checkLayouts), so that a missing directory or one that is
// not a layout gets the same message and exit code from every command.
type layoutUse int

const (
	// layoutExisting: an OCI image layout (its oci-layout file).
	layoutExisting layoutUse = iota
	// layoutDamaged: a layout, perhaps damaged (fsck): a directory with an
	// oci-layout file, an index.json or a blobs directory.
	layoutDamaged
	// layoutCreate: any directory, or none; the store refuses a directory
	// that holds other files (init).
	layoutCreate
	// layoutNone: the command does not use the layout.
	layoutNone
)

func init() {
	initCmd.layout = layoutCreate
	fsckCmd.layout = layoutDamaged
}

// commands lists every subcommand in the order "ocistore help" shows them.
// "help" itself is handled by run.
var commands = []*command{
	initCmd, lsCmd, inspectCmd, tagCmd, untagCmd, rmCmd, importCmd,
	pullCmd, pushCmd, copyCmd, serveCmd, pruneCmd, gcCmd, duCmd, fsckCmd, recoverCmd, journalCmd, versionCmd,
	completionCmd, completeRefsCmd,
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
	showVersion bool // --version

	format outputFormat // the command's --format
	opts   cmdOpts      // the command's other flags
	fsck   fsckOpts     // fsck's flags
	remote remoteOpts   // pull's, push's and copy's flags
	serve  serveOpts    // serve's flags

	// args are the command's arguments; errJSON is set when its errors
	// are printed as JSON (--format json).
	args    []string
	errJSON bool

	stdout, stderr io.Writer
	getenv         func(string) string
	log            *slog.Logger
}

// run is the whole program: it parses args, runs the command and returns the
// exit code. Command output goes to stdout; logs, progress and errors to
// stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv, log: slog.New(slog.DiscardHandler), format: formatText}
	a.setGlobalDefaults()
	gfs := flag.NewFlagSet("ocistore", flag.ContinueOnError)
	a.globalFlags(gfs)
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.usage(stdout)
			return exitOK
		}
		return a.fail(ctx, nil, &usageError{flagError(err)})
	}
	rest := gfs.Args()
	if a.showVersion {
		return a.fail(ctx, nil, printVersionLine(a.stdout))
	}
	if len(rest) == 0 {
		a.usage(stderr)
		return exitUsage
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		return a.help(ctx, rest)
	}
	c := lookup(name)
	if c == nil {
		return a.fail(ctx, nil, usagef("unknown command %q", name))
	}
	// Errors are JSON when --format json is asked for, even when it is
	// the parsing of the flags that fails.
	a.errJSON = c.format && asksJSON(rest)
	fs := a.commandFlags(c)
	pos, err := parseInterspersed(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		a.commandUsage(stdout, c)
		return exitOK
	}
	if err != nil {
		return a.fail(ctx, c, &usageError{flagError(err)})
	}
	a.errJSON = a.json()
	a.args = pos
	if a.showVersion {
		return a.fail(ctx, c, printVersionLine(a.stdout))
	}
	if err := a.checkGlobals(); err != nil {
		return a.fail(ctx, c, err)
	}
	if err := checkArgCount(c, pos); err != nil {
		return a.fail(ctx, c, err)
	}
	a.log = newLogger(stderr, a.logLevel, a.logFormat, isTerminal(stderr) && getenv("NO_COLOR") == "")
	if err := a.checkLayouts(c, pos); err != nil {
		return a.fail(ctx, c, err)
	}
	start := time.Now()
	a.log.Debug("running", attrCommand, c.name, attrLayout, a.layout, "args", pos)
	err = c.run(ctx, a, pos)
	a.log.Debug("finished", attrCommand, c.name, "took", time.Since(start), "exit", exitCodeCtx(ctx, err))
	return a.fail(ctx, c, err)
}

// setGlobalDefaults sets the global flags' values before any is parsed.
func (a *app) setGlobalDefaults() {
	a.layout = a.getenv(EnvLayout)
	if a.layout == "" {
		a.layout = "."
	}
	a.sharedBlobs = a.getenv(EnvSharedBlobDir)
	a.logLevel = slog.LevelWarn
	a.logFormat = "text"
	a.lockTimeout = store.DefaultLockTimeout
}

// checkGlobals checks the global flags once every one is parsed.
func (a *app) checkGlobals() error {
	if a.layout == "" {
		return usagef("--layout: empty directory name")
	}
	if a.lockTimeout == 0 {
		// The store reads 0 as its default, the read-only journal opens of
		// fsck and journal as "forever": make every command wait the same.
		a.lockTimeout = store.DefaultLockTimeout
	}
	return nil
}

// globalFlags defines the global flags on fs, each with its current value
// as default: the flag set before the command and every command's own (so
// that they may come after the command, the last given winning).
func (a *app) globalFlags(fs *flag.FlagSet) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&a.layout, "layout", a.layout, "layout directory")
	fs.StringVar(&a.layout, "l", a.layout, "layout directory")
	fs.StringVar(&a.sharedBlobs, "shared-blob-dir", a.sharedBlobs, "blob directory shared by several layouts")
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
	fs.Func("log-format", "text|json", func(s string) error {
		if s != "text" && s != "json" {
			return errors.New("want text or json")
		}
		a.logFormat = s
		return nil
	})
	fs.DurationVar(&a.lockTimeout, "lock-timeout", a.lockTimeout, "writer lock wait")
	fs.BoolVar(&a.showVersion, "version", a.showVersion, "print the version")
}

func (a *app) commandFlags(c *command) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	a.globalFlags(fs)
	if c.format {
		fs.Var(&a.format, "format", "text|json")
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

// asksJSON reports whether the command line args asks for --format json
// (or --json), looking at the flags only (not after "--").
func asksJSON(args []string) bool {
	for i, arg := range args {
		if arg == "--" {
			return false
		}
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch {
		case name == "json" && (!hasVal || val == "true" || val == "1"):
			return true
		case name == "format" && hasVal:
			if val == string(formatJSON) {
				return true
			}
		case name == "format" && i+1 < len(args) && args[i+1] == string(formatJSON):
			return true
		}
	}
	return false
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

// Package flag's errors name a flag "-name"; flagError rewrites them to
// name it as the help does: "--name" (and "-l" for a one-letter flag).
var flagErrors = []struct {
	re   *regexp.Regexp
	repl func(m []string) string
}{
	{regexp.MustCompile(`^flag provided but not defined: -(.*)$`), func(m []string) string {
		return "unknown flag " + dashed(m[1])
	}},
	{regexp.MustCompile(`^flag needs an argument: -(.*)$`), func(m []string) string {
		return "flag " + dashed(m[1]) + " needs a value"
	}},
	{regexp.MustCompile(`^invalid value (".*") for flag -([^:\s]+): (.*)$`), func(m []string) string {
		return "invalid value " + m[1] + " for " + dashed(m[2]) + ": " + m[3]
	}},
	{regexp.MustCompile(`^invalid boolean value (".*") for -([^:\s]+): .*$`), func(m []string) string {
		return "invalid value " + m[1] + " for " + dashed(m[2]) + ": want true or false"
	}},
	{regexp.MustCompile(`^invalid boolean flag ([^:\s]+): (.*)$`), func(m []string) string {
		return "invalid value for " + dashed(m[1]) + ": " + m[2]
	}},
}

func flagError(err error) error {
	for _, fe := range flagErrors {
		if m := fe.re.FindStringSubmatch(err.Error()); m != nil {
			return errors.New(fe.repl(m))
		}
	}
	return err
}

// dashed is a flag's name as the help writes it: "--name", or "-n".
func dashed(name string) string {
	if len([]rune(name)) == 1 {
		return "-" + name
	}
	return "--" + name
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

// Layouts --------------------------------------------------------------------

// layoutError says why a directory named as a layout is not one: it does
// not exist (store.ErrLayoutMissing), or it is not an OCI image layout
// (store.ErrNotLayout; detail says why). Every command prints it the same
// way.
type layoutError struct {
	dir    string
	err    error
	detail string
}

func (e *layoutError) Error() string {
	if errors.Is(e.err, store.ErrLayoutMissing) {
		return e.dir + ": layout directory does not exist"
	}
	return fmt.Sprintf("%s: %v (%s)", e.dir, e.err, e.detail)
}

func (e *layoutError) Unwrap() error { return e.err }

// probeLayout looks at dir as a layout: nil when it has an oci-layout file
// (the store judges the rest), else a *layoutError. damaged accepts a
// directory with an index.json or a blobs directory but no oci-layout
// (fsck reports it). An error other than a missing file is left for the
// command to meet.
func probeLayout(dir string, damaged bool) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR): // ENOTDIR: a file on the path
		return &layoutError{dir: dir, err: store.ErrLayoutMissing}
	case err != nil:
		return nil
	case !fi.IsDir():
		return &layoutError{dir: dir, err: store.ErrNotLayout, detail: "not a directory"}
	}
	names := []string{v1.ImageLayoutFile}
	if damaged {
		names = append(names, v1.ImageIndexFile, v1.ImageBlobsDir)
	}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	return &layoutError{dir: dir, err: store.ErrNotLayout, detail: "no " + v1.ImageLayoutFile + " file"}
}

// checkLayouts checks, before c runs, the layout directories it works on:
// --layout, and an argument its synopsis names a layout (import's
// SRC-LAYOUT).
func (a *app) checkLayouts(c *command, args []string) error {
	switch c.layout {
	case layoutExisting, layoutDamaged:
		if err := probeLayout(a.layout, c.layout == layoutDamaged); err != nil {
			return err
		}
	case layoutCreate:
		if fi, err := os.Stat(a.layout); err == nil && !fi.IsDir() {
			return &layoutError{dir: a.layout, err: store.ErrNotLayout, detail: "not a directory"}
		}
	}
	for i, k := range argKinds(c) {
		if k.layout && i < len(args) {
			if err := probeLayout(args[i], false); err != nil {
				return err
			}
		}
	}
	return nil
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

// classify returns the kind of err, the outcome of a command run with ctx,
// and its exit code. A command interrupted by a signal (the cause of ctx)
// is "interrupted", unless its change was made (store.ErrIncomplete).
func classify(ctx context.Context, err error) (kind string, code int) {
	var st exitStatus
	var ue *usageError
	var in *interrupted
	switch {
	case err == nil:
		return "", exitOK
	case errors.As(err, &st):
		return "", int(st)
	case errors.Is(err, store.ErrIncomplete):
		return kindIncomplete, exitIncomplete
	case ctx.Err() != nil && errors.As(context.Cause(ctx), &in):
		return kindInterrupted, in.exitCode()
	case errors.Is(err, context.Canceled):
		return kindInterrupted, exitInterrupted
	case errors.As(err, &ue), errors.Is(err, store.ErrInvalidArgument):
		return kindUsage, exitUsage
	case errors.Is(err, store.ErrNotFound):
		return kindNotFound, exitUsage
	case errors.Is(err, store.ErrLayoutMissing):
		return kindLayoutMissing, exitLayoutMissing
	case errors.Is(err, store.ErrNotLayout):
		return kindNotLayout, exitNotLayout
	case errors.Is(err, store.ErrLocked):
		return kindLocked, exitLocked
	}
	return kindError, exitError
}

// exitCode is err's exit code, the command not interrupted.
func exitCode(err error) int {
	_, code := classify(context.Background(), err)
	return code
}

func exitCodeCtx(ctx context.Context, err error) int {
	_, code := classify(ctx, err)
	return code
}

// message is what fail prints for err, of kind: one message per situation,
// whichever command meets it.
func (a *app) message(ctx context.Context, c *command, kind string, err error) string {
	var le *layoutError
	switch kind {
	case kindInterrupted:
		var in *interrupted
		if errors.As(context.Cause(ctx), &in) {
			return in.Error()
		}
		return "interrupted"
	case kindNotFound:
		if ref, ok := notFoundRef(err, a.args); ok {
			return ref + ": " + store.ErrNotFound.Error()
		}
	case kindLayoutMissing, kindNotLayout:
		if errors.As(err, &le) {
			return le.Error()
		}
		// The store found it: for a command on --layout alone, say it as
		// the check before the command does.
		if c != nil && !hasLayoutArg(c) {
			if perr := probeLayout(a.layout, false); perr != nil {
				return perr.Error()
			}
		}
	case kindLocked:
		if a.lockTimeout < 0 {
			return fmt.Sprintf("%s: %v (--lock-timeout %s: did not wait)", a.layout, store.ErrLocked, a.lockTimeout)
		}
		return fmt.Sprintf("%s: %v (gave up after --lock-timeout %s)", a.layout, store.ErrLocked, a.lockTimeout)
	}
	return err.Error()
}

// notFoundRef returns the argument of the command that err, a
// store.ErrNotFound, is about: the last word of the error that wraps the
// sentinel ("delete a,b: b: not found" is about b).
func notFoundRef(err error, args []string) (string, bool) {
	w := wrapperOf(err, store.ErrNotFound)
	if w == nil {
		return "", false
	}
	words := strings.Fields(strings.TrimSuffix(w.Error(), ": "+store.ErrNotFound.Error()))
	if len(words) == 0 || !slices.Contains(args, words[len(words)-1]) {
		return "", false
	}
	return words[len(words)-1], true
}

// wrapperOf returns the error of err's tree that wraps target itself.
func wrapperOf(err, target error) error {
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		next := u.Unwrap()
		if next == target {
			return err
		}
		if next != nil {
			return wrapperOf(next, target)
		}
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if e == target {
				return err
			}
			if w := wrapperOf(e, target); w != nil {
				return w
			}
		}
	}
	return nil
}

// errorJSON is an error as --format json prints it, on stderr.
type errorJSON struct {
	Error string `json:"error"`
	Kind  string `json:"kind"`
	Exit  int    `json:"exit"`
}

// fail prints err, as "ocistore: COMMAND: MESSAGE" or as one JSON object,
// and returns its exit code.
func (a *app) fail(ctx context.Context, c *command, err error) int {
	kind, code := classify(ctx, err)
	if kind == "" {
		return code // nil, or an exitStatus: the command printed its outcome
	}
	msg := a.message(ctx, c, kind, err)
	if a.errJSON {
		b, merr := json.Marshal(errorJSON{Error: msg, Kind: kind, Exit: code})
		if merr == nil {
			fmt.Fprintf(a.stderr, "%s\n", b)
			return code
		}
	}
	prefix := "ocistore: "
	if c != nil {
		prefix += c.name + ": "
	}
	fmt.Fprintf(a.stderr, "%s%s\n", prefix, msg)
	switch kind {
	case kindIncomplete:
		fmt.Fprintln(a.stderr, "ocistore: the change was made; its cleanup is pending: run 'ocistore recover' (any later ocistore command also finishes it)")
	case kindUsage:
		if c != nil {
			fmt.Fprintf(a.stderr, "Run 'ocistore %s -h' for usage.\n", c.name)
		} else {
			fmt.Fprintln(a.stderr, "Run 'ocistore help' for usage.")
		}
	}
	return code
}
