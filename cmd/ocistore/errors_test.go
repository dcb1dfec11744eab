package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/testing/testutil"
)

// situationArgs are, for every command that works on a layout, arguments
// that would succeed on the fixture: what each situation makes fail. The
// key is the command's name, or "fsck --repair".
func situationArgs(src string) map[string][]string {
	return map[string][]string{
		"init":    nil,
		"ls":      nil,
		"inspect": {"a"},
		"tag":     {"a", "x"},
		"untag":   {"a"},
		"rm":      {"a"},
		"import":  {src},
		// pull and push meet these situations before any request.
		"pull":  {"127.0.0.1:9/app:1"},
		"push":  {"a", "127.0.0.1:9/app:1"},
		"prune": {"--keep-last", "1"},
		// serve meets them before it listens.
		"serve":         {"--listen", "127.0.0.1:0"},
		"gc":            nil,
		"du":            nil,
		"fsck":          nil,
		"fsck --repair": {"--repair"},
		"recover":       nil,
		"journal":       nil,
	}
}

// errorOutcome checks that r failed with code and printed msg as one line
// on stderr, "ocistore: CMD: MSG", or, asked for JSON, as one JSON
// object {"error": MSG, "kind": KIND, "exit": CODE}; and nothing on stdout.
func errorOutcome(t *testing.T, r result, cmd string, asJSON bool, code int, kind, msg string) {
	t.Helper()
	if r.code != code || r.stdout != "" {
		t.Errorf("want exit %d, nothing on stdout:\n%s", code, r)
		return
	}
	if !asJSON {
		if want := "ocistore: " + cmd + ": " + msg + "\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
		return
	}
	var got errorJSON
	dec := json.NewDecoder(strings.NewReader(r.stderr))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("stderr is not one JSON object (%v):\n%s", err, r)
		return
	}
	if want := (errorJSON{Error: msg, Kind: kind, Exit: code}); got != want {
		t.Errorf("JSON error %+v, want %+v", got, want)
	}
}

// TestErrorSituations: every command that works on a layout, run on a
// path that does not exist, on a directory that is not a layout, on a
// layout another process holds locked, and (those that take references) on
// a reference that is not there, fails with the one message and the one
// exit code of that situation, as text and, for the commands with
// --format, as JSON; and changes nothing.
func TestErrorSituations(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	src := newFixture(t)
	missing := filepath.Join(t.TempDir(), "missing")
	plain := t.TempDir()
	if err := os.WriteFile(filepath.Join(plain, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := situationArgs(src.dir)
	for _, c := range commands {
		if _, ok := args[c.name]; !ok && c.layout != layoutNone {
			t.Errorf("command %s works on a layout: give it arguments in situationArgs", c.name)
		}
	}
	// run runs command key of args with extra arguments on layout dir, as
	// text and, when it takes --format, as JSON, and checks the outcome.
	run := func(t *testing.T, dir, key string, extra []string, code int, kind, msg string) {
		t.Helper()
		name, _, _ := strings.Cut(key, " ")
		a := append([]string{"-l", dir, "--lock-timeout", "200ms", name}, append(args[key], extra...)...)
		errorOutcome(t, cli(t, a...), name, false, code, kind, msg)
		if lookup(name).format {
			errorOutcome(t, cli(t, append(a, "--format", "json")...), name, true, code, kind, msg)
			errorOutcome(t, cli(t, append(a, "--json")...), name, true, code, kind, msg)
		}
	}

	t.Run("layout missing", func(t *testing.T) {
		for key := range args {
			if key == "init" {
				continue // creates it
			}
			t.Run(key, func(t *testing.T) {
				run(t, missing, key, nil, exitLayoutMissing, kindLayoutMissing, missing+": layout directory does not exist")
			})
		}
		if exists(missing) {
			t.Error("a command created the missing layout directory")
		}
		// Import's source too.
		r := cli(t, "-l", f.dir, "import", missing)
		errorOutcome(t, r, "import", false, exitLayoutMissing, kindLayoutMissing, missing+": layout directory does not exist")
	})

	t.Run("not a layout", func(t *testing.T) {
		before := testutil.Snapshot(t, plain)
		for key := range args {
			t.Run(key, func(t *testing.T) {
				run(t, plain, key, nil, exitNotLayout, kindNotLayout, plain+": not an OCI image layout (no oci-layout file)")
			})
		}
		if after := testutil.Snapshot(t, plain); len(after) != len(before) {
			t.Errorf("a command wrote into a directory that is not a layout: %v", after)
		}
		// A regular file; a path through one.
		file := filepath.Join(plain, "notes.txt")
		errorOutcome(t, cli(t, "-l", file, "ls", "--json"), "ls", true, exitNotLayout, kindNotLayout, file+": not an OCI image layout (not a directory)")
		errorOutcome(t, cli(t, "-l", file, "init"), "init", false, exitNotLayout, kindNotLayout, file+": not an OCI image layout (not a directory)")
		errorOutcome(t, cli(t, "-l", file+"/x", "ls"), "ls", false, exitLayoutMissing, kindLayoutMissing, file+"/x: layout directory does not exist")
		// Import's source.
		errorOutcome(t, cli(t, "-l", f.dir, "import", plain), "import", false, exitNotLayout, kindNotLayout, plain+": not an OCI image layout (no oci-layout file)")
	})

	t.Run("locked", func(t *testing.T) {
		g := newFixture(t)
		index := readFile(t, filepath.Join(g.dir, "index.json"))
		db, err := bolt.Open(filepath.Join(g.dir, ".ocistore", "journal.db"), 0o644, &bolt.Options{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		// The commands that take the writer lock (readers take none).
		for _, key := range []string{"init", "tag", "untag", "rm", "import", "prune", "gc", "recover", "fsck --repair"} {
			t.Run(key, func(t *testing.T) {
				run(t, g.dir, key, nil, exitLocked, kindLocked, g.dir+": locked by another process (gave up after --lock-timeout 200ms)")
			})
		}
		if got := readFile(t, filepath.Join(g.dir, "index.json")); string(got) != string(index) {
			t.Error("index.json changed under another process's lock")
		}
	})

	t.Run("not found", func(t *testing.T) {
		index := readFile(t, filepath.Join(f.dir, "index.json"))
		for _, c := range []struct {
			name string
			args []string
		}{
			{"inspect", []string{"nosuch:tag"}},
			{"tag", []string{"nosuch:tag", "x"}},
			{"untag", []string{"nosuch:tag"}},
			{"untag", []string{"a", "nosuch:tag"}},
			{"rm", []string{"nosuch:tag"}},
			{"rm", []string{"b", "nosuch:tag"}},
			{"import", []string{src.dir, "b", "nosuch:tag"}},
		} {
			a := append([]string{"-l", f.dir, c.name}, c.args...)
			errorOutcome(t, cli(t, a...), c.name, false, exitUsage, kindNotFound, "nosuch:tag: not found")
			if lookup(c.name).format {
				errorOutcome(t, cli(t, append(a, "--json")...), c.name, true, exitUsage, kindNotFound, "nosuch:tag: not found")
			}
		}
		if got := readFile(t, filepath.Join(f.dir, "index.json")); string(got) != string(index) {
			t.Error("index.json changed")
		}
	})

	t.Run("usage", func(t *testing.T) {
		// Usage errors name the help and, as JSON, are one object.
		r := cli(t, "-l", f.dir, "ls", "--json", "x")
		errorOutcome(t, r, "ls", true, exitUsage, kindUsage, "takes no arguments, got 1")
		// Asked for JSON after the bad flag: JSON still.
		r = cli(t, "-l", f.dir, "rm", "--frob", "a", "--format", "json")
		errorOutcome(t, r, "rm", true, exitUsage, kindUsage, "unknown flag --frob")
		r = cli(t, "-l", f.dir, "rm", "--frob", "a")
		if want := "ocistore: rm: unknown flag --frob\nRun 'ocistore rm -h' for usage.\n"; r.code != exitUsage || r.stderr != want {
			t.Errorf("stderr %q, want %q:\n%s", r.stderr, want, r)
		}
	})
}

// TestFlagErrorsNameFlagsAsHelp: an error about a flag writes it as the
// help does, "--keep-last", never "-keep-last".
func TestFlagErrorsNameFlagsAsHelp(t *testing.T) {
	t.Parallel()
	dir := newFixture(t).dir
	singleDash := regexp.MustCompile(`(^|[\s"'(])-[a-z][a-z-]+`)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"prune", "--keep-last", "x"}, `ocistore: prune: invalid value "x" for --keep-last: want a whole number of images, at least 1`},
		{[]string{"prune", "-keep-last", "0"}, `ocistore: prune: invalid value "0" for --keep-last: want a whole number of images, at least 1`},
		{[]string{"prune", "--keep-last"}, `ocistore: prune: flag --keep-last needs a value`},
		{[]string{"gc", "--grace=soon"}, `ocistore: gc: invalid value "soon" for --grace: invalid duration "soon"`},
		{[]string{"gc", "--dry-run=maybe"}, `ocistore: gc: invalid value "maybe" for --dry-run: want true or false`},
		{[]string{"ls", "--frob"}, `ocistore: ls: unknown flag --frob`},
		{[]string{"ls", "-frob"}, `ocistore: ls: unknown flag --frob`},
		{[]string{"--frob", "ls"}, `ocistore: unknown flag --frob`},
		{[]string{"--log-level", "loud", "ls"}, `ocistore: invalid value "loud" for --log-level: want debug, info, warn or error`},
		{[]string{"ls", "--lock-timeout", "soon"}, `ocistore: ls: invalid value "soon" for --lock-timeout: parse error`},
		{[]string{"rm", "a", "-l"}, `ocistore: rm: flag -l needs a value`},
	} {
		r := cli(t, append([]string{"-l", dir}, c.args...)...)
		line, _, _ := strings.Cut(r.stderr, "\n")
		if r.code != exitUsage || line != c.msg {
			t.Errorf("want exit 2 and %q:\n%s", c.msg, r)
		}
		if m := singleDash.FindString(r.stderr); m != "" {
			t.Errorf("%q names a flag with one dash:\n%s", m, r)
		}
	}
}

// TestGlobalFlagsAfterCommand: the global flags work after the command as
// before it; given twice, the last wins.
func TestGlobalFlagsAfterCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	missing := filepath.Join(t.TempDir(), "missing")
	lists := func(r result) {
		t.Helper()
		if r.code != 0 || !strings.Contains(r.stdout, f.b.Digest.String()) {
			t.Errorf("did not list the fixture:\n%s", r)
		}
	}
	lists(cli(t, "ls", "-l", f.dir))
	lists(cli(t, "ls", "--layout", f.dir))
	lists(cli(t, "ls", "--layout="+f.dir, "--json"))
	lists(cli(t, "-l", missing, "ls", "-l", f.dir))
	lists(cliWith(t, runOpts{env: []string{"OCISTORE_LAYOUT=" + missing}}, "ls", "-l", f.dir))
	r := cli(t, "-l", f.dir, "ls", "-l", missing)
	errorOutcome(t, r, "ls", false, exitLayoutMissing, kindLayoutMissing, missing+": layout directory does not exist")

	r = must(t, 0, "rm", "--layout", f.dir, "a2", "--log-level", "debug", "--log-format", "json")
	wantContains(t, "stdout", r.stdout, "removed a2")
	wantContains(t, "stderr", r.stderr, `"level":"DEBUG"`, `"command":"rm"`)
	r = must(t, 0, "--log-level", "debug", "ls", "-l", f.dir, "--log-level", "error")
	if r.stderr != "" {
		t.Errorf("--log-level error after the command did not win:\n%s", r)
	}

	// --lock-timeout after the command: it is the wait of this command.
	db, err := bolt.Open(filepath.Join(f.dir, ".ocistore", "journal.db"), 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r = cli(t, "tag", "a", "x", "-l", f.dir, "--lock-timeout", "150ms")
	errorOutcome(t, r, "tag", false, exitLocked, kindLocked, f.dir+": locked by another process (gave up after --lock-timeout 150ms)")
	db.Close()
	must(t, 0, "tag", "a", "x", "--layout", f.dir, "--lock-timeout", "150ms")

	// --shared-blob-dir after the command.
	root := t.TempDir()
	shared, lay := filepath.Join(root, "shared"), filepath.Join(root, "lay")
	must(t, 0, "init", "-l", lay, "--shared-blob-dir", shared)
	if !exists(filepath.Join(shared, ".ocistore", "journal.db")) {
		t.Error("init --shared-blob-dir DIR after the command did not put the journal in DIR")
	}
}
